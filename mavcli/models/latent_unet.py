"""LatentUnet3D: the pseudo-3D U-Net of the open Make-A-Video-style latent video models
(ModelScope text-to-video, Wang et al. 2023, and its Zeroscope fine-tunes), built from mavcli's
layers so that their published weights run in mavcli's cascade as the keyframe decoder D^t.

It is Make-A-Video's recipe (section 3.2) on a Stable Diffusion U-Net in a VAE's latent space:
every spatial residual block is followed by temporal convolutions (`TemporalConvStack`), every
spatial transformer (self-attention, cross-attention to the text tokens, feed-forward) by a
temporal transformer (self-attention across frames at each position), and one temporal
transformer runs right after the input convolution. Frames are never downsampled, so any frame
count works; a single frame still runs the temporal layers (they then see a one-frame clip).

Layout inside: `((b f), c, h, w)`, the frames of each video stacked in the batch.
Inputs: `x` `(b, c, f, h, w)` latents; `t` `(b,)` discrete diffusion timesteps (0 .. 999);
`context` `(b, m, context_dim)` text-encoder hidden states. Output: the model's prediction
(noise, for these repositories) `(b, out_channels, f, h, w)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from mavcli.nn.attention import Attention, FeedForward
from mavcli.nn.conv import TemporalConvStack
from mavcli.nn.embeddings import sinusoidal_embedding


@dataclass(frozen=True)
class LatentUnetConfig:
    """Hyper-parameters of a LatentUnet3D (read from a diffusers `unet/config.json` by
    `mavcli.weights.diffusers_layout`). `attention[i]`: level i has spatial + temporal
    transformers; the up path mirrors the down path."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    head_dim: int = 64
    in_transformer_heads: int = 8
    norm_groups: int = 32
    norm_eps: float = 1e-5
    context_dim: int = 1024
    mid_scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError("attention needs one entry per level of block_out_channels")
        for c in self.block_out_channels:
            if c % self.head_dim or c % self.norm_groups:
                raise ValueError(f"channels {c} must be a multiple of head_dim {self.head_dim} and norm_groups {self.norm_groups}")

    @property
    def time_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class ResBlock(nn.Module):
    """Spatial residual block with the time embedding added after the first conv (per frame):
    `((b f), c_in, h, w)`, temb `((b f), time_dim)` -> `((b f), c_out, h, w)`."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int, groups: int, eps: float, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.norm1 = nn.GroupNorm(groups, dim_in, eps=eps)
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, dim_out)
        self.norm2 = nn.GroupNorm(groups, dim_out, eps=eps)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, padding=1)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + rearrange(self.time_proj(F.silu(temb)), "bf c -> bf c 1 1")
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.skip is None else self.skip(x)
        return (skip + h) / self.scale


class TransformerBlock(nn.Module):
    """Two pre-norm attentions and a GEGLU feed-forward on tokens `(B, n, dim)`. The second
    attention is cross-attention to `context` when `context_dim` is given, else a second
    self-attention (the temporal transformers)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None) -> None:
        super().__init__()
        common = dict(dim_head=head_dim, heads=heads, qk_norm=False, out_bias=True)
        self.attn1 = Attention(dim, **common)
        self.attn2 = Attention(dim, context_dim=context_dim, **common)
        self.ff = FeedForward(dim, inner=4 * dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(x)
        x = x + (self.attn2(x, context) if self.attn2.is_cross else self.attn2(x))
        return x + self.ff(x)


class SpatialTransformer(nn.Module):
    """Attention within each frame, cross-attention to the text: `((b f), c, h, w)`, context
    `((b f), m, context_dim)` -> same shape, residual."""

    def __init__(self, dim: int, head_dim: int, context_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.block = TransformerBlock(dim, dim // head_dim, head_dim, context_dim)
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = self.proj_in(rearrange(self.norm(x), "bf c h w -> bf (h w) c"))
        tokens = self.proj_out(self.block(tokens, context))
        return x + rearrange(tokens, "bf (h w) c -> bf c h w", h=h, w=w)


class TemporalTransformer(nn.Module):
    """Attention across the frames at each position (Make-A-Video's temporal attention layer):
    `((b f), c, h, w)` -> same, residual. Its GroupNorm takes statistics over the whole clip."""

    def __init__(self, dim: int, heads: int, head_dim: int, groups: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, inner)
        self.block = TransformerBlock(inner, heads, head_dim, None)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        clip = self.norm(rearrange(x, "(b f) c h w -> b c f h w", f=frames))
        seq = self.proj_in(rearrange(clip, "b c f h w -> (b h w) f c"))
        seq = self.proj_out(self.block(seq))
        return x + rearrange(seq, "(b h w) f c -> (b f) c h w", h=h, w=w)


class Stage(nn.Module):
    """The layers at one resolution: `layers` x (ResBlock, TemporalConvStack[, SpatialTransformer,
    TemporalTransformer]). On the up path each ResBlock first takes a skip tensor."""

    def __init__(self, dims_in: list[int], dim: int, config: LatentUnetConfig, attention: bool, scale: float = 1.0) -> None:
        super().__init__()
        c = config
        self.res = nn.ModuleList(ResBlock(d, dim, c.time_dim, c.norm_groups, c.norm_eps, scale) for d in dims_in)
        self.time_conv = nn.ModuleList(TemporalConvStack(dim, groups=c.norm_groups) for _ in dims_in)
        self.space_attn = self.time_attn = None
        if attention:
            self.space_attn = nn.ModuleList(
                SpatialTransformer(dim, c.head_dim, c.context_dim, c.norm_groups) for _ in dims_in
            )
            self.time_attn = nn.ModuleList(
                TemporalTransformer(dim, dim // c.head_dim, c.head_dim, c.norm_groups) for _ in dims_in
            )

    def layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.time_conv[i](self.res[i](x, temb), frames)
        if self.space_attn is not None:
            x = self.time_attn[i](self.space_attn[i](x, context), frames)
        return x


class MidStage(nn.Module):
    """Bottleneck: ResBlock, TemporalConvStack, then (SpatialTransformer, TemporalTransformer,
    ResBlock, TemporalConvStack)."""

    def __init__(self, dim: int, config: LatentUnetConfig) -> None:
        super().__init__()
        c = config
        self.res = nn.ModuleList(ResBlock(dim, dim, c.time_dim, c.norm_groups, c.norm_eps, c.mid_scale) for _ in range(2))
        self.time_conv = nn.ModuleList(TemporalConvStack(dim, groups=c.norm_groups) for _ in range(2))
        self.space_attn = SpatialTransformer(dim, c.head_dim, c.context_dim, c.norm_groups)
        self.time_attn = TemporalTransformer(dim, dim // c.head_dim, c.head_dim, c.norm_groups)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.time_conv[0](self.res[0](x, temb), frames)
        x = self.time_attn(self.space_attn(x, context), frames)
        return self.time_conv[1](self.res[1](x, temb), frames)


class LatentUnet3D(nn.Module):
    """See the module docstring. `forward(x, t, context) -> prediction`, shapes
    `(b, c, f, h, w)`, `(b,)`, `(b, m, context_dim)` -> `(b, out_channels, f, h, w)`."""

    def __init__(self, config: LatentUnetConfig) -> None:
        super().__init__()
        self.config = c = config
        chans = c.block_out_channels
        self.time_in = nn.Linear(chans[0], c.time_dim)
        self.time_out = nn.Linear(c.time_dim, c.time_dim)
        self.conv_in = nn.Conv2d(c.in_channels, chans[0], 3, padding=1)
        self.temporal_in = TemporalTransformer(chans[0], c.in_transformer_heads, c.head_dim, c.norm_groups)
        n, layers = len(chans), c.layers_per_block
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = chans[0]
        for i, dim in enumerate(chans):
            self.down.append(Stage([prev] + [dim] * (layers - 1), dim, c, c.attention[i]))
            if i < n - 1:
                self.downsample.append(nn.Conv2d(dim, dim, 3, stride=2, padding=1))
            prev = dim
        self.mid = MidStage(chans[-1], c)
        # skip widths, in the order the up path takes them (last pushed first)
        skips = [chans[0]] + [d for i, d in enumerate(chans) for _ in range(layers + (i < n - 1))]
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        prev = chans[-1]
        for j, dim in enumerate(reversed(chans)):
            dims_in = []
            for _ in range(layers + 1):
                dims_in.append(prev + skips.pop())
                prev = dim
            self.up.append(Stage(dims_in, dim, c, c.attention[n - 1 - j]))
            if j < n - 1:
                self.upsample.append(nn.Conv2d(dim, dim, 3, padding=1))
        self.norm_out = nn.GroupNorm(c.norm_groups, chans[0], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(chans[0], c.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"LatentUnet3D takes (b, {self.config.in_channels}, f, h, w) latents, got {tuple(x.shape)}")
        b, _, f = x.shape[:3]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        temb = sinusoidal_embedding(t, self.config.block_out_channels[0]).to(self.time_in.weight.dtype)
        temb = repeat(self.time_out(F.silu(self.time_in(temb))), "b c -> (b f) c", f=f)
        ctx = repeat(context.to(temb.dtype), "b m d -> (b f) m d", f=f)
        h = self.temporal_in(self.conv_in(rearrange(x.to(temb.dtype), "b c f h w -> (b f) c h w")), f)
        skips = [h]
        for i, stage in enumerate(self.down):
            for k in range(len(stage.res)):
                h = stage.layer(k, h, temb, ctx, f)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid(h, temb, ctx, f)
        for j, stage in enumerate(self.up):
            for k in range(len(stage.res)):
                h = stage.layer(k, torch.cat([h, skips.pop()], dim=1), temb, ctx, f)
            if j < len(self.upsample):
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
                h = self.upsample[j](h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return rearrange(h, "(b f) c h w -> b c f h w", f=f)
