"""Attention layers (Make-A-Video section 3.2, "pseudo-3D attention layers").

`SpatioTemporalAttention` = spatial self-attention within each frame, optional cross-attention
to text tokens, temporal self-attention across frames at each position, then a feed-forward;
each pre-norm and residual, like make-a-video-pytorch 0.4.0's default. The temporal attention
starts as the identity (zero-initialised output projection inside a residual) and is skipped
for images, so an image model can be pre-trained first and then learn motion from video.

The seed's TODOs "soup up the attention" and "best positional embeddings": attention runs on
`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU,
the fused kernel on CPU), with query-key RMS normalisation (stable logits in low precision,
Dehghani et al. 2023), rotary positions (see `embeddings.py`), optional causal time attention,
and an optional learned EMA across time (Mega, see `ema.py`).

Speed (the block is memory-bound outside its GEMMs on CPU, so the layout is planned to make
every step a contiguous pass or a free view):
- tokens live time-major, `(f, b, h*w, c)`: the spatial attention's batches are `(f b)` and
  the temporal attention's are `(b h w)`, both plain views, so neither attention rearranges
  the token tensor, and `scaled_dot_product_attention` writes its output straight in token
  layout (it follows the query's strides);
- the q/k/v projection, query-key RMS normalisation, its gain and the rotary rotation are one
  hand-differentiated step (`_SelfQKV`); the rotation is a complex multiply on channel pairs;
- the residual adds ride on the output projections' GEMMs (`addmm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.autograd.function import once_differentiable

from mavcli.nn.embeddings import Rotary
from mavcli.nn import scratch
from mavcli.nn.ema import LearnedTemporalEMA
from mavcli.nn.norm import RMSNorm
from mavcli.nn.shapes import check_input


def _as_complex(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`t` (real, last dim even) as complex numbers of `shape`, pairs of the last dim; a view
    when the strides allow (only `out=` targets rely on that, and they are laid out for it)."""
    t = t.reshape(*shape, 2)
    if t.stride(-1) != 1 or t.storage_offset() % 2 or any(s % 2 for s in t.stride()[:-1]):
        t = t.contiguous()
    return torch.view_as_complex(t)


