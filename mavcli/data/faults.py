"""The keyframe decoder's faults, drawn on rendered frames of the shapes world: corners rounded
and sizes that change from frame to frame (docs/evaluation.md). Training shows them to the
upsamplers as inputs whose target is the clean render (`mav train --sr-round-mix`,
`--sr-size-mix`); the upsampler probe (`mavcli.eval.shapes_probe --upsamplers`) feeds them
through a pack's SR stages to measure what comes out."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["round_corners"]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """`(n, c, h, w)` blurred by a Gaussian of `sigma` pixels (separable, edges replicated)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def round_corners(frames: torch.Tensor, sigma: list[float], sizes: list[float] | None = None) -> torch.Tensor:
    """Frames of the shapes world `(n, 3, h, w)` in [-1, 1] whose object has its corners
    rounded by `sigma[i]` pixels, its straight edges kept in place and as sharp as drawn, and,
    with `sizes`, its side multiplied by about `sizes[i]` (edges moved out or in by the same
    amount all round). A frame with sigma 0 and size 1 is left as it is. The object's coverage
    (the share of the way from the background's colour, the border's median, to the object's,
    the farthest pixel's) is blurred and cut again: at one half, a blurred-and-cut square keeps
    its side and loses its corners, as the keyframe decoder draws them (docs/evaluation.md,
    "Where the squares' corners go"); at another level its edges move."""
    out = frames.clone()
    for i, s in enumerate(sigma):
        k = 1.0 if sizes is None else float(sizes[i])
        if s <= 0 and k == 1.0:
            continue
        x = frames[i : i + 1]
        ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)  # (1, c, border)
        bg = ring.median(dim=-1).values[..., None, None]
        d = x - bg
        far = (d**2).sum(1).flatten().argmax()
        v = x.flatten(2)[..., far][..., None, None] - bg  # object colour - background colour
        norm = (v**2).sum(1, keepdim=True)
        if float(norm) < 1e-4:  # no object in view
            continue
        cover = ((d * v).sum(1, keepdim=True) / norm).clamp(0, 1)
        # how far each edge moves out (pixels) to scale the object by k: (k - 1) times its inradius,
        # twice its area over its perimeter (the length of the coverage's gradient)
        gy, gx = cover[..., 1:, :-1] - cover[..., :-1, :-1], cover[..., :-1, 1:] - cover[..., :-1, :-1]
        perimeter = float(torch.sqrt(gx**2 + gy**2).sum())
        grow = (k - 1.0) * 2 * float(cover.sum()) / max(perimeter, 1.0)
        s = max(s, abs(grow), 0.5)  # a blur at least as wide as the move keeps the cut smooth
        # a blurred straight edge reads Phi(x / s) at x pixels inside it: cut where it reads
        # Phi(-grow / s), with the slope there, to give back an edge about a pixel wide as drawn
        z = grow / s
        level = 0.5 * (1 + math.erf(-z / math.sqrt(2)))
        slope = math.exp(-0.5 * z * z) / (s * math.sqrt(2 * math.pi))
        cut = ((_gaussian_blur(cover, s) - level) / slope + 0.5).clamp(0, 1)
        out[i] = (bg + cut * v)[0]
    return out
