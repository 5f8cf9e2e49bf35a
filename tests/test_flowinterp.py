"""The real-footage interpolator: flow geometry, DIS flow, the network's identity-to-baseline
start, the streaming interpolator, its pack, and `mav interpolate --method flow`."""

import numpy as np
import pytest
import torch

from mavcli.data.motion import LayeredMotion, procedural_photos
from mavcli.errors import UserInputError
from mavcli.flow import DisFlow, backward_warp, dis_blend, flows_at, flows_at_quadratic, linear_blend, to_tensor
from mavcli.interpolator import FlowInterpolator
from mavcli.models.flowinterp import FlowInterpConfig, FlowInterpNet, _cat
from mavcli.train.loop import TrainConfig, train


def texture(h, w, seed=0):
    return procedural_photos(1, max(h, w), seed)[0][:h, :w]


def moving(h=48, w=64, frames=5, dx=2, seed=0):
    """A texture panned `dx` pixels per frame: `(frames, h, w, 3)` uint8."""
    big = texture(h, w + dx * frames, seed)
    return np.stack([big[:, k * dx:k * dx + w] for k in range(frames)])


def test_flows_at_linear_motion():
    v = torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    for t in (0.25, 0.5, 0.75):
        ft0, ft1 = flows_at(v, -v, t)
        assert torch.allclose(ft0, -t * v) and torch.allclose(ft1, (1 - t) * v)


def uniform(v):
    return torch.as_tensor(v, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 4, 4)


def test_quadratic_flows_are_exact_for_constant_acceleration():
    v, a = torch.tensor([2.0, -1.0]), torch.tensor([0.8, 0.4])
    x = lambda u: v * u + a * u * u / 2  # the path of every pixel, frame 0 at u = 0
    f01, f0p = uniform(x(1) - x(0)), uniform(x(-1) - x(0))
    f10, f12 = uniform(x(0) - x(1)), uniform(x(2) - x(1))
    for t in (0.25, 0.5, 0.75):
        ft0, ft1 = flows_at_quadratic(f01, f10, t, f0p, f12)
        assert torch.allclose(ft0[0, :, 0, 0], x(0) - x(t), atol=1e-5)
        assert torch.allclose(ft1[0, :, 0, 0], x(1) - x(t), atol=1e-5)
        lin0, _ = flows_at(f01, f10, t)  # linear motion misses the curve by a t (1 - t) / 2
        assert torch.allclose(ft0 - lin0, uniform(a * t * (1 - t) / 2), atol=1e-5)


def test_quadratic_flows_without_neighbours_are_linear_and_clamp_wild_accelerations():
    torch.manual_seed(0)
    f01, f10 = torch.randn(1, 2, 5, 6), torch.randn(1, 2, 5, 6)
    for t in (0.25, 0.5):
        assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(flows_at_quadratic(f01, f10, t), flows_at(f01, f10, t)))
    # a neighbour flow that disagrees wildly (a failed match): |a| is held to |F_0->1| + 1 px
    f01 = uniform([2.0, 0.0])
    ft0, _ = flows_at_quadratic(f01, -f01, 0.5, f0p=uniform([50.0, 0.0]))
    lin0, _ = flows_at(f01, -f01, 0.5)
    # a = 52 px clamped to 3: F_0->t moves by a (t^2 - t) / 2 = -0.375 px, F_t->0 by -(1 - t) of that
    assert torch.allclose(ft0 - lin0, uniform([0.1875, 0.0]), atol=1e-5)


def test_backward_warp_integer_shift():
    img = to_tensor(texture(20, 30))
    flow = torch.zeros(1, 2, 20, 30)
    flow[:, 0] = 3  # sample 3 px to the right
    out = backward_warp(img, flow)
    assert torch.allclose(out[..., :-3], img[..., 3:], atol=1e-6)
    assert torch.allclose(out[..., -3:], img[..., -1:].expand(-1, -1, -1, 3), atol=1e-6)  # border clamped


def test_dis_flow_recovers_a_pan():
    clip = moving(64, 96, frames=2, dx=3)
    flow = DisFlow()(clip[0], clip[1])
    inner = flow[8:-8, 8:-16]
    # frame 1 is frame 0 moved 3 px left: a pixel of frame 0 is found 3 px left in frame 1
    assert abs(np.median(inner[..., 0]) + 3) < 0.25 and abs(np.median(inner[..., 1])) < 0.25


