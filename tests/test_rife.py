"""`mav interpolate --method rife`: mavcli's RifeNet equals RIFE v4.13's IFNet as imaginAIry
15.0.0 ships it (the code that loads the pinned Hub file; installed without its dependencies by
the README's test command), in RIFE's own checkpoint names; the manifest's size for the
published file equals these tensors saved; the pack downloads from the stand-in Hub and runs
from the command line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mavcli.errors import PackError
from mavcli.interpolator import RifeInterpolator
from mavcli.models.rife import RifeConfig, RifeNet, load_rife_state_dict, rife_key
from mavcli.weights.manifest import ManifestError, load_manifest

try:
    from imaginairy.enhancers.video_interpolation.rife.IFNet_HDv3 import IFNet as ReferenceIFNet
except ImportError as err:  # a clear failure, never a skip: the README's test command installs it
    raise ImportError("tests/test_rife.py compares against imaginAIry's RIFE: "
                      "pip install --no-deps imaginAIry==15.0.0") from err

from hub_server import StandInHub  # noqa: E402
from test_interpolate_cli import lavfi, video_seconds  # noqa: E402


def reference(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ReferenceIFNet().eval()


def rife_file(folder: Path, seed: int = 0) -> Path:
    """A RIFE v4.13 checkpoint with random weights, saved as the published file is (RIFE's names)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rife-flownet-4.13.2.safetensors"
    save_file({k: v.contiguous() for k, v in reference(seed).state_dict().items()}, str(path))
    return path


@torch.inference_mode()
def test_rifenet_equals_the_reference_ifnet():
    ref = reference()
    net = RifeNet().eval()
    load_rife_state_dict(net, ref.state_dict())
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 64, 128, generator=g), torch.rand(2, 3, 64, 128, generator=g)
    outs = {}
    for t, scale in ((0.5, 1.0), (0.3, 1.0), (0.5, 0.5)):
        want = ref(torch.cat([a, b], 1), t, [8 / scale, 4 / scale, 2 / scale, 1 / scale])[2][3]
        got = net(a, b, torch.full((2,), t), scale)
        assert got.shape == want.shape == a.shape
        assert (got - want).abs().max().item() < 1e-4, (t, scale)  # the two warps round alike to ~3e-5
        outs[(t, scale)] = got
    # the time and the scale do change the frame: the comparison above is not of constants
    assert (outs[(0.5, 1.0)] - outs[(0.3, 1.0)]).abs().max() > 1e-3
    assert (outs[(0.5, 1.0)] - outs[(0.5, 0.5)]).abs().max() > 1e-3


def test_published_file_size_is_these_tensors_in_rife_names(tmp_path):
    """weights.toml pins the Hub file's size; RIFE v4.13's tensors (fp32, RIFE's names, no
    metadata) saved by safetensors come to exactly that many bytes."""
    entry = load_manifest().packs["rife"]
    assert entry.kind == "rife" and len(entry.files) == 1
    path = rife_file(tmp_path)
    assert path.stat().st_size == entry.files[0].size == 21469616
    names = set(reference().state_dict())
    assert {rife_key(k) for k in names} == set(RifeNet().state_dict())


