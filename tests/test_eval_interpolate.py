"""`mav eval interpolate`: metrics, frame selection of the x2 / x4 tasks, ffmpeg's alignment,
scene cuts, and the command, on tiny synthetic clips."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from mavcli.cli import console
from mavcli.cli.app import app
from mavcli.errors import UserInputError
from mavcli.eval.interp_eval import (
    PSNR_CAP,
    EvalClip,
    FfmpegMinterpolate,
    baseline_methods,
    evaluate_clip,
    load_clip,
    psnr,
    ssim,
    task_windows,
)
from mavcli.video import detect_scene_cuts, write_video

cv2.setNumThreads(1)  # timings and CPU share stay predictable next to other work
runner = CliRunner()


def texture(h, w, seed, lo=30, hi=220, cell=4):
    """Smooth random colour texture uint8 (h, w, 3): noise on a `cell`-pixel grid, upsampled."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // cell + 2, w // cell + 2, 3)).astype(np.float32)
    fine = cv2.resize(coarse, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell : cell + h, cell : cell + w]
    return np.clip(lo + (hi - lo) * fine, 0, 255).astype(np.uint8)


def moving_square(n=13, speed=2):
    """A textured 16x16 square moving right `speed` px per frame on a calm 64x48 background."""
    frames = np.repeat(texture(48, 64, 0, 60, 120, 8)[None], n, axis=0)
    square = texture(16, 16, 1, 0, 255, 2)
    for t in range(n):
        x = 6 + speed * t
        frames[t, 16:32, x : x + 16] = square
    return frames


def clip_of(frames, name="clip"):
    return EvalClip(Path(name), frames, 25.0, detect_scene_cuts(frames))


# ---------------------------------------------------------------------------------------------
# metrics


def test_psnr_is_the_hand_computed_one():
    a = np.full((2, 3, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0], b[1, 2, 2] = 110, 80  # squared errors 100 + 400 over 18 values
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (500 / 18)), abs=1e-12)
    assert psnr(a, a) == PSNR_CAP


