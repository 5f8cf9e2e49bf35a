"""Classical optical flow for frame interpolation of real footage: OpenCV's DIS flow (Kroeger
et al. 2016), flows from an in-between time t to the two known frames, and backward warping.

These are the inputs of the learned flow interpolator (models/flowinterp.py) and, on their own,
the "DIS flow, backward warp + blend" baseline that `mav eval interpolate` measures against.

Conventions: frames are float tensors `(b, 3, h, w)` in [0, 1] or uint8 arrays `(h, w, 3)`;
a flow is `(b, 2, h, w)` (x then y displacement in pixels) from the frame it is named for: a
pixel p of frame A is found at p + flow_{A->B}(p) in frame B.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mavcli.errors import UserInputError

_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


def _cv2():
    try:
        import cv2
    except ImportError:
        raise UserInputError("optical flow needs OpenCV: pip install opencv-python-headless") from None
    return cv2


class DisFlow:
    """Dense inverse search flow between two uint8 RGB frames `(h, w, 3)` -> `(h, w, 2)` float32.
    One instance per thread (OpenCV's DIS object keeps state between calls)."""

    def __init__(self, preset: str = "medium") -> None:
        if preset not in _PRESETS:
            raise UserInputError(f"unknown DIS preset {preset!r}; choose from {', '.join(_PRESETS)}")
        cv2 = _cv2()
        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(_PRESETS[preset])

    def gray(self, frame: np.ndarray) -> np.ndarray:
        return self._cv2.cvtColor(np.ascontiguousarray(frame), self._cv2.COLOR_RGB2GRAY)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow a -> b; `a`, `b` uint8 RGB `(h, w, 3)` or gray `(h, w)`."""
        a = self.gray(a) if a.ndim == 3 else a
        b = self.gray(b) if b.ndim == 3 else b
        return self._dis.calc(a, b, None)

    def tensor(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        """Flow a -> b as a tensor `(1, 2, h, w)`."""
        return torch.from_numpy(self(a, b)).permute(2, 0, 1)[None]

    def pair(self, a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Both flows a->b and b->a as tensors `(1, 2, h, w)`."""
        ga, gb = self.gray(a), self.gray(b)
        return self.tensor(ga, gb), self.tensor(gb, ga)


def flows_at(f01: torch.Tensor, f10: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flows from the unknown frame at time t in (0, 1) to frames 0 and 1, `(b, 2, h, w)` each,
    assuming linear motion (Jiang et al. 2018, Super SloMo, eq. 4):
    F_t->0 = -(1-t) t F_0->1 + t^2 F_1->0,  F_t->1 = (1-t)^2 F_0->1 - t (1-t) F_1->0."""
    if not torch.is_tensor(t):
        t = torch.tensor(float(t))
    t = t.to(f01).reshape(-1, 1, 1, 1)
    ft0 = -(1 - t) * t * f01 + t * t * f10
    ft1 = (1 - t) * (1 - t) * f01 - t * (1 - t) * f10
    return ft0, ft1


def _clamped_accel(a: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`a` `(b, 2, h, w)` scaled down per pixel to length at most |flow| + 1 (pixels)."""
    # hypot of the two components: Tensor.norm over the channel axis is ~200x slower on CPU
    limit = torch.hypot(flow[:, :1], flow[:, 1:]) + 1.0
    return a * (limit / torch.hypot(a[:, :1], a[:, 1:]).clamp_min(1e-6)).clamp(max=1.0)


def flows_at_quadratic(f01: torch.Tensor, f10: torch.Tensor, t: float | torch.Tensor,
                       f0p: torch.Tensor | None = None, f12: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flows from time t in (0, 1) to frames 0 and 1, `(b, 2, h, w)` each, with constant
    acceleration where the neighbouring known frames are given (Xu et al. 2019, quadratic video
    interpolation): `f0p` = F_0->-1 (frame 0 to the frame before it) and `f12` = F_1->2.

    Each known frame's pixel path x(u) = x + v u + a u^2 / 2 (u in frame intervals) fits its
    two flows: from frame 0, v = (F_0->1 - F_0->-1) / 2 and a = F_0->1 + F_0->-1, so
    F_0->t = v t + a t^2 / 2 (and F_0->1 exactly at t = 1). Without a neighbour that side is
    linear, F_0->t = t F_0->1. As in Super SloMo (`flows_at`), the flow from t is then a blend
    of the two sides taken at the same pixel:
    F_t->0 = -(1-t) F_0->t + t (F_1->0 - F_1->t),  F_t->1 = -t F_1->t + (1-t) (F_0->1 - F_0->t).
    With neither neighbour this is exactly `flows_at`.

    Where a flow is wrong (occlusion, a failed match) the fitted acceleration is implausibly
    large, so |a| is clamped per pixel to |F_0->1| + 1 px (frame 1's side likewise): the
    velocity may change by at most the motion itself over one interval. Chosen on a validation
    window of the training footage: without the clamp PSNR was a little lower and SSIM on
    bikes fell below the linear motion's (one window lost 0.05)."""
    if not torch.is_tensor(t):
        t = torch.tensor(float(t))
    t = t.to(f01).reshape(-1, 1, 1, 1)
    f0t, f1t = t * f01, (1 - t) * f10  # linear: F_0->t, and F_1->t at u = t - 1 on frame 1's clock
    if f0p is not None:  # F_0->t = v t + a t^2 / 2 with F_0->1 = v + a / 2 kept exact
        a = _clamped_accel(f01 + f0p, f01)
        f0t = f0t + a / 2 * (t * t - t)
    if f12 is not None:  # F_1->u = v u + a u^2 / 2 with F_1->0 = -v + a / 2 kept exact
        a = _clamped_accel(f12 + f10, f10)
        u = t - 1
        f1t = f1t + a / 2 * (u * u + u)
    ft0 = -(1 - t) * f0t + t * (f10 - f1t)
    ft1 = -t * f1t + (1 - t) * (f01 - f0t)
    return ft0, ft1


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `image` `(b, c, h, w)` at p + flow(p) for every pixel p (bilinear, border
    clamped) -> `(b, c, h, w)`."""
    b, _, h, w = image.shape
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device)
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device)
    # normalised coordinates, align_corners=True: pixel 0 -> -1, pixel n-1 -> +1
    gx = (xs[None, None, :] + flow[:, 0]) * (2 / max(w - 1, 1)) - 1
    gy = (ys[None, :, None] + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    """uint8 `(h, w, 3)` -> float `(1, 3, h, w)` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float().div_(255)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """float `(1, 3, h, w)` in [0, 1] -> uint8 `(h, w, 3)` (rounded)."""
    return image[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


@torch.inference_mode()
def dis_blend(frame0: np.ndarray, frame1: np.ndarray, times: list[float], *, flow: DisFlow | None = None) -> list[np.ndarray]:
    """The classical baseline: DIS flows both ways, each known frame backward-warped to time t,
    blended with weights (1 - t, t). uint8 `(h, w, 3)` frames in and out."""
    flow = flow or DisFlow()
    f01, f10 = flow.pair(frame0, frame1)
    i0, i1 = to_tensor(frame0), to_tensor(frame1)
    out = []
    for t in times:
        ft0, ft1 = flows_at(f01, f10, t)
        out.append(to_uint8((1 - t) * backward_warp(i0, ft0) + t * backward_warp(i1, ft1)))
    return out


def linear_blend(frame0: np.ndarray, frame1: np.ndarray, times: list[float]) -> list[np.ndarray]:
    """The simplest baseline: a cross-fade, uint8 in and out."""
    a, b = frame0.astype(np.float32), frame1.astype(np.float32)
    return [np.clip(np.rint((1 - t) * a + t * b), 0, 255).astype(np.uint8) for t in times]
