"""Positional information for attention and scalar conditioning.

Attention uses rotary position embeddings (Su et al. 2021, RoFormer): the query and key of
each head are rotated by angles proportional to the token's position, so the attention logit
depends only on relative offsets. Time uses 1-D rotary over frame index; space uses axial 2-D
rotary (half of each head's channel pairs rotate with the row, half with the column). This
answers the seed's TODO "the best positional embeddings": it is parameter-free, works for any
frame count and frame size without retraining a bias table, costs O(n d) instead of the
O(n^2 h) of a continuous position bias MLP, and keeps attention on the fused
`scaled_dot_product_attention` kernels (an additive bias would force the slow path).
The rotation tables are computed once per (size, device, dtype) and cached.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import nn


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal features of scalars (diffusion time, fps, frame skip).

    `x`: `(b,)` float -> `(b, dim)`. `dim` must be even.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding needs an even dim, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class ScalarEmbedding(nn.Module):
    """Scalar condition (diffusion time in [0, 1] scaled by 1000, fps, frame skip) -> vector.

    `(b,)` -> `(b, out_dim)`: sinusoidal features then a two-layer MLP.
    """

    def __init__(self, out_dim: int, freq_dim: int = 128, scale: float = 1.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(x * self.scale, self.freq_dim))


class Rotary(nn.Module):
    """Rotary embedding over 1-D (time) or 2-D (rows, columns) token grids.

    `forward(q, k, grid)`: q, k `(batch, heads, n, d)` with n = prod(grid); returns them rotated.
    Channel pairs (2i, 2i+1) rotate together; for 2-D grids, the first d/2 channels rotate with
    the row and the next d/2 with the column; channels that do not fit a rotation pair are left
    as they are.
    """

    def __init__(self, dim_head: int, ndim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if ndim not in (1, 2):
            raise ValueError(f"Rotary supports 1-D or 2-D grids, got ndim={ndim}")
        self.ndim, self.dim_head = ndim, dim_head
        # channels per axis, rounded down to an even number (rotation pairs)
        self.per_axis = (dim_head // ndim) // 2 * 2
        self.rot_dim = self.per_axis * ndim
        inv_freq = 1.0 / theta ** (torch.arange(0, self.per_axis, 2, dtype=torch.float32) / self.per_axis)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _cached(self, key: tuple, build) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        # normal tensors even when first asked for under inference mode, so a cached table
        # can later take part in autograd
        with torch.inference_mode(False), torch.no_grad():
            out = build()
        if len(self._cache) > 64:  # many sizes (e.g. tiles): keep the cache bounded
            self._cache.clear()
        self._cache[key] = out
        return out

    def _pair_angles(self, grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Angle of every rotation pair at every grid position: `(n, rot_dim / 2)`, float32."""
        inv = self.inv_freq.to(device)
        axes = []
        for i, size in enumerate(grid):
            ang = torch.outer(torch.arange(size, device=device, dtype=torch.float32), inv)  # (size, per_axis/2)
            shape = [1] * len(grid)
            shape[i] = size
            axes.append(ang.view(*shape, -1).expand(*grid, -1))  # broadcast over the other axes
        return torch.cat(axes, dim=-1).reshape(-1, self.rot_dim // 2)

    def tables(self, grid: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin tables `(n, rot_dim)` (each pair's angle twice), cached per (grid, device, dtype)."""
        def build():
            ang = repeat(self._pair_angles(grid, device), "n r -> n (r two)", two=2)
            return ang.cos().to(dtype), ang.sin().to(dtype)
        return self._cached(("interleaved", tuple(grid), device, dtype), build)

    def forward(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(grid) != self.ndim:
            raise ValueError(f"Rotary built for {self.ndim}-D grids got grid {grid}")
        cos, sin = self.tables(tuple(grid), q.device, q.dtype)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        r = self.rot_dim
        x_rot, x_pass = x[..., :r], x[..., r:]
        pairs = rearrange(x_rot, "... (d two) -> ... d two", two=2)
        x1, x2 = pairs.unbind(-1)
        rotated_half = rearrange(torch.stack((-x2, x1), dim=-1), "... d two -> ... (d two)")
        out = x_rot * cos + rotated_half * sin
        return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out
