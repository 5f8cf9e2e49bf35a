"""Training: every stage learns (one step lowers its loss), exact resume, data-parallel
equality (two gloo processes == one process), and export -> load -> generate."""

import importlib.util
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mavcli.errors import UserInputError
from mavcli.models.presets import preset_configs
from mavcli.models.text import ImageEncoder, TextEncoder
from mavcli.train.checkpoint import read_checkpoint
from mavcli.train.loop import TrainConfig, build_task, train
from mavcli.train.stages import TRAIN_STAGES
from mavcli.train.tasks import ClipPair, Task, shapes_tokenizer
from mavcli.weights.pack import load_pack

TOKENIZER = shapes_tokenizer()


def tiny_encoders():
    configs, _ = preset_configs("tiny", len(TOKENIZER.vocab))
    torch.manual_seed(0)
    return ClipPair(TextEncoder(configs["text_encoder"]), ImageEncoder(configs["image_encoder"]))


@pytest.mark.parametrize("stage", TRAIN_STAGES)
def test_one_step_lowers_the_loss_of_every_stage(stage):
    torch.manual_seed(0)
    task = Task(stage, "tiny", 0, 0.1, TOKENIZER, tiny_encoders())
    spec = TRAIN_STAGES[stage]
    model = spec.build_model(task)
    # the flow interpolator starts exactly at the DIS baseline, already a close fit: Adam's
    # first steps (each ~lr per weight) overshoot at the learning rate that suits the rest
    opt = torch.optim.Adam(model.parameters(), lr=3e-5 if stage == "flow_interpolation" else 3e-3)
    indices = list(range(8))
    before = spec.loss(task, model, indices, 0, torch.device("cpu"))
    for _ in range(3):
        opt.zero_grad()
        spec.loss(task, model, indices, 0, torch.device("cpu")).backward()
        opt.step()
    after = spec.loss(task, model, indices, 0, torch.device("cpu"))
    assert torch.isfinite(before) and after < before, (stage, before.item(), after.item())


def test_held_out_pairs_never_reach_training_batches():
    from mavcli.data.shapes import HELD_OUT

    task = Task("clip", "tiny", 0, 0.1, TOKENIZER, None)
    _, _, facts = task.image_batch(list(range(400)), 8)
    pairs = {(colour, shape) for colour, shape, _ in facts}
    assert not pairs & HELD_OUT
    assert len(pairs) == 6 * 3 - 4


def _weights(path):
    _, _, tensors, _ = read_checkpoint(path)
    return tensors


def test_interpolation_windows_move_as_fast_as_the_pipelines_windows():
    """F_i trains on windows of interp_window keyframes cut from longer clips; the shapes pack's
    windows (a few of its 8 keyframes) must lie inside the range of speeds it trained on."""
    from mavcli.data.shapes import ShapesVideoDataset
    from mavcli.train.tasks import INTERP_RATE_FACTORS, INTERP_SKIPS

    _, s = preset_configs("shapes", 10)
    pipeline_step = 1.0 / ((s.keyframes - 1) * s.frame_skip)  # fraction of the travel per output frame
    for skip in INTERP_SKIPS:
        n = (s.interp_window - 1) * skip + 1
        ds = ShapesVideoDataset(64, frames=n, size=32, seed=0, rate_factors=INTERP_RATE_FACTORS)
        steps = {round(float(np.diff(ds.window(i)[2]).mean()), 6) for i in range(64)}
        assert steps == {round(1.0 / ((n - 1) * k), 6) for k in INTERP_RATE_FACTORS}
        if skip == s.frame_skip:
            assert min(steps) <= pipeline_step <= max(steps)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    base = dict(stage="sr_image", preset="tiny", steps=6, batch_size=4, ckpt_every=3, warmup=2)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **base))
    cfg = TrainConfig(out=str(tmp_path / "b"), **base)
    train(cfg, stop_at=3)  # as if killed right after the step-3 checkpoint
    assert read_checkpoint(tmp_path / "b" / "sr_image" / "last.safetensors")[0] == 3
    resumed = train(cfg, resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(UserInputError, match="nothing to resume"):
        train(TrainConfig(out=str(tmp_path / "c"), **base), resume=True)


def test_a_truncated_last_checkpoint_resumes_from_the_previous_one(tmp_path):
    from mavcli.errors import PackError
    from mavcli.train.checkpoint import previous_path

    base = dict(stage="sr_image", preset="tiny", steps=6, batch_size=4, ckpt_every=2, warmup=2)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **base))
    cfg = TrainConfig(out=str(tmp_path / "b"), **base)
    train(cfg, stop_at=4)  # checkpoints at steps 2 and 4
    last = tmp_path / "b" / "sr_image" / "last.safetensors"
    assert read_checkpoint(last)[0] == 4 and read_checkpoint(previous_path(last))[0] == 2
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # e.g. a full disk
    heard = []
    resumed = train(cfg, resume=True, on_message=heard.append)
    assert len(heard) == 1 and "cannot be read" in heard[0] and "(step 2)" in heard[0]
    a, b = _weights(straight), _weights(resumed)  # steps 3-6 again from step 2: the same run
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # nothing to fall back to: the message says what to do
    c = TrainConfig(out=str(tmp_path / "c"), **{**base, "steps": 2})
    only = train(c)
    only.write_bytes(b"garbage")
    with pytest.raises(PackError, match="start the stage again without --resume"):
        train(c, resume=True)