def test_dis_blend_beats_a_cross_fade_on_motion():
    clip = moving(48, 64, frames=3, dx=3)
    mid_dis = dis_blend(clip[0], clip[2], [0.5])[0].astype(float)
    mid_lin = linear_blend(clip[0], clip[2], [0.5])[0].astype(float)
    err_dis = np.abs(mid_dis - clip[1])[4:-4, 4:-10].mean()
    err_lin = np.abs(mid_lin - clip[1])[4:-4, 4:-10].mean()
    assert err_dis < 0.5 * err_lin, (err_dis, err_lin)


@pytest.mark.parametrize("gate", [False, True])
def test_untrained_network_is_exactly_the_dis_baseline_at_any_size(gate):
    torch.manual_seed(0)
    net = FlowInterpNet(FlowInterpConfig(widths=(8, 8, 8), head_width=4, residual_gate=gate)).eval()
    clip = moving(29, 37, frames=3, dx=2)  # odd, non-square: padded inside, cropped back
    interp = FlowInterpolator(net)
    for t in (0.25, 0.5):
        ours = interp(clip[0], clip[2], [t])[0].astype(int)
        base = dis_blend(clip[0], clip[2], [t])[0].astype(int)
        assert np.abs(ours - base).max() <= 1  # rounding of equal floats


def test_training_moves_the_network_off_the_baseline_and_gradients_reach_every_head():
    torch.manual_seed(0)
    net = FlowInterpNet(FlowInterpConfig(widths=(8, 8), head_width=4))
    data = LayeredMotion(procedural_photos(3, 64), size=32, max_shift=6.0)
    s = data.sample(torch.Generator().manual_seed(0))
    out = net(*(s[k][None] for k in ("i0", "i1", "f01", "f10")), s["t"][None])
    (out - s["it"][None]).abs().mean().backward()
    assert net.coarse.weight.grad.abs().sum() > 0 and net.rgb.weight.grad.abs().sum() > 0


