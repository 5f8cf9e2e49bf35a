"""SpaceTimeUnet: the U-Net of every diffusion stage of Make-A-Video (section 3.2), built from
pseudo-3D convolutions and pseudo-3D attention, and `inflate_unet`, which turns an image-only
U-Net into a video U-Net (the seed's TODO "rig a 2-D U-Net into 3-D").

Inputs are images `(b, c, h, w)` or videos `(b, c, f, h, w)`; time (frames) is never
downsampled, so any frame count works. Conditioning:
  - `t` `(b,)`: diffusion time in [0, 1];
  - `cond` `(b, cond_dim)`: an image embedding (keyframe decoder), added to the time embedding
    and also given as `cond_tokens` extra context tokens (DALL-E 2's decoder does both);
  - `context` `(b, m, context_dim)` + `context_mask` `(b, m)`: text tokens, by cross-attention
    and, with `context_pool_heads`, also attention-pooled into the time embedding;
  - `fps` / `frame_skip` `(b,)`: video conditioning (section 3.2 and 3.3), videos only;
  - with `frame_pos_cond`, each frame's place in the clip (0 first .. 1 last), embedded and
    added to that frame's time embedding, videos only (needs no input);
  - `extra` `(b, extra_in_channels, [f,] h, w)`: channels concatenated to the input (masked
    frames + mask for interpolation, an upsampled low-resolution video for super-resolution);
  - `drop_cond` `(b,)` bool: replace cond and context by learned null embeddings
    (classifier-free guidance; the unconditional branch at sampling time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from mavcli.models.blocks import ContextPool, Downsample, ResBlock, Upsample, per_frame
from mavcli.nn.attention import SpatioTemporalAttention
from mavcli.nn.conv import Pseudo3DConv
from mavcli.nn.embeddings import ScalarEmbedding
from mavcli.nn.norm import group_norm


# modules a later config adds whose output starts at zero: a network trained without them loads
# into one with them (`--init-pack`) and computes the same function until they train
ADDED_MODULES = ("context_pool.", "temporal_frame_pos.")


@dataclass(frozen=True)
class UnetConfig:
    """Hyper-parameters of a SpaceTimeUnet (saved with its weights)."""

    in_channels: int = 3
    out_channels: int = 3
    extra_in_channels: int = 0
    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4)
    blocks_per_level: int = 2
    attn_levels: tuple[bool, ...] = (False, True, True)
    mid_attn: bool = True
    dim_head: int = 32
    heads: int = 4
    ff_mult: float = 2.0
    temporal: bool = True
    temporal_ema: bool = False
    causal_time: bool = False
    cond_dim: int | None = None
    cond_tokens: int = 2
    context_dim: int | None = None
    context_pool_heads: int = 0  # > 0: the text tokens also pooled into the time embedding
    fps_cond: bool = False
    skip_cond: bool = False
    # each frame's place in the clip added to its time embedding: rotary time attention and
    # temporal convolutions see frame offsets, and the clip's ends only through padding, so
    # without it "moving left" has no direct way to say where the object is in frame 0 vs 7
    frame_pos_cond: bool = False
    guidance_null: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.attn_levels) != len(self.dim_mults):
            raise ValueError(
                f"attn_levels has {len(self.attn_levels)} entries but dim_mults has {len(self.dim_mults)}: one per level"
            )
        if self.dim < 1 or self.blocks_per_level < 1 or not self.dim_mults:
            raise ValueError("dim, blocks_per_level and dim_mults must be positive and non-empty")
        if (self.fps_cond or self.skip_cond or self.frame_pos_cond) and not self.temporal:
            raise ValueError("fps / frame-skip / frame-position conditioning needs temporal=True (it only applies to video)")

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (one halving per level but the last)."""
        return 2 ** (len(self.dim_mults) - 1)


