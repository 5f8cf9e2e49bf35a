"""Frame interpolation measured on real clips: drop frames, rebuild them, compare with the truth.

Tasks: "x2" keeps the even frames and rebuilds every odd one from its two neighbours; "x4"
keeps every 4th frame and rebuilds the 3 between. A window is the frames [k, k + skip] with
both ends known (k a multiple of skip); its skip - 1 inner frames are rebuilt at times
j / skip, j = 1 .. skip - 1.

Methods are callables ``(frame0, frame1, times) -> frames`` (uint8 ``(h, w, 3)`` in and out,
one frame per time), run window by window, plus ``FfmpegMinterpolate``, which runs once over
all the known frames of a clip (its motion search keeps state from frame to frame).

Scores are PSNR (dB) and SSIM per rebuilt frame, averaged over the frames, and wall time per
rebuilt frame. Windows that span a scene cut are left out of the scores (no method can rebuild
a frame from a different shot); the scores with them kept are reported too.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import lru_cache, partial
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from mavcli.errors import MavError, UserInputError
from mavcli.video import detect_scene_cuts, read_video

#: task name -> frames from one known frame to the next
TASKS: dict[str, int] = {"x2": 2, "x4": 4}
#: the methods ``baseline_methods`` builds
BASELINES: tuple[str, ...] = ("blend", "ffmpeg", "dis")
#: PSNR of two identical frames (infinite otherwise, which would swamp any mean)
PSNR_CAP = 100.0
_SSIM_SIZE, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03

#: ``(frame0, frame1, times) -> frames``: uint8 ``(h, w, 3)`` frames, times in (0, 1)
Interpolator = Callable[[np.ndarray, np.ndarray, list[float]], list[np.ndarray]]


@runtime_checkable
class RunInterpolator(Protocol):
    """An interpolator that takes a whole run of known frames at once (mavcli's
    ``FlowInterpolator``: each pair's motion is fitted to its neighbours' as well)."""

    def run(self, frames: np.ndarray, factor: int, *, breaks: Iterable[int] = (),
            on_pair: Callable[[int], None] | None = None) -> np.ndarray: ...


# =============================================================================================
# Metrics


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape (peak 255, MSE over every pixel and
    channel), capped at ``PSNR_CAP`` for identical images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


@lru_cache(maxsize=1)
def _ssim_taps() -> torch.Tensor:
    """The 1-D Gaussian (11 taps, sigma 1.5, summing to 1), float64 ``(11,)``."""
    x = torch.arange(_SSIM_SIZE, dtype=torch.float64) - _SSIM_SIZE // 2
    g = torch.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of two uint8 RGB images ``(h, w, 3)``, h and w >= 11.

    11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 255, population
    (co)variances; the SSIM map is averaged over the positions where the window lies wholly
    inside the image, per channel, then over the channels. Equal to scikit-image's
    ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1, data_range=255)``."""
    if a.shape != b.shape or a.ndim != 3 or min(a.shape[:2]) < _SSIM_SIZE:
        raise ValueError(f"ssim needs two (h, w, c) images of one shape, h, w >= {_SSIM_SIZE}; got {a.shape}, {b.shape}")
    x = torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)  # (c, h, w); a copy, so a read-only frame is fine
    y = torch.from_numpy(b.astype(np.float64)).permute(2, 0, 1)
    c = x.shape[0]
    stack = torch.cat([x, y, x * x, y * y, x * y])[None]  # (1, 5c, h, w)
    g = _ssim_taps()
    # separable Gaussian, no padding: (1, 5c, h - 10, w - 10)
    blurred = F.conv2d(stack, g.view(1, 1, 1, -1).expand(5 * c, 1, 1, -1), groups=5 * c)
    blurred = F.conv2d(blurred, g.view(1, 1, -1, 1).expand(5 * c, 1, -1, 1), groups=5 * c)
    mx, my, mxx, myy, mxy = blurred[0].split(c)
    vx, vy, vxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = (_SSIM_K1 * 255) ** 2, (_SSIM_K2 * 255) ** 2
    s = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean(dim=(1, 2)).mean())