def ssim_reference(a, b):
    """SSIM straight from Wang et al. 2004, one window position at a time."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    per_channel = []
    for ch in range(a.shape[2]):
        values = []
        for i in range(a.shape[0] - 10):
            for j in range(a.shape[1] - 10):
                pa, pb = a[i : i + 11, j : j + 11, ch], b[i : i + 11, j : j + 11, ch]
                ma, mb = (win * pa).sum(), (win * pb).sum()
                va, vb = (win * (pa - ma) ** 2).sum(), (win * (pb - mb) ** 2).sum()
                cov = (win * (pa - ma) * (pb - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        per_channel.append(np.mean(values))
    return float(np.mean(per_channel))


def test_ssim_equals_the_reference_and_is_one_for_identical_frames():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 61, a.shape), 0, 255).astype(np.uint8)
    expected = ssim_reference(a, b)
    assert 0.2 < expected < 0.95  # a telling case: neither identical nor unrelated
    assert ssim(a, b) == pytest.approx(expected, abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_equals_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = texture(40, 52, 2)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    expected = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                             channel_axis=-1, data_range=255)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# tasks


def test_task_windows_pick_the_dropped_frames():
    # x2: known 0, 2, ..., 10; rebuilt 1, 3, 5, 7, 9
    assert task_windows(11, "x2") == [0, 2, 4, 6, 8]
    # x4: known 0, 4, 8; frame 10 has no known frame after it, so 9 and 10 are not rebuilt
    assert task_windows(11, "x4") == [0, 4]
    # start 0.7 of 250 frames: windows from frame 175 on, on the grid anchored at frame 0
    assert task_windows(250, "x2", 0.7)[:2] == [176, 178] and task_windows(250, "x2", 0.7)[-1] == 246
    assert task_windows(250, "x4", 0.7) == list(range(176, 245, 4))
    assert task_windows(11, "x2", 0.5) == [6, 8]
    assert task_windows(100, "x2", 0.14)[0] == 14  # though 0.14 * 100 is 14.000000000000002 in floats


@pytest.mark.parametrize(
    "args, message",
    [
        ((11, "x3"), "choose from x2, x4"),
        ((11, "x2", 1.0), "[0, 1)"),
        ((4, "x4"), "too short for x4"),
        ((11, "x4", 0.5), "from frame 8 on"),
    ],
)
def test_task_windows_refuse_bad_input(args, message):
    with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace(")", r"\)")):
        task_windows(*args)


# ---------------------------------------------------------------------------------------------
# methods on synthetic clips


def test_flow_methods_beat_a_cross_fade_on_linear_motion():
    frames = moving_square()
    report = evaluate_clip(clip_of(frames), ["x2"], baseline_methods(["blend", "ffmpeg", "dis"]))
    r = {x.method: x for x in report.results}
    assert report.cuts == [] and r["blend"].windows == 6 and r["blend"].frames == 6
    # the cross-fade, scored by hand
    blend = [psnr(np.rint((frames[k].astype(float) + frames[k + 2]) / 2).astype(np.uint8), frames[k + 1]) for k in range(0, 12, 2)]
    assert r["blend"].psnr == pytest.approx(np.mean(blend), abs=1e-9)
    assert r["dis"].psnr > r["blend"].psnr + 10  # about 41 dB against 22
    assert r["ffmpeg"].psnr > r["blend"].psnr + 3  # about 27.6 dB
    assert r["dis"].ssim > r["ffmpeg"].ssim > r["blend"].ssim
    assert all(x.ms_per_frame > 0 and x.psnr == x.psnr_with_cuts for x in report.results)


def test_start_keeps_the_windows_after_it():
    frames = moving_square()  # 13 frames, start 0.5: windows from frame ceil(6.5) = 7, so [8, 10] and [10, 12]
    ffmpeg = FfmpegMinterpolate()
    report = evaluate_clip(clip_of(frames), ["x2"], {"blend": baseline_methods(["blend"])["blend"], "ffmpeg": ffmpeg}, start=0.5)
    blend, mci = report.results
    assert blend.windows == mci.windows == 2 and blend.frames == mci.frames == 2
    halfway = [np.rint((frames[k].astype(float) + frames[k + 2]) / 2).astype(np.uint8) for k in (8, 10)]
    assert blend.psnr == pytest.approx(np.mean([psnr(halfway[0], frames[9]), psnr(halfway[1], frames[11])]), abs=1e-9)
    # ffmpeg saw only the known frames 8, 10, 12: its frames 1 and 3 are the truth's 9 and 11
    out = ffmpeg(frames[8::2], 2, 25.0)
    assert mci.psnr == pytest.approx(np.mean([psnr(out[1], frames[9]), psnr(out[3], frames[11])]), abs=1e-9)


@pytest.mark.parametrize("skip", [2, 4])
def test_ffmpeg_output_lines_up_with_the_frames(skip):
    # no motion, brightness +2 levels a frame: one output frame off would be >= 2 levels off
    # (2 per frame keeps ffmpeg's scene-change detector quiet)
    base = texture(48, 64, 5, 40, 160)
    frames = np.stack([base + np.uint8(2 * t) for t in range(17)])
    out = FfmpegMinterpolate()(frames[::skip], skip, 25.0)
    assert out.shape == frames.shape  # the last window too
    error = np.abs(out.astype(int) - frames).mean(axis=(1, 2, 3))
    assert error.max() < 1.0, error  # RGB -> YUV -> RGB rounding only


def test_windows_across_a_scene_cut_are_left_out():
    shot_a = [np.roll(texture(48, 64, 3), t, axis=1) for t in range(12)]
    shot_b = [np.roll(texture(48, 64, 4, 0, 120), 2 * t, axis=0) for t in range(12)]
    frames = np.stack(shot_a + shot_b)
    report = evaluate_clip(clip_of(frames), ["x2", "x4"], baseline_methods(["blend"]))
    assert report.cuts == [12]
    x2, x4 = report.results
    # x2: windows 0, 2, ..., 20, of which [10, 12] spans the cut; x4: 0, 4, ..., 16 and [8, 12]
    assert (x2.windows, x2.windows_left_out, x2.frames, x2.frames_with_cuts) == (11, 1, 10, 11)
    assert (x4.windows, x4.windows_left_out, x4.frames, x4.frames_with_cuts) == (5, 1, 12, 15)
    kept = [psnr(np.rint((frames[k].astype(float) + frames[k + 2]) / 2).astype(np.uint8), frames[k + 1])
            for k in range(0, 21, 2) if k != 10]
    assert x2.psnr == pytest.approx(np.mean(kept), abs=1e-9)
    assert x2.psnr_with_cuts < x2.psnr  # the frame across the cut is the worst


def test_load_clip_resizes_to_the_height(tmp_path):
    frames = moving_square(n=5)
    write_video(tmp_path / "square", frames, 25)  # PNG frames: lossless
    clip = load_clip(tmp_path / "square", height=24)
    expected = [cv2.resize(f, (32, 24), interpolation=cv2.INTER_AREA) for f in frames]
    assert clip.fps == 25 and np.array_equal(clip.frames, np.stack(expected))
    assert np.array_equal(load_clip(tmp_path / "square").frames, frames)


# ---------------------------------------------------------------------------------------------
# the command


@pytest.fixture
def wide_console(monkeypatch):
    # a table row on one line whatever the runner's terminal width
    monkeypatch.setattr(console, "out", Console(highlight=False, soft_wrap=True, width=200))


def test_command_prints_the_table_and_writes_the_report(tmp_path, wide_console):
    frames = moving_square()
    write_video(tmp_path / "square", frames, 25)
    out = tmp_path / "report.json"
    r = runner.invoke(app, ["eval", "interpolate", str(tmp_path / "square"), "--height", "0", "--task", "x2",
                            "--method", "blend", "--method", "ffmpeg", "--method", "dis", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == str(out)
    report = json.loads(out.read_text())
    assert report["settings"] == {"height": None, "start": 0.0, "tasks": ["x2"], "methods": ["blend", "ffmpeg", "dis"], "pack": None,
                                  "rife_pack": None}
    (clip,) = report["clips"]
    assert (clip["width"], clip["height"], clip["num_frames"], clip["cuts"]) == (64, 48, 13, [])
    got = {x["method"]: x for x in clip["results"]}
    expected = {x.method: x for x in evaluate_clip(clip_of(frames), ["x2"], baseline_methods(["blend", "ffmpeg", "dis"])).results}
    for m in ("blend", "ffmpeg", "dis"):
        assert got[m]["psnr"] == pytest.approx(expected[m].psnr, abs=1e-9)
        assert got[m]["ssim"] == pytest.approx(expected[m].ssim, abs=1e-9)
        assert got[m]["frames"] == 6 and got[m]["ms_per_frame"] > 0
    row = next(line for line in r.stdout.splitlines() if "square" in line)
    assert "64x48" in row and "x2" in row
    for m in ("blend", "ffmpeg", "dis"):
        assert f"{got[m]['psnr']:.2f} / {got[m]['ssim']:.4f}".replace("/ 0.", "/ .") in row  # 41.06 / .9945
    assert not list(tmp_path.glob(".*partial"))


def test_command_opens_the_learned_interpolator_only_when_asked(tmp_path, monkeypatch):
    # the real one needs a trained pack: a stand-in records how it was opened
    opened = []

    def fake_open(pack, device):
        opened.append((pack, device))
        return baseline_methods(["blend"])["blend"]

    monkeypatch.setattr("mavcli.cli.loading.open_flow_interpolator", fake_open)
    write_video(tmp_path / "square", moving_square(n=5), 25)
    base = ["eval", "interpolate", str(tmp_path / "square"), "--height", "0", "--task", "x2", "-q"]
    r = runner.invoke(app, [*base, "--method", "blend", "--out", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    assert opened == []
    r = runner.invoke(app, [*base, "--method", "mavcli", "--method", "blend", "--pack", "my-pack", "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    assert opened == [("my-pack", "auto")]
    mavcli, blend = json.loads((tmp_path / "b.json").read_text())["clips"][0]["results"]
    assert (mavcli["method"], blend["method"]) == ("mavcli", "blend") and mavcli["psnr"] == blend["psnr"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.mp4"], "does not exist"),
        (["{clip}", "--task", "x3"], "--task 'x3': choose from x2, x4"),
        (["{clip}", "--method", "film"], "--method 'film': choose from blend, ffmpeg, dis, mavcli, rife"),
        (["{clip}", "--start", "1"], "--start 1: give a fraction in [0, 1)"),
        (["{short}", "--method", "blend"], "too short for x4"),
        (["{clip}", "--method", "blend", "--start", "0.9"], "or a smaller start"),
        (["{clip}", "--out", "{tmp}/nowhere/r.json"], "nowhere does not exist"),
    ],
)
def test_command_refuses_bad_input(tmp_path, args, message):
    frames = moving_square(n=13)
    write_video(tmp_path / "clip", frames, 25)
    write_video(tmp_path / "short", frames[:3], 25)
    args = [a.format(clip=tmp_path / "clip", short=tmp_path / "short", tmp=tmp_path) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "r.json")]
    r = runner.invoke(app, ["eval", "interpolate", *args, "--height", "0", *out])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.stderr.split())
    assert not (tmp_path / "r.json").exists()