def test_checkpoints_that_do_not_fit_are_refused(tmp_path):
    sd = reference().state_dict()
    net = RifeNet()
    missing = {k: v for k, v in sd.items() if not k.startswith("block3.lastconv")}
    with pytest.raises(ValueError, match="missing .*blocks.3.up"):
        load_rife_state_dict(net, missing)
    with pytest.raises(ValueError, match="unexpected .*contextnet"):
        load_rife_state_dict(net, {**sd, "contextnet.conv1.weight": torch.zeros(1)})
    # a pack folder: two networks, none, or a file that is not safetensors
    folder = tmp_path / "pack"
    rife_file(folder)
    save_file({"x": torch.zeros(1)}, str(folder / "other.safetensors"))
    with pytest.raises(PackError, match="one RIFE network"):
        RifeInterpolator.from_pretrained(folder)
    (folder / "other.safetensors").unlink()
    (folder / "rife-flownet-4.13.2.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PackError, match="not a readable safetensors file"):
        RifeInterpolator.from_pretrained(folder)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({k: v.contiguous() for k, v in missing.items()}, str(bad / "rife.safetensors"))
    with pytest.raises(PackError, match="does not fit"):
        RifeInterpolator.from_pretrained(bad)


def test_manifest_kind_rife_holds_one_network(tmp_path):
    def manifest(files: str) -> Path:
        p = tmp_path / "weights.toml"
        p.write_text('[packs.r]\nrepo = "a/b"\nrevision = "' + "0" * 40 + '"\nkind = "rife"\n' + files)
        return p

    one = '[[packs.r.files]]\npath = "{}"\nsha256 = "' + "1" * 64 + '"\nsize = 3\n'
    assert load_manifest(manifest(one.format("net.safetensors"))).packs["r"].kind == "rife"
    with pytest.raises(ManifestError, match="exactly one .safetensors"):
        load_manifest(manifest(one.format("a.safetensors") + one.format("b.safetensors")))
    with pytest.raises(ManifestError, match="exactly one .safetensors"):
        load_manifest(manifest(one.format("README.md")))


@torch.inference_mode()
def test_interpolator_pads_as_practical_rife_and_keeps_the_given_frames(tmp_path):
    """Frames of any size are zero-padded at the bottom and right to a multiple of 128 (256 at
    scale 0.5), as Practical-RIFE's inference does, and cropped back; run() keeps the input."""
    folder = tmp_path / "pack"
    rife_file(folder, seed=3)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    ref = reference(3)
    for scale in (1.0, 0.5):
        interp = RifeInterpolator.from_pretrained(folder, scale=scale)
        assert interp.precision == "float32"
        got = interp(frames[0], frames[1], [0.25, 0.5])
        m = int(128 / scale)
        pad = (0, m - 70, 0, m - 50)
        x0, x1 = (torch.nn.functional.pad(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255, pad) for f in frames[:2])
        for t, frame in zip((0.25, 0.5), got):
            want = ref(torch.cat([x0, x1], 1), t, [8 / scale, 4 / scale, 2 / scale, 1 / scale])[2][3][0, :, :50, :70]
            want = (want.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
            assert frame.shape == (50, 70, 3) and frame.dtype == np.uint8
            assert np.abs(frame.astype(int) - want.astype(int)).max() <= 1
        assert np.abs(got[0].astype(int) - got[1].astype(int)).max() > 0
    out = RifeInterpolator.from_pretrained(folder).run(frames, 3)
    assert out.shape == (7, 50, 70, 3)
    assert all(np.array_equal(out[3 * i], frames[i]) for i in range(3))
    with pytest.raises(Exception, match="scale"):
        RifeInterpolator.from_pretrained(folder, scale=1.5)


def test_memory_check_names_the_need():
    from mavcli.errors import UserInputError

    assert RifeInterpolator.estimate_memory(1920, 1080) == 700 * 1920 * 1152
    RifeInterpolator.check_memory(1920, 1080, available=2 * 2**30)
    with pytest.raises(UserInputError, match="RIFE on 1920x1080 frames needs about 1.4 GiB"):
        RifeInterpolator.check_memory(1920, 1080, available=2**30)


def _run(tmp: Path, hub: StandInHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
               NO_PROXY="127.0.0.1,localhost", COLUMNS="400")
    return subprocess.run([sys.executable, "-m", "mavcli", *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=tmp)


def test_method_rife_fetches_its_pack_once_and_retimes(tmp_path):
    """The first `mav interpolate --method rife` fetches the pack (verified by sha256) before
    its progress starts; 25 -> 60 fps then gives 60 frames a second, audio kept; a second run
    transfers nothing."""
    path = rife_file(tmp_path / "src")
    data = path.read_bytes()
    clip = lavfi(tmp_path / "in.mp4", rate="25", seconds=1, size="64x48", audio=True)
    with StandInHub() as hub:
        sha = hub.add_repo("someone/rife", {path.name: data})
        (tmp_path / "weights.toml").write_text(
            'default = "shapes"\n[packs.shapes]\nbundled = "shapes"\n[packs.rife]\nrepo = "someone/rife"\n'
            f'revision = "{sha}"\nkind = "rife"\n[[packs.rife.files]]\npath = "{path.name}"\n'
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {len(data)}\n')
        args = ["interpolate", str(clip), "--method", "rife", "--fps", "60", "--manifest", str(tmp_path / "weights.toml")]
        done = _run(tmp_path, hub, *args, "-o", str(tmp_path / "a.mp4"))
        assert done.returncode == 0, done.stderr
        assert "25 -> 60 frames" in done.stderr and "audio copied" in done.stderr
        assert len(hub.requests_for(path.name, "GET")) == 1
        again = _run(tmp_path, hub, *args, "-o", str(tmp_path / "b.mp4"))
        assert again.returncode == 0, again.stderr
        assert len(hub.requests_for(path.name, "GET")) == 1
        # mav download weights --dir writes a plain folder that --pack takes
        fetched = _run(tmp_path, hub, "download", "weights", "rife", "--manifest", str(tmp_path / "weights.toml"),
                       "--dir", str(tmp_path / "plain"))
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "plain" / path.name).read_bytes() == data
        local = _run(tmp_path, hub, "interpolate", str(clip), "--method", "rife", "--fps", "60",
                     "--pack", str(tmp_path / "plain"), "-o", str(tmp_path / "c.mp4"))
        assert local.returncode == 0, local.stderr
    assert video_seconds(tmp_path / "a.mp4") == pytest.approx(1.0, abs=0.02)
    from mavcli.video import read_video

    a, b, c = (read_video(tmp_path / f"{n}.mp4").frames for n in "abc")
    assert a.shape == (60, 48, 64, 3) and np.array_equal(a, b) and np.array_equal(a, c)


def test_method_rife_refuses_before_any_download(tmp_path):
    with StandInHub() as hub:
        done = _run(tmp_path, hub, "interpolate", str(tmp_path / "missing.mp4"), "--method", "rife")
        assert done.returncode == 2 and "does not exist" in done.stderr
        done = _run(tmp_path, hub, "interpolate", str(tmp_path / "missing.mp4"), "--method", "rife", "--steps", "4")
        assert done.returncode == 2 and "--steps applies to --method diffusion only" in done.stderr
        assert hub.request_count() == 0


def test_config_checks():
    with pytest.raises(ValueError, match="one scale per block"):
        RifeConfig(block_widths=(64, 32), block_scales=(2,))
    with pytest.raises(ValueError, match="pad_multiple"):
        RifeConfig(pad_multiple=48)


@pytest.mark.parametrize("args, message", [
    (["generate", "a red square", "--pack", "rife"], "mav generate cannot use pack 'rife'; it is a RIFE frame interpolator"),
    (["interpolate", "{clip}", "--pack", "rife"], "--method flow cannot use pack 'rife'"),
    (["interpolate", "{clip}", "--method", "rife", "--pack", "shapes"], "--method rife cannot use pack 'shapes'"),
    (["interpolate", "{clip}", "--method", "rife", "--pack", "modelscope"], "it is an open latent video model"),
])
def test_a_pack_of_another_kind_is_refused_up_front(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from mavcli.cli.app import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach for the Hub
    clip = lavfi(tmp_path / "in.mp4", rate="25", seconds=0.4)
    done = CliRunner().invoke(app, [a.format(clip=clip) for a in args])
    assert done.exit_code == 2
    assert message in " ".join(done.output.split())
    assert not (tmp_path / "in-x2.mp4").exists()


def test_bench_interpolate_times_rife_beside_the_flow_method(tmp_path):
    """`mav bench interpolate --rife PACK` adds --method rife's file-to-file time and its ratio to
    the flow method's, measured in the same interleaved rounds (the bundled flow pack)."""
    from typer.testing import CliRunner

    from mavcli.cli.app import app

    rife_file(tmp_path / "rife")
    res = CliRunner().invoke(app, ["bench", "interpolate", "--size", "64x48", "--rounds", "1", "--threads", "1",
                                   "--file-rounds", "1", "--rife", str(tmp_path / "rife")])
    assert res.exit_code == 0, res.output
    rows = [ln.split() for ln in res.stdout.splitlines() if ln.strip().startswith("x")]
    assert [r[0] for r in rows] == ["x2", "x4", "x2", "x4"]
    for r in rows[2:]:  # flow, minterpolate, their ratio, rife, rife / flow
        flow, rife, ratio = float(r[1]), float(r[4]), float(r[5].rstrip("x"))
        assert min(flow, rife) > 0
        assert (rife - 0.05) / (flow + 0.05) - 0.005 <= ratio <= (rife + 0.05) / max(flow - 0.05, 1e-9) + 0.005


@torch.inference_mode()
def test_bfloat16_keeps_the_flows_in_float32(tmp_path):
    """Under bfloat16 (auto on CUDA) only the convolutions round: pixel coordinates of a wide
    frame stay exact, so the frames are within a few levels of float32's."""
    rife_file(tmp_path / "p", seed=5)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 1000, 3), dtype=np.uint8)
    b = np.roll(a, 2, axis=1)
    fp32 = RifeInterpolator.from_pretrained(tmp_path / "p")(a, b, [0.5])[0].astype(int)
    bf16 = RifeInterpolator.from_pretrained(tmp_path / "p", precision="bfloat16")
    assert bf16.precision == "bfloat16"
    diff = np.abs(bf16(a, b, [0.5])[0].astype(int) - fp32)
    assert diff.mean() < 2.0, diff.mean()


def test_eval_interpolate_scores_rife_beside_dis(tmp_path, monkeypatch):
    """`mav eval interpolate --method rife --rife-pack FOLDER` rebuilds the dropped frames with
    RifeInterpolator.run, exactly as calling it does, and reports them beside DIS."""
    import json

    from typer.testing import CliRunner

    from mavcli.cli.app import app
    from mavcli.eval.interp_eval import psnr
    from mavcli.video import read_video

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rife_file(tmp_path / "rife", seed=7)
    clip = lavfi(tmp_path / "in.mp4", rate="25", seconds=0.4, size="64x48")
    out = tmp_path / "r.json"
    done = CliRunner().invoke(app, ["eval", "interpolate", str(clip), "--height", "0", "--task", "x2", "--method", "dis",
                                    "--method", "rife", "--rife-pack", str(tmp_path / "rife"), "--out", str(out), "-q"])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text())
    assert report["settings"]["rife_pack"] == str(tmp_path / "rife")
    got = {r["method"]: r for r in report["clips"][0]["results"]}
    frames = read_video(clip).frames  # 10 frames: x2 rebuilds 1, 3, 5, 7 from the even ones
    rebuilt = RifeInterpolator.from_pretrained(tmp_path / "rife").run(frames[0:9:2], 2)
    want = float(np.mean([psnr(rebuilt[k], frames[k]) for k in (1, 3, 5, 7)]))
    assert got["rife"]["frames"] == 4 and got["rife"]["psnr"] == pytest.approx(want, abs=1e-6)
    assert got["dis"]["psnr"] != got["rife"]["psnr"]
