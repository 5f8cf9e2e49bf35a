"""Tiled evaluation of a convolutional network: the super-resolution stages train on crops
(cheap on a CPU) and run on overlapping tiles of the same size, so they see at sampling time
exactly the statistics they trained on (GroupNorm over a tile, zero padding at its border),
and memory stays bounded for large frames.

`tiled(net, tile, overlap)` returns `fn(x, t, **kw)` that cuts `x` and every keyword tensor
with the same trailing `(h, w)` into tiles, runs `net` on each, and blends the outputs with
weights that ramp linearly across the overlaps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, taper_start: bool, taper_end: bool, device, dtype) -> torch.Tensor:
    w = torch.ones(length, device=device, dtype=dtype)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, device=device, dtype=dtype) / (overlap + 1)
        if taper_start:
            w[:overlap] = ramp
        if taper_end:
            w[-overlap:] = ramp.flip(0)
    return w


def tiled(net: Callable[..., torch.Tensor], tile: int, overlap: int = 8) -> Callable[..., torch.Tensor]:
    """Wrap `net(x, t, **kw)` (x `(..., h, w)`) to run on `tile` x `tile` tiles."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile; got tile={tile}, overlap={overlap}")

    def fn(x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h <= tile and w <= tile:
            return net(x, t, **kw)
        ys, xs = _starts(h, tile, tile - overlap), _starts(w, tile, tile - overlap)
        out = None
        weight = torch.zeros(h, w, device=x.device, dtype=torch.float32)
        for y in ys:
            for z in xs:
                th, tw = min(tile, h), min(tile, w)
                piece = {k: (v[..., y:y + th, z:z + tw] if isinstance(v, torch.Tensor) and v.shape[-2:] == (h, w) else v)
                         for k, v in kw.items()}
                pred = net(x[..., y:y + th, z:z + tw], t, **piece).float()
                wy = _ramp(th, overlap, y > 0, y + th < h, x.device, torch.float32)
                wx = _ramp(tw, overlap, z > 0, z + tw < w, x.device, torch.float32)
                wmap = wy[:, None] * wx[None, :]
                if out is None:
                    out = torch.zeros(*pred.shape[:-2], h, w, device=x.device, dtype=torch.float32)
                out[..., y:y + th, z:z + tw] += pred * wmap
                weight[y:y + th, z:z + tw] += wmap
        return (out / weight).to(x.dtype)

    return fn
