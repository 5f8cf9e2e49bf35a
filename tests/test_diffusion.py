"""Schedule, objective and samplers, checked against closed-form optimal denoisers."""

import math

import pytest
import torch

from mavcli.diffusion import SPACING, CosineSchedule, diffusion_loss, guided, sample
from mavcli.diffusion.objective import broadcast

SCHED = CosineSchedule()


def point_oracle(target):
    """The exact v-predictor when the data is the single point `target`."""
    def model(x, t, **_):
        a, s = (broadcast(v, x) for v in SCHED.alpha_sigma(t))
        return (a * x - target) / s
    return model


def gaussian_oracle(std):
    """The exact v-predictor for data ~ N(0, std^2) (independent coordinates)."""
    def model(x, t, **_):
        a, s = (broadcast(v, x) for v in SCHED.alpha_sigma(t))
        x0 = a * std**2 / (a**2 * std**2 + s**2) * x
        return (a * x - x0) / s
    return model


def test_schedule_bounds_and_shift():
    t = torch.tensor([0.0, 0.5, 1.0])
    lam = SCHED.logsnr(t)
    assert lam[0].item() == pytest.approx(15.0, abs=1e-3) and lam[2].item() == pytest.approx(-15.0, abs=1e-3)
    assert abs(lam[1].item()) < 0.1
    a, s = SCHED.alpha_sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones(3))
    shifted = CosineSchedule.for_resolution(64, base=32)
    assert shifted.logsnr(t)[1].item() == pytest.approx(lam[1].item() + 2 * math.log(0.5), abs=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp"])
def test_samplers_recover_a_point(sampler):
    target = torch.tensor([[0.3, -0.7, 0.9]])
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(0))
    out = sample(point_oracle(target), x, 10, schedule=SCHED, sampler=sampler,
                 generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, target, atol=1e-3, rtol=0)


@pytest.mark.parametrize("sampler,steps", [("ddim", 200), ("ddpm", 200), ("dpmpp", 20)])
def test_samplers_match_gaussian_variance(sampler, steps):
    std = 0.3  # well inside [-1, 1], where the samplers clip x0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, generator=g)
    out = sample(gaussian_oracle(std), x, steps, schedule=SCHED, sampler=sampler, generator=g)
    assert out.std().item() == pytest.approx(std, rel=0.05)
    assert abs(out.mean().item()) < 0.05


def test_sampling_is_deterministic_and_reports_steps():
    calls = []
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    runs = [sample(gaussian_oracle(0.5), x, 5, schedule=SCHED, sampler="ddpm", generator=torch.Generator().manual_seed(7),
                   callback=lambda i, n: calls.append((i, n))) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert calls[:5] == [(i, 5) for i in range(1, 6)]
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(gaussian_oracle(0.5), x, 5, schedule=SCHED, sampler="euler-magic")


def test_guidance_one_is_plain_conditional_and_guidance_extrapolates():
    def model(x, t, cond, drop_cond=None):
        c = cond if drop_cond is None else torch.where(drop_cond[:, None], torch.zeros_like(cond), cond)
        return x * 0 + c
    x, t, cond = torch.randn(2, 3), torch.rand(2), torch.randn(2, 3)
    torch.testing.assert_close(guided(model, 1.0, cond=cond)(x, t), model(x, t, cond))
    torch.testing.assert_close(guided(model, 3.0, cond=cond)(x, t), 3 * cond)


def test_objective_is_zero_for_the_oracle_and_drops_conditioning():
    target = torch.tensor([[0.3, -0.7]]).expand(8, 2)
    loss = diffusion_loss(point_oracle(target), target.clone(), SCHED, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-6
    seen = {}

    def model(x, t, drop_cond=None, **_):
        seen["drop"] = drop_cond
        return torch.zeros_like(x)
    diffusion_loss(model, torch.zeros(1000, 2), SCHED, cond_drop_prob=0.2, generator=torch.Generator().manual_seed(0))
    assert 0.15 < seen["drop"].float().mean().item() < 0.25


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp"])
def test_sampling_from_a_partly_noised_start(sampler):
    """SDEdit: start at t_start from x_t; the first model call is at t_start."""
    target = torch.tensor([[0.2, -0.4]])
    times = []
    oracle = point_oracle(target)

    def model(x, t, **kw):
        times.append(round(t[0].item(), 4))
        return oracle(x, t)

    x = torch.randn(1, 2, generator=torch.Generator().manual_seed(0))
    out = sample(model, x, 6, schedule=SCHED, sampler=sampler, t_start=0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, target, atol=1e-3, rtol=0)
    assert times[0] == 0.5 and len(times) == 6 and all(a > b for a, b in zip(times, times[1:]))
    for bad in (0.0, -0.1, 1.5):  # nothing to sample from t = 0; times beyond 1 do not exist
        with pytest.raises(ValueError, match="t_start"):
            sample(model, x, 6, schedule=SCHED, sampler=sampler, t_start=bad)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_run_cut_at_t_end_and_resumed_there_is_the_whole_run(sampler):
    """What the keyframe stage's early ranking relies on: stopping at one of the run's own
    times (`t_end`) and going on from there (`t_start`) meets the same times and noise."""
    torch.manual_seed(0)
    weight = torch.randn(2, 2)

    def model(x, t, **_):  # any smooth function of (x, t) will do
        return torch.tanh(x @ weight) * (1 + t[:, None])

    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    whole = sample(model, x, 12, schedule=SCHED, sampler=sampler, generator=torch.Generator().manual_seed(1))
    ts = SCHED.timesteps(12, SPACING[sampler])
    gen = torch.Generator().manual_seed(1)
    mid = sample(model, x, 4, schedule=SCHED, sampler=sampler, generator=gen, t_end=float(ts[4]))
    assert not torch.allclose(mid, whole, atol=0.05)  # x at t = 2/3 is still noisy
    rest = sample(model, mid, 8, schedule=SCHED, sampler=sampler, generator=gen, t_start=float(ts[4]))
    torch.testing.assert_close(rest, whole, atol=1e-5, rtol=0)
    for bad in (-0.1, float(ts[0])):
        with pytest.raises(ValueError, match="t_end"):
            sample(model, x, 4, schedule=SCHED, sampler=sampler, t_end=bad)


def test_dpmpp_cut_and_resumed_stays_close_to_the_whole_run():
    """DPM-Solver++ restarts its two-step history when resumed: close to, not equal to, one run."""
    target = torch.tensor([[0.2, -0.4]])
    oracle = point_oracle(target)
    x = torch.randn(1, 2, generator=torch.Generator().manual_seed(0))
    ts = SCHED.timesteps(10, SPACING["dpmpp"])
    mid = sample(oracle, x, 3, schedule=SCHED, sampler="dpmpp", t_end=float(ts[3]))
    out = sample(oracle, mid, 7, schedule=SCHED, sampler="dpmpp", t_start=float(ts[3]))
    torch.testing.assert_close(out, target, atol=1e-3, rtol=0)
