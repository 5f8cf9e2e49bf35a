"""Normalisations that never mix frames, so a video behaves as its frames would as images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension with a learned gain: `(..., d) -> (..., d)`."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def group_norm(num_channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides the channels.
    Used on `((b f), c, h, w)`, i.e. statistics per frame, never across frames."""
    groups = max(g for g in range(1, max_groups + 1) if num_channels % g == 0)
    return nn.GroupNorm(groups, num_channels, eps=1e-6)
