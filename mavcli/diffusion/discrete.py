"""Discrete-time diffusion as the published latent video models were trained with it (DDPM,
Ho et al. 2020: 1000 steps and a beta schedule), and deterministic DDIM sampling on it (Song et
al. 2021, eta = 0), so their weights sample as their authors' scheduler samples them.

mavcli's own networks use the continuous cosine schedule of `schedule.py`; these models' noise
levels are fixed by their training, so their schedule is read from the repository's
`scheduler/scheduler_config.json` into `DiscreteSchedule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Callback = Callable[[int, int], None]


@dataclass(frozen=True)
class DiscreteSchedule:
    """The training noise levels alpha_bar[0 .. n-1] and how a sampler picks its timesteps."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"  # "linear" | "scaled_linear" | "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"
    timestep_spacing: str = "leading"  # "leading" | "trailing" | "linspace"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    # the spacing of a multistep solver's timesteps: the config's own when it states one, else
    # "linspace", the default of diffusers' DPMSolverMultistepScheduler (a DDIM config that
    # states none is "leading" for DDIM but "linspace" once loaded into the multistep scheduler)
    multistep_spacing: str = "linspace"

    def __post_init__(self) -> None:
        if self.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ValueError(f"beta_schedule {self.beta_schedule!r} is not supported")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported")
        for spacing in (self.timestep_spacing, self.multistep_spacing):
            if spacing not in ("leading", "trailing", "linspace"):
                raise ValueError(f"timestep_spacing {spacing!r} is not supported")

    def alphas_cumprod(self) -> torch.Tensor:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        elif self.beta_schedule == "scaled_linear":  # linear in sqrt(beta), Stable Diffusion's
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float32) ** 2
        else:  # Nichol & Dhariwal 2021, betas capped at 0.999
            def abar(s: float) -> float:
                return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float32)
        return torch.cumprod(1.0 - betas, dim=0)

    def timesteps(self, steps: int, strength: float = 1.0) -> list[int]:
        """Descending training timesteps for `steps` sampler steps. `strength < 1` (video-to-video:
        start from a partly noised input) keeps only the last `round(steps * strength)` of them."""
        n = self.num_train_timesteps
        if not 1 <= steps <= n:
            raise ValueError(f"steps must be in 1..{n}, got {steps}")
        if self.timestep_spacing == "leading":
            ts = [i * (n // steps) + self.steps_offset for i in range(steps)][::-1]
        elif self.timestep_spacing == "trailing":
            ts = [round(n - i * n / steps) - 1 for i in range(steps)]
        else:
            ts = [round(i * (n - 1) / max(steps - 1, 1)) for i in range(steps)][::-1]
        return _kept(ts, strength)


def _kept(ts: list[int], strength: float) -> list[int]:
    """The last `int(len(ts) * strength)` (at least 1) of descending timesteps `ts`: a sampler
    run from an input noised to the first of them (video-to-video)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return ts[len(ts) - min(len(ts), max(1, int(len(ts) * strength))):]


def add_noise(schedule: DiscreteSchedule, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
    a = schedule.alphas_cumprod()[t]
    return a**0.5 * x0 + (1 - a) ** 0.5 * noise


def ddim_step(schedule: DiscreteSchedule, alphas: torch.Tensor, pred: torch.Tensor, t: int, x: torch.Tensor,
              steps: int) -> torch.Tensor:
    """One DDIM step (eta = 0) from timestep t to t - n // steps, the model's `pred` read per
    the schedule's prediction type."""
    prev = t - schedule.num_train_timesteps // steps
    a_t = alphas[t]
    if prev >= 0:
        a_prev = alphas[prev]
    else:
        a_prev = torch.tensor(1.0) if schedule.set_alpha_to_one else alphas[0]
    b_t = 1 - a_t
    if schedule.prediction_type == "epsilon":
        x0 = (x - b_t**0.5 * pred) / a_t**0.5
        eps = pred
    elif schedule.prediction_type == "v_prediction":
        x0 = a_t**0.5 * x - b_t**0.5 * pred
        eps = a_t**0.5 * pred + b_t**0.5 * x
    else:
        x0 = pred
        eps = (x - a_t**0.5 * x0) / b_t**0.5
    if schedule.clip_sample:  # the clean estimate only; the noise direction stays the model's
        x0 = x0.clamp(-schedule.clip_sample_range, schedule.clip_sample_range)
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def sample_ddim_discrete(model: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, steps: int, *,
                         schedule: DiscreteSchedule, strength: float = 1.0,
                         callback: Callback | None = None) -> torch.Tensor:
    """Deterministic DDIM from pure noise (`strength` 1) or from a noised input at the first
    kept timestep. `model(x, t) -> prediction`; `x` `(b, ...)`."""
    alphas = schedule.alphas_cumprod()
    ts = schedule.timesteps(steps, strength)
    for i, t in enumerate(ts):
        x = ddim_step(schedule, alphas, model(x, t), t, x, steps)
        if callback:
            callback(i + 1, len(ts))
    return x


def multistep_timesteps(schedule: DiscreteSchedule, steps: int) -> list[int]:
    """Descending timesteps of a multistep solver (`multistep_spacing`): `steps` of the n
    training steps, spaced as diffusers' DPMSolverMultistepScheduler spaces them (its "leading"
    divides by steps + 1, where DDIM's divides by steps)."""
    n = schedule.num_train_timesteps
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in 1..{n}, got {steps}")
    if schedule.multistep_spacing == "linspace":
        return [round((n - 1) * i / steps) for i in range(steps, 0, -1)]
    if schedule.multistep_spacing == "leading":
        ratio = n // (steps + 1)
        return [i * ratio + schedule.steps_offset for i in range(steps, 0, -1)]
    ratio = n / steps  # trailing
    return [round(n - i * ratio) - 1 for i in range(steps)]


def multistep_start(schedule: DiscreteSchedule, steps: int, strength: float = 1.0) -> list[int]:
    """The timesteps a multistep solver runs from a noised input: the last `int(steps * strength)`
    (at least 1) of `multistep_timesteps`, as diffusers' video-to-video pipelines keep them."""
    return _kept(multistep_timesteps(schedule, steps), strength)


def sample_dpmpp_discrete(model: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, steps: int, *,
                          schedule: DiscreteSchedule, strength: float = 1.0,
                          callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, algorithm 2) on the discrete schedule,
    from pure noise (`strength` 1) or from an input noised to the first of `multistep_start`'s
    timesteps: the model's prediction read as the clean sample D, the first step first-order,
    then second-order multistep, and a first-order last step to noise level zero (the final
    sample is the last D). `model(x, t) -> prediction`; `x` `(b, ...)`.

    In the VP form x_t = a_t x0 + s_t eps with a_t = sqrt(alpha_bar_t), s_t = sqrt(1 - alpha_bar_t)
    and lambda_t = log(a_t / s_t), one step from t to t' with h = lambda_t' - lambda_t is
    x_t' = (s_t' / s_t) x_t - a_t' (e^-h - 1) (D_t + (D_t - D_prev) h / (2 h_prev))."""
    alphas = schedule.alphas_cumprod().double()
    ts = multistep_start(schedule, steps, strength)
    a = [alphas[t].sqrt().item() for t in ts] + [1.0]  # the end: noise level zero
    s = [(1 - alphas[t]).sqrt().item() for t in ts] + [0.0]
    lam = [math.log(ai / si) if si > 0 else math.inf for ai, si in zip(a, s)]
    prev_d, prev_h = None, None
    for i, t in enumerate(ts):
        pred = model(x, t)
        if schedule.prediction_type == "epsilon":
            d = (x - s[i] * pred) / a[i]
        elif schedule.prediction_type == "v_prediction":
            d = a[i] * x - s[i] * pred
        else:
            d = pred
        h = lam[i + 1] - lam[i]
        last = i == len(ts) - 1
        if last:  # to noise level zero: e^-h = 0, s_t' = 0, a_t' = 1
            x = d
        else:
            step = d if prev_d is None else d + (d - prev_d) * (h / (2 * prev_h))
            x = (s[i + 1] / s[i]) * x - a[i + 1] * math.expm1(-h) * step
        prev_d, prev_h = d, h
        if callback:
            callback(i + 1, len(ts))
    return x
