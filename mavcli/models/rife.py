"""RIFE's IFNet: intermediate flow estimation for frame interpolation (Huang et al. 2022, "Real-Time
Intermediate Flow Estimation for Video Frame Interpolation", ECCV; the v4 networks of
Practical-RIFE, which take any time t in (0, 1)).

Where mavcli's own flow network (models/flowinterp.py) corrects classical DIS flow, IFNet
estimates the flows from time t to both frames itself, coarse to fine (the paper's IFNet):
block k sees the two frames (warped by the flows so far), their learned features (warped
likewise), t and the fusion mask, all resized by 1/s_k, and adds a correction to the flows and
the mask; s = 8, 4, 2, 1 pixels. The frame at t is the mask-weighted blend of the two frames
backward-warped by the final flows (the paper's fusion map; the v4 networks dropped its
refinement U-Net).

    frame_t = sigmoid(M) * W_0 + (1 - sigmoid(M)) * W_1,   W_k = warp(I_k, F_t->k)

The published weights mavcli loads (weights.toml's `rife` pack, RIFE v4.13) use RIFE's own
module names; `RIFE_KEYS` maps them to this module's names and `load_rife_state_dict` loads
them strictly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from mavcli.flow import backward_warp


@dataclass(frozen=True)
class RifeConfig:
    """IFNet v4.13's sizes (the defaults): a 4-layer feature head, then one `FlowBlock` per
    scale. `pad_multiple`: frames are zero-padded at the bottom and right to a multiple of this
    (Practical-RIFE pads to 128 at full scale; every block needs a multiple of 32)."""

    head_width: int = 32
    feature_channels: int = 8
    block_widths: tuple[int, ...] = (192, 128, 96, 64)
    block_scales: tuple[int, ...] = (8, 4, 2, 1)
    res_convs: int = 8
    pad_multiple: int = 128

    def __post_init__(self) -> None:
        if len(self.block_widths) != len(self.block_scales) or not self.block_widths:
            raise ValueError(f"block_widths {self.block_widths} and block_scales {self.block_scales} "
                             "must name one scale per block")
        if any(w < 2 or w % 2 for w in self.block_widths):
            raise ValueError(f"block widths must be even and >= 2, got {self.block_widths}")
        if self.pad_multiple % (4 * max(self.block_scales)):
            raise ValueError(f"pad_multiple {self.pad_multiple} must be a multiple of 4 x the largest "
                             f"block scale ({max(self.block_scales)})")

    @property
    def first_block_inputs(self) -> int:
        """Two RGB frames, their features, and t."""
        return 6 + 2 * self.feature_channels + 1

    @property
    def later_block_inputs(self) -> int:
        """The first block's inputs (warped), the mask logit and the two flows."""
        return self.first_block_inputs + 1 + 4


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class FeatureHead(nn.Module):
    """Per-frame features the blocks match: `(b, 3, h, w)` -> `(b, feature_channels, h, w)`
    (one stride-2 convolution, two at half size, one transposed convolution back up)."""

    def __init__(self, config: RifeConfig) -> None:
        super().__init__()
        w = config.head_width
        self.down = nn.Conv2d(3, w, 3, 2, 1)
        self.mid = nn.ModuleList([nn.Conv2d(w, w, 3, 1, 1) for _ in range(2)])
        self.up = nn.ConvTranspose2d(w, config.feature_channels, 4, 2, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = _leaky(self.down(image))
        for conv in self.mid:
            x = _leaky(conv(x))
        return self.up(x)


class ScaledResidual(nn.Module):
    """`x + gain * conv(x)` then LeakyReLU, with a learned per-channel gain; `(b, c, h, w)`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _leaky(self.conv(x) * self.gain + x)


class FlowBlock(nn.Module):
    """One scale of IFNet (the paper's IFBlock): inputs `(b, c_in, h, w)` and the flows so far
    `(b, 4, h, w)` (t->0 in channels 0-1, t->1 in 2-3; None for the first block), resized by
    1/scale, through two stride-2 convolutions, residual convolutions at 1/(4 scale), and a
    transposed convolution + pixel shuffle back to 1/scale. Returns the flow correction
    `(b, 4, h, w)` and the fusion mask's logit `(b, 1, h, w)` at full size."""

    def __init__(self, inputs: int, width: int, res_convs: int) -> None:
        super().__init__()
        self.down = nn.ModuleList([nn.Conv2d(inputs, width // 2, 3, 2, 1), nn.Conv2d(width // 2, width, 3, 2, 1)])
        self.body = nn.Sequential(*[ScaledResidual(width) for _ in range(res_convs)])
        # 6 channels out after the shuffle: 4 flow, 1 mask, 1 that the published weights leave unused
        self.up = nn.ConvTranspose2d(width, 4 * 6, 4, 2, 1)

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        # scale_factor (not a size) as RIFE resizes, so padded frames resize exactly as there
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            small = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
            x = torch.cat([x, small / scale], dim=1)  # flows are in pixels of the resized frame
        for conv in self.down:
            x = _leaky(conv(x))
        out = F.pixel_shuffle(self.up(self.body(x)), 2)
        out = F.interpolate(out, scale_factor=float(scale), mode="bilinear", align_corners=False)
        return out[:, :4] * scale, out[:, 4:5]


class RifeNet(nn.Module):
    """IFNet: two frames `(b, 3, h, w)` in [0, 1] and times `t` `(b,)` in (0, 1) -> the frames at
    t `(b, 3, h, w)` in [0, 1]. Height and width must be multiples of 4 x the largest block
    scale (`RifeInterpolator` pads them); `scale` < 1 runs every block on proportionally
    smaller frames (Practical-RIFE's --scale, for 4K footage)."""

    def __init__(self, config: RifeConfig | None = None) -> None:
        super().__init__()
        self.config = config or RifeConfig()
        c = self.config
        self.head = FeatureHead(c)
        self.blocks = nn.ModuleList([
            FlowBlock(c.first_block_inputs if k == 0 else c.later_block_inputs, width, c.res_convs)
            for k, width in enumerate(c.block_widths)])

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        b, _, h, w = img0.shape
        times = repeat(t.to(img0.dtype), "b -> b 1 h w", h=h, w=w)
        feat0, feat1 = self.head(img0), self.head(img1)
        flow = mask = None
        warped0, warped1, wfeat0, wfeat1 = img0, img1, feat0, feat1
        for block, s in zip(self.blocks, self.config.block_scales):
            # flows and the mask stay float32 under autocast: a bfloat16 pixel coordinate of 1000
            # is only known to 4 px, and the flows add up over the blocks
            if flow is None:
                flow, mask = (y.float() for y in block(torch.cat([img0, img1, feat0, feat1, times], dim=1), None, s / scale))
            else:
                wfeat0, wfeat1 = backward_warp(feat0, flow[:, :2]), backward_warp(feat1, flow[:, 2:])
                step, mask = (y.float() for y in block(torch.cat([warped0, warped1, wfeat0, wfeat1, times, mask], dim=1),
                                                         flow, s / scale))
                flow = flow + step
            warped0, warped1 = backward_warp(img0, flow[:, :2]), backward_warp(img1, flow[:, 2:])
        weight = torch.sigmoid(mask)
        return weight * warped0 + (1 - weight) * warped1


#: RIFE's module names -> RifeNet's, as (pattern, replacement) applied in order
RIFE_KEYS: tuple[tuple[str, object], ...] = (
    (r"^encode\.cnn0\.", "head.down."),
    (r"^encode\.cnn([12])\.", lambda m: f"head.mid.{int(m.group(1)) - 1}."),
    (r"^encode\.cnn3\.", "head.up."),
    (r"^block(\d+)\.conv0\.([01])\.0\.", r"blocks.\1.down.\2."),
    (r"^block(\d+)\.convblock\.(\d+)\.beta$", r"blocks.\1.body.\2.gain"),
    (r"^block(\d+)\.convblock\.(\d+)\.conv\.", r"blocks.\1.body.\2.conv."),
    (r"^block(\d+)\.lastconv\.0\.", r"blocks.\1.up."),
)


def rife_key(name: str) -> str:
    """A tensor's name in RIFE's checkpoints -> its name in `RifeNet` (unchanged if no rule fits)."""
    name = name.removeprefix("module.")  # checkpoints saved from DistributedDataParallel
    for pattern, replacement in RIFE_KEYS:
        new, n = re.subn(pattern, replacement, name)
        if n:
            return new
    return name


def load_rife_state_dict(net: RifeNet, tensors: dict[str, torch.Tensor]) -> None:
    """Load RIFE-named tensors into `net` strictly: any missing or unexpected name raises
    (ValueError, listing them)."""
    mapped = {rife_key(k): v for k, v in tensors.items()}
    if len(mapped) != len(tensors):
        raise ValueError("two tensors of the checkpoint map to one name")
    result = net.load_state_dict(mapped, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"the checkpoint does not fit RIFE v4.13's IFNet: missing {result.missing_keys[:6]}"
                         f"{' ...' if len(result.missing_keys) > 6 else ''}, unexpected {result.unexpected_keys[:6]}"
                         f"{' ...' if len(result.unexpected_keys) > 6 else ''}")
