"""`FlowInterpolator`: frame interpolation of real footage with the flow-refinement network
(models/flowinterp.py), the default of `mav interpolate`.

Per pair of neighbouring frames: DIS optical flow both ways on the CPU (OpenCV), then one
deterministic network evaluation per new frame. Memory is bounded by one frame pair, so any
length and size of video streams through (`interpolate_stream`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from mavcli.errors import PackError, UserInputError
from mavcli.flow import DisFlow, to_tensor, to_uint8
from mavcli.models.flowinterp import FlowInterpNet
from mavcli.video import stream_segments
from mavcli.weights.pack import load_pack

STAGE = "flow_interpolation"


class FlowInterpolator:
    """`net`: a trained FlowInterpNet. `dis_preset`: ultrafast, fast or medium (the network
    was trained on medium)."""

    def __init__(self, net: FlowInterpNet, *, device: str | torch.device = "cpu", dis_preset: str = "medium",
                 path: Path | None = None) -> None:
        self.device = torch.device(device)
        # channels-last weights: oneDNN's convolutions run ~1.4x faster on this CPU
        self.net = net.to(self.device).float().eval().to(memory_format=torch.channels_last)
        self.flow = DisFlow(dis_preset)
        self.path = path

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu", **kwargs) -> FlowInterpolator:
        """Load from a pack folder that holds a `flow_interpolation` network."""
        pack = load_pack(path, stages=(STAGE,))
        if STAGE not in pack.networks:
            raise PackError(f"the pack at {path} has no {STAGE} network; use the realinterp pack (mav packs)")
        return cls(pack.networks[STAGE], device=device, path=Path(path), **kwargs)

    @torch.inference_mode()
    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times: Iterable[float]) -> list[np.ndarray]:
        """The frames at `times` (each in (0, 1)) between uint8 frames `(h, w, 3)`, as uint8."""
        times = [float(t) for t in times]
        if frame0.shape != frame1.shape or frame0.ndim != 3 or frame0.shape[-1] != 3:
            raise UserInputError(f"frames must be two (height, width, 3) RGB arrays of one size; got {frame0.shape}, {frame1.shape}")
        if any(not 0 < t < 1 for t in times):
            raise UserInputError(f"times must lie strictly between 0 and 1; got {times}")
        f01, f10 = self.flow.pair(frame0, frame1)
        i0, i1 = to_tensor(frame0).to(self.device), to_tensor(frame1).to(self.device)
        f01, f10 = f01.to(self.device), f10.to(self.device)
        out = []
        for t in times:  # one evaluation per new frame keeps memory at one frame's activations
            tt = torch.full((1,), t, device=self.device)
            out.append(to_uint8(self.net(i0, i1, f01, f10, tt).float().cpu()))
        return out

    def run(self, frames: np.ndarray, factor: int) -> np.ndarray:
        """uint8 `(k, h, w, 3)` -> `((k-1)*factor+1, h, w, 3)`; the given frames are kept exactly."""
        times = [j / factor for j in range(1, factor)]
        out = [frames[0]]
        for a, b in zip(frames[:-1], frames[1:]):
            out += self(a, b, times) + [b]
        return np.stack(out)

    def interpolate_stream(self, frames: Iterable[np.ndarray], factor: int, *, cuts: Iterable[int] = (),
                           chunk: int = 9, callback: Callable[[str, int, int], None] | None = None) -> Iterator[np.ndarray]:
        """`factor` times the frames of a stream of uint8 frames, scene cuts bridged by copies
        (see `mavcli.video.stream_segments`)."""
        yield from stream_segments(frames, factor, lambda seg: self.run(seg, factor), cuts=cuts, chunk=chunk,
                                   callback=callback)
