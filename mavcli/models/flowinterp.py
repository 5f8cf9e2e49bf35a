"""The real-footage frame interpolator: classical DIS optical flow refined by a small network.

Make-A-Video's F_i (section 3.3) is a masked-frame diffusion U-Net; in the shapes pack it works
at 32x32 keyframes. Real footage needs something else: hundreds of pixels of resolution, large
motions, and a budget of ~150 ms per new frame on a CPU. This network is a single deterministic
evaluation on top of DIS flow (Kroeger et al. 2016), in the spirit of Super SloMo (Jiang et al.
2018): from the two frames, the flows from time t to each of them (linear motion) and the two
backward-warped frames, it predicts a correction of both flows, a visibility (occlusion)
weight between the two warped frames, and an RGB residual.

    frame_t = ((1-t) V W_0 + t (1-V) W_1) / ((1-t) V + t (1-V)) + G * residual
    W_k = warp(I_k, F_t->k + dF_k)

The residual is a full-resolution convolution over the warped frames, so wherever it is not
zero it adds texture-shaped detail, also to pixels that do not move and that the warps already
render exactly. With `residual_gate` a per-pixel gate G in (0, 1), predicted at 1/2 resolution
with the flow corrections, can switch it off there (without it, the first shipped network
added ~0.2 of mean squared error (0-255 scale) to still pixels and lost to plain DIS on
footage from a fixed camera).

Every output starts at zero (zero-initialised heads), so the untrained network is exactly the
"DIS flow, backward warp + blend" baseline and training can only add to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mavcli.flow import backward_warp, flows_at_quadratic


@dataclass(frozen=True)
class FlowInterpConfig:
    # channels at 1/2, 1/4, 1/8, 1/16 resolution; sized for ~2.7 GFLOP per 455x256 frame, so that
    # flow + network stay within ~150 ms per new frame on a 2-core CPU
    widths: tuple[int, ...] = (24, 32, 48, 64)
    flow_scale: float = 16.0  # flows enter the network divided by this (pixels -> ~unit range)
    head_width: int = 12  # channels of the full-resolution RGB head
    residual_gate: bool = False  # G above (False: the first realinterp pack's network)

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must list >= 2 positive channel counts, got {self.widths}")

    @property
    def size_multiple(self) -> int:
        """Height and width are padded to a multiple of this inside the network."""
        return 2 ** len(self.widths)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(cout))


def _cat(parts: list[torch.Tensor], memory_format: torch.memory_format) -> torch.Tensor:
    """`torch.cat(parts, dim=1)` written straight into a tensor of `memory_format`. With
    channels-last weights a convolution converts a plain NCHW input first: at full resolution
    that copy and the concatenation before it cost ~17% of the network's time."""
    first = parts[0]
    out = torch.empty((first.shape[0], sum(p.shape[1] for p in parts), *first.shape[2:]), dtype=first.dtype,
                      device=first.device, memory_format=memory_format)
    c = 0
    for part in parts:
        out[:, c:c + part.shape[1]] = part
        c += part.shape[1]
    return out


class FlowInterpNet(nn.Module):
    """Inputs: frames `i0`, `i1` `(b, 3, h, w)` in [0, 1], DIS flows `f01`, `f10` `(b, 2, h, w)` in
    pixels, times `t` `(b,)` in (0, 1), and optionally the flows to the known frames on either
    side, `f0p` = F_0->-1 and `f12` = F_1->2 (the flow at t then follows constant acceleration,
    `flows_at_quadratic`). Output: the frame at t, `(b, 3, h, w)`.
    Any h, w: inputs are edge-padded to `config.size_multiple` and the output cropped."""

    IN_CHANNELS = 3 * 4 + 2 * 2 + 1  # i0, i1, w0, w1, ft0, ft1, t

    def __init__(self, config: FlowInterpConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.down = nn.ModuleList()
        cin = self.IN_CHANNELS
        for c in w:  # each level halves the resolution
            self.down.append(nn.Sequential(_conv(cin, c, 2), _conv(c, c)))
            cin = c
        self.up = nn.ModuleList()
        for c_skip, c_low in zip(reversed(w[:-1]), reversed(w[1:])):  # 1/16 -> 1/2
            # one conv at the finest level, where a conv costs the most
            second = [_conv(c_skip, c_skip)] if c_skip != w[0] else []
            self.up.append(nn.Sequential(_conv(c_low + c_skip, c_skip), *second))
        # at 1/2 resolution: flow corrections (4), visibility logit (1), [residual gate logit (1)],
        # features for the RGB head
        self.coarse = nn.Conv2d(w[0], 6 if config.residual_gate else 5, 3, 1, 1)
        self.head_in = _conv(w[0], config.head_width)
        # at full resolution: features + both re-warped frames -> RGB residual
        self.rgb = nn.Conv2d(config.head_width + 6, 3, 3, 1, 1)
        for head in (self.coarse, self.rgb):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, i0: torch.Tensor, i1: torch.Tensor, f01: torch.Tensor, f10: torch.Tensor,
                t: torch.Tensor, f0p: torch.Tensor | None = None, f12: torch.Tensor | None = None) -> torch.Tensor:
        h, w = i0.shape[-2:]
        m = self.config.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            i0, i1, f01, f10, f0p, f12 = (None if x is None else F.pad(x, (0, pw, 0, ph), mode="replicate")
                                          for x in (i0, i1, f01, f10, f0p, f12))
        # linear motion, or constant acceleration on a side whose neighbour flow is given
        ft0, ft1 = flows_at_quadratic(f01, f10, t, f0p, f12)
        w0, w1 = backward_warp(i0, ft0), backward_warp(i1, ft1)
        tmap = t.to(i0).reshape(-1, 1, 1, 1).expand(-1, 1, *i0.shape[-2:])
        s = self.config.flow_scale
        # the full-resolution inputs take the layout of the weights (channels-last for inference)
        layout = torch.contiguous_format if self.rgb.weight.is_contiguous() else torch.channels_last
        x = _cat([i0, i1, w0, w1, ft0 / s, ft1 / s, tmap], layout)
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
        x = skips.pop()
        for level in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = level(torch.cat([x, skip], dim=1))
        coarse = F.interpolate(self.coarse(x), size=i0.shape[-2:], mode="bilinear", align_corners=False)
        dflow, vis = coarse[:, :4] * s, coarse[:, 4:5]
        d0, d1 = rearrange(dflow, "b (k xy) h w -> k b xy h w", k=2)
        w0, w1 = backward_warp(i0, ft0 + d0), backward_warp(i1, ft1 + d1)
        # visibility V in (0, 1), 0.5 at init: the blend then weighs the frames (1-t) and t
        v = torch.sigmoid(vis)
        tt = t.to(i0).reshape(-1, 1, 1, 1)
        a, b = (1 - tt) * v, tt * (1 - v)
        blend = (a * w0 + b * w1) / (a + b).clamp_min(1e-6)
        feats = F.interpolate(self.head_in(x), size=i0.shape[-2:], mode="bilinear", align_corners=False)
        residual = self.rgb(_cat([feats, w0, w1], layout))
        if self.config.residual_gate:  # 0.5 at init, where the residual is zero anyway
            residual = residual * torch.sigmoid(coarse[:, 5:6])
        out = blend + residual
        return out[..., :h, :w]
