"""Open latent video models (ModelScope text-to-video, Zeroscope) through mavcli's own pseudo-3D
U-Net: equal to the reference implementation (diffusers) on tiny random models saved in the
diffusers layout, strict loading, safetensors only, and the scheduler's maths."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from open_weights_fixture import SCHEDULER, build_reference  # noqa: E402

from mavcli.diffusion.discrete import DiscreteSchedule  # noqa: E402
from mavcli.errors import PackError  # noqa: E402
from mavcli.latent_pipeline import LatentVideoPipeline  # noqa: E402
from mavcli.weights import diffusers_layout as layout  # noqa: E402


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-t2v")
    return build_reference(folder), folder


@pytest.fixture(scope="module")
def ours(reference):
    return LatentVideoPipeline.from_folder(reference[1], dtype=torch.float32)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> float:
    """Max abs difference relative to the output's scale; asserts it is within `tol`."""
    rel = ((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-12)).item()
    assert rel <= tol, f"relative difference {rel:.2e} > {tol:.0e}"
    return rel


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_unet_equals_diffusers(reference, ours, frames):
    ref, _ = reference
    gen = torch.Generator().manual_seed(frames)
    x = torch.randn(2, 4, frames, 8, 8, generator=gen)
    t = torch.tensor([7, 640])
    text = ours.encode_prompt(["a red fox runs", "waves at night"])
    empty = ours.encode_prompt(["", ""])  # the unconditional branch of guidance
    with torch.no_grad():
        for context in (text, empty):
            _close(ref.unet(x, t, context).sample, ours.unet(x, t, context))


def test_unet_map_is_exact_both_ways(reference, ours):
    ref, _ = reference
    theirs = ref.unet.state_dict()
    back = layout.unet_to_diffusers(ours.unet.state_dict())
    assert set(back) == set(theirs)
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)


def test_text_encoder_and_vae_equal_reference(reference, ours):
    ref, _ = reference
    ids = ref.tokenizer(["a red fox runs"], padding="max_length", max_length=ref.tokenizer.model_max_length,
                        return_tensors="pt").input_ids
    with torch.no_grad():
        _close(ref.text_encoder(ids)[0], ours.encode_prompt(["a red fox runs"]))
        lat = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        expect = ref.decode_latents(lat)
        _close(expect, ours.decode(lat))
        video = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
        flat = video.permute(0, 2, 1, 3, 4).reshape(3, 3, 16, 16)
        enc = ref.vae.encode(flat).latent_dist.mean * ref.vae.config.scaling_factor
        _close(enc.reshape(1, 3, 4, 8, 8).permute(0, 2, 1, 3, 4), ours.encode(video))


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_sampling_loop_equals_text_to_video_pipeline(reference, ours, guidance):
    ref, _ = reference
    lat = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expect = ref(prompt="a red fox", negative_prompt="blurry", num_inference_steps=4, guidance_scale=guidance,
                     latents=lat.clone(), num_frames=3, height=16, width=16, output_type="latent").frames
    got = ours.keyframes("a red fox", negative_prompt="blurry", latents=lat.clone(), steps=4, guidance=guidance,
                         frames=3, height=16, width=16)
    _close(expect, got)


