"""Pseudo-3D convolution (Make-A-Video, section 3.2, eq. 1):

    ConvP3D(h) = Conv1D_time( Conv2D_space(h) )

A 2-D convolution runs on every frame, then a 1-D convolution runs along time at every pixel.
The temporal kernel starts as the identity (Dirac kernel, zero bias), so a network pre-trained
on images keeps its function when it first meets video; images (4-D input) skip it entirely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mavcli.nn.shapes import check_input


class Pseudo3DConv(nn.Module):
    """Spatial conv per frame, then temporal conv per pixel (identity at initialisation).

    Args:
        dim: input channels.
        kernel_size: spatial kernel (odd, 'same' padding).
        dim_out: output channels (default `dim`).
        temporal_kernel_size: kernel along time (odd; default `kernel_size`); a kernel size of 1
            for both means a pointwise conv with no temporal part, as in the seed.
        temporal: build the temporal conv at all; False gives an image-only layer with the same
            spatial parameter names, which `mavcli.models.inflate_unet` turns into a video layer.

    Shapes: `(b, c, f, h, w) -> (b, c_out, f, h, w)` and `(b, c, h, w) -> (b, c_out, h, w)`.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        *,
        dim_out: int | None = None,
        temporal_kernel_size: int | None = None,
        temporal: bool = True,
    ) -> None:
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        temporal_kernel_size = kernel_size if temporal_kernel_size is None else temporal_kernel_size
        for name, k in (("kernel_size", kernel_size), ("temporal_kernel_size", temporal_kernel_size)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"Pseudo3DConv needs an odd {name} >= 1 for 'same' padding; got {k}")
        self.dim, self.dim_out = dim, dim_out
        self.spatial_conv = nn.Conv2d(dim, dim_out, kernel_size, padding=kernel_size // 2)
        self.temporal_conv: nn.Conv1d | None = None
        if temporal and temporal_kernel_size > 1:
            self.temporal_conv = nn.Conv1d(
                dim_out, dim_out, temporal_kernel_size, padding=temporal_kernel_size // 2
            )
            self.reset_temporal()

    def reset_temporal(self) -> None:
        """Make the temporal conv the identity again (Dirac kernel, zero bias)."""
        if self.temporal_conv is not None:
            nn.init.dirac_(self.temporal_conv.weight)
            nn.init.zeros_(self.temporal_conv.bias)

    def forward(
        self, x: torch.Tensor, convolve_across_time: bool = True, *, enable_time: bool | None = None
    ) -> torch.Tensor:
        """`x`: `(b, c, f, h, w)` video or `(b, c, h, w)` image. `enable_time` is the anchor
        package's name for `convolve_across_time` and is accepted as an alias."""
        if enable_time is not None:
            convolve_across_time = enable_time
        if not check_input(x, self.dim, "Pseudo3DConv"):
            return self.forward_frames(x, None)  # same kernels as a video's frames
        frames = x.shape[2]
        y = self.forward_frames(rearrange(x, "b c f h w -> (b f) c h w"), frames, convolve_across_time)
        return rearrange(y, "(b f) c h w -> b c f h w", f=frames)

    def forward_frames(
        self, x: torch.Tensor, frames: int | None, convolve_across_time: bool = True
    ) -> torch.Tensor:
        """The U-Net's internal layout: `x` is `((b f), c, h, w)`, frames stacked in the batch;
        `frames=None` marks images. Returns `((b f), c_out, h, w)`."""
        x = self.spatial_conv(x)
        if frames is None or not convolve_across_time or self.temporal_conv is None:
            return x
        return temporal_conv_frames(self.temporal_conv, x, frames)


def temporal_conv_frames(conv: nn.Conv1d, x: torch.Tensor, frames: int) -> torch.Tensor:
    """Apply a Conv1d along time to `((b f), c, h, w)`. The kernel `(o, i, k)` runs as a 2-D
    conv with kernel `(o, i, k, 1)` over `(b, c, f, (h w))`, which is the same sum and needs no
    `((b h w), c, f)` transposing copy of the activations."""
    h, w = x.shape[-2:]
    y = rearrange(x, "(b f) c h w -> b c f (h w)", f=frames)
    y = F.conv2d(y, conv.weight.unsqueeze(-1), conv.bias, padding=(conv.padding[0], 0))
    return rearrange(y, "b c f (h w) -> (b f) c h w", h=h, w=w)


class TemporalConvStack(nn.Module):
    """The temporal convolutions of ModelScope's pseudo-3D U-Net (Wang et al. 2023, "ModelScope
    text-to-video"), Make-A-Video's Conv1D_time of eq. 1 deepened: `depth` layers of
    (GroupNorm, SiLU, conv along time), added to the input. The last conv starts at zero, so the
    stack starts as the identity like `Pseudo3DConv`'s Dirac kernel.

    Unlike every other norm in mavcli, the GroupNorm here takes its statistics over the whole
    clip (channels of a group x frames x pixels), because the published weights were trained so.

    Shapes: `((b f), c, h, w)` with `frames=f` -> same.
    """

    def __init__(self, dim: int, *, groups: int = 32, depth: int = 4, kernel_size: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"TemporalConvStack needs an odd kernel_size, got {kernel_size}")
        self.norms = nn.ModuleList(nn.GroupNorm(groups, dim, eps=eps) for _ in range(depth))
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2) for _ in range(depth))
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = rearrange(x, "(b f) c h w -> b c f h w", f=frames)
        skip = y
        for norm, conv in zip(self.norms, self.convs):
            y = F.silu(norm(y))  # 5-D input: statistics over (c / groups, f, h, w)
            y = F.conv2d(y.flatten(3), conv.weight.unsqueeze(-1), conv.bias, padding=(conv.padding[0], 0))
            y = y.unflatten(3, (h, w))
        return rearrange(skip + y, "b c f h w -> (b f) c h w")
