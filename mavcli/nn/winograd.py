"""Winograd minimal-filtering 3x3 convolution for Pseudo3DConv on CPU (Lavin & Gray 2016,
"Fast Algorithms for Convolutional Neural Networks", F(4x4, 3x3)).

A direct 3x3 'same' convolution costs 9 multiply-adds per output pixel and channel pair.
F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36 products instead of
144, so the channel-mixing GEMM does 4x fewer FLOPs:

    input tile  d (6x6)  ->  V = B^T d B           (two small matmuls over the whole batch)
    weight      g (3x3)  ->  U = G g G^T           (one small matmul)
    product              ->  M[xi] = V[xi] U[xi]^T (36 GEMMs over channels)
    output tile          ->  Y = A^T M A  (4x4)    (two small matmuls)

With the interpolation points 0, +-1, +-2 the data transforms B^T and A^T are small integers
and G has entries 1/4 .. 1/24; the float32 error stays small: about 1e-5 of the output's
largest value at the seed shapes (gradients alike), against 3e-7 for the direct convolution
(see tests/test_layer_speedpaths.py), inside the 1e-4 asked of the layers.

The transforms run channels-last (`..., c` innermost): each is a matmul with a 6x6 (or 4x6)
constant whose other operand is a contiguous `(6, rest)` block. Backward is written by hand
(`torch.autograd.Function`): the gradient GEMMs run in the transform domain as well
(dU = dM^T V, dV = dM U), so forward and backward both get the FLOP cut. Temporaries live in
per-thread scratch buffers, and in inference the transformed kernels U are cached per weight.

`use_winograd` says where it runs: CPU, float32, kernel 3, stride 1, >= MIN_CHANNELS. On CUDA
cuDNN already chooses Winograd or implicit-GEMM kernels itself, and for a handful of channels
the transforms cost more than the GEMM saves; there `F.conv2d` runs.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mavcli.nn import scratch

# Fewest input and output channels for which the fast path is taken: the transforms cost
# O(channels) per pixel, the GEMM work they save O(channels^2). Measured against oneDNN's
# direct convolution on a 2-core AVX-512 CPU (one thread, 8 frames): even at 64 channels on
# 16x16 frames (1.2x faster at 32x32), 1.05x at 128, 1.3-1.4x at 256.
MIN_CHANNELS = 64

_enabled = True


def fast_paths_enabled() -> bool:
    """Whether the Winograd paths may be used (see `fast_paths`)."""
    return _enabled


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Turn the Winograd convolution paths on or off inside the block, e.g. to compare them
    with the reference `F.conv2d` computation. Not thread-local."""
    global _enabled
    old, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = old


