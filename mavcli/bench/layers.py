"""Layer benchmark (issue 3): mavcli's Pseudo3DConv and SpatioTemporalAttention against
make-a-video-pytorch 0.4.0's PseudoConv3d and SpatioTemporalAttention, same shapes, same torch,
one process, interleaved rounds (`mav bench layers`).

Reports the median ms of each, the speed-up (anchor / mavcli) and mavcli's rate in GFLOP/s
beside this machine's dense matmul rate. For the attention block it also times the block's
matrix products alone, back to back on tensors of the same shapes (`attention_matmuls`): no
softmax, norm, GELU or copy. That is the block's floor with this machine's GEMMs: an
implementation of the same math in the same precision can only add to it.

FLOPs are the layer's nominal count: what `torch.utils.flop_counter` counts for the
straightforward computation (direct convolution, attention as two matmuls), the same work the
anchor does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mavcli.bench.timing import interleaved_medians, matmul_gflops
from mavcli.nn import Pseudo3DConv, SpatioTemporalAttention

SEED_SHAPE = (1, 256, 8, 16, 16)  # the seed README's video: (batch, features, frames, height, width)
ANCHOR_PACKAGE = "make-a-video-pytorch==0.4.0"
ANCHOR_INSTALL = f"pip install --no-deps {ANCHOR_PACKAGE}"


@dataclass
class LayerRow:
    layer: str
    mode: str  # "forward" (inference mode) or "forward+backward"
    mavcli_ms: float
    anchor_ms: float | None
    gflop: float  # nominal GFLOP of one call
    matmul_ms: float | None = None  # the block's matrix products alone (attention only)

    @property
    def speedup(self) -> float | None:
        return None if self.anchor_ms is None else self.anchor_ms / self.mavcli_ms

    @property
    def gflops(self) -> float:
        return self.gflop / (self.mavcli_ms / 1e3)


@dataclass
class LayerBench:
    rows: list[LayerRow]
    matmul_gflops: float
    anchor_error: str | None  # why the anchor is missing, None when it ran
    device: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    threads: int


def _anchor_layers(dim: int, dim_head: int, heads: int):
    """The anchor's two layers, or the reason they cannot be built."""
    try:
        import make_a_video_pytorch as anchor
    except ImportError as err:
        return None, f"{err}"
    conv = anchor.PseudoConv3d(dim=dim, kernel_size=3)
    attn = anchor.SpatioTemporalAttention(dim=dim, dim_head=dim_head, heads=heads)
    return (conv, attn), None


def attention_matmuls(
    shape: tuple[int, int, int, int, int], dim_head: int, heads: int, *, ff_mult: float = 4.0,
    device: str = "cpu", dtype: torch.dtype = torch.float32,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward, forward+backward) that run only the matrix products of a SpatioTemporalAttention
    block on a `(b, c, f, h, w)` video, back to back on random tensors of their shapes: per
    attention the q/k/v and output projections and the two attention products (spatial: b*f*heads
    sequences of h*w tokens; temporal: b*h*w*heads sequences of f), and the GEGLU feed-forward's
    two projections. Backward adds, for every product Y = A B, dA = dY B^T and dB = A^T dY.
    Their FLOPs equal the block's nominal FLOPs (tests/test_layer_speedpaths.py checks)."""
    b, c, f, h, w = shape
    n, inner = b * f * h * w, heads * dim_head
    ff = int(c * ff_mult * 2 / 3)
    r = lambda *size: torch.randn(*size, device=device, dtype=dtype)  # noqa: E731
    # (A, B) of every product Y = A @ B
    pairs = [(r(n, c), r(c, 3 * inner)), (r(n, inner), r(inner, c))] * 2  # both attentions' projections
    pairs += [(r(n, c), r(c, 2 * ff)), (r(n, ff), r(ff, c))]  # feed-forward
    for batch, seq in ((b * f * heads, h * w), (b * h * w * heads, f)):  # spatial, temporal
        q, k, v, p = r(batch, seq, dim_head), r(batch, dim_head, seq), r(batch, seq, dim_head), r(batch, seq, seq)
        pairs += [(q, k), (p, v)]  # scores = q k^T, out = softmax(scores) v
    grads = [r(a.shape[0], *a.shape[1:-1], bb.shape[-1]) for a, bb in pairs]  # dY, the shape of each Y

    def forward() -> None:
        for a, bb in pairs:
            torch.matmul(a, bb)

    def forward_backward() -> None:
        forward()
        for (a, bb), gy in zip(pairs, grads):
            torch.matmul(gy, bb.transpose(-1, -2))  # dA
            torch.matmul(a.transpose(-1, -2), gy)  # dB

    return forward, forward_backward


