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
and an optional learned EMA across time (Mega, see `ema.py`). Gradients are torch's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from mavcli.nn.embeddings import Rotary
from mavcli.nn.ema import LearnedTemporalEMA
from mavcli.nn.norm import RMSNorm
from mavcli.nn.shapes import check_input


class Attention(nn.Module):
    """Pre-norm multi-head attention on token sequences.

    `forward(x, context=None, grid=None, context_mask=None)`: x `(B, n, dim)`; context
    `(B, m, context_dim)` for cross-attention (else self-attention); `grid` is the token grid
    for rotary positions (`(f,)` or `(h, w)`, with prod(grid) = n); `context_mask` `(B, m)`
    bool, True where a key may be attended to. Returns the residual branch `(B, n, dim)`.
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
        out_bias: bool = False,
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
        self.to_out = nn.Linear(inner, dim, bias=out_bias)
        if zero_init_out:
            nn.init.zeros_(self.to_out.weight)
            if out_bias:
                nn.init.zeros_(self.to_out.bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        grid: tuple[int, ...] | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.norm(x)
        if self.is_cross:
            if context is None:
                raise ValueError("this cross-attention layer needs context tokens (batch, tokens, context_dim)")
            q, k, v = self.to_q(h), *self.to_kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.to_qkv(h).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (heads d) -> b heads n d", heads=self.heads) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None and grid is not None:
            q, k = self.rotary(q, k, tuple(grid))
        mask = None if context_mask is None else rearrange(context_mask.bool(), "b m -> b 1 1 m")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None)
        return self.to_out(rearrange(out, "b heads n d -> b n (heads d)"))


class FeedForward(nn.Module):
    """Pre-norm GEGLU feed-forward applied at every token: `(..., dim) -> (..., dim)`.
    `inner` (default: 2/3 of `mult * dim`, the parameters of a plain MLP) is the GEGLU width."""

    def __init__(self, dim: int, mult: float = 4.0, inner: int | None = None) -> None:
        super().__init__()
        inner = int(dim * mult * 2 / 3) if inner is None else inner
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, inner * 2)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(gate))


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
        if not check_input(x, self.dim, "SpatioTemporalAttention"):
            return self.forward_frames(x, None, context=context, context_mask=context_mask)
        f = x.shape[2]
        y = self.forward_frames(
            rearrange(x, "b c f h w -> (b f) c h w"), f, attend_across_time, context=context, context_mask=context_mask
        )
        return rearrange(y, "(b f) c h w -> b c f h w", f=f)

    def forward_frames(
        self,
        x: torch.Tensor,
        frames: int | None,
        attend_across_time: bool = True,
        *,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The U-Net's layout: `x` is `((b f), c, h, w)`, frames stacked in the batch;
        `frames=None` for images. `context` `(b, m, context_dim)` is per video. Returns the
        same layout."""
        bf, _, h, w = x.shape
        f = 1 if frames is None else frames
        if bf % f:
            raise ValueError(f"{bf} stacked frames are not a multiple of frames={f}")
        tokens = rearrange(x, "bf c h w -> bf (h w) c")
        tokens = tokens + self.spatial_attn(tokens, grid=(h, w))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block was built with context_dim: pass context tokens (b, m, context_dim)")
            ctx = repeat(context, "b m d -> (b f) m d", f=f)
            cmask = None if context_mask is None else repeat(context_mask, "b m -> (b f) m", f=f)
            tokens = tokens + self.cross_attn(tokens, ctx, context_mask=cmask)
        if frames is not None and attend_across_time and self.temporal_attn is not None:
            seq = rearrange(tokens, "(b f) n c -> (b n) f c", f=f)  # one sequence per position
            seq = seq + self.temporal_attn(seq, grid=(f,))
            if self.temporal_ema is not None:
                seq = self.temporal_ema.forward_tokens(seq)
            tokens = rearrange(seq, "(b n) f c -> (b f) n c", f=f, n=h * w)
        if self.ff is not None:
            tokens = tokens + self.ff(tokens)
        return rearrange(tokens, "bf (h w) c -> bf c h w", h=h, w=w)