def use_winograd(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """True where `conv(x)` is computed by `conv3x3`: CPU float32, 3x3 kernel, stride 1,
    padding 1, no dilation or groups, >= MIN_CHANNELS channels in and out, no autocast."""
    return (
        _enabled
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
        and not torch.is_autocast_enabled("cpu")
    )


# --- transform matrices of F(4, 3) with points 0, 1, -1, 2, -2, inf ------------------------------

_BT = (
    (4.0, 0.0, -5.0, 0.0, 1.0, 0.0),
    (0.0, -4.0, -4.0, 1.0, 1.0, 0.0),
    (0.0, 4.0, -4.0, -1.0, 1.0, 0.0),
    (0.0, -2.0, -1.0, 2.0, 1.0, 0.0),
    (0.0, 2.0, -1.0, -2.0, 1.0, 0.0),
    (0.0, 4.0, 0.0, -5.0, 0.0, 1.0),
)
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)
_AT = (
    (1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
    (0.0, 1.0, -1.0, 2.0, -2.0, 0.0),
    (0.0, 1.0, 1.0, 4.0, 4.0, 0.0),
    (0.0, 1.0, -1.0, 8.0, -8.0, 1.0),
)
# A^T's column 1 is all ones: a constant added to M[1, 1] reaches each of the 16 outputs once,
# which is where the bias goes.
_BIAS_POINT = 1 * 6 + 1

_mats: dict[tuple, dict[str, torch.Tensor]] = {}


def _matrices(device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """BT (6, 6), B = BT^T, AT (4, 6), A = AT^T and G (x) G (36, 9), cached per device/dtype."""
    key = (device, dtype)
    m = _mats.get(key)
    if m is None:
        bt, at, g = (torch.tensor(t, dtype=torch.float64) for t in (_BT, _AT, _G))
        m = {"BT": bt, "B": bt.t(), "AT": at, "A": at.t(), "GG": torch.kron(g, g)}
        m = _mats[key] = {k: v.to(device=device, dtype=dtype).contiguous() for k, v in m.items()}
    return m


def _two_sided(mat: torch.Tensor, x: torch.Tensor, tmp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`mat (o, i)` applied to both leading axes of `x (i, i, ...)`, written into `out (o, o, ...)`
    (mat X mat^T for every trailing index); `tmp` holds `o * i * rest` intermediate values."""
    o, i = mat.shape
    rest = x[0, 0].numel()
    t = tmp.view(o, i * rest)
    torch.mm(mat, x.reshape(i, i * rest), out=t)  # first axis
    torch.bmm(mat.expand(o, o, i), t.view(o, i, rest), out=out.view(o, o, rest))  # second axis
    return out


_buffer = scratch.buffer
_zero_padded = scratch.zero_padded


# Transformed kernels U for inference (no autograd), per weight tensor: sampling runs the same
# weights many times, so the 36/9-times-larger U is made once (as inference engines prepack
# weights). Valid while the weight's storage and version counter are unchanged (any in-place
# update, e.g. an optimizer step or load_state_dict, bumps the version); bounded in size.
# Writes through `weight.data` bypass the version counter: call `clear_scratch()` after them.
WEIGHT_CACHE_MAX_BYTES = 256 * 2**20
_weight_cache: dict[int, tuple[weakref.ref, tuple, torch.Tensor]] = {}
_weight_cache_lock = threading.Lock()


def _transform_weight(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """U = (G (x) G) g for every kernel: `(k, c, 3, 3)` -> `(36, k, c)`."""
    k, c = weight.shape[:2]
    gg = _matrices(weight.device, weight.dtype)["GG"]
    u = weight.new_empty(36, k, c) if out is None else out
    torch.mm(gg, weight.reshape(k * c, 9).t(), out=u.view(36, k * c))
    return u


def _cache_bytes() -> int:
    return sum(u.numel() * u.element_size() for _, _, u in _weight_cache.values())


def _cached_transform(weight: torch.Tensor) -> torch.Tensor:
    """U for inference, made once per weight (see WEIGHT_CACHE_MAX_BYTES)."""
    if weight.is_inference():  # no version counter to validate a cache entry with
        return _transform_weight(weight, _buffer("u", (36, *weight.shape[:2]), weight))
    key = id(weight)
    stamp = (weight.data_ptr(), weight._version, weight.shape, weight.dtype, weight.device)
    with _weight_cache_lock:
        hit = _weight_cache.get(key)
        if hit is not None and hit[0]() is weight and hit[1] == stamp:
            return hit[2]
    with torch.inference_mode(False), torch.no_grad():
        u = _transform_weight(weight.detach())
    size = u.numel() * u.element_size()
    with _weight_cache_lock:
        for dead in [k for k, (ref, _, _) in _weight_cache.items() if ref() is None]:
            del _weight_cache[dead]
        _weight_cache.pop(key, None)
        while _weight_cache and size + _cache_bytes() > WEIGHT_CACHE_MAX_BYTES:
            del _weight_cache[next(iter(_weight_cache))]  # oldest first
        if size <= WEIGHT_CACHE_MAX_BYTES:
            _weight_cache[key] = (weakref.ref(weight), stamp, u)
    return u


def clear_scratch() -> None:
    """Free this thread's scratch buffers and the cached transformed kernels."""
    scratch.clear()
    with _weight_cache_lock:
        _weight_cache.clear()


# --- F(4x4, 3x3) -------------------------------------------------------------------------------


class _Conv3x3(torch.autograd.Function):
    """`F.conv2d(x, weight, bias, padding=1)` by Winograd F(4x4, 3x3).

    `x (n, c, h, w)` in any memory layout; returns `(n, k, h, w)` contiguous, or with
    `channels_last_out` the `(n, h, w, k)` contiguous tensor (what a following conv along
    time reads without a transpose).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, channels_last_out, keep):
        """`keep`: autograd will call backward (V and U must outlive the call)."""
        n, c, h, w = x.shape
        k = weight.shape[0]
        th, tw = (h + 3) // 4, (w + 3) // 4
        p = n * th * tw
        mats = _matrices(x.device, x.dtype)
        saved = (lambda name, shape: x.new_empty(shape)) if keep else (lambda name, shape: _buffer(name, shape, x))
        # zero-padded channels-last input (n, 4 th + 2, 4 tw + 2, c)
        inside = (slice(None), slice(1, h + 1), slice(1, w + 1))
        xp = _zero_padded((n, 4 * th + 2, 4 * tw + 2, c), x)
        xp[inside].copy_(x.permute(0, 2, 3, 1))
        # the 6x6 tiles (stride 4) gathered as (6, 6, n, th, tw, c), then V = B^T d B
        s = xp.stride()
        tiles = _buffer("tiles", (6, 6, n, th, tw, c), x)
        tiles.copy_(xp.as_strided(tiles.shape, (s[1], s[2], s[0], 4 * s[1], 4 * s[2], s[3])))
        v = _two_sided(mats["BT"], tiles, _buffer("tmp", (36 * p * c,), x), saved("v", (36, p, c)))
        # U (36, k, c) from the kernel, then 36 GEMMs (p, c) @ (c, k)
        u = _transform_weight(weight) if keep else _cached_transform(weight)
        m = torch.bmm(v, u.transpose(1, 2), out=_buffer("m", (36, p, k), x))
        y = _two_sided(mats["AT"], m.view(6, 6, p * k), _buffer("tmp", (24 * p * k,), x),
                       _buffer("y", (4, 4, p * k), x))
        y = y.view(4, 4, n, th, tw, k)
        if keep:
            ctx.save_for_backward(v, u)
        ctx.meta = (n, c, h, w, k, bias is not None, channels_last_out)
        pad = (4 * th, 4 * tw) != (h, w)
        # scatter the 4x4 output tiles into place, adding the bias on the way
        if channels_last_out:
            out = x.new_empty(n, 4 * th, 4 * tw, k)
            dst, src, b = out.view(n, th, 4, tw, 4, k), y.permute(2, 3, 0, 4, 1, 5), bias
        else:
            out = x.new_empty(n, k, 4 * th, 4 * tw)
            dst, src = out.view(n, k, th, 4, tw, 4), y.permute(2, 5, 3, 0, 4, 1)
            b = None if bias is None else bias.view(k, 1, 1, 1, 1)
        torch.add(src, b, out=dst) if b is not None else dst.copy_(src)
        if pad:
            return out[:, :h, :w].contiguous() if channels_last_out else out[:, :, :h, :w].contiguous()
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        v, u = ctx.saved_tensors
        n, c, h, w, k, has_bias, channels_last_out = ctx.meta
        th, tw = (h + 3) // 4, (w + 3) // 4
        p = n * th * tw
        mats = _matrices(grad.device, grad.dtype)
        g = grad if channels_last_out else grad.permute(0, 2, 3, 1)  # (n, h, w, k)
        if (4 * th, 4 * tw) != (h, w):
            g = F.pad(g, (0, 0, 0, 4 * tw - w, 0, 4 * th - h))
        # output tiles (4, 4, n, th, tw, k), then dM = A dY A^T
        gt = _buffer("gt", (4, 4, n, th, tw, k), grad)
        gt.copy_(g.reshape(n, th, 4, tw, 4, k).permute(2, 4, 0, 1, 3, 5))
        del g
        dm = _two_sided(mats["A"], gt, _buffer("tmp", (24 * p * k,), grad), _buffer("m", (36, p, k), grad))
        dx = dw = db = None
        if has_bias and ctx.needs_input_grad[2]:
            db = dm[_BIAS_POINT].sum(0)
        if ctx.needs_input_grad[1]:
            du = torch.bmm(dm.transpose(1, 2), v, out=_buffer("du", (36, k, c), grad))
            dw = torch.mm(du.view(36, k * c).t(), mats["GG"]).view(k, c, 3, 3)
        if ctx.needs_input_grad[0]:
            dv = torch.bmm(dm, u, out=_buffer("dv", (36, p, c), grad))
            dt = _two_sided(mats["B"], dv.view(6, 6, p * c), _buffer("tmp", (36 * p * c,), grad),
                            _buffer("tiles", (6, 6, p * c), grad))
            # overlap-add of the 6x6 tiles (stride 4) into (n, th + 1, 4, tw + 1, 4, c)
            d = dt.view(6, 6, n, th, tw, c).permute(2, 3, 0, 4, 1, 5)  # (n, th, 6, tw, 6, c)
            acc = _buffer("acc", (n, th + 1, 4, tw + 1, 4, c), grad)
            acc[:, :th, :, :tw].copy_(d[:, :, :4, :, :4])
            acc[:, th].zero_()
            acc[:, :th, :, tw].zero_()
            acc[:, 1:, :2, :tw].add_(d[:, :, 4:, :, :4])
            acc[:, :th, :, 1:, :2].add_(d[:, :, :4, :, 4:])
            acc[:, 1:, :2, 1:, :2].add_(d[:, :, 4:, :, 4:])
            acc = acc.view(n, 4 * th + 4, 4 * tw + 4, c)
            dx = acc[:, 1 : h + 1, 1 : w + 1].permute(0, 3, 1, 2).contiguous()
        return dx, dw, db, None, None


def conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, channels_last_out: bool = False
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)` by Winograd F(4x4, 3x3), differentiable.

    `x`: `(n, c, h, w)` float; `weight`: `(k, c, 3, 3)`. Returns `(n, k, h, w)` contiguous, or
    `(n, h, w, k)` contiguous with `channels_last_out=True`.
    """
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _Conv3x3.apply(x, weight, bias, channels_last_out, keep)