def _nominal_gflop(fn: Callable[[], None]) -> float:
    """FLOPs of `fn` computed the straightforward way: attention as two matmuls (math kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops() / 1e9


def run_layer_bench(
    *,
    shape: tuple[int, int, int, int, int] = SEED_SHAPE,
    dim_head: int = 64,
    heads: int = 8,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    rounds: int = 15,
    progress: Callable[[str], None] | None = None,
) -> LayerBench:
    """Time both implementations on a `(b, c, f, h, w)` video, forward under inference mode
    and forward+backward (loss = mean square of the output, gradients for input and weights).

    Both get identical inputs; each (layer, mode) pair is timed in `rounds` interleaved rounds.
    On CUDA in bfloat16 both run under autocast (flash attention for mavcli)."""
    torch.manual_seed(0)
    dim = shape[1]
    ours = {
        "Pseudo3DConv": Pseudo3DConv(dim=dim, kernel_size=3),
        "SpatioTemporalAttention": SpatioTemporalAttention(dim=dim, dim_head=dim_head, heads=heads),
    }
    anchors, anchor_error = _anchor_layers(dim, dim_head, heads)
    theirs = dict(zip(ours, anchors)) if anchors else {}
    use_autocast = dtype == torch.bfloat16 and device.startswith("cuda")
    for m in [*ours.values(), *theirs.values()]:
        m.to(device=device, dtype=torch.float32 if use_autocast else dtype)
    x = torch.randn(shape, device=device, dtype=torch.float32 if use_autocast else dtype)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()

    def forward(m):
        def run():
            with torch.inference_mode(), autocast():
                m(x)
        return run

    def forward_backward(m):
        xg = x.clone().requires_grad_(True)

        def run():
            with autocast():
                y = m(xg)
            y.float().square().mean().backward()
            m.zero_grad(set_to_none=True)
            xg.grad = None
        return run

    floor_dtype = torch.bfloat16 if use_autocast else dtype  # autocast runs the products in bfloat16
    floor = dict(zip(("forward", "forward+backward"),
                     attention_matmuls(tuple(shape), dim_head, heads, device=device, dtype=floor_dtype)))
    rows = []
    for name in ours:
        for mode, make in (("forward", forward), ("forward+backward", forward_backward)):
            if progress is not None:
                progress(f"{name} {mode}")
            fns = {"mavcli": make(ours[name])}
            if name in theirs:
                fns["anchor"] = make(theirs[name])
            if name == "SpatioTemporalAttention":
                fns["matmuls"] = floor[mode]
            gflop = _nominal_gflop(fns["mavcli"])
            t = interleaved_medians(fns, rounds=rounds, device=device)
            ms = {k: v * 1e3 for k, v in t.items()}
            rows.append(LayerRow(name, mode, ms["mavcli"], ms.get("anchor"), gflop, ms.get("matmuls")))
    if progress is not None:
        progress("matmul rate")
    rate = matmul_gflops(device, torch.bfloat16 if use_autocast else dtype)
    return LayerBench(rows, rate, anchor_error, device, dtype, tuple(shape), torch.get_num_threads())
