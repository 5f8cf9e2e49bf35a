"""`FlowInterpolator`: frame interpolation of real footage with the flow-refinement network
(models/flowinterp.py), the default of `mav interpolate`; `RifeInterpolator`: the same with a
published RIFE network (models/rife.py), `mav interpolate --method rife`.

Per pair of neighbouring frames: DIS optical flow both ways on the CPU (OpenCV), then one
deterministic network evaluation per new frame. The neighbouring pairs' flows (same shot) turn
the linear motion into constant acceleration (Xu et al. 2019) at no extra flow cost. Memory is
bounded by a chunk of frames and three pairs' flows, so any length and size of video streams
through (`retime_stream`, which `mav interpolate` runs; `mavcli.retime` plans the times).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mavcli.errors import PackError, UserInputError
from mavcli.flow import DisFlow, to_tensor, to_uint8
from mavcli.models.flowinterp import FlowInterpNet
from mavcli.models.rife import RifeConfig, RifeNet, load_rife_state_dict
from mavcli.weights.pack import load_pack

STAGE = "flow_interpolation"
#: the smallest frame side DIS optical flow handles (OpenCV refuses smaller images)
MIN_SIDE = 12
#: memory `mav interpolate` takes on the CPU beyond what the process holds once torch and the
#: network are loaded, per pixel of a frame: measured peak resident memory over that base was
#: 337-520 bytes per pixel from 455x256 to 3840x2160 (docs/evaluation.md); ~10% above the most
BYTES_PER_PIXEL = 580
#: the same for RifeInterpolator, per pixel of the padded frame: measured 625-634 bytes at
#: 1280x720 and 1920x1080 (docs/evaluation.md); ~10% above
RIFE_BYTES_PER_PIXEL = 700


class _PairInterpolator:
    """What both real-footage interpolators share: checks, the precision they run in, and
    `run` on top of their streamed `retime_stream`."""

    device: torch.device
    compute_dtype: torch.dtype

    @staticmethod
    def _check(frame0: np.ndarray, frame1: np.ndarray, times: list[float]) -> None:
        if frame0.shape != frame1.shape or frame0.ndim != 3 or frame0.shape[-1] != 3:
            raise UserInputError(f"frames must be two (height, width, 3) RGB arrays of one size; got {frame0.shape}, {frame1.shape}")
        if min(frame0.shape[:2]) < MIN_SIDE:
            h, w = frame0.shape[:2]
            raise UserInputError(f"the frames are {w}x{h}; optical flow needs at least {MIN_SIDE}x{MIN_SIDE} pixels "
                                 f"(scale the video up first, e.g. ffmpeg -vf scale=-2:{MIN_SIDE * 4})")
        if any(not 0 < t < 1 for t in times):
            raise UserInputError(f"times must lie strictly between 0 and 1; got {times}")

    @property
    def precision(self) -> str:
        """'float32' or 'bfloat16'."""
        return str(self.compute_dtype).removeprefix("torch.")

    def autocast(self):
        """The context the network runs in: bfloat16 autocast where `compute_dtype` says so."""
        if self.compute_dtype == torch.bfloat16 and self.device.type in ("cuda", "cpu"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def retime_stream(self, frames: Iterable[np.ndarray], plan: list[list[float]], **kwargs) -> Iterator[np.ndarray]:
        raise NotImplementedError

    @torch.inference_mode()
    def run(self, frames: np.ndarray, factor: int, *, before: np.ndarray | None = None,
            after: np.ndarray | None = None, breaks: Iterable[int] = (),
            on_pair: Callable[[int], None] | None = None) -> np.ndarray:
        """uint8 `(k, h, w, 3)` -> `((k-1)*factor+1, h, w, 3)`; the given frames are kept exactly.

        `before` / `after`: the frames just outside `frames` in the same shot (None: none).
        `breaks`: pairs i (frames i, i+1) that span a scene cut; they use no neighbour, and
        neither of their neighbours uses them (their new frames are still interpolated).
        `on_pair(i)` is called as pair i is done. See `retime_stream` for the motion model."""
        k = len(frames)
        if k < 2 or factor < 2:
            return np.asarray(frames)
        plan = [[j / factor for j in range(factor)] for _ in range(k - 1)] + [[0.0]]
        out = self.retime_stream(iter(frames), plan, breaks=breaks, before=before, after=after, on_pair=on_pair)
        return np.stack(list(out))


class FlowInterpolator(_PairInterpolator):
    """`net`: a trained FlowInterpNet. `dis_preset`: ultrafast, fast or medium (the network
    was trained on medium). `quadratic`: fit each pair's motion to its neighbours' (constant
    acceleration, the default); False: linear motion from the pair alone, as the network was
    trained. `precision`: what the network's convolutions compute in, as for `mav generate`
    (`mavcli.pipeline.resolve_precision`; auto: bfloat16 where the hardware multiplies it).
    Flows, warps and the blend stay float32 either way."""

    def __init__(self, net: FlowInterpNet, *, device: str | torch.device = "cpu", dis_preset: str = "medium",
                 path: Path | None = None, quadratic: bool = True, precision: str = "auto") -> None:
        from mavcli.pipeline import resolve_precision

        self.device = torch.device(device)
        self.quadratic = quadratic
        # bfloat16 moves a frame by at most one level of 255 (PSNR within 0.001 dB on validation
        # windows) and made `mav interpolate` 4-17% faster on a CPU with AVX512-BF16
        self.compute_dtype = resolve_precision(precision, self.device)
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
    def estimate_memory(width: int, height: int) -> int:
        """Bytes that interpolating frames of `width` x `height` on the CPU takes on top of the
        loaded network: the frames held, three pairs' flows and one network evaluation."""
        return BYTES_PER_PIXEL * width * height

    @classmethod
    def check_memory(cls, width: int, height: int, available: int | None = None) -> None:
        """Refuse (UserInputError) frames whose interpolation on the CPU would not fit in the
        memory this process has left (`available`, default: mavcli.runtime.available_memory),
        naming the largest size of that shape that would."""
        from mavcli.runtime import available_memory

        available = available_memory() if available is None else available
        need = cls.estimate_memory(width, height)
        if available is None or need <= available:
            return
        scale = (available / need) ** 0.5
        fit_h = max(MIN_SIDE, int(height * scale) // 2 * 2)
        raise UserInputError(
            f"interpolating {width}x{height} frames needs about {need / 2**30:.1f} GiB of memory and "
            f"{available / 2**30:.1f} GiB is available; free memory, or scale the video down first "
            f"(at most about {fit_h} pixels high fits now: ffmpeg -i in.mp4 -vf scale=-2:{fit_h} out.mp4)")

    def _frames(self, frame0, frame1, flows, times: list[float], f0p=None, f12=None) -> list[np.ndarray]:
        i0, i1 = to_tensor(frame0).to(self.device), to_tensor(frame1).to(self.device)
        f01, f10 = (f.to(self.device) for f in flows)
        out = []
        for t in times:  # one evaluation per new frame keeps memory at one frame's activations
            tt = torch.full((1,), t, device=self.device)
            with self.autocast():
                frame = self.net(i0, i1, f01, f10, tt, f0p, f12)
            out.append(to_uint8(frame.float().cpu()))
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
    def retime_stream(self, frames: Iterable[np.ndarray], plan: list[list[float]], *, in_times: list[float] | None = None,
                      cuts: Iterable[int] = (), breaks: Iterable[int] = (), before: np.ndarray | None = None,
                      after: np.ndarray | None = None, callback: Callable[[str, int, int], None] | None = None,
                      on_pair: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
        """Frames for a frame-rate change, streamed: `plan[i]` lists the positions s of the
        output frames between input frames i and i+1 (`mavcli.retime.plan_pairs`: 0 is frame i
        itself, 1 frame i+1, anything between is interpolated at that fraction).

        DIS runs once per pair that needs it, both ways, and each pair's flows also serve its
        neighbours: F_i->i-1 is pair i-1's backward flow and F_i+1->i+2 pair i+1's forward flow,
        so the motion between two frames follows constant acceleration at no extra flow cost
        (Xu et al. 2019). Neighbours are used only within a shot (`cuts`: first frames of new
        shots; `breaks`: pairs i to treat as cut) and, when `in_times` are given, only where
        their interval is within 10% of the pair's (the model assumes even spacing). Four
        input frames and three pairs' flows are held at a time. `callback("frames", i, n)` as
        input frame i is consumed; `on_pair(i)` once pair i's frames are out."""
        n = len(plan)
        broken = {int(c) - 1 for c in cuts} | {int(b) for b in breaks}
        frame = _FrameFeed(frames, n, callback, self._check)
        flows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def pair(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            if i not in flows:
                flows[i] = tuple(f.to(self.device) for f in self.flow.pair(frame(i), frame(i + 1)))
            return flows[i]

        def even(i: int, j: int) -> bool:  # pairs i and j have about the same interval
            if in_times is None:
                return True
            a, b = in_times[i + 1] - in_times[i], in_times[j + 1] - in_times[j]
            return abs(a - b) <= 0.1 * max(a, b)

        for i in range(n):
            fr = frame(i)
            new = [s for s in plan[i] if 0.0 < s < 1.0]
            out: dict[float, np.ndarray] = {}
            if new:
                f0p = f12 = None
                if self.quadratic and i not in broken:
                    if i > 0 and i - 1 not in broken and even(i - 1, i):
                        f0p = pair(i - 1)[1]
                    elif i == 0 and before is not None:
                        f0p = self._flow(fr, before)
                    if i + 2 < n and i + 1 not in broken and even(i + 1, i):
                        f12 = pair(i + 1)[0]
                    elif i + 2 == n and after is not None:
                        f12 = self._flow(frame(i + 1), after)
                out = dict(zip(new, self._frames(fr, frame(i + 1), pair(i), new, f0p, f12)))
            for s in plan[i]:
                yield fr if s == 0.0 else frame(i + 1) if s == 1.0 else out[s]
            flows.pop(i - 1, None)
            frame.forget(i - 1)
            if on_pair is not None and i < n - 1:
                on_pair(i)
        frame.drain()


class _FrameFeed:
    """The input frames of a retiming, read as they are first needed and checked as they come
    (RGB, one size, as many as the plan expects); `feed(i)` is frame i (held until forgotten)."""

    def __init__(self, frames: Iterable[np.ndarray], expected: int,
                 callback: Callable[[str, int, int], None] | None,
                 check: Callable[[np.ndarray, np.ndarray, list[float]], None]) -> None:
        self.source, self.expected, self.callback, self.check = iter(frames), expected, callback, check
        self.held: dict[int, np.ndarray] = {}
        self.read = 0

    def __call__(self, i: int) -> np.ndarray:
        while self.read <= i:
            try:
                f = next(self.source)
            except StopIteration:
                raise UserInputError(f"the video ended after {self.read} frames; {self.expected} were expected "
                                     f"(is the file truncated?)") from None
            if self.read == 0:
                self.check(f, f, [])
            elif f.shape != self.held.get(self.read - 1, f).shape:
                raise UserInputError(f"frame {self.read} is {f.shape}, unlike the frames before it")
            self.held[self.read] = f
            self.read += 1
            if self.callback is not None:
                self.callback("frames", self.read, self.expected)
        return self.held[i]

    def forget(self, i: int) -> None:
        self.held.pop(i, None)

    def drain(self) -> None:
        """Consume the frames beyond the plan, so that a reader closes cleanly."""
        for rest in self.source:
            del rest


class RifeInterpolator(_PairInterpolator):
    """Frame interpolation with a published RIFE network (`RifeNet`, models/rife.py): one
    evaluation per new frame at any time t, each pair of frames on its own (RIFE estimates its
    flows itself, so no DIS and no neighbours). `scale` < 1 estimates the flows on smaller frames
    (Practical-RIFE suggests 0.5 for 4K). `precision` auto: bfloat16 on CUDA; float32 on the CPU,
    because what bfloat16 does to the published weights' frames has not been measured there."""

    def __init__(self, net: RifeNet, *, device: str | torch.device = "cpu", path: Path | None = None,
                 precision: str = "auto", scale: float = 1.0) -> None:
        from mavcli.pipeline import resolve_precision

        if not 0 < scale <= 1:
            raise UserInputError(f"the RIFE scale must be in (0, 1]; got {scale}")
        self.device = torch.device(device)
        self.compute_dtype = (torch.float32 if precision == "auto" and self.device.type == "cpu"
                              else resolve_precision(precision, self.device))
        self.net = net.to(self.device).float().eval()
        self.path = path
        self.scale = scale

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu", **kwargs) -> RifeInterpolator:
        """Load the one safetensors file of a RIFE pack folder (weights.toml's `rife`), strictly."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(path)
        files = sorted(folder.glob("*.safetensors"))
        if len(files) != 1:
            raise PackError(f"{folder} should hold one RIFE network (.safetensors); found {len(files)}. "
                            "Fetch it with: mav download weights rife")
        try:
            tensors = load_file(files[0])
        except (SafetensorError, OSError) as err:
            raise PackError(f"{files[0]} is not a readable safetensors file ({err}); "
                            "fetch it again with: mav download weights rife") from None
        net = RifeNet(RifeConfig())
        try:
            load_rife_state_dict(net, tensors)
        except (ValueError, RuntimeError) as err:
            raise PackError(f"{files[0]}: {err}") from None
        return cls(net, device=device, path=folder, **kwargs)

    @staticmethod
    def estimate_memory(width: int, height: int, pad_multiple: int = RifeConfig.pad_multiple) -> int:
        """Bytes one new frame takes on the CPU on top of the loaded network (frames padded)."""
        return RIFE_BYTES_PER_PIXEL * (width + -width % pad_multiple) * (height + -height % pad_multiple)

    @classmethod
    def check_memory(cls, width: int, height: int, available: int | None = None) -> None:
        """As `FlowInterpolator.check_memory`, for RIFE's activations."""
        from mavcli.runtime import available_memory

        available = available_memory() if available is None else available
        need = cls.estimate_memory(width, height)
        if available is not None and need > available:
            raise UserInputError(
                f"RIFE on {width}x{height} frames needs about {need / 2**30:.1f} GiB of memory and "
                f"{available / 2**30:.1f} GiB is available; free memory or scale the video down first")

    def _pad(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 `(h, w, 3)` -> float `(1, 3, H, W)`, zero-padded at the bottom and right to the
        multiple Practical-RIFE pads to (128 at full scale, 256 at scale 0.5)."""
        m = int(self.net.config.pad_multiple / self.scale)
        h, w = frame.shape[:2]
        x = to_tensor(frame).to(self.device)
        return F.pad(x, (0, -w % m, 0, -h % m))

    def _frames(self, frame0: np.ndarray, frame1: np.ndarray, times: list[float]) -> list[np.ndarray]:
        h, w = frame0.shape[:2]
        i0, i1 = self._pad(frame0), self._pad(frame1)
        out = []
        for t in times:  # one evaluation per new frame keeps memory at one frame's activations
            with self.autocast():
                frame = self.net(i0, i1, torch.full((1,), t, device=self.device), self.scale)
            out.append(to_uint8(frame[..., :h, :w].float().cpu()))
        return out

    @torch.inference_mode()
    def __call__(self, frame0: np.ndarray, frame1: np.ndarray, times: Iterable[float], *,
                 before: np.ndarray | None = None, after: np.ndarray | None = None) -> list[np.ndarray]:
        """The frames at `times` (each in (0, 1)) between uint8 frames `(h, w, 3)`, as uint8.
        `before` / `after` are taken for `FlowInterpolator`'s sake and not used: RIFE sees a pair."""
        times = [float(t) for t in times]
        self._check(frame0, frame1, times)
        return self._frames(frame0, frame1, times)

    @torch.inference_mode()
    def retime_stream(self, frames: Iterable[np.ndarray], plan: list[list[float]], *, in_times: list[float] | None = None,
                      cuts: Iterable[int] = (), breaks: Iterable[int] = (), before: np.ndarray | None = None,
                      after: np.ndarray | None = None, callback: Callable[[str, int, int], None] | None = None,
                      on_pair: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
        """As `FlowInterpolator.retime_stream`, each pair on its own: `in_times`, `cuts`,
        `breaks`, `before` and `after` change nothing here (`plan` already places the frames and
        RIFE uses no neighbours). Two input frames are held at a time."""
        n = len(plan)
        frame = _FrameFeed(frames, n, callback, self._check)
        for i in range(n):
            fr = frame(i)
            new = [s for s in plan[i] if 0.0 < s < 1.0]
            out = dict(zip(new, self._frames(fr, frame(i + 1), new))) if new else {}
            for s in plan[i]:
                yield fr if s == 0.0 else frame(i + 1) if s == 1.0 else out[s]
            frame.forget(i - 1)
            if on_pair is not None and i < n - 1:
                on_pair(i)
        frame.drain()