class SpaceTimeUnet(nn.Module):
    """Pseudo-3D U-Net. `forward(x, t, ...)` returns the same layout as `x` with
    `out_channels` channels; see the module docstring for the conditioning inputs.

    Built from a `UnetConfig`, from keyword arguments (the config's fields), or from a config
    with keyword overrides applied: `SpaceTimeUnet(UnetConfig(), dim=128)` has dim 128."""

    def __init__(self, config: UnetConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is not None and not isinstance(config, UnetConfig):
            raise TypeError(f"SpaceTimeUnet takes a UnetConfig, got {type(config).__name__}")
        try:
            config = dataclasses.replace(config, **overrides) if config is not None else UnetConfig(**overrides)
        except TypeError as err:  # an unknown field name
            raise TypeError(f"SpaceTimeUnet: {err}; the fields are those of UnetConfig") from None
        self.config = c = config
        emb_dim = c.dim * 4
        self.time_embed = ScalarEmbedding(emb_dim, scale=1000.0)
        self.cond_proj = nn.Linear(c.cond_dim, emb_dim) if c.cond_dim else None
        self.cond_to_tokens = (
            nn.Linear(c.cond_dim, c.cond_tokens * c.context_dim) if c.cond_dim and c.context_dim and c.cond_tokens else None
        )
        self.context_pool = ContextPool(c.context_dim, emb_dim, c.context_pool_heads) \
            if c.context_dim and c.context_pool_heads else None
        if c.guidance_null and (c.cond_dim or c.context_dim):
            self.null_cond = nn.Parameter(torch.zeros(c.cond_dim)) if c.cond_dim else None
            self.null_context = nn.Parameter(torch.zeros(c.context_dim)) if c.context_dim else None
        else:
            self.null_cond = self.null_context = None
        # video-only conditioning; zero-initialised output so an inflated image U-Net is unchanged
        self.temporal_fps = ScalarEmbedding(emb_dim) if c.fps_cond else None
        self.temporal_skip = ScalarEmbedding(emb_dim) if c.skip_cond else None
        self.temporal_frame_pos = ScalarEmbedding(emb_dim, scale=1000.0) if c.frame_pos_cond else None
        for emb in (self.temporal_fps, self.temporal_skip, self.temporal_frame_pos):
            if emb is not None:
                nn.init.zeros_(emb.mlp[-1].weight)
                nn.init.zeros_(emb.mlp[-1].bias)

        dims = [c.dim * m for m in c.dim_mults]
        self.init_conv = Pseudo3DConv(c.in_channels + c.extra_in_channels, 3, dim_out=dims[0], temporal=c.temporal)

        def attn(d: int) -> SpatioTemporalAttention:
            # up to `heads` heads of `dim_head` channels, fewer where the level is narrow
            return SpatioTemporalAttention(
                d, dim_head=c.dim_head, heads=max(1, min(c.heads, d // c.dim_head)),
                ff_mult=c.ff_mult, causal_time_attn=c.causal_time, temporal_ema=c.temporal_ema,
                context_dim=c.context_dim, temporal=c.temporal,
            )

        self.down = nn.ModuleList()
        skip_dims = []
        ch = dims[0]
        for level, (d, use_attn) in enumerate(zip(dims, c.attn_levels)):
            blocks = nn.ModuleList()
            for _ in range(c.blocks_per_level):
                blocks.append(nn.ModuleList([ResBlock(ch, d, emb_dim, temporal=c.temporal, dropout=c.dropout),
                                             attn(d) if use_attn else nn.Identity()]))
                ch = d
                skip_dims.append(ch)
            down = Downsample(ch, ch) if level < len(dims) - 1 else nn.Identity()
            self.down.append(nn.ModuleList([blocks, down]))
        self.mid1 = ResBlock(ch, ch, emb_dim, temporal=c.temporal, dropout=c.dropout)
        self.mid_attn = attn(ch) if c.mid_attn else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, temporal=c.temporal, dropout=c.dropout)
        self.up = nn.ModuleList()
        for level in reversed(range(len(dims))):
            d, use_attn = dims[level], c.attn_levels[level]
            blocks = nn.ModuleList()
            for _ in range(c.blocks_per_level):
                blocks.append(nn.ModuleList([ResBlock(ch + skip_dims.pop(), d, emb_dim, temporal=c.temporal, dropout=c.dropout),
                                             attn(d) if use_attn else nn.Identity()]))
                ch = d
            up = Upsample(ch, dims[level - 1]) if level > 0 else nn.Identity()
            if level > 0:
                ch = dims[level - 1]
            self.up.append(nn.ModuleList([blocks, up]))
        self.out_norm = group_norm(ch)
        self.out_conv = Pseudo3DConv(ch, 3, dim_out=c.out_channels, temporal=c.temporal)
        nn.init.zeros_(self.out_conv.spatial_conv.weight)
        nn.init.zeros_(self.out_conv.spatial_conv.bias)

    # ------------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, extra: torch.Tensor | None) -> None:
        c = self.config
        if x.ndim not in (4, 5):
            raise ValueError(f"SpaceTimeUnet takes (b, c, h, w) images or (b, c, f, h, w) videos; got shape {tuple(x.shape)}")
        if x.shape[1] != c.in_channels:
            raise ValueError(f"SpaceTimeUnet expects {c.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        h, w = x.shape[-2:]
        m = c.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"height and width must be multiples of {m} (this U-Net halves them {len(c.dim_mults) - 1} times); "
                f"got {h}x{w}: pad or resize the input"
            )
        if c.extra_in_channels:
            if extra is None:
                raise ValueError(f"this U-Net takes {c.extra_in_channels} extra input channels: pass extra=")
            if extra.shape[0] != x.shape[0] or extra.shape[1] != c.extra_in_channels or extra.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"extra must have shape {(x.shape[0], c.extra_in_channels, *x.shape[2:])}, got {tuple(extra.shape)}"
                )
        elif extra is not None:
            raise ValueError("this U-Net was built without extra input channels (extra_in_channels=0)")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        cond: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        fps: torch.Tensor | None = None,
        frame_skip: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
        drop_cond: torch.Tensor | None = None,
        enable_time: bool = True,
    ) -> torch.Tensor:
        c = self.config
        self._check(x, extra)
        is_video = x.ndim == 5
        b = x.shape[0]
        frames = x.shape[2] if is_video else None
        time_on = is_video and enable_time and c.temporal
        if extra is not None:
            x = torch.cat([x, extra.to(x.dtype)], dim=1)
        h = rearrange(x, "b c f h w -> (b f) c h w") if is_video else x
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        emb = self.time_embed(t.expand(b) if t.ndim == 0 else t)

        cond, context, context_mask = self._conditioning(b, cond, context, context_mask, drop_cond, x)
        if self.cond_proj is not None:
            emb = emb + self.cond_proj(cond)
        if self.context_pool is not None:
            emb = emb + self.context_pool(context, context_mask)
        if time_on:
            if self.temporal_fps is not None:
                emb = emb + self.temporal_fps(self._scalar(fps, b, "fps", x))
            if self.temporal_skip is not None:
                emb = emb + self.temporal_skip(self._scalar(frame_skip, b, "frame_skip", x))
        emb = per_frame(emb, frames)
        if time_on and self.temporal_frame_pos is not None:
            pos = torch.arange(frames, device=x.device, dtype=torch.float32) / max(frames - 1, 1)
            emb = emb + repeat(self.temporal_frame_pos(pos), "f d -> (b f) d", b=b)
        fr = frames if time_on else None  # None turns every temporal part off

        def attend(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            if isinstance(block, nn.Identity):
                return h
            if fr is None and frames is not None:  # video, time off: frames act as images
                return block.forward_frames(h, None, context=_rep(context, frames), context_mask=_rep(context_mask, frames))
            return block.forward_frames(h, fr, context=context, context_mask=context_mask)

        h = self.init_conv.forward_frames(h, fr)
        skips = []
        for blocks, down in self.down:
            for res, att in blocks:
                h = attend(att, res(h, emb, fr))
                skips.append(h)
            h = down(h)
        h = self.mid2(attend(self.mid_attn, self.mid1(h, emb, fr)), emb, fr)
        for blocks, up in self.up:
            for res, att in blocks:
                h = attend(att, res(torch.cat([h, skips.pop()], dim=1), emb, fr))
            h = up(h)
        h = self.out_conv.forward_frames(F.silu(self.out_norm(h)), fr)
        return rearrange(h, "(b f) c h w -> b c f h w", b=b) if is_video else h

    def _conditioning(self, b, cond, context, context_mask, drop_cond, x):
        """Validate conditioning, swap in null embeddings where `drop_cond`, add cond tokens."""
        c = self.config
        if c.cond_dim:
            if cond is None:
                raise ValueError(f"this U-Net is conditioned on a (b, {c.cond_dim}) image embedding: pass cond=")
            if cond.shape != (b, c.cond_dim):
                raise ValueError(f"cond must have shape {(b, c.cond_dim)}, got {tuple(cond.shape)}")
            cond = cond.to(x.dtype)
        if c.context_dim:
            if context is None:
                raise ValueError(f"this U-Net cross-attends to (b, tokens, {c.context_dim}) text tokens: pass context=")
            if context.ndim != 3 or context.shape[0] != b or context.shape[2] != c.context_dim:
                raise ValueError(f"context must have shape (b={b}, tokens, {c.context_dim}), got {tuple(context.shape)}")
            context = context.to(x.dtype)
            if context_mask is None:
                context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x.device)
        if drop_cond is not None:
            if self.null_cond is None and self.null_context is None:
                raise ValueError("this U-Net has no null embeddings (guidance_null=False): it cannot drop its conditioning")
            keep = ~drop_cond.to(device=x.device, dtype=torch.bool)
            if self.null_cond is not None:
                cond = torch.where(keep[:, None], cond, self.null_cond.to(x.dtype))
            if self.null_context is not None:
                context = torch.where(keep[:, None, None], context, self.null_context.to(x.dtype))
                # a dropped prompt is one null token: attending to nothing is undefined
                only_first = torch.zeros_like(context_mask)
                only_first[:, 0] = True
                context_mask = torch.where(keep[:, None], context_mask, only_first)
        if self.cond_to_tokens is not None:
            tokens = rearrange(self.cond_to_tokens(cond), "b (n d) -> b n d", n=c.cond_tokens)
            context = torch.cat([tokens, context], dim=1)
            context_mask = torch.cat([torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device), context_mask], dim=1)
        return cond, context, context_mask

    @staticmethod
    def _scalar(v, b: int, name: str, x: torch.Tensor) -> torch.Tensor:
        if v is None:
            raise ValueError(f"this video U-Net is conditioned on {name}: pass {name}= (a number or a (b,) tensor)")
        v = torch.as_tensor(v, dtype=torch.float32, device=x.device)
        return v.expand(b) if v.ndim == 0 else v


def _rep(t: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    if t is None:
        return None
    return repeat(t, "b ... -> (b f) ...", f=frames)


def inflate_unet(image_unet: SpaceTimeUnet, **changes) -> SpaceTimeUnet:
    """2-D -> 3-D (section 3.2): a video U-Net with the image U-Net's spatial weights copied
    exactly and every temporal layer at the identity; `changes` may turn on video-only
    options (fps_cond, skip_cond, frame_pos_cond, temporal_ema, causal_time). On a video, the
    result at this point equals the image U-Net applied frame by frame."""
    config = dataclasses.replace(image_unet.config, temporal=True, **changes)
    video = SpaceTimeUnet(config).to(next(image_unet.parameters()).device)
    missing, unexpected = video.load_state_dict(image_unet.state_dict(), strict=False)
    not_temporal = [k for k in missing if "temporal" not in k]
    if unexpected or not_temporal:
        raise ValueError(f"cannot inflate: unexpected keys {unexpected}, missing non-temporal keys {not_temporal}")
    return video
