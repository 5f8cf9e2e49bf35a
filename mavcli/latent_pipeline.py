"""The cascade for open latent video models (ModelScope text-to-video, Zeroscope) in mavcli:

    prompt -> CLIP tokens -> text encoder C_x -> keyframes D^t (LatentUnet3D, mavcli's pseudo-3D
    U-Net, sampled with DDIM on the repository's own noise schedule, classifier-free guidance
    against the negative prompt) -> VAE decode -> F_i (the real-footage flow interpolator)
    -> optional SR_l^t (a second latent model, e.g. Zeroscope XL, as video-to-video: upscale,
    VAE encode, noise to a start time, denoise, decode) -> video.

These packs have no prior P (the U-Net reads the text tokens directly) and no pixel SR_h.
The VAE and the text encoder come from diffusers and transformers (the optional extra
`mavcli[open-weights]`); the U-Net is mavcli's own (`mavcli.models.latent_unet`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from mavcli.diffusion.discrete import (DiscreteSchedule, add_noise, multistep_start, sample_ddim_discrete,
                                       sample_dpmpp_discrete)
from mavcli.errors import PackError, UserInputError
from mavcli.models.latent_unet import LatentUnet3D
from mavcli.weights import diffusers_layout as layout
from mavcli.runtime import cpu_has_native_bf16

ProgressCallback = Callable[[str, int, int], None]
LATENT_STAGES = ("keyframes", "vae_decode", "interpolation", "upscale")
LATENT_SAMPLERS = ("ddim", "dpmpp")


def check_sampler(sampler: str) -> str:
    """`sampler` if a latent pack can sample with it, else UserInputError."""
    if sampler not in LATENT_SAMPLERS:
        raise UserInputError(f"--sampler {sampler}: a latent pack samples with {' or '.join(LATENT_SAMPLERS)}")
    return sampler


@dataclass
class LatentSettings:
    """Sampling defaults of a latent pack (the values its authors' pipeline uses)."""

    frames: int = 16
    height: int = 256
    width: int = 256
    fps: float = 8.0
    steps: int = 50
    guidance: float = 9.0
    sampler: str = "ddim"  # the repositories' own scheduler; "dpmpp": DPM-Solver++(2M)
    # DPM-Solver++'s steps when none are asked for: the recipe of ModelScope's model card
    # (ali-vilab/text-to-video-ms-1.7b: DPMSolverMultistepScheduler, num_inference_steps=25)
    dpmpp_steps: int = 25
    upscale_strength: float = 0.6
    vae_batch: int = 4  # frames per VAE call: bounds the decoder's memory
    # the guided and unguided U-Net branches as one batch of 2; False runs them one after the
    # other: half the activations, ~7% slower on a CPU (ModelScope, 8 frames of 256x256)
    guidance_batch: bool = True


@dataclass
class LatentVideo:
    frames: np.ndarray  # uint8 (f, h, w, 3)
    fps: float
    seed: int
    prompt: str
    timings: dict[str, float] = field(default_factory=dict)


#: the process before any pack is loaded: torch, the libraries, the tokenizer
PROCESS_BYTES = int(0.6 * 2**30)
#: activations of one guided U-Net step (the two branches as a batch of 2), bytes per latent
#: position (frame x h/8 x w/8) per byte of the compute precision, for a U-Net of 320 channels at
#: its top level (ModelScope, Zeroscope): `mav bench latent` peaks grew 46.5 KB per position in
#: bfloat16 from 8 to 24 frames of 256x256 and fit 16 frames of 384x384 (docs/open-weights.md);
#: 10% above
_ACTIVATION_BYTES = 25_600


def compute_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware runs it natively (CUDA with bf16; CPUs with AVX512-BF16 or
    AMX), float32 otherwise: on other CPUs bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


class LatentVideoPipeline:
    """A diffusers-layout latent video model, run through mavcli's networks and samplers."""

    def __init__(self, unet: LatentUnet3D, vae, text_encoder, tokenizer, schedule: DiscreteSchedule, *,
                 path: Path | None = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 settings: LatentSettings | None = None) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.unet, self.vae, self.text_encoder = (_placed(m, self.device, dtype) for m in (unet, vae, text_encoder))
        self.tokenizer, self.schedule, self.path = tokenizer, schedule, path
        self.settings = settings or LatentSettings()
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling = float(vae.config.scaling_factor)

    @staticmethod
    def folder_settings(folder: str | Path) -> LatentSettings:
        """The sampling defaults of the pack in `folder`: its U-Net's sample size sets the frame size."""
        folder = Path(folder)
        size = layout.read_json(folder / "unet" / "config.json").get("sample_size")
        vae = layout.read_json(folder / "vae" / "config.json")
        settings = LatentSettings()
        if isinstance(size, int):
            settings.height = settings.width = size * 2 ** (len(vae.get("block_out_channels", [64])) - 1)
        return settings

    @staticmethod
    def weights_memory(folder: str | Path, dtype: torch.dtype) -> int:
        """Bytes of the pack's three networks in `dtype`, counted from their configs (the weight
        files need not be downloaded yet)."""
        return torch.empty((), dtype=dtype).element_size() * layout.parameter_count(folder)

    @staticmethod
    def step_memory(folder: str | Path, *, frames: int, height: int, width: int, dtype: torch.dtype,
                    guidance_batch: bool = True) -> int:
        """Bytes of the activations of one guided U-Net step for `frames` frames of `height` x
        `width`, the largest of the cascade on the CPU (half when the two guidance branches run
        one after the other)."""
        folder = Path(folder)
        unet = layout.read_json(folder / "unet" / "config.json")
        vae = layout.read_json(folder / "vae" / "config.json")
        factor = 2 ** (len(vae.get("block_out_channels", [64])) - 1)  # diffusers' default: one level
        top = (unet.get("block_out_channels") or [320])[0]
        item = torch.empty((), dtype=dtype).element_size()
        positions = frames * (height // factor) * (width // factor)
        return int(_ACTIVATION_BYTES * item * positions * top / 320 / (1 if guidance_batch else 2))

    @classmethod
    def estimate_memory(cls, folder: str | Path, *, frames: int, height: int, width: int, dtype: torch.dtype,
                        guidance_batch: bool = True) -> int:
        """Bytes that generating `frames` frames of `height` x `width` with the pack in `folder`
        takes on the CPU: its networks (`weights_memory`) and one U-Net step (`step_memory`)."""
        return cls.weights_memory(folder, dtype) + cls.step_memory(
            folder, frames=frames, height=height, width=width, dtype=dtype, guidance_batch=guidance_batch)

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    variant: str | None = "fp16") -> LatentVideoPipeline:
        folder = Path(folder)
        if not layout.is_diffusers_folder(folder):
            raise PackError(f"{folder} is not a diffusers-layout model (model_index.json and unet/config.json)")
        device = torch.device(device)
        dtype = dtype or compute_dtype(device)
        unet = layout.load_unet(folder, variant=variant, dtype=dtype)
        vae = layout.load_vae(folder, variant=variant, dtype=dtype)
        text_encoder, tokenizer = layout.load_text_encoder(folder, variant=variant, dtype=dtype)
        schedule, _ = layout.load_schedule(folder)
        return cls(unet, vae, text_encoder, tokenizer, schedule, path=folder, device=device, dtype=dtype,
                   settings=cls.folder_settings(folder))

    # --- the parts -------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP's last hidden states `(b, tokens, width)` at the tokenizer's full length."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def _denoiser(self, context: torch.Tensor, uncond: torch.Tensor, guidance: float):
        both = torch.cat([uncond, context])

        def model(x: torch.Tensor, t: int) -> torch.Tensor:
            step = torch.tensor([t], device=x.device)
            if guidance == 1.0:
                return self.unet(x, step, context)
            if self.settings.guidance_batch:
                e_u, e_c = self.unet(torch.cat([x, x]), step, both).chunk(2)
            else:
                e_u, e_c = self.unet(x, step, uncond), self.unet(x, step, context)
            return e_u + guidance * (e_c - e_u)  # classifier-free guidance (Ho & Salimans 2022)

        return model

    def _sampling(self, sampler: str | None, steps: int | None) -> tuple[str, int]:
        """The sampler (default: the settings') and its steps (default: that sampler's)."""
        sampler = check_sampler(sampler or self.settings.sampler)
        return sampler, steps or (self.settings.dpmpp_steps if sampler == "dpmpp" else self.settings.steps)

    def _check_size(self, height: int, width: int, frames: int) -> None:
        m = self.vae_factor * self.unet.config.size_multiple
        if height % m or width % m or height < m or width < m:
            raise UserInputError(f"height and width must be positive multiples of {m} for this pack; got {height}x{width}")
        if frames < 1:
            raise UserInputError(f"frames must be >= 1, got {frames}")

    @torch.inference_mode()
    def keyframes(self, prompt: str, *, negative_prompt: str = "", seed: int = 0, frames: int | None = None,
                  height: int | None = None, width: int | None = None, steps: int | None = None,
                  guidance: float | None = None, latents: torch.Tensor | None = None, sampler: str | None = None,
                  callback: ProgressCallback | None = None) -> torch.Tensor:
        """D^t: latents `(1, c, f, h/8, w/8)` sampled from seed-drawn noise (or the given `latents`)
        with `sampler`: "ddim" (deterministic DDIM, what the repositories ship) or "dpmpp"
        (DPM-Solver++(2M), as diffusers' DPMSolverMultistepScheduler loaded from their config)."""
        s = self.settings
        frames, height, width = frames or s.frames, height or s.height, width or s.width
        self._check_size(height, width, frames)
        sampler, steps = self._sampling(sampler, steps)
        guidance = s.guidance if guidance is None else guidance
        if latents is None:
            shape = (1, self.unet.config.in_channels, frames, height // self.vae_factor, width // self.vae_factor)
            latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        context = self.encode_prompt([prompt])
        uncond = self.encode_prompt([negative_prompt])
        model = self._denoiser(context, uncond, guidance)
        cb = (lambda i, n: callback("keyframes", i, n)) if callback else None
        run = sample_dpmpp_discrete if sampler == "dpmpp" else sample_ddim_discrete
        return run(model, latents.to(self.device, self.dtype), steps, schedule=self.schedule, callback=cb)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, callback: ProgressCallback | None = None) -> torch.Tensor:
        """VAE decode, `vae_batch` frames at a time: `(b, c, f, h, w)` -> `(b, 3, f, H, W)` in [-1, 1]."""
        b, f = latents.shape[0], latents.shape[2]
        flat = rearrange(latents / self.scaling, "b c f h w -> (b f) c h w")
        n, out = flat.shape[0], []
        for i in range(0, n, self.settings.vae_batch):
            out.append(self.vae.decode(flat[i:i + self.settings.vae_batch]).sample.float())
            if callback:
                callback("vae_decode", min(i + self.settings.vae_batch, n), n)
        return rearrange(torch.cat(out), "(b f) c h w -> b c f h w", b=b, f=f)

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """VAE encode (the posterior's mean): `(b, 3, f, H, W)` in [-1, 1] -> scaled latents."""
        b, f = video.shape[0], video.shape[2]
        flat = rearrange(video.to(self.device, self.dtype), "b c f h w -> (b f) c h w")
        out = [self.vae.encode(flat[i:i + self.settings.vae_batch]).latent_dist.mean
               for i in range(0, flat.shape[0], self.settings.vae_batch)]
        return rearrange(torch.cat(out) * self.scaling, "(b f) c h w -> b c f h w", b=b, f=f)

    @torch.inference_mode()
    def video_to_video(self, video: torch.Tensor, prompt: str, *, negative_prompt: str = "", seed: int = 0,
                       strength: float | None = None, steps: int | None = None, guidance: float | None = None,
                       sampler: str | None = None, callback: ProgressCallback | None = None,
                       stage: str = "upscale") -> torch.Tensor:
        """SR_l^t as video-to-video (SDEdit, Meng et al. 2022): encode `video` `(1, 3, f, H, W)`,
        noise it to the timestep `strength` of the way up, denoise with this model (`sampler` as
        for `keyframes`), decode."""
        s = self.settings
        strength = s.upscale_strength if strength is None else strength
        sampler, steps = self._sampling(sampler, steps)
        guidance = s.guidance if guidance is None else guidance
        self._check_size(video.shape[-2], video.shape[-1], video.shape[2])
        x0 = self.encode(video)
        dpm = sampler == "dpmpp"
        t0 = (multistep_start(self.schedule, steps, strength) if dpm else self.schedule.timesteps(steps, strength))[0]
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0)
        model = self._denoiser(self.encode_prompt([prompt]), self.encode_prompt([negative_prompt]), guidance)
        cb = (lambda i, n: callback(stage, i, n)) if callback else None
        run = sample_dpmpp_discrete if dpm else sample_ddim_discrete
        latents = run(model, add_noise(self.schedule, x0, noise, t0), steps, schedule=self.schedule, strength=strength,
                      callback=cb)
        return self.decode(latents)

    # --- the whole cascade -----------------------------------------------------------------

    def __call__(self, prompt: str, *, negative_prompt: str = "", seed: int = 0, frames: int | None = None,
                 height: int | None = None, width: int | None = None, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, interpolator=None, factor: int = 1,
                 upscaler: LatentVideoPipeline | None = None, upscale_size: tuple[int, int] | None = None,
                 upscale_steps: int | None = None, upscale_strength: float | None = None,
                 callback: ProgressCallback | None = None) -> LatentVideo:
        """prompt -> uint8 frames. `interpolator` (a `FlowInterpolator`) with `factor` > 1
        multiplies the frame rate; `upscaler` (another latent pipeline) re-renders the video at
        `upscale_size` (height, width; default: its own size)."""
        timings: dict[str, float] = {}

        def timed(name, fn, *a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            timings[name] = time.perf_counter() - t0
            return out

        latents = timed("keyframes", self.keyframes, prompt, negative_prompt=negative_prompt, seed=seed,
                        frames=frames, height=height, width=width, steps=steps, guidance=guidance, sampler=sampler,
                        callback=callback)
        video = timed("vae_decode", self.decode, latents, callback)
        frames_u8 = to_uint8(video)
        fps = self.settings.fps
        if factor > 1:
            if interpolator is None:
                raise UserInputError("frame interpolation needs the realinterp pack's interpolator")
            pairs = len(frames_u8) - 1

            def on_pair(i: int) -> None:
                if callback:
                    callback("interpolation", i + 1, pairs)

            frames_u8 = timed("interpolation", interpolator.run, frames_u8, factor, on_pair=on_pair)
            fps *= factor
        if upscaler is not None:
            h, w = upscale_size or (upscaler.settings.height, upscaler.settings.width)
            clip = torch.from_numpy(frames_u8).float().div(127.5).sub(1)
            clip = F.interpolate(rearrange(clip, "f h w c -> f c h w"), size=(h, w), mode="bicubic", align_corners=False)
            clip = rearrange(clip.clamp(-1, 1), "f c h w -> 1 c f h w")
            video = timed("upscale", upscaler.video_to_video, clip, prompt, negative_prompt=negative_prompt,
                          seed=seed + 1, strength=upscale_strength, steps=upscale_steps, sampler=sampler,
                          callback=callback)
            frames_u8 = to_uint8(video)
        return LatentVideo(frames_u8, fps, seed, prompt, timings)


def _placed(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    p = next(module.parameters())
    return module if (p.device, p.dtype) == (device, dtype) else module.to(device, dtype)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """`(1, 3, f, H, W)` in [-1, 1] -> uint8 `(f, H, W, 3)`."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "c f h w -> f h w c").cpu().numpy()


def expected_seconds(step_s: float, steps: int, guidance: float) -> float:
    """Wall time of D^t from one measured U-Net call (one branch): CFG doubles the work."""
    return step_s * steps * (2 if guidance != 1.0 else 1)


__all__ = ["LATENT_SAMPLERS", "LATENT_STAGES", "LatentSettings", "LatentVideo", "LatentVideoPipeline", "check_sampler",
           "compute_dtype", "expected_seconds", "to_uint8"]