# diffusers' DPMSolverMultistepScheduler warns about numpy 2's __array__ copy keyword
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("guidance", "steps"), [(1.0, 4), (7.5, 4), (7.5, 20)])
def test_dpm_solver_equals_text_to_video_pipeline_with_dpm_solver_multistep(reference, ours, guidance, steps):
    from diffusers import DPMSolverMultistepScheduler

    from diffusers import DDIMScheduler

    ref, folder = reference
    ddim = ref.scheduler
    # diffusers' own recipe for these models, on the scheduler as loaded from the repository
    ref.scheduler = DPMSolverMultistepScheduler.from_config(DDIMScheduler.from_pretrained(folder / "scheduler").config)
    try:
        lat = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            expect = ref(prompt="a red fox", negative_prompt="blurry", num_inference_steps=steps, guidance_scale=guidance,
                         latents=lat.clone(), num_frames=3, height=16, width=16, output_type="latent").frames
    finally:
        ref.scheduler = ddim
    got = ours.keyframes("a red fox", negative_prompt="blurry", latents=lat.clone(), steps=steps, guidance=guidance,
                         frames=3, height=16, width=16, sampler="dpmpp")
    _close(expect, got)
    ddim_latents = ours.keyframes("a red fox", negative_prompt="blurry", latents=lat.clone(), steps=steps,
                                  guidance=guidance, frames=3, height=16, width=16)
    assert (ddim_latents - got).abs().max() > 1e-3  # a different sampler, not DDIM again


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("steps", "strength"), [(10, 0.6), (25, 0.3), (7, 1.0)])
def test_dpm_solver_from_a_noised_input_follows_diffusers_video_to_video(steps, strength):
    """The loop of diffusers' video-to-video pipelines with DPMSolverMultistepScheduler: keep the
    last int(steps * strength) timesteps, noise the input to the first, step to the end."""
    from diffusers import DPMSolverMultistepScheduler

    from mavcli.diffusion.discrete import add_noise, multistep_start, sample_dpmpp_discrete

    def eps(x, t):  # any smooth function of (x, t) stands in for the U-Net
        return 0.3 * torch.tanh(x) + 0.01 * (t / 100.0) * torch.cos(x)

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 2, 8, 8, generator=gen), torch.randn(1, 4, 2, 8, 8, generator=gen)
    ref = DPMSolverMultistepScheduler(**{k: v for k, v in SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")},
                                      timestep_spacing="leading")
    ref.set_timesteps(steps)
    start = steps - min(int(steps * strength), steps)
    ts = ref.timesteps[start:]
    ref.set_begin_index(start)
    x = ref.add_noise(x0, noise, ts[:1])
    for t in ts:
        x = ref.step(eps(x, int(t)), t, x).prev_sample
    ours = DiscreteSchedule(**SCHEDULER, multistep_spacing="leading")
    kept = multistep_start(ours, steps, strength)
    assert kept == ts.tolist()
    got = sample_dpmpp_discrete(eps, add_noise(ours, x0, noise, kept[0]), steps, schedule=ours, strength=strength)
    _close(x, got)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_multistep_timesteps_follow_diffusers():
    from diffusers import DPMSolverMultistepScheduler

    from mavcli.diffusion.discrete import multistep_timesteps

    args = {k: v for k, v in SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}
    for spacing in ("leading", "trailing", "linspace"):
        for steps in (1, 7, 25, 50):
            ref = DPMSolverMultistepScheduler(**args, timestep_spacing=spacing)
            ref.set_timesteps(steps)
            ours = DiscreteSchedule(**SCHEDULER, multistep_spacing=spacing)
            assert multistep_timesteps(ours, steps) == ref.timesteps.tolist(), (spacing, steps)


def test_schedule_timesteps_follow_diffusers():
    from diffusers import DDIMScheduler

    for spacing in ("leading", "trailing", "linspace"):
        for steps in (1, 7, 25, 50):
            ref = DDIMScheduler(**{**SCHEDULER, "timestep_spacing": spacing})
            ref.set_timesteps(steps)
            ours = DiscreteSchedule(**{**SCHEDULER, "timestep_spacing": spacing})
            assert ours.timesteps(steps) == ref.timesteps.tolist(), (spacing, steps)
    ref = DDIMScheduler(**{**SCHEDULER, "beta_schedule": "squaredcos_cap_v2"})
    ours = DiscreteSchedule(**{**SCHEDULER, "beta_schedule": "squaredcos_cap_v2"})
    assert torch.allclose(ours.alphas_cumprod(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_scheduler_config_is_read(reference, tmp_path):
    schedule, cls = layout.load_schedule(reference[1])
    assert cls == "DDIMScheduler"
    assert (schedule.steps_offset, schedule.set_alpha_to_one, schedule.beta_schedule) == (1, False, "scaled_linear")
    assert schedule.multistep_spacing == schedule.timestep_spacing == "leading"  # the file states it
    # ModelScope's file (diffusers 0.15) states no spacing: DDIM's default is "leading", the
    # multistep scheduler's "linspace"
    cfg = json.loads((reference[1] / "scheduler" / "scheduler_config.json").read_text())
    cfg.pop("timestep_spacing")
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    schedule, _ = layout.load_schedule(tmp_path)
    assert (schedule.timestep_spacing, schedule.multistep_spacing) == ("leading", "linspace")


def _copy(folder, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(folder, dst)
    return dst


def test_strict_loading_names_the_tensor(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(reference[1], tmp_path)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    extra = dict(tensors, **{"down_blocks.0.surplus.weight": torch.zeros(2)})
    save_file(extra, path)
    with pytest.raises(PackError, match="down_blocks.0.surplus.weight"):
        layout.load_unet(folder, variant=None)
    missing = {k: v for k, v in tensors.items() if k != "mid_block.temp_convs.1.conv4.3.weight"}
    save_file(missing, path)
    with pytest.raises(PackError, match="mid_block.temp_convs.1.conv4.3.weight"):
        layout.load_unet(folder, variant=None)
    wrong = dict(tensors, **{"conv_in.weight": torch.zeros(32, 4, 5, 5)})
    save_file(wrong, path)
    with pytest.raises(PackError, match=r"conv_in.weight has shape \(32, 4, 5, 5\)"):
        layout.load_unet(folder, variant=None)


def test_fp16_variant_is_preferred_and_pickles_refused(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(reference[1], tmp_path)
    unet_dir = folder / "unet"
    tensors = load_file(unet_dir / "diffusion_pytorch_model.safetensors")
    save_file({k: v.half() for k, v in tensors.items()}, unet_dir / "diffusion_pytorch_model.fp16.safetensors")
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    unet = layout.load_unet(folder, variant="fp16", dtype=torch.float32)
    assert torch.equal(unet.conv_in.weight, tensors["conv_in.weight"].half().float())
    (unet_dir / "diffusion_pytorch_model.fp16.safetensors").unlink()
    (unet_dir / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(PackError, match="only pickled weights"):
        layout.load_unet(folder)


def test_unsupported_config_is_refused(reference, tmp_path):
    folder = _copy(reference[1], tmp_path)
    cfg_path = folder / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["act_fn"] = "gelu"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PackError, match="act_fn"):
        layout.load_unet(folder)


def test_generate_cli_runs_the_whole_latent_cascade(reference, tmp_path):
    """keyframes D^t -> VAE -> F_i (realinterp, x2) -> SR_l^t (video-to-video by a second
    latent pack) -> a video file, with a progress bar per stage."""
    from typer.testing import CliRunner

    from mavcli.cli.app import app
    from mavcli.video import read_video

    folder = str(reference[1])
    out = tmp_path / "fox.mp4"
    args = ["generate", "a red fox", "--pack", folder, "--steps", "2", "--frames", "3", "--seed", "4",
            "--upscale", folder, "--upscale-size", "32x16", "--out", str(out), "--verbose"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for bar in ("keyframes D^t", "VAE decode", "interpolation F_i", "upscale SR_l^t"):
        assert bar in result.output
    clip = read_video(out)
    assert clip.frames.shape == (5, 16, 32, 3)  # (3 - 1) x 2 + 1 frames, WIDTHxHEIGHT 32x16
    assert clip.fps == pytest.approx(16.0)  # the pack's 8 fps, doubled by F_i
    bad = CliRunner().invoke(app, ["generate", "a red fox", "--pack", folder, "--candidates", "2",
                                   "--out", str(tmp_path / "x.mp4")])
    assert bad.exit_code == 2 and "--candidates" in bad.output
    dpm = tmp_path / "dpm.mp4"
    result = CliRunner().invoke(app, ["generate", "a red fox", "--pack", folder, "--sampler", "dpmpp", "--steps", "2",
                                      "--frames", "3", "--interp-factor", "1", "--out", str(dpm)])
    assert result.exit_code == 0, result.output
    assert json.loads(Path(f"{dpm}.json").read_text())["sampler"] == "dpmpp"
    bad = CliRunner().invoke(app, ["generate", "a red fox", "--pack", folder, "--sampler", "ddpm",
                                   "--out", str(tmp_path / "y.mp4")])
    assert bad.exit_code == 2 and "ddim or dpmpp" in bad.output


def test_latent_generation_is_reproducible(ours):
    a = ours("a red fox", seed=3, steps=2, frames=2)
    b = ours("a red fox", seed=3, steps=2, frames=2)
    c = ours("a red fox", seed=4, steps=2, frames=2)
    assert a.frames.shape == (2, 16, 16, 3)
    assert (a.frames == b.frames).all() and not (a.frames == c.frames).all()


def test_missing_extra_names_the_install_command():
    with pytest.raises(PackError, match=r'pip install "mavcli\[open-weights\]"'):
        layout.require_extra("diffusers_that_is_not_installed")


def test_lazy_tensors_read_each_tensor_when_asked(tmp_path):
    from safetensors.torch import save_file

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"x": torch.arange(6, dtype=torch.float16).reshape(2, 3), "n": torch.arange(3)}, a)
    save_file({"y": torch.ones(4)}, b)
    with layout.LazyTensors([a, b], torch.bfloat16) as t:
        assert sorted(t) == ["n", "x", "y"] and len(t) == 3 and "y" in t and "z" not in t
        assert t["x"].dtype == torch.bfloat16 and torch.equal(t["x"].float(), torch.arange(6.0).reshape(2, 3))
        assert t["n"].dtype == torch.int64  # only floating-point tensors are cast
    a.write_bytes(a.read_bytes()[:40])  # a damaged download
    with pytest.raises(PackError, match="download it again"):
        layout.LazyTensors([a, b])


def test_latent_generation_too_large_for_memory_is_refused_before_loading(reference, tmp_path, monkeypatch):
    from safetensors import safe_open
    from typer.testing import CliRunner

    from mavcli.cli.app import app

    folder = reference[1]
    elements = 0
    for part in ("unet", "vae", "text_encoder"):
        for path in layout.weight_files(folder / part, layout.WEIGHT_NAMES[part], "fp16"):
            with safe_open(str(path), framework="pt") as f:
                elements += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    kw = dict(frames=16, height=64, width=64)
    full = LatentVideoPipeline.estimate_memory(folder, dtype=torch.float32, **kw)
    acts = LatentVideoPipeline.step_memory(folder, dtype=torch.float32, **kw)
    assert full - acts == LatentVideoPipeline.weights_memory(folder, torch.float32) == 4 * elements  # counted from the configs: equal to the files' headers
    assert LatentVideoPipeline.step_memory(folder, dtype=torch.bfloat16, **kw) * 2 == acts
    assert LatentVideoPipeline.step_memory(folder, dtype=torch.float32, frames=32, height=64, width=64) == 2 * acts
    monkeypatch.setattr("mavcli.runtime.available_memory", lambda: 2**20)
    loaded = []
    monkeypatch.setattr(LatentVideoPipeline, "from_folder", lambda *a, **k: loaded.append(a))
    out = tmp_path / "fox.mp4"
    r = CliRunner().invoke(app, ["generate", "a red fox", "--pack", str(folder), "--frames", "3", "--device", "cpu",
                                 "--precision", "float32", "--out", str(out)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "3 frames of" in text and "GiB of memory" in text and "--frames" in text
    assert not loaded and not list(tmp_path.iterdir())


def test_guidance_branches_run_one_after_the_other_when_memory_is_short(reference, ours, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mavcli.cli.app import app
    from mavcli.latent_pipeline import PROCESS_BYTES

    # the same latents either way: the batch of 2 is two independent branches
    kw = dict(seed=3, frames=2, steps=2, guidance=7.5)
    batched = ours.keyframes("a red fox", **kw)
    ours.settings.guidance_batch = False
    try:
        apart = ours.keyframes("a red fox", **kw)
    finally:
        ours.settings.guidance_batch = True
    _close(batched, apart, 1e-5)
    # a budget between the two: the CLI runs the branches apart and says so
    folder = reference[1]
    s = LatentVideoPipeline.folder_settings(folder)
    size = dict(frames=3, height=s.height, width=s.width, dtype=torch.float32)
    full = LatentVideoPipeline.estimate_memory(folder, **size)
    half = LatentVideoPipeline.estimate_memory(folder, guidance_batch=False, **size)
    assert half < full
    monkeypatch.setattr("mavcli.runtime.available_memory", lambda: PROCESS_BYTES + half)
    out = tmp_path / "fox.mp4"
    r = CliRunner().invoke(app, ["generate", "a red fox", "--pack", str(folder), "--frames", "3", "--steps", "2",
                                 "--device", "cpu", "--precision", "float32", "--interp-factor", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "run one after the other" in " ".join(r.output.split()) and out.is_file()