def test_a_full_disk_stops_training_with_a_message_and_the_run_resumes(tmp_path, monkeypatch):
    """The checkpoint of step 4 hits a full disk (as safetensors reports it): training stops
    with a message, the step-2 checkpoint is kept, and --resume later gives the same weights."""
    import mavcli.train.checkpoint as ckpt
    from mavcli.errors import MavError

    base = dict(stage="sr_image", preset="tiny", steps=6, batch_size=4, ckpt_every=2, warmup=2)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **base))
    real = ckpt.save_file_atomic

    def full_at_step_4(tensors, path, metadata):  # type: ignore[no-untyped-def]
        if metadata["step"] == "4":
            raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "save_file_atomic", full_at_step_4)
    cfg = TrainConfig(out=str(tmp_path / "b"), **base)
    with pytest.raises(MavError, match=r"is full: the checkpoint of step 4 was not written; last-previous\.safetensors "
                                       r"\(the checkpoint before\) is kept, and --resume continues from it"):
        train(cfg)
    monkeypatch.setattr(ckpt, "save_file_atomic", real)
    resumed = train(cfg, resume=True)
    a, b = _weights(straight), _weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_temporal_lr_mult_scales_temporal_layers_and_the_added_text_pool(tmp_path):
    """--temporal-lr-mult 0 freezes the temporal layers and the decoder's text pool (zero at
    init) while the other weights still train. Three steps: zero-initialised outputs (the U-Net's
    last conv, each residual branch) pass gradients upstream only once they have moved."""
    enc = str(train(TrainConfig(stage="clip", preset="tiny", steps=1, batch_size=2, ckpt_every=1, out=str(tmp_path / "clip"))))
    runs = {}
    for mult in (0.0, 5.0):
        path = train(TrainConfig(stage="keyframes", preset="tiny", steps=3, batch_size=2, ckpt_every=3, warmup=1,
                                 encoders=enc, temporal_lr_mult=mult, out=str(tmp_path / f"m{mult}")))
        runs[mult] = _weights(path)
    frozen, moved = runs[0.0], runs[5.0]
    pool = "model/context_pool.out.weight"
    assert frozen[pool].abs().max() == 0 and moved[pool].abs().max() > 0
    temporal = [k for k in frozen if k.startswith("model/") and "temporal" in k]
    assert temporal and any(not torch.equal(frozen[k], moved[k]) for k in temporal)
    assert frozen["model/out_conv.spatial_conv.weight"].abs().max() > 0  # zero at init: spatial weights train


def _ddp_worker(rank, world, port, out, stage, encoders):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        train(TrainConfig(stage=stage, preset="tiny", steps=2, batch_size=4, ckpt_every=2, warmup=1, out=out,
                          encoders=encoders))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("stage", ["sr_video", "keyframes"])
def test_two_gloo_processes_take_the_same_step_as_one(tmp_path, stage):
    encoders = None
    if stage == "keyframes":  # the decoder reads its null embeddings through the DDP wrapper
        encoders = str(train(TrainConfig(stage="clip", preset="tiny", steps=1, batch_size=2, ckpt_every=1,
                                         out=str(tmp_path / "clip"))))
    common = dict(stage=stage, preset="tiny", steps=2, ckpt_every=2, warmup=1, encoders=encoders)
    one = train(TrainConfig(batch_size=4, out=str(tmp_path / "one"), **common))
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "two"), stage, encoders), nprocs=2, join=True)
    half = train(TrainConfig(batch_size=2, out=str(tmp_path / "half"), **common))
    a, b, c = _weights(one), _weights(tmp_path / "two" / stage / "last.safetensors"), _weights(half)
    keys = [k for k in a if k.startswith("model/")]
    assert len(keys) > 10
    # equal up to float summation order (Adam turns near-zero gradient noise into ~1e-6 moves;
    # a different batch moves weights by ~lr = 3e-4)
    worst = max((a[k] - b[k]).abs().max().item() for k in keys)
    assert worst < 2e-5, worst
    assert max((a[k] - c[k]).abs().max().item() for k in keys) > 1e-4  # the comparison can fail


