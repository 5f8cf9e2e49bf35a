"""`FlowInterpolator`: frame interpolation of real footage with the flow-refinement network
(models/flowinterp.py), the default of `mav interpolate`.

Per pair of neighbouring frames: DIS optical flow both ways on the CPU (OpenCV), then one
deterministic network evaluation per new frame. The neighbouring pairs' flows (same shot) turn
the linear motion into constant acceleration (Xu et al. 2019) at no extra flow cost. Memory is
bounded by a chunk of frames and three pairs' flows, so any length and size of video streams
through (`interpolate_stream`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from mavcli.errors import PackError, UserInputError
from mavcli.flow import DisFlow, to_tensor, to_uint8
from mavcli.models.flowinterp import FlowInterpNet
from mavcli.segments import stream_segments
from mavcli.weights.pack import load_pack

STAGE = "flow_interpolation"


class FlowInterpolator:
    """`net`: a trained FlowInterpNet. `dis_preset`: ultrafast, fast or medium (the network
    was trained on medium). `quadratic`: fit each pair's motion to its neighbours' (constant
    acceleration, the default); False: linear motion from the pair alone, as the network was
    trained."""

    def __init__(self, net: FlowInterpNet, *, device: str | torch.device = "cpu", dis_preset: str = "medium",
                 path: Path | None = None, quadratic: bool = True) -> None:
        self.device = torch.device(device)
        self.quadratic = quadratic
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

    def _flow(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        """DIS flow a -> b as a tensor `(1, 2, h, w)` on the device."""
        return self.flow.tensor(a, b).to(self.device)

    @staticmethod
    def _check(frame0: np.ndarray, frame1: np.ndarray, times: list[float]) -> None:
        if frame0.shape != frame1.shape or frame0.ndim != 3 or frame0.shape[-1] != 3:
            raise UserInputError(f"frames must be two (height, width, 3) RGB arrays of one size; got {frame0.shape}, {frame1.shape}")
        if any(not 0 < t < 1 for t in times):
            raise UserInputError(f"times must lie strictly between 0 and 1; got {times}")

    def _frames(self, frame0, frame1, flows, times: list[float], f0p=None, f12=None) -> list[np.ndarray]:
        i0, i1 = to_tensor(frame0).to(self.device), to_tensor(frame1).to(self.device)
        f01, f10 = (f.to(self.device) for f in flows)
        out = []
        for t in times:  # one evaluation per new frame keeps memory at one frame's activations
            tt = torch.full((1,), t, device=self.device)
            out.append(to_uint8(self.net(i0, i1, f01, f10, tt, f0p, f12).float().cpu()))
        return out

    @torch.inference_mode()
    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times: Iterable[float], *,
                 before: np.ndarray | None = None, after: np.ndarray | None = None) -> list[np.ndarray]:
        """The frames at `times` (each in (0, 1)) between uint8 frames `(h, w, 3)`, as uint8.
        `before` / `after`: the known frames on either side of the pair, when there are any
        (same shot): the motion then follows constant acceleration (`flows_at_quadratic`)."""
        times = [float(t) for t in times]
        self._check(frame0, frame1, times)
        for name, f in (("before", before), ("after", after)):
            if f is not None and f.shape != frame0.shape:
                raise UserInputError(f"the frame {name} the pair must have its size {frame0.shape}; got {f.shape}")
        f0p = None if before is None or not self.quadratic else self._flow(frame0, before)
        f12 = None if after is None or not self.quadratic else self._flow(frame1, after)
        return self._frames(frame0, frame1, self.flow.pair(frame0, frame1), times, f0p, f12)

    @torch.inference_mode()
    def run(self, frames: np.ndarray, factor: int, *, before: np.ndarray | None = None,
            after: np.ndarray | None = None, breaks: Iterable[int] = (),
            on_pair: Callable[[int], None] | None = None) -> np.ndarray:
        """uint8 `(k, h, w, 3)` -> `((k-1)*factor+1, h, w, 3)`; the given frames are kept exactly.

        DIS runs once per pair, both ways, and each pair's flows also serve its neighbours:
        F_i->i-1 is pair i-1's backward flow and F_i+1->i+2 pair i+1's forward flow, so the
        motion between two frames follows constant acceleration at no extra flow cost.
        `before` / `after`: the frames just outside `frames` in the same shot (None: none).
        `breaks`: pairs i (frames i, i+1) that span a scene cut; they use no neighbour, and
        neither of their neighbours uses them. `on_pair(i)` is called as pair i is done."""
        k = len(frames)
        times = [j / factor for j in range(1, factor)]
        if k < 2 or not times:
            return np.asarray(frames)
        broken = {int(i) for i in breaks}
        self._check(frames[0], frames[1], times)
        flows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # pair -> (forward, backward), 3 held at most

        def pair(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            if i not in flows:
                flows[i] = tuple(f.to(self.device) for f in self.flow.pair(frames[i], frames[i + 1]))
            return flows[i]

        out = [frames[0]]
        for i in range(k - 1):
            f0p = f12 = None
            if self.quadratic and i not in broken:
                if i > 0 and i - 1 not in broken:
                    f0p = pair(i - 1)[1]
                elif i == 0 and before is not None:
                    f0p = self._flow(frames[0], before)
                if i + 2 < k and i + 1 not in broken:
                    f12 = pair(i + 1)[0]
                elif i + 2 == k and after is not None:
                    f12 = self._flow(frames[-1], after)
            out += self._frames(frames[i], frames[i + 1], pair(i), times, f0p, f12) + [frames[i + 1]]
            flows.pop(i - 1, None)
            if on_pair is not None:
                on_pair(i)
        return np.stack(out)

    def interpolate_stream(self, frames: Iterable[np.ndarray], factor: int, *, cuts: Iterable[int] = (),
                           chunk: int = 9, callback: Callable[[str, int, int], None] | None = None) -> Iterator[np.ndarray]:
        """`factor` times the frames of a stream of uint8 frames, scene cuts bridged by copies
        (see `mavcli.segments.stream_segments`). Each chunk gets the frames on either side of it,
        so the motion at chunk boundaries follows its neighbours as in `run` on the whole clip:
        the streamed output equals `run(all frames, factor, breaks=pairs across cuts)`."""
        def run_segment(seg: np.ndarray, before: np.ndarray | None, after: np.ndarray | None) -> np.ndarray:
            return self.run(seg, factor, before=before, after=after)

        yield from stream_segments(frames, factor, run_segment, cuts=cuts, chunk=chunk, callback=callback,
                                   context=True)
