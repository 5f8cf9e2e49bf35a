"""Samplers as plain functions: `sample(model, x, steps, *, schedule, ...)` where `model(x, t,
**cond) -> v` (v-prediction) and `x` is the initial noise. DDPM (ancestral) and two
deterministic few-step samplers: DDIM (eta = 0) and DPM-Solver++(2M) (Lu et al. 2022).
A `callback(step, total)` is called after every step; the library never draws progress.
Reproducibility: all randomness comes from the caller's `generator`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mavcli.diffusion.objective import broadcast
from mavcli.diffusion.schedule import CosineSchedule

Model = Callable[..., torch.Tensor]
Callback = Callable[[int, int], None]

#: how each sampler spaces its steps (`CosineSchedule.timesteps`)
SPACING = {"ddim": "time", "ddpm": "time", "dpmpp": "logsnr"}


def guided(model: Model, guidance: float, **cond) -> Model:
    """Classifier-free guidance (Ho & Salimans 2022): v = v_u + g (v_c - v_u).

    `guidance == 1` is plain conditional sampling and runs the model once per step;
    otherwise the conditional and unconditional (drop_cond) branches run as one batch.
    """
    if guidance == 1.0:
        return lambda x, t: model(x, t, **cond)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        both = {k: _twice(v) for k, v in cond.items()}
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        v = model(torch.cat([x, x]), torch.cat([t, t]), drop_cond=drop, **both)
        v_c, v_u = v.chunk(2)
        return v_u + guidance * (v_c - v_u)

    return fn


def _twice(v):
    if isinstance(v, torch.Tensor) and v.ndim > 0:
        return torch.cat([v, v])
    return v


def _predict(model: Model, x: torch.Tensor, t: float, schedule: CosineSchedule,
             clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 and eps from the model's v at time t; `clip` keeps x0 in the data range [-1, 1]."""
    tt = torch.full((x.shape[0],), t, device=x.device)
    alpha, sigma = (broadcast(a.to(x.device), x) for a in schedule.alpha_sigma(tt))
    v = model(x, tt).to(x.dtype)
    x0 = alpha * x - sigma * v
    if clip:
        x0 = x0.clamp(-1, 1)
    eps = (x - alpha * x0) / sigma.clamp_min(1e-8)
    return x0, eps


def sample_ddim(model: Model, x: torch.Tensor, steps: int, *, schedule: CosineSchedule,
                generator: torch.Generator | None = None, callback: Callback | None = None, clip: bool = True,
                t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eta = 0) from t_start to t_end in `steps` uniform steps."""
    ts = schedule.timesteps(steps, SPACING["ddim"], t_start, t_end).tolist()
    for i in range(steps):
        x0, eps = _predict(model, x, ts[i], schedule, clip)
        if i == steps - 1 and t_end == 0.0:  # t = 0: the clean estimate itself
            x = x0
        else:
            a_next, s_next = schedule.alpha_sigma(torch.tensor([ts[i + 1]]))
            x = a_next.item() * x0 + s_next.item() * eps
        if callback:
            callback(i + 1, steps)
    return x


def sample_ddpm(model: Model, x: torch.Tensor, steps: int, *, schedule: CosineSchedule,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                noise_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, clip: bool = True,
                t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020) of the posterior q(x_s | x_t, x0) on `steps` steps.
    `noise_fn(like)` draws the fresh noise (default: iid from `generator`)."""
    ts = schedule.timesteps(steps, SPACING["ddpm"], t_start, t_end).tolist()
    draw = noise_fn or (lambda like: torch.randn(like.shape, generator=generator).to(like.device, like.dtype))
    for i in range(steps):
        x0, _ = _predict(model, x, ts[i], schedule, clip)
        a_t, s_t = (v.item() for v in schedule.alpha_sigma(torch.tensor([ts[i]])))
        a_s, s_s = (v.item() for v in schedule.alpha_sigma(torch.tensor([ts[i + 1]])))
        # posterior mean and variance of x_s given x_t and x0
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2
        mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0
        std = (var_ts * s_s**2 / s_t**2) ** 0.5
        x = x0 if i == steps - 1 and t_end == 0.0 else mean + std * draw(x)  # t = 0: the clean estimate
        if callback:
            callback(i + 1, steps)
    return x


def sample_dpmpp_2m(model: Model, x: torch.Tensor, steps: int, *, schedule: CosineSchedule,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    clip: bool = True, t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """DPM-Solver++(2M), a second-order multistep solver in data prediction (Lu et al. 2022,
    algorithm 2), with steps uniform in log-SNR (far more accurate than uniform-in-t at 10-20
    steps: the oracle tests in tests/test_diffusion.py measure it). A run resumed at its
    `t_end` starts its multistep history afresh (one first-order step)."""
    ts = schedule.timesteps(steps, SPACING["dpmpp"], t_start, t_end)
    lam = schedule.logsnr(ts) / 2  # log(alpha / sigma)
    alphas, sigmas = schedule.alpha_sigma(ts)
    prev_x0 = None
    for i in range(steps):
        x0, _ = _predict(model, x, ts[i].item(), schedule, clip)
        h = (lam[i + 1] - lam[i]).item()
        if prev_x0 is None:
            d = x0
        else:
            r = (lam[i] - lam[i - 1]).item() / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        if i == steps - 1 and t_end == 0.0:  # t = 0: the (extrapolated) clean estimate itself
            x = d
        else:
            x = (sigmas[i + 1] / sigmas[i]).item() * x - alphas[i + 1].item() * torch.expm1(torch.tensor(-h)).item() * d
        prev_x0 = x0
        if callback:
            callback(i + 1, steps)
    return x


SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm, "dpmpp": sample_dpmpp_2m}


def sample(model: Model, x: torch.Tensor, steps: int, *, schedule: CosineSchedule, sampler: str = "dpmpp",
           generator: torch.Generator | None = None, callback: Callback | None = None, **kwargs) -> torch.Tensor:
    """Run the named sampler; `x` is the initial noise `(b, ...)` (or, with `t_start < 1`, a
    partly noised estimate x_t at t_start, as in SDEdit). Returns x0 estimates, or with
    `t_end > 0` the samples x_t at t_end, from where another call (`t_start=t_end`) goes on."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_start = float(kwargs.get("t_start", 1.0))
    if not 0.0 < t_start <= 1.0:  # t_start 0 would leave nothing to sample (and divide by zero)
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if not 0.0 <= float(kwargs.get("t_end", 0.0)) < t_start:
        raise ValueError(f"t_end must be in [0, t_start), got {kwargs.get('t_end')}")
    try:
        fn = SAMPLERS[sampler]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}") from None
    return fn(model, x, steps, schedule=schedule, generator=generator, callback=callback, **kwargs)