def test_residual_gate_scales_the_residual_per_pixel():
    torch.manual_seed(0)
    net = FlowInterpNet(FlowInterpConfig(widths=(8, 8), head_width=4, residual_gate=True)).eval()
    torch.nn.init.normal_(net.rgb.weight, std=0.5)  # a residual that is far from zero
    clip = moving(32, 32, frames=3, dx=2)
    args = [to_tensor(clip[0]), to_tensor(clip[2]), *DisFlow().pair(clip[0], clip[2]), torch.tensor([0.5])]
    with torch.no_grad():
        net.coarse.bias[5] = 0.0
        half = net(*args)  # gate 0.5 everywhere
        net.coarse.bias[5] = -30.0
        off = net(*args)  # gate ~0: the blend alone
        net.coarse.bias[5] = 30.0
        full = net(*args)
    assert (full - off).abs().mean() > 0.05  # the residual is large ...
    assert torch.allclose(half - off, 0.5 * (full - off), atol=1e-5)  # ... and scaled by the gate
    blend = dis_blend(clip[0], clip[2], [0.5])[0].astype(int)
    assert np.abs((off[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(int) - blend).max() <= 1


def test_channels_last_inference_computes_what_the_plain_layout_does():
    """FlowInterpolator runs the network with channels-last weights and builds its
    full-resolution inputs in that layout; the frames must not change with the layout."""
    import copy

    torch.manual_seed(0)
    net = FlowInterpNet(FlowInterpConfig(widths=(8, 8, 8), head_width=4, residual_gate=True)).eval()
    for head in (net.coarse, net.rgb):  # far from zero, so every branch shapes the output
        torch.nn.init.normal_(head.weight, std=0.3)
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    clip = moving(29, 37, frames=4, dx=2)
    f01, f10 = DisFlow().pair(clip[1], clip[2])
    args = [to_tensor(clip[1]), to_tensor(clip[2]), f01, f10, torch.tensor([0.3]), *DisFlow().pair(clip[1], clip[0])[:1],
            DisFlow().pair(clip[2], clip[3])[0]]
    with torch.no_grad():
        plain, cl = net(*args), fast(*args)
    assert cl.shape == plain.shape == (1, 3, 29, 37)
    assert (plain - to_tensor(clip[1])).abs().mean() > 0.05  # the weights do change the frame
    assert torch.allclose(cl, plain, atol=1e-5)
    parts = [torch.randn(2, c, 5, 7) for c in (3, 1, 2)]
    for layout in (torch.channels_last, torch.contiguous_format):
        joined = _cat(parts, layout)
        assert torch.equal(joined, torch.cat(parts, dim=1)) and joined.is_contiguous(memory_format=layout)


def test_bfloat16_network_draws_within_a_level_or_two_of_float32():
    """`precision`: the network's convolutions in bfloat16 (autocast), flows, warps and blend in
    float32; with small non-zero heads the frames move by at most a couple of levels."""
    import copy

    torch.manual_seed(0)
    net = FlowInterpNet(FlowInterpConfig(widths=(8, 8, 8), head_width=4, residual_gate=True)).eval()
    for head in (net.coarse, net.rgb):
        torch.nn.init.normal_(head.weight, std=0.05)
    clip = moving(40, 56, frames=4, dx=3)
    frames = {}
    for precision in ("float32", "bfloat16"):
        interp = FlowInterpolator(copy.deepcopy(net), precision=precision)
        assert interp.precision == precision
        frames[precision] = interp.run(clip, 3).astype(int)
    assert frames["float32"].shape == (10, 40, 56, 3)
    assert (frames["float32"][1] != clip[0]).mean() > 0.5  # new frames, not copies
    diff = np.abs(frames["float32"] - frames["bfloat16"])
    assert diff.max() <= 2 and diff.any()  # bfloat16 really ran, and changed little
    with pytest.raises(UserInputError, match="precision"):
        FlowInterpolator(net, precision="half")


def test_layered_motion_is_exact_at_the_ends_and_deterministic():
    data = LayeredMotion(procedural_photos(3, 96), size=48, max_shift=8.0)
    a = data.sample(torch.Generator().manual_seed(5))
    b = data.sample(torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["t"]) in (0.25, 0.5, 0.75)
    assert a["i0"].shape == a["it"].shape == (3, 48, 48) and a["f01"].shape == (2, 48, 48)
    # something moves: the in-between frame is neither end
    assert (a["it"] - a["i0"]).abs().mean() > 1e-3 and (a["it"] - a["i1"]).abs().mean() > 1e-3


def test_clip_windows_carry_their_neighbours_flows_for_quadratic_motion():
    """Each training window brings F_0->-1 and F_1->2 from the windows beside it (the inputs
    `mav interpolate` fits acceleration to); at the ends of the usable part the linear stand-ins
    -F_0->1 and -F_1->0. Synthetic motion is uniform: its stand-ins always."""
    from mavcli.data.motion import ClipWindows

    clip = moving(32, 32, frames=8, dx=2)
    data = ClipWindows([clip], skips=(2,), portion=1.0, crop=32)  # the whole frame: a sample names its window
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    starts = set()
    for seed in range(40):
        s = data.sample(torch.Generator().manual_seed(seed))
        start = next(k for k in range(len(clip)) if torch.equal(s["i0"], frames[k]))
        starts.add(start)
        win = data.windows[data.index[(0, start, 2)]]
        assert torch.equal(s["f01"], win.f01.float()) and torch.equal(s["f10"], win.f10.float())
        before, after = data.index.get((0, start - 2, 2)), data.index.get((0, start + 2, 2))
        assert torch.equal(s["f0p"], -s["f01"] if before is None else data.windows[before].f10.float())
        assert torch.equal(s["f12"], -s["f10"] if after is None else data.windows[after].f01.float())
        if before is not None:  # a steady pan: the flow back is about the reverse of the flow on
            assert (s["f0p"] + s["f01"])[:, 4:-4, 4:-4].abs().mean() < 0.5
    assert starts == {0, 1, 2, 3, 4, 5}  # ends and middles both drawn
    syn = LayeredMotion(procedural_photos(3, 96), size=48, max_shift=8.0).sample(torch.Generator().manual_seed(1))
    assert torch.equal(syn["f0p"], -syn["f01"]) and torch.equal(syn["f12"], -syn["f10"])


def test_opencv_doc_clips_are_found_through_the_footage_folder_or_explained(tmp_path, monkeypatch):
    """The interpolator's extra training footage comes from Debian's opencv-doc package: a
    folder named by $MAVCLI_FOOTAGE is searched first; a missing clip says how to get it."""
    import mavcli.data.motion as motion

    monkeypatch.setattr(motion, "OPENCV_DOC_DIRS", (str(tmp_path / "system"),))
    monkeypatch.setenv(motion.FOOTAGE_ENV, str(tmp_path / "mine"))
    with pytest.raises(UserInputError, match=r"apt-get download opencv-doc.*MAVCLI_FOOTAGE"):
        motion.opencv_doc_clip("tree.avi")
    for folder in ("system", "mine"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tree.avi").write_bytes(b"x")
    assert motion.opencv_doc_clip("tree.avi") == str(tmp_path / "mine" / "tree.avi")
    monkeypatch.delenv(motion.FOOTAGE_ENV)
    assert motion.opencv_doc_clip("tree.avi") == str(tmp_path / "system" / "tree.avi")


def test_layered_motion_static_background_keeps_still_pixels_exact():
    still = LayeredMotion(procedural_photos(3, 96), size=48, max_shift=8.0, static_background=1.0)
    moving_bg = LayeredMotion(procedural_photos(3, 96), size=48, max_shift=8.0)
    for seed in range(3):
        for data, low, high in ((still, 0.5, 1.0), (moving_bg, 0.0, 0.05)):
            s = data.sample(torch.Generator().manual_seed(seed))
            same = ((s["i0"] - s["i1"]).abs().amax(0) == 0) & ((s["i0"] - s["it"]).abs().amax(0) == 0)
            assert low <= same.float().mean() <= high  # still: the background; moving: almost nothing
            assert (s["it"] - s["i0"]).abs().mean() > 1e-3  # the foreground still moves
    with pytest.raises(UserInputError, match="static_background"):
        LayeredMotion(procedural_photos(3, 96), size=48, static_background=1.5)


def test_run_keeps_given_frames_and_counts():
    torch.manual_seed(0)
    interp = FlowInterpolator(FlowInterpNet(FlowInterpConfig(widths=(8, 8), head_width=4)))
    clip = moving(24, 32, frames=4)
    out = interp.run(clip, 4)
    assert out.shape == (13, 24, 32, 3)
    assert np.array_equal(out[::4], clip)
    with pytest.raises(UserInputError, match="strictly between"):
        interp(clip[0], clip[1], [1.0])


def accelerating(h=48, w=64, frames=6, seed=0):
    """A texture panned ever faster: 1, 2, 3, ... px per frame."""
    pos = [k * (k + 1) // 2 for k in range(frames)]
    big = texture(h, w + pos[-1] + 1, seed)
    return np.stack([big[:, p:p + w] for p in pos])


def test_run_fits_each_pair_to_its_neighbours_motion():
    torch.manual_seed(0)
    interp = FlowInterpolator(FlowInterpNet(FlowInterpConfig(widths=(8, 8), head_width=4)))  # = DIS warp + blend
    clip = accelerating()
    known = clip[::2]  # frames 0, 2, 4: x2 of an accelerating pan
    out = interp.run(known, 2)
    # the run's pairs see their neighbours: the same as asking pair by pair with them
    assert np.array_equal(out[1], interp(known[0], known[1], [0.5], after=known[2])[0])
    assert np.array_equal(out[3], interp(known[1], known[2], [0.5], before=known[0])[0])
    # and nearer the truth than linear motion, which puts the middle frame half-way
    inner = (slice(6, -6), slice(6, -16))
    err = lambda f, k: np.abs(f.astype(float) - clip[k])[inner].mean()
    linear = interp(known[0], known[1], [0.5])[0]
    assert err(out[1], 1) < 0.8 * err(linear, 1), (err(out[1], 1), err(linear, 1))
    # a pair across a cut lends no motion and takes none
    broken = interp.run(known, 2, breaks=[1])
    assert np.array_equal(broken[1], linear) and np.array_equal(broken[3], interp(known[1], known[2], [0.5])[0])
    done = []
    interp.run(known, 2, on_pair=done.append)
    assert done == [0, 1]
    # quadratic=False: every pair on its own, linear motion
    alone = FlowInterpolator(interp.net, quadratic=False)
    assert np.array_equal(alone.run(known, 2)[1], linear)
    assert np.array_equal(alone(known[0], known[1], [0.5], after=known[2])[0], linear)


def test_stream_hands_segments_their_neighbours_within_a_shot():
    from mavcli.segments import stream_segments

    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(8)]
    seen = []

    def run(seg, before, after):
        seen.append((int(seg[0, 0, 0, 0]), int(seg[-1, 0, 0, 0]),
                     None if before is None else int(before[0, 0, 0]), None if after is None else int(after[0, 0, 0])))
        return np.repeat(seg, 2, axis=0)[:-1]

    out = list(stream_segments(iter(frames), 2, run, cuts=[5], chunk=3, context=True))
    # segments 0-2, 2-4 | cut | 5-7: neighbours inside a shot, None at the cut and at the ends
    assert seen == [(0, 2, None, 3), (2, 4, 1, None), (5, 7, None, None)]
    assert len(out) == (len(frames) - 1) * 2 + 1
    plain = list(stream_segments(iter(frames), 2, lambda seg: run(seg, None, None), cuts=[5], chunk=3))
    assert all(np.array_equal(a, b) for a, b in zip(out, plain))


def _retime(interp, frames, factor, cuts=()):
    """What `mav interpolate --factor` streams: the times planned by mavcli.retime."""
    from mavcli.retime import plan_pairs, retiming

    r = retiming(1.0, len(frames), factor=factor)
    return list(interp.retime_stream(iter(frames), plan_pairs(list(range(len(frames))), r.out_times, cuts), cuts=cuts))


def test_stream_bridges_scene_cuts_with_copies():
    torch.manual_seed(0)
    interp = FlowInterpolator(FlowInterpNet(FlowInterpConfig(widths=(8, 8), head_width=4)))
    a, b = moving(24, 32, frames=3, seed=1), moving(24, 32, frames=3, seed=2)
    frames = list(a) + list(b)
    out = _retime(interp, frames, 2, cuts=[3])
    assert len(out) == len(frames) * 2  # the duration is kept: the last frame is held
    assert np.array_equal(out[4], a[2]) and np.array_equal(out[5], b[0])  # the gap holds a copy, not a blend
    assert np.array_equal(np.stack(out[6:11]), interp.run(b, 2)) and np.array_equal(out[11], b[2])


def test_streamed_output_equals_run_over_the_whole_clip():
    """What `mav interpolate` writes (frames streamed, four held at a time) is what `run` makes
    of the whole clip, the path `mav eval interpolate` measures: every pair keeps its
    neighbours' motion. The pan accelerates, so linear motion would differ."""
    interp = FlowInterpolator(FlowInterpNet(FlowInterpConfig(widths=(8, 8), head_width=4)))
    clip = accelerating(frames=9)
    whole = interp.run(clip, 2)
    streamed = np.stack(_retime(interp, list(clip), 2))
    assert np.array_equal(streamed[:-1], whole) and np.array_equal(streamed[-1], clip[-1])
    linear = FlowInterpolator(interp.net, quadratic=False).run(clip, 2)
    assert not np.array_equal(linear, whole)


def test_fractional_positions_are_interpolated_where_they_fall():
    """25 -> 60 fps: output frame k sits at k/60 s; where that is an input frame's time (every
    12th output, every 5th input) it is the input frame unchanged, elsewhere the frame the
    network makes at that fraction of the pair."""
    from mavcli.retime import plan_pairs, retiming

    interp = FlowInterpolator(FlowInterpNet(FlowInterpConfig(widths=(8, 8), head_width=4)))
    clip = accelerating(frames=11)
    times = [i / 25 for i in range(11)]
    r = retiming(25.0, 11 / 25, fps=60)
    assert len(r.out_times) == 27 and r.fps == 60  # ceil(11/25 * 60)
    out = list(interp.retime_stream(iter(clip), plan_pairs(times, r.out_times), in_times=times))
    assert len(out) == 27
    for k in (0, 12, 24):
        assert np.array_equal(out[k], clip[k * 25 // 60])
    # output 1 (t = 1/60 s) lies at 25/60 of the first pair
    expect = interp(clip[0], clip[1], [25 / 60], after=clip[2])[0]
    assert np.array_equal(out[1], expect)


@pytest.fixture(scope="module")
def flow_pack(tmp_path_factory):
    """A tiny trained interpolator exported as a pack of its own (no text stage, no tokenizer)."""
    from mavcli.train.export import export_pack

    root = tmp_path_factory.mktemp("flowpack")
    train(TrainConfig(stage="flow_interpolation", preset="tiny", steps=2, batch_size=2, ckpt_every=2, out=str(root / "runs")))
    return export_pack(root / "runs", root / "pack", preset="tiny", stages=("flow_interpolation",))


def test_export_builds_the_network_from_its_checkpoint_not_the_current_preset(flow_pack, tmp_path, monkeypatch):
    """A checkpoint carries its networks' configs: after the preset changes (here: the tiny
    flow network gains a residual gate, as the shipped one did), an older run still exports
    as trained, weights and all."""
    import dataclasses

    from mavcli.train import export, tasks
    from mavcli.weights.pack import load_pack

    trained = tasks.FLOW_INTERP_CONFIGS["tiny"]
    changed = dataclasses.replace(trained, residual_gate=not trained.residual_gate)
    monkeypatch.setitem(tasks.FLOW_INTERP_CONFIGS, "tiny", changed)
    again = export.export_pack(flow_pack.parent / "runs", tmp_path / "again", preset="tiny", stages=("flow_interpolation",))
    net, before = load_pack(again)["flow_interpolation"], load_pack(flow_pack)["flow_interpolation"]
    assert net.config == trained != changed
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), before.state_dict().values()))


def test_exported_pack_loads_without_a_tokenizer(flow_pack):
    assert not (flow_pack / "tokenizer.json").exists()
    interp = FlowInterpolator.from_pretrained(flow_pack)
    clip = moving(24, 32, frames=2)
    out = interp(clip[0], clip[1], [0.5])[0]
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8


def test_cli_interpolate_flow_method(flow_pack, tmp_path):
    from typer.testing import CliRunner

    from mavcli.cli.app import app
    from mavcli.video import read_video, write_video

    clip = moving(32, 48, frames=5, dx=2)
    src = tmp_path / "pan.mp4"
    write_video(src, clip, 10)
    out = tmp_path / "pan-x4.mp4"
    runner = CliRunner()
    res = runner.invoke(app, ["interpolate", str(src), "-x", "4", "--pack", str(flow_pack), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    video = read_video(out)
    assert video.frames.shape == (20, 32, 48, 3) and video.fps == pytest.approx(40)  # 0.5 s kept: 5 frames x 4
    res = runner.invoke(app, ["interpolate", str(src), "--pack", str(flow_pack), "--steps", "3", "-o", str(tmp_path / "b.mp4")])
    assert res.exit_code == 2 and "--steps" in res.output
    res = runner.invoke(app, ["interpolate", str(src), "--method", "optical", "-o", str(tmp_path / "c.mp4")])
    assert res.exit_code == 2 and "one of flow, rife, diffusion" in res.output


def test_bundled_realinterp_pack_is_pinned_and_follows_motion():
    from mavcli.weights.resolve import resolve_pack

    path = resolve_pack("realinterp")  # checks every file against weights.toml's sha256
    interp = FlowInterpolator.from_pretrained(path)
    clip = moving(64, 96, frames=3, dx=3, seed=3)
    ours = interp(clip[0], clip[2], [0.5])[0].astype(float)
    fade = linear_blend(clip[0], clip[2], [0.5])[0].astype(float)
    inner = (slice(6, -6), slice(6, -12))
    assert np.abs(ours - clip[1])[inner].mean() < 0.5 * np.abs(fade - clip[1])[inner].mean()


def test_bench_interpolate_prints_both_factors_and_rejects_bad_sizes(flow_pack):
    from typer.testing import CliRunner

    from mavcli.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["bench", "interpolate", "--pack", str(flow_pack), "--size", "64x48", "--rounds", "1",
                              "--threads", "1", "--file-rounds", "1"])
    assert res.exit_code == 0, res.output
    rows = [ln.split() for ln in res.stdout.splitlines() if ln.strip().startswith("x")]
    assert [r[0] for r in rows] == ["x2", "x4", "x2", "x4"]  # in memory, then file to file
    for r in rows[:2]:  # every timing is positive and the ratio column is mavcli / DIS
        values = [float(v) for v in (r[1], r[2], r[4], r[5])]
        assert min(values) > 0
        # times are printed to 0.1 ms and the ratio to 0.01, so the ratio lies in the interval the rounding allows
        ratio, (ours, dis) = float(r[3].rstrip("x")), values[:2]
        assert (ours - 0.05) / (dis + 0.05) - 0.005 <= ratio <= (ours + 0.05) / max(dis - 0.05, 1e-9) + 0.005
    for r in rows[2:]:  # mav interpolate and minterpolate, each file to file, and their ratio
        ours, theirs, ratio = float(r[1]), float(r[2]), float(r[3].rstrip("x"))
        assert min(ours, theirs) > 0
        assert (ours - 0.05) / (theirs + 0.05) - 0.005 <= ratio <= (ours + 0.05) / max(theirs - 0.05, 1e-9) + 0.005
    res = runner.invoke(app, ["bench", "interpolate", "--pack", str(flow_pack), "--size", "64by48"])
    assert res.exit_code == 2 and "WIDTHxHEIGHT" in res.output