# =============================================================================================
# Tasks


def task_skip(task: str) -> int:
    """Frames from one known frame to the next for a task name ("x2" -> 2)."""
    if task not in TASKS:
        raise UserInputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return TASKS[task]


def task_windows(num_frames: int, task: str, start: float = 0.0, *, name: str = "the clip") -> list[int]:
    """First frames k of the task's windows [k, k + skip]: k a multiple of skip, the window
    inside the clip, and k >= start * num_frames (every frame of the window then lies in the
    part of the clip after ``start``). Raises ``UserInputError`` when there is none."""
    skip = task_skip(task)
    if not 0.0 <= start < 1.0:
        raise UserInputError(f"start must be a fraction of the clip in [0, 1), got {start:g}; e.g. 0.7 for its last 30%")
    first = math.ceil(start * num_frames - 1e-9)  # 1e-9: 0.14 * 100 is 14.000000000000002 in floats, and frame 14 must count
    first = -(-first // skip) * skip  # the grid of known frames stays anchored at frame 0
    windows = list(range(first, num_frames - skip, skip))
    if not windows:
        where = f" from frame {first} on (start {start:g})" if start > 0 else ""
        raise UserInputError(
            f"{name} has {num_frames} frames: too short for {task}, which needs {skip + 1} frames{where}; "
            f"use a longer clip{' or a smaller start' if start > 0 else ''}"
        )
    return windows


def spans_cut(k: int, skip: int, cuts: Sequence[int]) -> bool:
    """Whether the window [k, k + skip] crosses a scene cut (a cut at c: frame c starts a shot)."""
    return any(k < c <= k + skip for c in cuts)


# =============================================================================================
# Methods


def minterpolate_filter(out_rate: Fraction) -> str:
    """ffmpeg's motion-compensated interpolation to `out_rate` fps, in the mode that scores best
    of its own (mci / aobmc / bidir / vsbmc=1)."""
    return (f"minterpolate=fps={out_rate.numerator}/{out_rate.denominator}"
            ":mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1")


class FfmpegMinterpolate:
    """ffmpeg's motion-compensated interpolation (``minterpolate``, mci / aobmc / bidir /
    vsbmc=1), run over a whole run of known frames at once."""

    def __init__(self) -> None:
        import imageio_ffmpeg

        self.exe = imageio_ffmpeg.get_ffmpeg_exe()

    def __call__(self, known: np.ndarray, skip: int, fps: float) -> np.ndarray:
        """Known frames uint8 ``(n, h, w, 3)`` at ``fps`` -> ``((n - 1) * skip + 1, h, w, 3)``
        at ``skip * fps``, where output frame ``skip * i`` is known frame ``i``."""
        n, h, w, _ = known.shape
        rate = Fraction(fps).limit_denominator(1001)  # exact rationals: output pts land on input pts
        out_rate = rate * skip
        # minterpolate works in YUV: yuv444p keeps full chroma (what ffmpeg picks on its own for
        # rgb24 input, named so it does not depend on format negotiation)
        vf = f"format=yuv444p,{minterpolate_filter(out_rate)}"
        cmd = [
            self.exe, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
            "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0",
            "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        ]  # fmt: skip
        # minterpolate emits frames up to the second-to-last input frame only (it holds the
        # last one back as look-ahead and has no flush): a repeat of the last frame releases
        # the last window; the interpolation between two frames uses only their own motion
        # vectors, so the repeat does not change it.
        raw = np.concatenate([known, known[-1:]]).tobytes()
        proc = subprocess.run(cmd, input=raw, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", errors="replace")[-2000:].strip()
            raise MavError(f"ffmpeg minterpolate failed: {err}")
        frames = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, h, w, 3)
        want = (n - 1) * skip + 1
        if frames.shape[0] < want:
            raise MavError(f"ffmpeg minterpolate gave {frames.shape[0]} frames for {n} known frames x{skip}; expected {want}")
        frames = frames[:want]
        # a cheap guard on the alignment: the known frames come back through YUV (about 0.5
        # levels of rounding), while an off-by-one frame would differ by a frame's motion
        drift = np.abs(frames[::skip].astype(np.int16) - known.astype(np.int16)).mean(axis=(1, 2, 3))
        if drift.max() > 2.0:
            i = int(drift.argmax())
            raise MavError(f"ffmpeg minterpolate output frame {skip * i} differs from known frame {i} (mean {drift[i]:.1f} levels): misaligned output")
        return frames


Method = Interpolator | RunInterpolator | FfmpegMinterpolate


def baseline_methods(names: Sequence[str]) -> dict[str, Method]:
    """The classical methods by name: "blend" (cross-fade), "ffmpeg" (minterpolate), "dis"
    (OpenCV DIS flow, medium preset, backward warp + blend; one flow object reused)."""
    from mavcli.flow import DisFlow, dis_blend, linear_blend

    methods: dict[str, Method] = {}
    for name in names:
        if name == "blend":
            methods[name] = linear_blend
        elif name == "ffmpeg":
            methods[name] = FfmpegMinterpolate()
        elif name == "dis":
            methods[name] = partial(dis_blend, flow=DisFlow("medium"))
        else:
            raise UserInputError(f"unknown method {name!r}; choose from {', '.join(BASELINES)}")
    return methods


# =============================================================================================
# Clips and the evaluation


@dataclass
class EvalClip:
    """A clip ready to evaluate: ``frames`` uint8 ``(f, h, w, 3)`` (resized), ``cuts`` the
    frame indices that start a new shot (over the whole clip)."""

    path: Path
    frames: np.ndarray
    fps: float
    cuts: list[int]

    @property
    def name(self) -> str:
        return self.path.name


def load_clip(path: str | os.PathLike[str], height: int | None = None) -> EvalClip:
    """Decode a clip, resize it to ``height`` (aspect kept, width rounded; INTER_AREA) unless
    None, and find its scene cuts."""
    import cv2

    clip = read_video(path, min_frames=2)
    frames = clip.frames
    h, w = frames.shape[1:3]
    if height is not None and height != h:
        size = (round(w * height / h), height)
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    return EvalClip(Path(path), frames, clip.fps, detect_scene_cuts(frames))


@dataclass
class InterpResult:
    """Scores of one method on one task of one clip.

    ``psnr`` (dB), ``ssim``: means over the ``frames`` rebuilt frames of the windows that span
    no scene cut (None when every window does); ``*_with_cuts``: over every window.
    ``ms_per_frame``: wall time over every rebuilt frame. ``windows``: windows evaluated,
    ``windows_left_out`` of them spanning a cut."""

    clip: str
    task: str
    method: str
    psnr: float | None
    ssim: float | None
    frames: int
    ms_per_frame: float
    windows: int
    windows_left_out: int
    psnr_with_cuts: float
    ssim_with_cuts: float
    frames_with_cuts: int


@dataclass
class ClipReport:
    """Every result on one clip, with its size (after resizing) and scene cuts."""

    path: str
    width: int
    height: int
    num_frames: int
    fps: float
    cuts: list[int]
    results: list[InterpResult] = field(default_factory=list)


ProgressFn = Callable[[str, str, int, int], None]  # (task, method, windows done, windows in all)


def _rebuild(method: Method, clip: EvalClip, skip: int, windows: list[int], on_window: Callable[[int], None]) -> tuple[list[list[np.ndarray]], float]:
    """Rebuilt frames per window (skip - 1 uint8 ``(h, w, 3)`` each) and the wall seconds spent."""
    frames = clip.frames
    if isinstance(method, FfmpegMinterpolate):
        k0, k1 = windows[0], windows[-1] + skip
        t0 = time.perf_counter()
        out = method(frames[k0 : k1 + 1 : skip], skip, clip.fps)
        seconds = time.perf_counter() - t0
        on_window(len(windows))
        return [list(out[k - k0 + 1 : k - k0 + skip]) for k in windows], seconds
    if isinstance(method, RunInterpolator):
        # the known frames of the evaluated part only (as ffmpeg gets them); pairs across a cut
        # are rebuilt on their own and lend no motion to their neighbours
        known = frames[windows[0] : windows[-1] + skip + 1 : skip]
        breaks = [i for i, k in enumerate(windows) if spans_cut(k, skip, clip.cuts)]
        t0 = time.perf_counter()
        out = method.run(known, skip, breaks=breaks, on_pair=lambda i: on_window(i + 1))
        seconds = time.perf_counter() - t0
        return [list(out[i * skip + 1 : (i + 1) * skip]) for i in range(len(windows))], seconds
    times = [j / skip for j in range(1, skip)]
    rebuilt, seconds = [], 0.0
    for i, k in enumerate(windows):
        t0 = time.perf_counter()
        out = method(frames[k], frames[k + skip], times)
        seconds += time.perf_counter() - t0
        if len(out) != skip - 1 or any(o.shape != frames[k].shape or o.dtype != np.uint8 for o in out):
            raise MavError(f"an interpolator returned {len(out)} frames for {skip - 1} times, or frames not uint8 {frames[k].shape}")
        rebuilt.append(out)
        on_window(i + 1)
    return rebuilt, seconds


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate_clip(
    clip: EvalClip,
    tasks: Sequence[str],
    methods: Mapping[str, Method],
    *,
    start: float = 0.0,
    on_progress: ProgressFn | None = None,
) -> ClipReport:
    """Run every method on every task of one clip and score the rebuilt frames.

    Args:
        clip: from ``load_clip``.
        tasks: names from ``TASKS``.
        methods: name -> ``Interpolator`` or ``FfmpegMinterpolate``.
        start: evaluate only windows from frame ``start * num_frames`` on (see ``task_windows``).
        on_progress: called as windows finish.
    """
    n, h, w = clip.frames.shape[:3]
    windows_of = {task: task_windows(n, task, start, name=clip.name) for task in tasks}  # all checked before any work
    report = ClipReport(str(clip.path), w, h, n, clip.fps, list(clip.cuts))
    for task, windows in windows_of.items():
        skip = TASKS[task]
        cut = [spans_cut(k, skip, clip.cuts) for k in windows]
        for name, method in methods.items():

            def on_window(done: int) -> None:  # called within this iteration: late binding is fine
                if on_progress is not None:
                    on_progress(task, name, done, len(windows))

            rebuilt, seconds = _rebuild(method, clip, skip, windows, on_window)
            scores: list[tuple[bool, float, float]] = []  # (spans a cut, psnr, ssim) per frame
            for k, frames, spans in zip(windows, rebuilt, cut):
                for j, frame in enumerate(frames, start=1):
                    truth = clip.frames[k + j]
                    scores.append((spans, psnr(frame, truth), ssim(frame, truth)))
            kept = [s for s in scores if not s[0]]
            report.results.append(
                InterpResult(
                    clip=clip.name,
                    task=task,
                    method=name,
                    psnr=_mean([s[1] for s in kept]),
                    ssim=_mean([s[2] for s in kept]),
                    frames=len(kept),
                    ms_per_frame=1000 * seconds / len(scores),
                    windows=len(windows),
                    windows_left_out=sum(cut),
                    psnr_with_cuts=float(np.mean([s[1] for s in scores])),
                    ssim_with_cuts=float(np.mean([s[2] for s in scores])),
                    frames_with_cuts=len(scores),
                )
            )
    return report


def write_report(reports: Sequence[ClipReport], path: str | os.PathLike[str], settings: Mapping[str, object]) -> Path:
    """Write ``{"settings": ..., "clips": [...]}`` as JSON, atomically (a hidden temporary
    file beside ``path`` replaces it once complete)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(json.dumps({"settings": dict(settings), "clips": [asdict(r) for r in reports]}, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = [
    "BASELINES", "PSNR_CAP", "TASKS", "ClipReport", "EvalClip", "FfmpegMinterpolate", "InterpResult",
    "Interpolator", "Method", "RunInterpolator", "baseline_methods", "evaluate_clip", "load_clip", "psnr",
    "spans_cut", "ssim", "task_skip", "task_windows", "write_report",
]
