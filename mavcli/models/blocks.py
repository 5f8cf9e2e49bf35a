"""U-Net building blocks on the internal layout `((b f), c, h, w)` (frames stacked in the
batch; `frames=None` for images). Spatial operations therefore act per frame and never mix
frames; only Pseudo3DConv's temporal conv and the temporal attention do."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from mavcli.nn.conv import Pseudo3DConv
from mavcli.nn.norm import group_norm


class ContextPool(nn.Module):
    """Attention pooling of the text tokens into one vector for the time embedding (Imagen's
    pooled text embedding, with learned queries). Cross-attention reaches the text only where a
    level has attention; a global fact of the prompt, such as the motion direction, then also
    steers every ResBlock through its scale and shift.

    `forward(context, mask)`: context `(b, m, d)`, mask `(b, m)` bool -> `(b, emb_dim)`. The
    output projection starts at zero, so adding the pool to a trained U-Net changes nothing.
    """

    def __init__(self, context_dim: int, emb_dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(context_dim)
        self.queries = nn.Parameter(torch.randn(heads, context_dim) * context_dim**-0.5)
        self.out = nn.Linear(heads * context_dim, emb_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys = self.norm(context)
        scores = torch.einsum("h d, b m d -> b h m", self.queries.to(keys.dtype), keys) * keys.shape[-1] ** -0.5
        scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
        pooled = torch.einsum("b h m, b m d -> b h d", scores.softmax(dim=-1), keys)
        return self.out(rearrange(pooled, "b h d -> b (h d)"))


def per_frame(v: torch.Tensor, frames: int | None) -> torch.Tensor:
    """Repeat a per-video vector `(b, d)` for every frame: `((b f), d)`."""
    return v if frames is None else repeat(v, "b d -> (b f) d", f=frames)


class ResBlock(nn.Module):
    """Residual block with two pseudo-3D convs and scale-shift conditioning on an embedding
    (time + image embedding + fps), as in the DALL-E 2 / Imagen U-Nets.

    `forward(x, emb, frames)`: x `((b f), c_in, h, w)`, emb `((b f), emb_dim)` -> `((b f), c_out, h, w)`.
    """

    def __init__(self, dim_in: int, dim_out: int, emb_dim: int, *, temporal: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(dim_in)
        self.conv1 = Pseudo3DConv(dim_in, 3, dim_out=dim_out, temporal=temporal)
        self.emb = nn.Linear(emb_dim, dim_out * 2)
        self.norm2 = group_norm(dim_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Pseudo3DConv(dim_out, 3, temporal=temporal)
        nn.init.zeros_(self.conv2.spatial_conv.weight)  # each residual branch starts at zero
        nn.init.zeros_(self.conv2.spatial_conv.bias)
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int | None) -> torch.Tensor:
        h = self.conv1.forward_frames(F.silu(self.norm1(x)), frames)
        scale, shift = rearrange(self.emb(F.silu(emb)), "bf (two c) -> two bf c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2.forward_frames(self.dropout(F.silu(h)), frames)
        return h + self.skip(x)


class Downsample(nn.Module):
    """Halve height and width per frame (never time): space-to-depth then a 1x1 conv.
    `((b f), c, h, w) -> ((b f), c_out, h/2, w/2)`."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim * 4, dim_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(rearrange(x, "bf c (h p) (w q) -> bf (c p q) h w", p=2, q=2))


class Upsample(nn.Module):
    """Double height and width per frame: nearest neighbour then a 3x3 conv.
    `((b f), c, h, w) -> ((b f), c_out, 2h, 2w)`."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


#: how `resize_frames` may enlarge (PackSettings.sr_upsample)
UPSAMPLE_MODES = ("bilinear", "bicubic")


def resize_frames(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize `(n, c, h, w)` frames in [-1, 1] to `(n, c, size, size)`: area averaging when
    shrinking, `mode` (bilinear or bicubic) when enlarging. Bicubic keeps edges sharper (a
    triangle's apex, a square's corners) and can overshoot at them, so its output is clamped
    to [-1, 1]. The super-resolution stages see their low-resolution input through exactly
    this function, with the pack's `sr_upsample`, in training and in sampling."""
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    if mode == "bicubic":
        return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)
    if mode != "bilinear":
        raise ValueError(f"upsampling mode must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def blend_known_frames(video: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill the unknown frames of `(b, c, n, h, w)` by linear interpolation between the nearest
    known frames (copies of the nearest one beyond the first / last known frame). `known` is
    `(n,)` bool for the whole batch or `(b, n)` per item. F_i's conditioning (section 3.3) and
    its SDEdit start both use it."""
    if known.ndim == 2:
        return torch.cat([blend_known_frames(video[i:i + 1], known[i]) for i in range(video.shape[0])])
    idx = torch.nonzero(known.cpu()).flatten().tolist()
    out = video.clone()
    for i in range(video.shape[2]):
        if known[i]:
            continue
        left = [k for k in idx if k < i]
        right = [k for k in idx if k > i]
        if left and right:
            a, b = left[-1], right[0]
            w = (i - a) / (b - a)
            out[:, :, i] = (1 - w) * video[:, :, a] + w * video[:, :, b]
        else:
            out[:, :, i] = video[:, :, (left or right)[-1 if left else 0]]
    return out


def interp_conditioning(video: torch.Tensor, known: torch.Tensor, prefill: bool) -> torch.Tensor:
    """F_i's extra input channels (section 3.3): the video with its unknown frames zeroed, or,
    with `prefill`, filled by the linear blend of the nearest known frames, then the mask.
    video `(b, c, n, h, w)`, known `(n,)` or `(b, n)` bool -> `(b, c + 1, n, h, w)`."""
    b, _, n, h, w = video.shape
    mask = known.to(video.device, video.dtype)
    mask = (mask.view(1, 1, n, 1, 1) if mask.ndim == 1 else mask.view(b, 1, n, 1, 1)).expand(b, 1, n, h, w)
    frames = blend_known_frames(video, known) if prefill else video * mask
    return torch.cat([frames, mask], dim=1)