def test_export_load_generate(tmp_path):
    runs = tmp_path / "runs"
    common = dict(preset="tiny", steps=1, batch_size=2, ckpt_every=1, out=str(runs))
    train(TrainConfig(stage="clip", **common))
    enc = str(runs / "clip" / "last.safetensors")
    for stage in ("prior", "keyframes_image"):
        train(TrainConfig(stage=stage, encoders=enc, **common))
    train(TrainConfig(stage="keyframes", encoders=enc, init_from=str(runs / "keyframes_image" / "last.safetensors"), **common))
    for stage in ("interpolation", "sr_video", "sr_image"):
        train(TrainConfig(stage=stage, **common))
    from mavcli import MakeAVideoPipeline
    from mavcli.train.export import export_pack

    pack = export_pack(runs, tmp_path / "pack", preset="tiny", card="# test pack\n")
    assert (pack / "README.md").read_text() == "# test pack\n"
    pipe = MakeAVideoPipeline.from_pretrained(pack)
    out = pipe("a blue square moving up on a white background", seed=0)
    s = pipe.settings
    assert out.frames.shape == ((s.keyframes - 1) * s.frame_skip + 1, s.sr_image_size, s.sr_image_size, 3)
    assert out.unknown_words == []
    with pytest.raises(UserInputError, match="already exists"):
        export_pack(runs, tmp_path / "pack", preset="tiny")
    # a later run can start from the pack's weights (how the bundled pack is trained further)
    more = train(TrainConfig(stage="sr_video", init_pack=str(pack), **{**common, "out": str(tmp_path / "more"), "steps": 1}))
    _, _, t0, _ = read_checkpoint(more)
    from mavcli.weights.safetensors_io import read_network

    _, packed = read_network(pack / "sr_video.safetensors")
    moved = [(t0["model/" + k] - v.float()).abs().max().item() for k, v in packed.items()]
    assert max(moved) < 0.01  # one small step away from the pack's weights, not a fresh network

    # one stage retrained over a base pack: the base's networks and settings, except how the
    # retrained F_i is conditioned and sampled, which follows the preset it was trained with
    import json
    import shutil

    base = tmp_path / "base"
    shutil.copytree(pack, base)
    index = json.loads((base / "pack.json").read_text())
    index["settings"].update(fps=3.0, interp_prefill=False, interp_start=0.5,
                             steps={**index["settings"]["steps"], "interpolation": 7, "prior": 5})
    (base / "pack.json").write_text(json.dumps(index))
    only_fi = tmp_path / "only_fi"
    shutil.copytree(runs / "interpolation", only_fi / "interpolation")
    mixed = load_pack(export_pack(only_fi, tmp_path / "mixed", preset="tiny", base=base))
    _, preset = preset_configs("tiny", 10)
    assert mixed.settings.fps == 3.0 and mixed.settings.steps["prior"] == 5
    # how F_i was conditioned in training follows the preset; how it is sampled stays the base's
    assert mixed.settings.interp_prefill == preset.interp_prefill != False  # noqa: E712
    assert mixed.settings.interp_start == 0.5 and mixed.settings.steps["interpolation"] == 7
    base_pack = load_pack(base)
    assert torch.equal(mixed["keyframes"].state_dict()["out_conv.spatial_conv.weight"],
                       base_pack["keyframes"].state_dict()["out_conv.spatial_conv.weight"])

    # SR_l^t trained for a later start (--sr-start): the exported pack samples from that start;
    # a run without --sr-start trains for its --init-pack's start and leaves the base's in place
    index["settings"]["sr_video_start"] = 0.15
    (base / "pack.json").write_text(json.dumps(index))
    sr_common = {**common, "steps": 1, "init_pack": str(base), "sr_start_mix": 0.5}
    train(TrainConfig(stage="sr_video", sr_start=0.3, **{**sr_common, "out": str(tmp_path / "later")}))
    later = load_pack(export_pack(tmp_path / "later", tmp_path / "later_pack", preset="tiny", base=base))
    assert later.settings.sr_video_start == 0.3 and later.settings.sr_image_start == base_pack.settings.sr_image_start
    cfg = TrainConfig(stage="sr_video", **{**sr_common, "out": str(tmp_path / "same")})
    assert build_task(cfg).sr_start_time == 0.15
    train(cfg)
    same = load_pack(export_pack(tmp_path / "same", tmp_path / "same_pack", preset="tiny", base=base))
    assert same.settings.sr_video_start == 0.15


