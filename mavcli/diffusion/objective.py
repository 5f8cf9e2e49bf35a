"""Training objective: v-prediction (Salimans & Ho 2022), v = alpha eps - sigma x_0, with
classifier-free guidance's conditioning dropout (Ho & Salimans 2022)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mavcli.diffusion.schedule import CosineSchedule


def broadcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`(b,)` -> `(b, 1, ..., 1)` to multiply a `(b, ...)` tensor."""
    return v.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: CosineSchedule,
    *,
    cond_drop_prob: float = 0.0,
    generator: torch.Generator | None = None,
    loss_mask: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    drop: torch.Tensor | None = None,
    noised_from: torch.Tensor | None = None,
    **cond,
) -> torch.Tensor:
    """Mean squared error of the predicted v at a random time.

    `model(x_t, t, drop_cond=..., **cond) -> v` with x_t like `x0` (`(b, ...)`, values in
    [-1, 1]); `cond_drop_prob` drops the conditioning of that fraction of the batch (the
    unconditional branch guidance needs). `loss_mask` (broadcastable to x0) restricts the
    loss, e.g. to the frames an interpolation network must fill in. `noised_from` (like x0):
    x_t noises this instead of x0, and the target is still the v whose clean estimate
    alpha * x_t - sigma * v is x0; an SR stage trained this way learns the start sampling gives
    it (its enlarged input, noised), not only noised renders.
    """
    b = x0.shape[0]
    dev = x0.device
    if t is None:
        t = torch.rand(b, generator=generator, device="cpu")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device="cpu")
    t, eps = t.to(dev), noise.to(dev, x0.dtype)
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = broadcast(alpha.to(dev), x0), broadcast(sigma.to(dev), x0)
    source = x0 if noised_from is None else noised_from.to(dev, x0.dtype)
    x_t = alpha * source + sigma * eps
    # the v for which alpha * x_t - sigma * v = x0: the usual alpha * eps - sigma * x0, plus
    # alpha^2 (source - x0) / sigma (exactly 0 where source is x0, however small sigma is)
    v = alpha * eps - sigma * x0
    if noised_from is not None:
        v = v + alpha.square() * (source - x0) / sigma
    kwargs = dict(cond)
    if drop is None and cond_drop_prob > 0:
        drop = torch.rand(b, generator=generator, device="cpu") < cond_drop_prob
    if drop is not None:
        kwargs["drop_cond"] = drop.to(dev)
    pred = model(x_t, t, **kwargs)
    err = (pred.float() - v.float()).square()
    if loss_mask is None:
        return err.mean()
    m = loss_mask.expand_as(err).float()
    return (err * m).sum() / m.sum().clamp_min(1.0)
