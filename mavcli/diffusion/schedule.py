"""Continuous-time cosine noise schedule in log-SNR form (Nichol & Dhariwal 2021; shifted for
resolution as in Hoogeboom et al. 2023, "simple diffusion").

For t in [0, 1]: logsnr(t) = -2 log tan(pi t / 2) (+ 2 log(base / resolution) when shifted),
clipped to [logsnr_min, logsnr_max]; alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr), and
x_t = alpha x_0 + sigma eps. A shift below 0 adds noise at every t, which larger frames need
because neighbouring pixels are redundant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CosineSchedule:
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift: float = 0.0  # added to logsnr: 2 * log(base_resolution / resolution)

    @classmethod
    def for_resolution(cls, resolution: int, base: int = 32) -> CosineSchedule:
        return cls(shift=2.0 * math.log(base / resolution))

    def _angles(self) -> tuple[float, float]:
        # t=0 and t=1 map exactly onto the log-SNR bounds
        return math.atan(math.exp(-0.5 * self.logsnr_max)), math.atan(math.exp(-0.5 * self.logsnr_min))

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        t_min, t_max = self._angles()
        angle = t_min + t.double() * (t_max - t_min)
        return (-2.0 * torch.log(torch.tan(angle)) + self.shift).float()

    def t_from_logsnr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of `logsnr`."""
        t_min, t_max = self._angles()
        angle = torch.atan(torch.exp(-0.5 * (lam.double() - self.shift)))
        return ((angle - t_min) / (t_max - t_min)).clamp(0, 1).float()

    def timesteps(self, steps: int, spacing: str = "time", t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
        """`steps + 1` times from `t_start` down to `t_end`, uniform in t ("time") or in log-SNR
        ("logsnr"). A run cut at one of these times and resumed from there meets the same times."""
        if spacing == "time":
            return torch.linspace(t_start, t_end, steps + 1)
        lam_start = self.logsnr(torch.tensor([t_start])).item()
        lam_end = self.logsnr(torch.tensor([t_end])).item() if t_end > 0 else self.logsnr_max + self.shift
        lam = torch.linspace(lam_start, lam_end, steps + 1)
        ts = self.t_from_logsnr(lam)
        ts[0], ts[-1] = t_start, t_end
        return ts

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
