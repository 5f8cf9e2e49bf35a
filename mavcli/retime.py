"""Which output frame shows what: the time grid of a frame-rate change (no video I/O, no model).

An input video is a list of frame times `in_times` (seconds from its first frame, increasing;
variable frame rate allowed) and a `duration` (the last frame is shown until then). A frame-rate
change asks for output frames at the times `out_times` (in the input's clock). Each output time
either coincides with an input frame (which is then copied unchanged) or lies strictly inside a
pair of neighbouring input frames, at the fraction `s` in (0, 1) of the pair's interval, and is
interpolated there. Times after the last input frame hold it, so the duration, and with it the
audio sync, is kept.

`plan_pairs` turns the two grids into one list per input frame i: the values `s` of the output
frames that fall in [t_i, t_i+1). `s == 0.0` means "frame i itself"; `s == 1.0` means "frame i+1
itself", used for pairs that span a scene cut, which are bridged by the nearer frame and never
blended.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mavcli.errors import UserInputError
from mavcli.video.common import exact_rate

#: two times closer than this (seconds) are the same instant: container timestamps are rounded
#: to their time base (e.g. 1/12800 s for mp4), far below a frame period
SAME_INSTANT = 1e-4


def parse_rate(text: str, option: str = "--fps") -> float:
    """A frame rate as people write it: '60', '25', a fraction '60000/1001', or the rounded
    NTSC rates '23.976', '29.97', '47.952', '59.94', '119.88', '239.76', which mean exactly
    N * 1000/1001 (as in ffmpeg's 'ntsc' and every editor: 59.94 fps video is 60000/1001)."""
    t = text.strip()
    try:
        if "/" in t:
            num, den = t.split("/")
            value = float(num) / float(den)
        else:
            value = float(t)
    except (ValueError, ZeroDivisionError):
        raise UserInputError(f"{option} {text!r} is not a frame rate; write e.g. 60, 59.94 or 60000/1001") from None
    if not (math.isfinite(value) and value > 0):
        raise UserInputError(f"{option} must be a positive number of frames per second; got {text}")
    return value if "/" in t else exact_rate(value)


@dataclass(frozen=True)
class Retiming:
    """`out_times` in the input's clock and the rate `fps` the output is written at."""

    out_times: list[float]
    fps: float
    mode: str  # "factor", "fps" or "slowmo"
    amount: float  # the factor, target fps or slow-motion factor asked for

    @property
    def label(self) -> str:
        """A short name for output files: x2, 60fps, slowmo4."""
        a = f"{round(self.amount, 3):g}"  # 59.94fps for 60000/1001
        return {"factor": f"x{a}", "fps": f"{a}fps", "slowmo": f"slowmo{a}"}[self.mode]


def _grid(step: float, duration: float) -> list[float]:
    """k * step for every k with k * step < duration (the last instant shown is excluded)."""
    count = max(1, math.ceil(duration / step - SAME_INSTANT / step))
    return [k * step for k in range(count)]


def retiming(in_fps: float, duration: float, *, factor: int | None = None, fps: float | None = None,
             slowmo: int | None = None) -> Retiming:
    """The output grid for one of three requests (exactly one given).

    - `factor` N (integer >= 2): N times the frames, written at N times `in_fps`.
    - `fps` TARGET (> `in_fps`): output frame k at k / TARGET, written at TARGET.
    - `slowmo` N (integer >= 2): N times the frames, written at `in_fps` (N times as long).

    `in_fps` is the input's nominal (or, for variable-rate input, mean) frame rate and
    `duration` its length in seconds."""
    given = [n for n, v in (("--factor", factor), ("--fps", fps), ("--slowmo", slowmo)) if v is not None]
    if len(given) != 1:
        raise UserInputError(f"give exactly one of --factor, --fps or --slowmo; got {', '.join(given) or 'none'}")
    if not (in_fps > 0 and math.isfinite(in_fps) and duration > 0):
        raise UserInputError(f"the input's frame rate ({in_fps}) and duration ({duration} s) must be positive")
    for name, value in (("--factor", factor), ("--slowmo", slowmo)):
        if value is not None and (int(value) != value or value < 2):
            raise UserInputError(f"{name} must be a whole number >= 2; got {value:g}")
    if factor is not None:
        out_fps = in_fps * factor
        return Retiming(_grid(1.0 / out_fps, duration), out_fps, "factor", factor)
    if slowmo is not None:
        return Retiming(_grid(1.0 / (in_fps * slowmo), duration), in_fps, "slowmo", slowmo)
    assert fps is not None
    if not (fps > 0 and math.isfinite(fps)):
        raise UserInputError(f"--fps must be a positive number; got {fps:g}")
    if fps > 1000:
        raise UserInputError(f"--fps {fps:g} is above 1000, which no player shows; choose a lower rate")
    if fps <= in_fps * (1 + 1e-6):
        raise UserInputError(
            f"--fps {fps:g} is not above the input's {in_fps:g} fps; mav interpolate only adds frames "
            f"(to lower the rate, drop frames with ffmpeg -vf fps={fps:g})")
    return Retiming(_grid(1.0 / fps, duration), fps, "fps", fps)


def plan_pairs(in_times: Sequence[float], out_times: Iterable[float], cuts: Iterable[int] = ()) -> list[list[float]]:
    """For each input frame i, the positions `s` of the output frames in [t_i, t_i+1) (see the
    module docstring). `cuts`: indices of frames that start a new shot."""
    n = len(in_times)
    if n == 0:
        raise UserInputError("the input has no frames")
    if any(b <= a for a, b in zip(in_times, in_times[1:])):
        raise UserInputError("the input's frame times must increase; the file's timestamps are broken "
                             "(re-mux it, e.g. ffmpeg -i in.mp4 -c copy fixed.mp4)")
    cut_set = {int(c) for c in cuts}
    plan: list[list[float]] = [[] for _ in range(n)]
    times = list(in_times)
    for t in out_times:
        i = max(0, bisect.bisect_right(times, t + SAME_INSTANT) - 1)
        if abs(t - times[i]) <= SAME_INSTANT or i == n - 1:
            plan[i].append(0.0)  # an input frame's own time, or after the last: hold it
            continue
        s = (t - times[i]) / (times[i + 1] - times[i])
        if i + 1 in cut_set:
            s = 0.0 if s < 0.5 else 1.0  # never blend two shots: show the nearer one
        plan[i].append(s)
    return plan
