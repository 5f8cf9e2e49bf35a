"""Which of D^t's sampling steps lose a shape: start the keyframe decoder from rendered keyframes
(exact shapes) noised to a time t0 and judge what it gives back (SDEdit, Meng et al. 2022).
t0 = 0 judges the rendered keyframes themselves; t0 = 1 is ordinary sampling from noise. A
shape that comes back rounder from a small t0 is lost in the low-noise steps, which draw fine
detail; one that survives small t0 and not large ones is lost in the layout.

    python -m mavcli.eval.shapes_probe --background gray --count 8 --t0 0.1 0.2 0.35 1

`--upsamplers` probes the two SR stages the same way: rendered clips at the keyframe size,
their corners rounded by each `--sigma` (keyframe pixels, 0: as rendered; the keyframe
decoder's fault, `mavcli.data.faults.round_corners`), through SR_l^t and SR_h as the pack
samples them, judged after each. A perfect input that comes back rounder is the upsamplers'
own loss; a rounded one that comes back sharper is one they undo.

    python -m mavcli.eval.shapes_probe --upsamplers --shape square --sigma 0 1 2
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from mavcli.data.faults import round_corners
from mavcli.data.shapes import COLOURS, HELD_OUT, render, sample_spec
from mavcli.diffusion import guided, sample
from mavcli.eval.shapes_metrics import evaluate_clip
from mavcli.eval.shapes_eval import canonical_prompt
from mavcli.models.blocks import resize_frames


@dataclass(frozen=True)
class ProbeResult:
    prompt: str
    t0: float
    fill_ratio: float | None
    shape: str | None


@torch.no_grad()
def probe_keyframes(pipe, *, shape: str = "square", background: str = "gray", count: int = 8,
                    t0s: tuple[float, ...] = (0.0, 0.1, 0.2, 0.35, 1.0), guidance: float | None = None,
                    first_seed: int = 5000) -> list[ProbeResult]:
    """For `count` clips of trained colours (held-out pairs never), rendered at the pack's
    keyframe size and count: D^t from each clip noised to every t0 in `t0s`, with the pack's
    keyframe sampler and guidance (or `guidance`), the same noise at every t0, about
    steps x t0 steps. Keyframes `(1, 3, k, s, s)` in [-1, 1]; no matcher."""
    s = pipe.settings
    net = pipe.pack["keyframes"]
    k, size = s.keyframes, s.keyframe_size
    schedule = pipe._schedule(size)
    sampler = pipe.stage_sampler(None, "keyframes")
    steps = pipe._option(None, "keyframes", "steps")
    scale = pipe._option(guidance, "keyframes", "guidance")
    colours = [c for c in COLOURS if (c, shape) not in HELD_OUT]
    out = []
    for i in range(count):
        spec = sample_spec(first_seed + i, colours=colours, shapes=[shape], backgrounds=[background])
        prompt = canonical_prompt(spec.colour, shape, spec.motion, background)
        rendered = render(spec, frames=k, size=size)  # (k, s, s, 3) uint8
        x0 = rearrange(torch.from_numpy(rendered).float() / 127.5 - 1, "f h w c -> 1 c f h w").to(pipe.device)
        tokens, mask, pooled, _ = pipe.encode_prompt([prompt])
        cond = {"cond": pipe.prior(tokens, mask, pooled, seed=first_seed + i)}
        if net.config.context_dim:
            cond["context"], cond["context_mask"] = pipe.decoder_context([prompt], tokens, mask)
        if net.config.fps_cond:
            cond["fps"] = torch.full((1,), float(s.fps), device=pipe.device)
        model = guided(net, scale, **cond)
        for t0 in t0s:
            if t0 <= 0:
                frames = rendered
            else:
                gen = torch.Generator().manual_seed(first_seed + i)
                noise = torch.randn(x0.shape, generator=gen).to(pipe.device)
                alpha, sigma = (v.item() for v in schedule.alpha_sigma(torch.tensor([min(float(t0), 1.0)])))
                x = noise if t0 >= 1 else alpha * x0 + sigma * noise
                extra = {} if t0 >= 1 else {"t_start": float(t0)}
                with pipe._autocast():
                    y = sample(model, x, max(2, round(steps * min(t0, 1.0))), schedule=schedule, sampler=sampler,
                               generator=gen, **extra).float()
                frames = ((rearrange(y[0], "c f h w -> f h w c").clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
            judged = evaluate_clip(frames, prompt)
            out.append(ProbeResult(prompt, float(t0), judged["measures"].get("fill_ratio"), judged["predicted"]["shape"]))
    return out


@dataclass(frozen=True)
class UpsamplerResult:
    prompt: str
    sigma: float
    stage: str  # "input" (the keyframe-size clip, enlarged), "sr_video" (enlarged) or "sr_image"
    fill_ratio: float | None
    shape: str | None


@torch.no_grad()
def probe_upsamplers(pipe, *, shape: str = "square", background: str = "gray", count: int = 8,
                     sigmas: tuple[float, ...] = (0.0, 1.0, 2.0), first_seed: int = 5000) -> list[UpsamplerResult]:
    """For `count` clips of trained colours, rendered at the SR_l^t size and count keyframes,
    their corners rounded by each sigma (keyframe pixels) and shrunk to the keyframe size: the
    clip, SR_l^t's output and SR_h's, each judged at SR_h's size (smaller ones enlarged as the
    pack enlarges, `sr_upsample`), SR seeded by the clip's index."""
    s = pipe.settings
    colours = [c for c in COLOURS if (c, shape) not in HELD_OUT]
    out = []

    def judge(video, prompt, sigma, stage):
        frames = rearrange(video[0], "c f h w -> f c h w")
        if frames.shape[-1] != s.sr_image_size:
            frames = resize_frames(frames, s.sr_image_size, s.sr_upsample)
        frames = ((rearrange(frames, "f c h w -> f h w c").clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        judged = evaluate_clip(frames, prompt)
        out.append(UpsamplerResult(prompt, float(sigma), stage, judged["measures"].get("fill_ratio"),
                                   judged["predicted"]["shape"]))

    for i in range(count):
        spec = sample_spec(first_seed + i, colours=colours, shapes=[shape], backgrounds=[background])
        prompt = canonical_prompt(spec.colour, shape, spec.motion, background)
        hi = torch.from_numpy(render(spec, frames=s.keyframes, size=s.sr_video_size)).float() / 127.5 - 1
        hi = rearrange(hi, "f h w c -> f c h w")
        for sigma in sigmas:
            rounded = round_corners(hi, [sigma * s.sr_video_size / s.keyframe_size] * len(hi))
            keys = rearrange(resize_frames(rounded, s.keyframe_size), "f c h w -> 1 c f h w").to(pipe.device)
            judge(keys, prompt, sigma, "input")
            video = pipe.super_resolve_video(keys, seed=i)
            judge(video, prompt, sigma, "sr_video")
            judge(pipe.super_resolve_frames(video, seed=i), prompt, sigma, "sr_image")
    return out


def main(argv: list[str] | None = None) -> None:
    from mavcli.pipeline import MakeAVideoPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default=None)
    ap.add_argument("--shape", default="square")
    ap.add_argument("--background", default="gray")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--t0", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.35, 1.0])
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--upsamplers", action="store_true", help="probe SR_l^t and SR_h instead of D^t")
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                    help="--upsamplers: corner roundings of the input, keyframe pixels")
    args = ap.parse_args(argv)
    pipe = MakeAVideoPipeline.from_pretrained(args.pack, device="cpu")
    if args.upsamplers:
        rows = probe_upsamplers(pipe, shape=args.shape, background=args.background, count=args.count,
                                sigmas=tuple(args.sigma))
        for sigma in args.sigma:
            parts = []
            for stage in ("input", "sr_video", "sr_image"):
                got = [r for r in rows if r.sigma == sigma and r.stage == stage]
                fills = [r.fill_ratio for r in got if r.fill_ratio is not None]
                right = sum(r.shape == args.shape for r in got)
                parts.append(f"{stage} {np.mean(fills):.3f} (min {np.min(fills):.3f}, {right}/{len(got)})")
            print(f"sigma {sigma:g}: " + ", ".join(parts))
        return
    rows = probe_keyframes(pipe, shape=args.shape, background=args.background, count=args.count,
                           t0s=tuple(args.t0), guidance=args.guidance)
    for t0 in args.t0:
        got = [r for r in rows if r.t0 == t0]
        fills = [r.fill_ratio for r in got if r.fill_ratio is not None]
        right = sum(r.shape == args.shape for r in got)
        print(f"t0 {t0:g}: fill mean {np.mean(fills):.3f} min {np.min(fills):.3f}, {args.shape}s {right}/{len(got)}")


if __name__ == "__main__":
    main()