def test_real_data_folders_train_every_kind_of_stage(tmp_path):
    """Captioned images and uncaptioned videos from folders, instead of the shapes world."""
    import imageio.v3 as iio

    from mavcli.video import write_video

    images, videos = tmp_path / "images", tmp_path / "videos"
    images.mkdir()
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i, text in enumerate(["a cat on a sofa", "a dog in the park", "a red car"]):
        iio.imwrite(images / f"{i}.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
        (images / f"{i}.txt").write_text(text)
    ramp = np.linspace(0, 255, 24).astype(np.uint8)
    clip = np.stack([np.roll(np.broadcast_to(ramp[None, :, None], (24, 24, 3)), k, axis=1) for k in range(20)])
    write_video(videos / "pan.mp4", clip, 20)
    runs = tmp_path / "runs"
    common = dict(preset="tiny", steps=2, batch_size=2, ckpt_every=2, out=str(runs), images=str(images))
    train(TrainConfig(stage="clip", **common))
    enc = str(runs / "clip" / "last.safetensors")
    vocab = read_checkpoint(enc)[1]["vocab"]
    assert {"cat", "sofa", "dog", "park", "red", "car"} <= set(vocab)
    train(TrainConfig(stage="keyframes_image", encoders=enc, **common))
    last = train(TrainConfig(stage="keyframes", encoders=enc, videos=str(videos),
                             init_from=str(runs / "keyframes_image" / "last.safetensors"), **common))
    assert read_checkpoint(last)[0] == 2
    last = train(TrainConfig(stage="interpolation", videos=str(videos), **common))
    assert read_checkpoint(last)[0] == 2
    (images / "stray.png").write_bytes((images / "0.png").read_bytes())
    with pytest.raises(UserInputError, match="stray.png"):
        train(TrainConfig(stage="clip", **{**common, "out": str(tmp_path / "other")}))


def test_a_video_folder_is_probed_once_and_its_unreadable_files_are_left_out_with_a_word(tmp_path, monkeypatch):
    """`mav train ... --videos DIR`: every file was probed (an ffmpeg run each) for every batch,
    and one broken file stopped the run. Now the folder is read once per run, and a file that
    cannot be read is left out with a message; a folder with nothing readable is refused."""
    import mavcli.video as video
    from mavcli.data.folders import VideoFolder
    from mavcli.data.motion import default_motion_data

    videos = tmp_path / "videos"
    videos.mkdir()
    ramp = np.linspace(0, 255, 40).astype(np.uint8)
    clip = np.stack([np.roll(np.broadcast_to(ramp[None, :, None], (40, 40, 3)), k, axis=1) for k in range(8)])
    from mavcli.video import write_video

    write_video(videos / "pan.mp4", clip, 20)
    (videos / "broken.mp4").write_bytes(b"not a video")
    probes = []
    real_probe = video.probe_video
    monkeypatch.setattr(video, "probe_video", lambda p, **k: probes.append(p) or real_probe(p, **k))
    heard = []
    last = train(TrainConfig(stage="sr_video", preset="tiny", steps=3, batch_size=2, ckpt_every=3,
                             out=str(tmp_path / "runs"), videos=str(videos)), on_message=heard.append)
    assert read_checkpoint(last)[0] == 3
    assert len(probes) == 2  # each file once, for the whole run
    assert len(heard) == 1 and "left out of training" in heard[0] and "broken.mp4" in heard[0]
    # the interpolator's footage leaves it out the same way (its mix also needs scikit-image)
    if importlib.util.find_spec("skimage") is not None:
        said = []
        mix = default_motion_data(videos=str(videos), crop=32, on_skip=said.append)
        assert len(said) == 1 and "broken.mp4" in said[0]
        assert mix.sample(torch.Generator().manual_seed(0))["i0"].shape[-1] == 32
    (videos / "pan.mp4").unlink()
    with pytest.raises(UserInputError, match="no video in .* can be trained on: .*broken.mp4"):
        VideoFolder(videos, frames=3, size=16)
    with pytest.raises(UserInputError, match="no video in .* can be trained on: .*broken.mp4"):
        default_motion_data(videos=str(videos), crop=32)


def test_image_mix_trains_the_keyframe_decoder_on_images_and_leaves_its_temporal_layers_alone():
    k = preset_configs("tiny", len(TOKENIZER.vocab))[1].keyframes
    task = Task("keyframes", "tiny", 0, 0.1, TOKENIZER, tiny_encoders(), image_mix=0.5)
    steps = [task.image_step(s) for s in range(200)]
    assert 70 < sum(steps) < 130  # about half, and a pure function of (seed, step)
    assert steps == [task.image_step(s) for s in range(200)]
    assert not any(Task("keyframes", "tiny", 0, 0.1, TOKENIZER, tiny_encoders()).image_step(s) for s in range(50))
    image, video = steps.index(True), steps.index(False)
    torch.manual_seed(0)
    spec = TRAIN_STAGES["keyframes"]
    model = spec.build_model(task)
    indices = [3, 5]
    # an image step is the image decoder's loss on batch x keyframes images
    image_loss = TRAIN_STAGES["keyframes_image"].loss
    expected = image_loss(task, model, [i * k + j for i in indices for j in range(k)], image, torch.device("cpu"))
    loss = spec.loss(task, model, indices, image, torch.device("cpu"))
    assert torch.equal(loss, expected)
    loss.backward()
    temporal = {n: p.grad for n, p in model.named_parameters() if "temporal" in n}
    assert temporal and all(g is None or not g.any() for g in temporal.values())
    assert any(p.grad is not None and p.grad.any() for n, p in model.named_parameters() if "temporal" not in n)
    model.zero_grad(set_to_none=True)
    spec.loss(task, model, indices, video, torch.device("cpu")).backward()  # a clip step reaches them
    assert any(p.grad is not None and p.grad.any() for n, p in model.named_parameters() if "temporal" in n)
    with pytest.raises(UserInputError, match="keyframes only"):
        TrainConfig(stage="sr_video", image_mix=0.5)
    with pytest.raises(UserInputError, match="needs --images"):
        TrainConfig(stage="keyframes", image_mix=0.5, videos="clips")
    with pytest.raises(UserInputError, match=r"\[0, 1\)"):
        TrainConfig(stage="keyframes", image_mix=1.0)


def test_the_shapes_preset_is_exactly_the_shipped_pack():
    """One source of truth: the preset's settings and network configs are what pack.json and
    the shipped networks hold, so a fresh `mav train export` makes the pack that ships."""
    from pathlib import Path

    import mavcli
    from mavcli.models.config import config_to_dict

    shipped = load_pack(Path(mavcli.__file__).parent / "packs" / "shapes")
    configs, settings = preset_configs("shapes", len(shipped.tokenizer.vocab))
    assert settings == shipped.settings
    for stage, net in shipped.networks.items():
        assert config_to_dict(configs["matcher" if stage == "ranker" else stage]) == config_to_dict(net.config), stage


def test_a_ranker_starts_from_the_packs_matcher_and_exports_beside_it(tmp_path):
    """`mav train ranker --init-pack P`: a pack without a ranker starts it from its matcher; the
    export over that pack adds the ranker and keeps the pack's matcher."""
    from mavcli.models.presets import init_pack
    from mavcli.train.export import export_pack
    from mavcli.weights.pack import save_pack
    from mavcli.weights.safetensors_io import read_network

    tiny_pack_dir = save_pack(tmp_path / "base", init_pack(shapes_tokenizer(), "tiny", seed=3))

    runs = tmp_path / "runs"
    last = train(TrainConfig(stage="ranker", preset="tiny", steps=1, batch_size=2, lr=1e-6, out=str(runs),
                             encoders=str(tiny_pack_dir), init_pack=str(tiny_pack_dir)))
    _, _, tensors, _ = read_checkpoint(last)
    _, matcher = read_network(tiny_pack_dir / "matcher.safetensors")
    assert max((tensors["model/" + k] - v.float()).abs().max().item() for k, v in matcher.items()) < 1e-4
    pack = load_pack(export_pack(runs, tmp_path / "pack", preset="tiny", base=tiny_pack_dir))
    base = load_pack(tiny_pack_dir)
    assert {"matcher", "ranker"} <= set(pack.networks)
    key = next(iter(matcher))
    assert torch.equal(pack["matcher"].state_dict()[key], base["matcher"].state_dict()[key])
    assert torch.allclose(pack["ranker"].state_dict()[key].float(), matcher[key].float(), atol=1e-3)


@pytest.mark.parametrize("stage", ["prior", "keyframes_image", "keyframes", "matcher", "ranker"])
def test_stages_that_read_text_need_the_encoders(stage):
    task = Task(stage, "tiny", 0, 0.1, TOKENIZER, None)
    with pytest.raises(UserInputError, match="--encoders"):
        TRAIN_STAGES[stage].build_model(task)


def test_time_power_draws_more_low_noise_times_and_keeps_the_noise_and_drops():
    """--time-power p trains at times u ** p for the same u a uniform run draws; the noise and
    the conditioning drops are the same draws."""
    indices = list(range(400))
    plain = Task("keyframes", "tiny", 0, 0.1, TOKENIZER, tiny_encoders())
    low = Task("keyframes", "tiny", 0, 0.1, TOKENIZER, tiny_encoders(), time_power=2.0)
    (t1, n1, d1), (t2, n2, d2) = (task.draws(indices, (3, 4, 4), torch.device("cpu")) for task in (plain, low))
    assert torch.allclose(t2, t1 ** 2) and torch.equal(n1, n2) and torch.equal(d1, d2)
    assert 0.25 < (t1 < 0.35).float().mean() < 0.45 and 0.5 < (t2 < 0.35).float().mean() < 0.7  # 0.35 and 0.59 expected
    with pytest.raises(UserInputError, match="time power must be > 0"):
        TrainConfig(stage="keyframes", time_power=0.0)


def test_image_time_power_moves_the_image_steps_times_only(monkeypatch):
    """--image-time-power p: keyframes' image steps train at u ** p, clip steps keep the task's
    time power; it needs image steps to act on."""
    import mavcli.train.stages as stages

    task = Task("keyframes", "tiny", 0, 0.1, TOKENIZER, tiny_encoders(), image_mix=0.5, image_time_power=3.0)
    seen = []
    monkeypatch.setattr(stages, "diffusion_loss", lambda model, x0, schedule, t, **kw: seen.append((x0.ndim, t)) or t.sum())
    model = TRAIN_STAGES["keyframes"].build_model(task)
    image_steps = [s for s in range(40) if task.image_step(s)]
    clip_steps = [s for s in range(40) if not task.image_step(s)]
    indices = [3, 5]
    stages.loss_keyframes(task, model, indices, image_steps[0], torch.device("cpu"))
    stages.loss_keyframes(task, model, indices, clip_steps[0], torch.device("cpu"))
    (image_ndim, t_image), (clip_ndim, t_clip) = seen
    assert (image_ndim, clip_ndim) == (4, 5)
    k = task.settings.keyframes
    uniform = Task("keyframes", "tiny", 0, 0.1, TOKENIZER, tiny_encoders())
    u_image, _, _ = uniform.draws([i * k + j for i in indices for j in range(k)], (3, 4, 4), torch.device("cpu"))
    u_clip, _, _ = uniform.draws(indices, (3, 4, 4), torch.device("cpu"))
    assert torch.allclose(t_image, u_image ** 3) and torch.allclose(t_clip, u_clip)
    with pytest.raises(UserInputError, match="needs --image-mix"):
        TrainConfig(stage="keyframes", image_time_power=2.0)
    with pytest.raises(UserInputError, match="image time power must be > 0"):
        TrainConfig(stage="keyframes", image_mix=0.5, image_time_power=-1.0)


def test_word_drop_masks_the_word_embeddings_of_a_share_of_low_noise_samples(monkeypatch):
    """--word-drop p --word-drop-until T: about a share p of the samples at t <= T see D^t's
    context with its word-embedding half masked (the encoder states alone); samples above T,
    and the states half of every sample, keep their mask; the other draws are unchanged."""
    import mavcli.train.stages as stages

    seen = []
    monkeypatch.setattr(stages, "diffusion_loss",
                        lambda model, x0, schedule, t, context_mask, **kw: seen.append((t, context_mask)) or t.sum())
    indices = list(range(200))
    runs = {}
    for name, kw in {"plain": {}, "drop": dict(word_drop=0.5, word_drop_until=0.5)}.items():
        task = Task("keyframes", "tiny", 0, 0.1, TOKENIZER, tiny_encoders(), **kw)
        model = TRAIN_STAGES["keyframes"].build_model(task)
        stages.loss_keyframes(task, model, indices, 0, torch.device("cpu"))
        runs[name] = seen.pop()
    (t, plain), (t2, drop) = runs["plain"], runs["drop"]
    assert torch.equal(t, t2)
    half = plain.shape[1] // 2
    assert torch.equal(plain[:, :half], plain[:, half:]) and plain[:, half:].any(dim=1).all()
    assert torch.equal(drop[:, :half], plain[:, :half])
    dropped = ~drop[:, half:].any(dim=1)
    assert not dropped[t > 0.5].any()
    low = t <= 0.5
    assert 0.3 < dropped[low].float().mean() < 0.7
    assert torch.equal(drop[~dropped], plain[~dropped])
    with pytest.raises(UserInputError, match="word drop must be in"):
        TrainConfig(stage="keyframes", word_drop=1.5)
    with pytest.raises(UserInputError, match="stage keyframes only"):
        TrainConfig(stage="prior", word_drop=0.5)
    with pytest.raises(UserInputError, match="word drop until must be in"):
        TrainConfig(stage="keyframes", word_drop=0.5, word_drop_until=0.0)


def test_small_twin_weight_adds_a_term_that_prefers_the_clip_to_its_undersized_twin(monkeypatch):
    """--small-twin-weight w: the matcher's loss gains w times a caption-over-two-clips term
    whose second clip is the same clip drawn below the domain's sizes; w = 0 is the old loss."""
    import mavcli.train.stages as stages

    calls = []
    real = stages.steady_size_loss
    monkeypatch.setattr(stages, "steady_size_loss", lambda *a: calls.append(a) or real(*a))
    losses = {}
    for w in (0.0, 2.0):
        task = Task("matcher", "tiny", 0, 0.1, TOKENIZER, tiny_encoders(), small_twin_weight=w)
        torch.manual_seed(0)
        model = TRAIN_STAGES["matcher"].build_model(task)
        losses[w] = stages.loss_matcher(task, model, [4, 9, 11], 0, torch.device("cpu"))
    plain_call, drift_call, small_call = calls
    assert torch.equal(plain_call[0], drift_call[0])  # the same clips and noise either way
    term = real(*small_call)
    assert term > 0 and torch.allclose(losses[2.0], losses[0.0] + 2.0 * term)
    assert not torch.equal(small_call[1], drift_call[1])
    with pytest.raises(UserInputError, match="matcher and ranker only"):
        TrainConfig(stage="keyframes", small_twin_weight=1.0)


@pytest.mark.parametrize("stage", ["sr_video", "sr_image"])
def test_sr_start_mix_trains_on_the_start_sampling_gives(monkeypatch, stage):
    """--sr-start-mix f: that share of an SR batch is noised from its enlarged input at times in
    [start / 2, start], the render still the target (a network that returns that v has zero
    loss); the other samples are the usual ones. Stages other than SR refuse it."""
    import dataclasses

    import mavcli.train.stages as stages
    from mavcli.diffusion.objective import diffusion_loss
    from mavcli.diffusion.schedule import CosineSchedule

    task = Task(stage, "tiny", 0, 0.1, TOKENIZER, None, sr_start_mix=0.5)
    start = getattr(task.settings, f"{stage}_start")
    if start >= 1.0:  # the tiny preset samples SR from noise: give it a start as the shapes pack has
        task.settings = dataclasses.replace(task.settings, **{f"{stage}_start": 0.2})
        start = 0.2
    seen = {}
    monkeypatch.setattr(stages, "diffusion_loss", lambda model, x0, schedule, *, t, noise, extra, noised_from:
                        seen.update(x0=x0, t=t, extra=extra, src=noised_from) or t.sum())
    indices = list(range(32))
    TRAIN_STAGES[stage].loss(task, None, indices, 0, torch.device("cpu"))
    picked = ~(seen["src"] == seen["x0"]).flatten(1).all(1)
    assert 8 <= picked.sum() <= 24  # about half
    assert torch.equal(seen["src"][picked], seen["extra"][picked])
    assert ((seen["t"][picked] >= start / 2) & (seen["t"][picked] <= start)).all()
    plain = Task(stage, "tiny", 0, 0.1, TOKENIZER, None)
    t_plain, _, _ = plain.draws(indices, seen["x0"].shape[1:], torch.device("cpu"))
    assert torch.equal(seen["t"][~picked], t_plain[~picked])
    # the target: the v whose clean estimate is the render
    x0, src = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 4, 4) * 2 - 1
    t, eps = torch.tensor([0.1, 0.2]), torch.randn(2, 3, 4, 4)
    sched = CosineSchedule()
    alpha, sigma = (a.view(-1, 1, 1, 1) for a in sched.alpha_sigma(t))
    x_t = alpha * src + sigma * eps
    right = lambda x, tt: (alpha * x - x0) / sigma  # noqa: E731
    assert diffusion_loss(right, x0, sched, t=t, noise=eps, noised_from=src) < 1e-10
    usual = lambda x, tt: alpha * eps - sigma * x0  # noqa: E731  (the target when x_t noises x0)
    assert diffusion_loss(usual, x0, sched, t=t, noise=eps) < 1e-10
    assert diffusion_loss(usual, x0, sched, t=t, noise=eps, noised_from=src) > 0.1
    assert torch.allclose(alpha * x_t - sigma * right(x_t, t), x0, atol=1e-5)
    with pytest.raises(UserInputError, match="--sr-start-mix applies to stages sr_video and sr_image"):
        TrainConfig(stage="keyframes", sr_start_mix=0.5)
    # --sr-start: the start trained for, instead of the preset's
    later = Task(stage, "tiny", 0, 0.1, TOKENIZER, None, sr_start_mix=0.5, sr_start_time=0.6)
    TRAIN_STAGES[stage].loss(later, None, indices, 0, torch.device("cpu"))
    assert torch.equal(~(seen["src"] == seen["x0"]).flatten(1).all(1), picked)
    assert ((seen["t"][picked] >= 0.3) & (seen["t"][picked] <= 0.6)).all() and (seen["t"][picked] > start).any()
    with pytest.raises(UserInputError, match="--sr-start applies to stages sr_video and sr_image"):
        TrainConfig(stage="prior", sr_start=0.3)
    with pytest.raises(UserInputError, match=r"sr start must be in \(0, 1\)"):
        TrainConfig(stage=stage, sr_start_mix=0.5, sr_start=1.0)
    with pytest.raises(UserInputError, match="needs --sr-start-mix above 0"):
        TrainConfig(stage=stage, sr_start=0.3)


