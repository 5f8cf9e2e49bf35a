"""`mav bench latent`: the cost of an open latent video model (ModelScope text-to-video,
Zeroscope) on this machine without its weights: the full-size LatentUnet3D built from the
repository's own unet/config.json with random weights, one guided denoising step (the
conditional and unconditional branches as one batch of 2) timed, and the SD VAE decoder
(the repository's vae/config.json) on one frame; from these, the expected wall time of a
default video (steps x step + frames x decode)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mavcli.models.latent_unet import LatentUnet3D
from mavcli.weights.diffusers_layout import unet_config_from_diffusers

#: the published configs of the latent packs in weights.toml, with their provenance (README.md)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "weights" / "open_configs"


@dataclass
class LatentBench:
    pack: str
    params: int
    frames: int
    height: int
    width: int
    dtype: str
    step_s: float  # one guided U-Net step (batch 2)
    peak_gib: float  # the process's peak resident memory after the U-Net step (weights + activations)
    decode_s: float | None  # VAE decode of one frame (None when the VAE was not timed)
    steps: int

    @property
    def expected_s(self) -> float:
        return self.steps * self.step_s + self.frames * (self.decode_s or 0.0)


def pack_config(pack: str, part: str) -> dict:
    path = CONFIG_DIR / pack / f"{part}_config.json"
    if not path.is_file():
        known = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir()) if CONFIG_DIR.is_dir() else []
        raise FileNotFoundError(f"no published {part} config for {pack!r}; known: {', '.join(known) or 'none'}")
    return json.loads(path.read_text())


def _random_fill(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02, generator=gen) if p.ndim > 1 else p.fill_(1.0 if p.ndim == 1 else 0.0)


def run_latent_bench(pack: str, *, frames: int = 16, height: int = 256, width: int = 256, steps: int = 50,
                     dtype: torch.dtype = torch.float32, rounds: int = 1, vae: bool = True) -> LatentBench:
    config = unet_config_from_diffusers(pack_config(pack, "unet"), f"{pack} unet config")
    with torch.device("meta"):
        unet = LatentUnet3D(config)
    unet = unet.to_empty(device="cpu").to(dtype).eval()
    _random_fill(unet)
    params = sum(p.numel() for p in unet.parameters())
    f = 8  # the SD VAE's downsampling
    x = torch.randn(2, config.in_channels, frames, height // f, width // f, dtype=dtype)
    ctx = torch.randn(2, 77, config.context_dim, dtype=dtype)
    t = torch.tensor([500])
    times = []
    with torch.inference_mode():
        unet(x[:, :, :2], t, ctx)  # warm-up at 2 frames: allocator and kernels, not a full step
        for _ in range(rounds):
            t0 = time.perf_counter()
            unet(x, t, ctx)
            times.append(time.perf_counter() - t0)
    peak_gib = peak_rss_gib()
    del unet
    decode_s = None
    if vae:
        from mavcli.weights.diffusers_layout import require_extra

        diffusers = require_extra("diffusers")
        cfg = {k: v for k, v in pack_config(pack, "vae").items() if not k.startswith("_")}
        model = torch.nn.Module.to(diffusers.AutoencoderKL.from_config(cfg), dtype).eval()  # see load_vae
        _random_fill(model)
        z = torch.randn(1, cfg.get("latent_channels", 4), height // f, width // f, dtype=dtype)
        with torch.inference_mode():
            model.decode(z)
            t0 = time.perf_counter()
            model.decode(z)
            decode_s = time.perf_counter() - t0
    return LatentBench(pack, params, frames, height, width, str(dtype).removeprefix("torch."),
                       sorted(times)[len(times) // 2], peak_gib, decode_s, steps)


def peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
