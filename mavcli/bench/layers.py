"""Layer benchmark (issue 3): mavcli's Pseudo3DConv and SpatioTemporalAttention against
make-a-video-pytorch 0.4.0's PseudoConv3d and SpatioTemporalAttention, same shapes, same torch,
one process, interleaved rounds. Reports median ms, the speed-up ratio (anchor / mavcli) and
achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter on mavcli's layer) beside this
machine's dense matmul rate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mavcli.bench.timing import interleaved_medians, matmul_gflops
from mavcli.nn import Pseudo3DConv, SpatioTemporalAttention


@dataclass
class LayerRow:
    layer: str
    mode: str  # "forward" (inference mode) or "forward+backward"
    mavcli_ms: float
    anchor_ms: float | None
    gflop: float

    @property
    def speedup(self) -> float | None:
        return None if self.anchor_ms is None else self.anchor_ms / self.mavcli_ms

    @property
    def gflops(self) -> float:
        return self.gflop / (self.mavcli_ms / 1e3)


def _anchor_layers(dim: int, dim_head: int, heads: int):
    try:
        import make_a_video_pytorch as anchor
    except ImportError:
        return None
    return anchor.PseudoConv3d(dim=dim, kernel_size=3), anchor.SpatioTemporalAttention(dim=dim, dim_head=dim_head, heads=heads)


def _count_gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def run_layer_bench(
    *,
    shape: tuple[int, int, int, int, int] = (1, 256, 8, 16, 16),
    dim_head: int = 64,
    heads: int = 8,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    rounds: int = 15,
) -> tuple[list[LayerRow], float, bool]:
    """Time both implementations; returns (rows, matmul GFLOP/s, anchor_found)."""
    torch.manual_seed(0)
    dim = shape[1]
    ours = {
        "Pseudo3DConv": Pseudo3DConv(dim=dim, kernel_size=3),
        "SpatioTemporalAttention": SpatioTemporalAttention(dim=dim, dim_head=dim_head, heads=heads),
    }
    anchors = _anchor_layers(dim, dim_head, heads)
    theirs = dict(zip(ours, anchors)) if anchors else {}
    for m in [*ours.values(), *theirs.values()]:
        m.to(device=device, dtype=dtype)
    x = torch.randn(shape, device=device, dtype=dtype)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if dtype == torch.bfloat16 and device.startswith("cuda")
        else contextlib.nullcontext()
    )

    def forward(m):
        def run():
            with torch.inference_mode(), autocast:
                m(x)
        return run

    def forward_backward(m):
        xg = x.clone().requires_grad_(True)

        def run():
            with autocast:
                y = m(xg)
            y.float().square().mean().backward()
            m.zero_grad(set_to_none=True)
            xg.grad = None
        return run

    rows = []
    for name in ours:
        for mode, make in (("forward", forward), ("forward+backward", forward_backward)):
            fns = {"mavcli": make(ours[name])}
            if name in theirs:
                fns["anchor"] = make(theirs[name])
            gflop = _count_gflop(fns["mavcli"])
            t = interleaved_medians(fns, rounds=rounds, device=device)
            rows.append(LayerRow(name, mode, t["mavcli"] * 1e3, t["anchor"] * 1e3 if "anchor" in t else None, gflop))
    return rows, matmul_gflops(device, dtype), bool(anchors)