def test_round_corners_rounds_squares_and_triangles_and_keeps_edges():
    """round_corners takes a rendered square's fill ratio below 1 and a triangle's towards a
    circle's, leaves a circle's fill, the background and the object's colour as they are, and
    leaves a frame with sigma 0 untouched."""
    from mavcli.data.shapes import ShapeSpec, render
    from mavcli.eval.shapes_metrics import evaluate_clip
    from mavcli.data.faults import round_corners

    def fills(shape):
        spec = ShapeSpec(colour="orange", shape=shape, motion="still", background="gray", size=0.34,
                         start=(0.5, 0.5), travel=0.0)
        x = torch.from_numpy(render(spec, 3, 64)).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = round_corners(x, [0.0, 2.0, 4.0])
        assert torch.equal(y[0], x[0])
        # a rounding far below a pixel changes the anti-aliased rim a little, not the object
        assert (round_corners(x[:1], [0.05]) - x[:1]).abs().amax() < 0.3
        assert torch.allclose(y[1:, :, :2, :], x[1:, :, :2, :])  # the background
        assert torch.allclose(y[1:, :, 32, 32], x[1:, :, 32, 32], atol=1e-4)  # the object's colour
        frames = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        return [evaluate_clip(frames[i : i + 1], spec)["measures"]["fill_ratio"] for i in range(3)]

    square, triangle, circle = fills("square"), fills("triangle"), fills("circle")
    assert square[0] > 0.99 and 0.93 < square[1] < 0.98 and 0.83 < square[2] < 0.9
    assert triangle[0] < 0.56 and triangle[0] + 0.08 < triangle[1] < triangle[2] < 0.8
    assert max(circle) - min(circle) < 0.01


