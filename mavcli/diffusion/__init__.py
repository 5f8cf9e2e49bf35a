"""Diffusion as pure functions of (model, x, t, cond): the noise schedule, the training
objective and the samplers. Networks never know which sampler runs them."""

from mavcli.diffusion.objective import diffusion_loss
from mavcli.diffusion.sampling import SAMPLERS, SPACING, guided, sample
from mavcli.diffusion.schedule import CosineSchedule

__all__ = ["SAMPLERS", "SPACING", "CosineSchedule", "diffusion_loss", "guided", "sample"]