class _SelfQKV(torch.autograd.Function):
    """Self-attention inputs in one step: `qkv = h @ w.T`, then for q and k: RMS norm over each
    head vector, gain, rotary rotation; v passes through.

    `h`: `(T, dim)`, T = a*p*m tokens with their rotary position on the middle factor p;
    `w`: `(3 * heads * d, dim)` (d even); `gain`: `(2, d)` (q's, k's) or None; `phasor`:
    `(p, d/2)` complex, e^(i angle) of each channel pair (2j, 2j+1) at each position (1 for
    pairs that do not rotate), or None. Returns q, k `(a, p, m, heads, d)` and v `(T, heads, d)`.

    The rotation is one complex multiply on the pairs viewed as complex numbers (a vectorised
    pass); norm and gain are one real pass each. Backward is written by hand: the gradients of
    q, k and v arrive as three tensors and are never concatenated (the projection's backward
    runs one GEMM per part), and the rotation, gain and norm take 5 passes over q and k.
    """

    @staticmethod
    def forward(ctx, h, w, gain, phasor, a, p, m, heads, eps, norm):
        inner = w.shape[0] // 3
        d = inner // heads
        qkv = F.linear(h, w)  # (F.linear's GEMM path measured ~6% faster than mm(h, w.t()) here)
        x = qkv[:, : 2 * inner].view(a, p, m, 2, heads, d)
        r = None
        if norm:
            # 1 / rms per head vector from one reduction pass (float32 at least)
            acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
            ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc)
            r = ss.square_().div_(d).add_(eps).rsqrt_().to(x.dtype)
            xh = x * r
        else:
            xh = x.contiguous()
        g = None if gain is None else gain.to(x.dtype).view(2, 1, d)
        y = xh.clone() if g is None else xh * g
        if phasor is not None:
            if y.dtype in (torch.float32, torch.float64):  # rotate in place, pairs as complex numbers
                z = torch.view_as_complex(y.view(a, p, m, 2, heads, d // 2, 2))
                z.mul_(phasor.to(z.dtype).view(1, p, 1, 1, 1, d // 2))
            else:  # no bfloat16 complex: rotate in float32
                z = torch.view_as_complex(y.float().view(a, p, m, 2, heads, d // 2, 2))
                z.mul_(phasor.to(z.dtype).view(1, p, 1, 1, 1, d // 2))
                y = torch.view_as_real(z).view(a, p, m, 2, heads, d).to(x.dtype)
        ctx.save_for_backward(h, w, xh, r, g, phasor)
        ctx.shape = (a, p, m, heads, d)
        ctx.gain_dtype = None if gain is None else gain.dtype
        v = qkv[:, 2 * inner :].view(-1, heads, d)
        return y[..., 0, :, :], y[..., 1, :, :], v

    @staticmethod
    @once_differentiable
    def backward(ctx, gq, gk, gv):
        h, w, xh, r, g, phasor = ctx.saved_tensors
        a, p, m, heads, d = ctx.shape
        inner = heads * d
        dtype = xh.dtype
        # (a, p, m, 2, heads, d): q's and k's gradients side by side, never leaves this call
        gy = scratch.buffer("qk_grad", xh.shape, xh)
        complex_ok = dtype in (torch.float32, torch.float64)
        for j, gj in enumerate((gq, gk)):
            dst = gy[..., j, :, :]
            if gj is None:
                dst.zero_()
            elif phasor is None:
                dst.copy_(gj)
            else:  # u = conj(e) * gy: the rotation undone, pairs as complex numbers
                e = phasor.view(1, p, 1, 1, d // 2).conj()
                if complex_ok:
                    gz = _as_complex(gj, (a, p, m, heads, d // 2))
                    torch.mul(gz, e.to(gz.dtype), out=_as_complex(dst, (a, p, m, heads, d // 2)))
                else:
                    gz = _as_complex(gj.float(), (a, p, m, heads, d // 2))
                    dst.copy_(torch.view_as_real(gz * e.to(gz.dtype)).view(a, p, m, heads, d))
        ggain = None
        if g is not None:
            if ctx.needs_input_grad[2]:
                prod = torch.mul(gy, xh, out=scratch.buffer("qk_prod", xh.shape, xh))
                # a column sum over the tokens (contiguous rows: one vectorised pass), then over
                # heads; summing dims (0, 1, 2, 4) directly is a strided reduction, measured
                # 22x slower (5.7 vs 0.26 ms at the seed shape)
                ggain = prod.view(-1, 2 * heads * d).sum(0).view(2, heads, d).sum(1).to(ctx.gain_dtype)  # (2, d)
            gy.mul_(g)
        if r is not None:  # RMS norm: gx = r * (gxh - xh * mean(gxh * xh))
            dot = torch.linalg.vecdot(gy, xh, dim=-1).unsqueeze(-1)
            gy.addcmul_(xh, dot.div_(-d)).mul_(r)
        gx = gy.view(-1, 2 * inner)
        gv = torch.zeros_like(gx[:, :inner]) if gv is None else gv.to(dtype).reshape(-1, inner)
        # under autocast h and w are float32 and the gradients bfloat16: compute in the latter
        wd, hd = w.to(dtype), h.to(dtype)
        gh = gw = None
        if ctx.needs_input_grad[0]:
            gh = torch.mm(gx, wd[: 2 * inner])
            gh.addmm_(gv, wd[2 * inner :])
            gh = gh.to(h.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.empty_like(wd)
            torch.mm(gx.t(), hd, out=gw[: 2 * inner])
            torch.mm(gv.t(), hd, out=gw[2 * inner :])
            gw = gw.to(w.dtype)
        return gh, gw, ggain, None, None, None, None, None, None, None


def _qkv_plain(attn: "Attention", h: torch.Tensor, layout: tuple[int, int, int], grid) -> tuple:
    """The same as `_SelfQKV` with autograd ops (odd head widths, which have an unpaired
    channel and no complex view)."""
    a, p, m = layout
    heads, d = attn.heads, attn.dim_head
    q, k, v = F.linear(h, attn.to_qkv.weight).view(a, p, m, 3, heads, d).unbind(3)
    if attn.q_norm is not None:
        q = F.rms_norm(q, (d,), attn.q_norm.weight, attn.q_norm.eps)
        k = F.rms_norm(k, (d,), attn.k_norm.weight, attn.k_norm.eps)
    if attn.rotary is not None and grid is not None:
        cos, sin = attn.rotary.tables(tuple(grid), h.device, q.dtype)  # (p, rot)
        cos, sin = cos.view(1, p, 1, 1, -1), sin.view(1, p, 1, 1, -1)
        q, k = attn.rotary._rotate(q, cos, sin), attn.rotary._rotate(k, cos, sin)
    return q, k, v.reshape(-1, heads, d)


def _short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Attention over a few frames. On CPU without autograd the plain two-matmul form beats the
    fused kernel for sequences this short (measured 4.5 vs 6.4 ms for 8 frames at the seed
    shape; with autograd the fused kernel's backward wins, 25 vs 47 ms)."""
    n = q.shape[-2]
    if q.device.type != "cpu" or n > 16 or (torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if causal:
        scores.masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
    return torch.matmul(scores.softmax(-1), v)


def _add_projection(
    tokens: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`tokens + x @ weight.T (+ bias)`, the residual add done by the GEMM (`addmm`, beta=1).
    Under autocast a plain linear + add keeps the residual stream in float32."""
    if torch.is_autocast_enabled(tokens.device.type):
        return tokens + F.linear(x, weight, bias)
    out = torch.addmm(tokens, x, weight.t())
    return out if bias is None else out.add_(bias)


class _GEGLU(torch.autograd.Function):
    """`a * gelu(gate)` for `x = [a, gate]` `(T, 2 i)` -> `(T, i)`, with the gradient written
    into one `(T, 2 i)` tensor (no concatenation of the two halves' gradients)."""

    @staticmethod
    def forward(ctx, x):
        a, gate = x.chunk(2, dim=-1)
        g = torch.ops.aten.gelu.out(gate, out=scratch.buffer("gelu", gate.shape, gate))
        ctx.save_for_backward(x)  # gelu(gate) is recomputed in backward: one pass, no new memory
        return a * g

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        a, gate = x.chunk(2, dim=-1)
        i = a.shape[-1]
        gx = gy.new_empty(*gy.shape[:-1], 2 * i)
        torch.ops.aten.gelu.out(gate, out=gx[..., :i])
        gx[..., :i].mul_(gy)
        gya = torch.mul(gy, a, out=scratch.buffer("gelu", gy.shape, gy))
        torch.ops.aten.gelu_backward.grad_input(gya, gate, grad_input=gx[..., i:])
        return gx


class Attention(nn.Module):
    """Pre-norm multi-head attention on token sequences.

    `forward(x, context=None, grid=None)`: x `(B, n, dim)`; context `(B, m, context_dim)` for
    cross-attention (else self-attention); `grid` is the token grid for rotary positions
    (`(f,)` or `(h, w)`, with prod(grid) = n). Returns the residual branch `(B, n, dim)`.
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_head: int = 64,
        heads: int = 8,
        context_dim: int | None = None,
        qk_norm: bool = True,
        rotary_ndim: int = 0,
        causal: bool = False,
        zero_init_out: bool = False,
    ) -> None:
        super().__init__()
        if dim_head < 1 or heads < 1:
            raise ValueError(f"Attention needs dim_head >= 1 and heads >= 1, got {dim_head}, {heads}")
        self.heads, self.dim_head, self.causal = heads, dim_head, causal
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.q_norm = RMSNorm(dim_head) if qk_norm else None
        self.k_norm = RMSNorm(dim_head) if qk_norm else None
        self.rotary = Rotary(dim_head, rotary_ndim) if rotary_ndim and not self.is_cross else None
        self.to_out = nn.Linear(inner, dim, bias=False)
        if zero_init_out:
            nn.init.zeros_(self.to_out.weight)

    # --- self-attention on a planned layout ---------------------------------------------------

    def _qkv(self, h: torch.Tensor, layout: tuple[int, int, int], grid: tuple[int, ...] | None):
        """q/k/v projection, qk norm and rotary for `h (T, dim)` normed tokens, T = a*p*m with
        the rotary position on the middle factor p (`layout = (a, p, m)`). Returns q, k
        `(a, p, m, heads, d)` and v `(T, heads, d)`."""
        a, p, m = layout
        if self.dim_head % 2:
            return _qkv_plain(self, h, layout, grid)
        phasor = None
        if self.rotary is not None and grid is not None:
            cdtype = torch.complex128 if h.dtype == torch.float64 else torch.complex64
            phasor = self.rotary.phasor(tuple(grid), h.device, cdtype)
            if phasor.shape[0] != p:
                raise ValueError(f"rotary grid {tuple(grid)} has {phasor.shape[0]} positions, the tokens {p}")
        gain = None
        if self.q_norm is not None:
            gain = torch.stack([self.q_norm.weight, self.k_norm.weight])
        eps = self.q_norm.eps if self.q_norm is not None else 0.0
        w = self.to_qkv.weight.to(h.dtype)
        return _SelfQKV.apply(h, w, gain, phasor, a, p, m, self.heads, eps, self.q_norm is not None)

    def residual_space(self, tokens: torch.Tensor, batch: int, grid: tuple[int, ...] | None) -> torch.Tensor:
        """`tokens + attention(tokens)` for `tokens (batch * n, dim)`, sequences of n
        consecutive tokens (n = prod(grid) when given). Returns `(batch * n, dim)`."""
        n = tokens.shape[0] // batch
        h = F.layer_norm(tokens, tokens.shape[-1:], self.norm.weight, self.norm.bias, self.norm.eps)
        q, k, v = self._qkv(h, (batch, n, 1), grid)
        q, k = (t.view(batch, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k))
        v = v.view(batch, n, self.heads, self.dim_head).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (batch, heads, n, d)
        out = out.transpose(1, 2).reshape(batch * n, -1)  # a view: the output follows q's layout
        return _add_projection(tokens, out, self.to_out.weight)

    def residual_time(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """`tokens + attention over frames` for time-major `tokens (frames * m, dim)`: token
        `t * m + i` is frame t of sequence i. Returns `(frames * m, dim)`."""
        m = tokens.shape[0] // frames
        h = F.layer_norm(tokens, tokens.shape[-1:], self.norm.weight, self.norm.bias, self.norm.eps)
        q, k, v = self._qkv(h, (1, frames, m), (frames,))
        # (m, heads, frames, d) views of the time-major tensors
        q, k = (t.view(frames, m, self.heads, self.dim_head).permute(1, 2, 0, 3) for t in (q, k))
        v = v.view(frames, m, self.heads, self.dim_head).permute(1, 2, 0, 3)
        out = _short_attention(q, k, v, self.causal)  # (m, heads, frames, d)
        out = out.permute(2, 0, 1, 3).reshape(frames * m, -1)  # a view when out follows q
        return _add_projection(tokens, out, self.to_out.weight)

    # --- the general API ---------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        grid: tuple[int, ...] | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.norm(x)
        mask = None
        if context_mask is not None:
            mask = rearrange(context_mask.bool(), "b m -> b 1 1 m")
        if self.is_cross:
            if context is None:
                raise ValueError("this cross-attention layer needs context tokens (batch, tokens, context_dim)")
            q = rearrange(self.to_q(h), "b n (h d) -> b h n d", h=self.heads)
            k, v = (rearrange(t, "b m (h d) -> b h m d", h=self.heads) for t in self.to_kv(context).chunk(2, dim=-1))
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
        else:
            q, k, v = self._qkv(h.reshape(b * n, -1), (b, n, 1), grid)
            q, k = (t.view(b, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k))
            v = v.view(b, n, self.heads, self.dim_head).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """Pre-norm GEGLU feed-forward applied at every token: `(..., dim) -> (..., dim)`."""

    def __init__(self, dim: int, mult: float = 4.0) -> None:
        super().__init__()
        inner = int(dim * mult * 2 / 3)  # GEGLU: keep parameters equal to a plain mult-x MLP
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, inner * 2)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(gate))

    def residual(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens + forward(tokens)` for `(T, dim)`, the add folded into the last GEMM."""
        h = F.layer_norm(tokens, tokens.shape[-1:], self.norm.weight, self.norm.bias, self.norm.eps)
        u = _GEGLU.apply(F.linear(h, self.proj_in.weight, self.proj_in.bias))
        return _add_projection(tokens, u, self.proj_out.weight, self.proj_out.bias)


class SpatioTemporalAttention(nn.Module):
    """Factorised space-time attention block, identity in time at initialisation.

    Args (the seed's, then mavcli's):
        dim, dim_head, heads, add_feed_forward, ff_mult: as in make-a-video-pytorch.
        causal_time_attn: frames attend only to earlier frames.
        qk_norm: RMS-normalise queries and keys.
        rotary: rotary positions (2-D in space, 1-D in time).
        temporal_ema: add a learned EMA across time (Mega) after the temporal attention.
        context_dim: add cross-attention to context tokens (text) of this width.
        temporal: build the temporal parts at all (False: image-only, for 2-D pre-training).

    Shapes: `(b, c, f, h, w) -> same` and `(b, c, h, w) -> same`; context `(b, m, context_dim)`.
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_head: int = 64,
        heads: int = 8,
        add_feed_forward: bool = True,
        ff_mult: float = 4,
        causal_time_attn: bool = False,
        qk_norm: bool = True,
        rotary: bool = True,
        temporal_ema: bool = False,
        context_dim: int | None = None,
        temporal: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        common = dict(dim_head=dim_head, heads=heads, qk_norm=qk_norm)
        self.spatial_attn = Attention(dim, rotary_ndim=2 if rotary else 0, **common)
        self.cross_attn = Attention(dim, context_dim=context_dim, **common) if context_dim else None
        self.temporal_attn: Attention | None = None
        self.temporal_ema: LearnedTemporalEMA | None = None
        if temporal:
            self.temporal_attn = Attention(
                dim, rotary_ndim=1 if rotary else 0, causal=causal_time_attn, zero_init_out=True, **common
            )
            if temporal_ema:
                self.temporal_ema = LearnedTemporalEMA(dim, bidirectional=not causal_time_attn)
        self.ff = FeedForward(dim, ff_mult) if add_feed_forward else None

    def forward(
        self,
        x: torch.Tensor,
        attend_across_time: bool = True,
        *,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        enable_time: bool | None = None,
    ) -> torch.Tensor:
        """`x`: video `(b, c, f, h, w)` or image `(b, c, h, w)`. `enable_time` is the anchor
        package's name for `attend_across_time` and is accepted as an alias."""
        if enable_time is not None:
            attend_across_time = enable_time
        video = check_input(x, self.dim, "SpatioTemporalAttention")
        if video:
            b, c, f, h, w = x.shape
            tokens = x.permute(2, 0, 3, 4, 1).reshape(f * b * h * w, c)  # time-major, one copy
            tokens = self._tokens(tokens, f, b, (h, w), attend_across_time, context, context_mask)
            return tokens.view(f, b, h, w, c).permute(1, 4, 0, 2, 3).contiguous()
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        tokens = self._tokens(tokens, None, b, (h, w), False, context, context_mask)
        return tokens.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()

    def forward_frames(
        self,
        x: torch.Tensor,
        frames: int | None,
        attend_across_time: bool = True,
        *,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The U-Net's layout: `x` is `((b f), c, h, w)`; `frames=None` for images."""
        bf, c, h, w = x.shape
        f = 1 if frames is None else frames
        if bf % f:
            raise ValueError(f"{bf} stacked frames are not a multiple of frames={f}")
        b = bf // f
        tokens = x.reshape(b, f, c, h * w).permute(1, 0, 3, 2).reshape(bf * h * w, c)  # one copy
        tokens = self._tokens(tokens, frames, b, (h, w), attend_across_time, context, context_mask)
        return tokens.view(f, b, h * w, c).permute(1, 0, 3, 2).reshape(bf, c, h, w)  # one copy

    def _tokens(self, tokens, frames, b, hw, attend_across_time, context, context_mask) -> torch.Tensor:
        """The block on time-major token rows `(f * b * h * w, c)`; `frames=None` for images.

        Token `((t * b + i) * h + y) * w + x` is frame t of video i at (y, x): the spatial
        attention's sequences are runs of h*w rows, the temporal attention's are strided by
        b*h*w, and both read them as views."""
        f = 1 if frames is None else frames
        n, c = hw[0] * hw[1], tokens.shape[1]
        tokens = self.spatial_attn.residual_space(tokens, f * b, hw)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block was built with context_dim: pass context tokens (b, m, context_dim)")
            ctx = repeat(context, "b m d -> (f b) m d", f=f)
            cmask = None if context_mask is None else repeat(context_mask, "b m -> (f b) m", f=f)
            tok = tokens.view(f * b, n, c)
            tokens = (tok + self.cross_attn(tok, ctx, context_mask=cmask)).view(f * b * n, c)
        if frames is not None and attend_across_time and self.temporal_attn is not None:
            tokens = self.temporal_attn.residual_time(tokens, f)
            if self.temporal_ema is not None:
                tokens = self.temporal_ema.forward_time_major(tokens.view(f, b * n, c)).view(f * b * n, c)
        if self.ff is not None:
            tokens = self.ff.residual(tokens)
        return tokens