def test_round_corners_changes_sizes_frame_by_frame():
    """round_corners(sizes=): the object's side times about sizes[i] (area about its square),
    frame by frame, the object kept where it is."""
    from mavcli.data.shapes import ShapeSpec, render
    from mavcli.data.faults import round_corners

    spec = ShapeSpec(colour="blue", shape="circle", motion="still", background="white", size=0.34,
                     start=(0.5, 0.5), travel=0.0)
    x = torch.from_numpy(render(spec, 4, 64)).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = round_corners(x, [0.0] * 4, [0.8, 1.0, 1.15, 1.3])
    assert torch.equal(y[1], x[1])
    inside = (y - 1).abs().sum(1) > 0.5  # away from white
    area = inside.flatten(1).sum(1).float()
    assert torch.allclose(area / area[1], torch.tensor([0.64, 1.0, 1.3225, 1.69]), rtol=0.12)
    rows, cols = inside[3].nonzero().float().mean(0)
    assert abs(rows - 31.5) < 0.5 and abs(cols - 31.5) < 0.5


def test_sr_round_mix_rounds_the_input_of_a_share_of_samples():
    """--sr-round-mix f: about that share of an SR batch gets an input with rounded corners
    (Task.low_res), the render unchanged as the target; the rest is the usual input. Other
    stages and real data refuse it."""
    stage = "sr_video"
    task = Task(stage, "tiny", 0, 0.1, TOKENIZER, None, sr_round_mix=0.5)
    plain = Task(stage, "tiny", 0, 0.1, TOKENIZER, None)
    indices = list(range(24))
    s = task.settings
    video, _, _ = task.video_batch(indices, s.sr_video_size, s.keyframes, (s.frame_skip,), s.fps * s.frame_skip)
    rounded, usual = task.low_res(video, s.keyframe_size, indices), plain.low_res(video, s.keyframe_size, indices)
    diff = (rounded - usual).abs().flatten(1).amax(1)
    changed = diff > 0
    assert 6 <= changed.sum() <= 18
    assert diff[changed].median() > 0.3
    with pytest.raises(UserInputError, match="--sr-round-mix applies to stages sr_video and sr_image"):
        TrainConfig(stage="keyframes", sr_round_mix=0.5)
    with pytest.raises(UserInputError, match="--sr-size-mix applies to stage sr_video only"):
        TrainConfig(stage="sr_image", sr_size_mix=0.5)
    with pytest.raises(UserInputError, match="shapes world"):
        TrainConfig(stage="sr_image", sr_round_mix=0.5, images="some/folder")


def test_sr_size_mix_changes_sizes_in_a_share_of_clips():
    """--sr-size-mix f: about that share of sr_video's clips get an input whose object changes
    size from frame to frame; the others' input is the usual one."""
    task = Task("sr_video", "tiny", 0, 0.1, TOKENIZER, None, sr_size_mix=0.5)
    plain = Task("sr_video", "tiny", 0, 0.1, TOKENIZER, None)
    indices = list(range(24))
    s = task.settings
    video, _, _ = task.video_batch(indices, s.sr_video_size, s.keyframes, (s.frame_skip,), s.fps * s.frame_skip)
    sized, usual = task.low_res(video, s.keyframe_size, indices), plain.low_res(video, s.keyframe_size, indices)
    changed = (sized - usual).abs().flatten(1).amax(1) > 0
    assert 6 <= changed.sum() <= 18
    # the object's area, from the coverage of the input, varies over the frames of a changed clip
    background = sized[..., :1, :1]
    cover = ((sized - background).abs().sum(1) > 0.6).flatten(2).sum(2).float()  # (b, f)
    rel_std = cover.std(1) / cover.mean(1)
    assert rel_std[changed].median() > 2 * rel_std[~changed].median()
