"""`mav generate PROMPT`: text to video through the whole cascade."""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Optional

import typer

from mavcli.cli import console
from mavcli.cli.loading import check_matcher_options, check_pack_kind, check_precision, open_pipeline, set_threads
from mavcli.cli.progress import CascadeProgress
from mavcli.errors import UserInputError
from mavcli.models import SAMPLED_STAGES

FORMATS = ("mp4", "gif", "webm", "png")
MAX_PROMPT_CHARS = 500


def _slug(prompt: str) -> str:
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    return "-".join(words)[:60].strip("-") or "video"


def _pairs(items: list[str], what: str, cast, stages: tuple[str, ...] = SAMPLED_STAGES) -> dict:
    out = {}
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep or stage not in stages:
            raise UserInputError(f"{what} takes STAGE=VALUE with STAGE one of {', '.join(stages)}; got {item!r}")
        try:
            out[stage] = cast(value)
        except ValueError:
            raise UserInputError(f"{what} {item!r}: {value!r} is not a number") from None
    return out


def _prompts(prompt: Optional[str], prompts_file: Optional[Path]) -> list[str]:
    if prompt is not None and prompts_file is not None:
        raise UserInputError("give either a PROMPT or --prompts FILE, not both")
    if prompts_file is not None:
        try:
            lines = prompts_file.read_text().splitlines()
        except OSError as err:
            raise UserInputError(f"cannot read --prompts {prompts_file}: {err.strerror}") from None
        items = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not items:
            raise UserInputError(f"{prompts_file} has no prompts (one per line)")
    elif prompt is None:
        raise UserInputError('give a prompt, e.g. mav generate "a red circle moving left on a black background"')
    else:
        items = [prompt]
    for p in items:
        if not p.strip():
            raise UserInputError("the prompt is empty; describe the video, e.g. 'a red circle moving left on a black background'")
        if len(p) > MAX_PROMPT_CHARS:
            raise UserInputError(f"the prompt is {len(p)} characters long; the limit is {MAX_PROMPT_CHARS}")
    return items


def _output_path(out: Optional[Path], fmt: str, prompt: str, seed: int, multiple: bool) -> Path:
    suffix = "" if fmt == "png" else f".{fmt}"
    if out is None:
        return Path(f"{_slug(prompt)}-seed{seed}{suffix}")
    if multiple or (out.exists() and out.is_dir() and fmt != "png"):
        # several videos, or an existing folder: OUT is a folder and names derive from prompts
        return out / f"{_slug(prompt)}-seed{seed}{suffix}"
    if fmt != "png" and out.suffix.lower() != suffix:
        given = out.suffix.lstrip(".").lower() or "png"
        if given not in FORMATS:
            raise UserInputError(f"--out {out}: mav generate does not write .{given} files; "
                                 f"use a name ending in {', '.join('.' + f for f in FORMATS if f != 'png')}, "
                                 "or --format png for a folder of frames")
        raise UserInputError(f"--out {out} does not end in {suffix}; use a {suffix} name or --format {given}")
    return out


def _check_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserInputError(f"the output folder {parent} does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK):
        raise UserInputError(f"the output folder {parent} is not writable; choose another --out")


def register(app: typer.Typer) -> None:
    @app.command()
    def generate(
        prompt: Optional[str] = typer.Argument(None, help="What the video shows."),
        pack: Optional[str] = typer.Option(None, help="Pack: a name from weights.toml, a folder, or a Hub repo id. Default: the bundled pack."),
        seed: Optional[int] = typer.Option(None, help="Random seed (printed when not given, to reproduce a result)."),
        steps: Optional[int] = typer.Option(None, help="Sampler steps for every stage (default: the pack's)."),
        stage_steps: list[str] = typer.Option([], "--stage-steps", help="Per-stage steps, e.g. --stage-steps keyframes=30."),
        guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale for prior and keyframes."),
        stage_guidance: list[str] = typer.Option([], "--stage-guidance", help="Per-stage guidance, e.g. --stage-guidance prior=2."),
        candidates: Optional[int] = typer.Option(None, "--candidates", help="Keyframe clips sampled per video; the pack's matcher keeps the one that fits the prompt best (default: the pack's)."),
        matcher_guidance: Optional[float] = typer.Option(None, "--matcher-guidance", help="Steer keyframe sampling along the matcher's gradient by this scale (default: the pack's; 0 is off)."),
        select_at: list[float] = typer.Option([], "--select-at", help="Rank the keyframe candidates on the noisy clips at this diffusion time, keeping the better half (the best at the last time given); repeat for several; 0: rank the finished clips (default: the pack's)."),
        frames: Optional[int] = typer.Option(None, help="Frames in the video (default: the pack's, e.g. 29)."),
        fps: Optional[float] = typer.Option(None, help="Frames per second of the video (default: the pack's)."),
        sampler: Optional[str] = typer.Option(None, help="dpmpp, ddim or ddpm for every stage (default: the pack's, per stage); a latent pack's D^t: ddim (default) or dpmpp (25 steps unless --steps)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (or folder for --format png / several videos)."),
        fmt: str = typer.Option("mp4", "--format", "-f", help="mp4, gif, webm, or png (a folder of frames)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: the cores this process may use, less those other processes keep busy)."),
        precision: str = typer.Option("auto", "--precision", help="auto, float32 or bfloat16: what the networks compute in (auto: bfloat16 on CUDA and on CPUs with AVX512-BF16 or AMX, else float32)."),
        num_videos: int = typer.Option(1, "--num-videos", "-n", help="Videos per prompt (seeds seed, seed+1, ...)."),
        prompts: Optional[Path] = typer.Option(None, "--prompts", help="A text file with one prompt per line."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print the output paths."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Print the time of every stage."),
        negative_prompt: str = typer.Option("", "--negative-prompt", help="Latent packs: what the video should not show (the guidance's unconditional branch)."),
        height: Optional[int] = typer.Option(None, help="Latent packs: frame height in pixels (default: the pack's)."),
        width: Optional[int] = typer.Option(None, help="Latent packs: frame width in pixels (default: the pack's)."),
        interp_factor: int = typer.Option(2, "--interp-factor", min=1, help="Latent packs: F_i multiplies the frame rate by this with the realinterp flow interpolator (1: off)."),
        upscale: Optional[str] = typer.Option(None, "--upscale", help="Latent packs: SR_l^t by a second latent pack as video-to-video (e.g. zeroscope-xl)."),
        upscale_size: Optional[str] = typer.Option(None, "--upscale-size", help="Latent packs: WIDTHxHEIGHT of the upscaled video (default: the upscaler's)."),
        upscale_strength: Optional[float] = typer.Option(None, "--upscale-strength", min=0.01, max=1.0, help="Latent packs: how far the upscaler re-noises the video (default 0.6)."),
        download: bool = typer.Option(False, "--download", help="Download a weights.toml pack that is not cached yet without asking."),
        manifest: Optional[Path] = typer.Option(None, "--manifest", dir_okay=False, help="Read this weights.toml instead of mavcli's own."),
    ) -> None:
        """Make a video from a text prompt: text encoder -> prior -> keyframes -> interpolation -> super-resolution."""
        t_start = time.perf_counter()
        console.set_quiet(quiet)
        with console.user_errors():
            fmt = fmt.lower()
            if fmt not in FORMATS:
                raise UserInputError(f"--format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
            check_precision(precision)
            if num_videos < 1:
                raise UserInputError("--num-videos must be >= 1")
            select_times = check_matcher_options(candidates, matcher_guidance, select_at)
            if frames is not None and frames < 1:
                raise UserInputError("--frames must be >= 1")
            if fps is not None and not fps > 0:
                raise UserInputError("--fps must be > 0")
            items = _prompts(prompt, prompts)
            from mavcli.cli.generate_latent import LATENT_STEP_STAGES, find_latent_pack

            latent = find_latent_pack(pack, manifest)  # downloads come after every check
            if latent is None:
                check_pack_kind(pack, ("mavcli",), "mav generate", manifest)
            stages = LATENT_STEP_STAGES if latent is not None else SAMPLED_STAGES
            step_table = _pairs(stage_steps, "--stage-steps", int, stages)
            guide_table = _pairs(stage_guidance, "--stage-guidance", float, stages)
            if steps is not None and steps < 1:
                raise UserInputError(f"--steps must be >= 1 (sampler steps for every stage), got {steps}")
            for stage, n in step_table.items():
                if n < 1:
                    raise UserInputError(f"--stage-steps {stage}={n}: steps must be >= 1")
            if steps is not None:
                step_table = {s: step_table.get(s, steps) for s in stages}
            if guidance is not None:
                guide_table = {"prior": guidance, "keyframes": guidance, **guide_table}
                if latent is not None:
                    guide_table = {"keyframes": guidance, "upscale": guidance, **guide_table}
                    guide_table.pop("prior")
            latent_opts = {"--negative-prompt": negative_prompt or None, "--height": height, "--width": width,
                           "--upscale": upscale, "--upscale-size": upscale_size, "--upscale-strength": upscale_strength,
                           "--interp-factor": None if interp_factor == 2 else interp_factor}
            shapes_opts = {"--candidates": candidates, "--matcher-guidance": matcher_guidance, "--select-at": select_at or None, "--fps": fps}
            wrong = [k for k, v in (shapes_opts if latent is not None else latent_opts).items() if v is not None]
            if wrong:
                kind = "a latent pack (ModelScope / Zeroscope)" if latent is not None else "the shapes cascade"
                raise UserInputError(f"{', '.join(wrong)} do(es) not apply to {kind}; see mav generate --help")
            base_seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little") % 2**31
            jobs = [(p, base_seed + i) for p in items for i in range(num_videos)]
            multiple = len(jobs) > 1
            paths = [_output_path(out, fmt, p, s, multiple) for p, s in jobs]
            from mavcli.video import sidecar_path

            for path in paths:
                _check_parent(path)
                for target in (path, sidecar_path(path)):
                    if target.exists() and not overwrite:
                        raise UserInputError(f"{target} already exists; pass --overwrite to replace it or choose another --out")
            if seed is None:
                console.info(f"seed {base_seed} (pass --seed {base_seed} to reproduce)")

            threads_used = set_threads(threads)
            if verbose:
                console.err.print(threads_used)
            if latent is not None:
                from mavcli.cli.generate_latent import LatentRequest, parse_size, run_latent

                from mavcli.latent_pipeline import check_sampler

                if sampler is not None:  # up front, before any network is loaded
                    check_sampler(sampler)
                req = LatentRequest(jobs, paths, fmt, overwrite, negative_prompt, frames, height, width, step_table,
                                    guide_table, interp_factor, upscale, parse_size(upscale_size), upscale_strength,
                                    device, quiet, verbose, precision, sampler)
                run_latent(latent, req, t_start, download=download, manifest=manifest)
                return

            from mavcli.pipeline import MemoryLimitError
            from mavcli.video import write_video

            t0 = time.perf_counter()
            pipe = open_pipeline(pack, device, manifest, precision)
            if not pipe.pack.verified:
                console.warn(f"{pipe.pack.path}: pack.json records no sha256 of its files, so they were not checked; "
                             "re-export the pack (mav train export) to add them")
            load_s = time.perf_counter() - t0
            if verbose:
                console.err.print(f"computing in {pipe.precision} on {pipe.device}")
            s = pipe.settings
            skip = s.frame_skip
            keyframes = None if frames is None else max(1, math.ceil((frames - 1) / skip) + 1)
            key_fps = None if fps is None else fps / skip
            try:  # before any video: a request that cannot fit is refused, not killed midway
                pipe.check_memory(keyframes or s.keyframes, skip, candidates)
            except MemoryLimitError as err:
                most = (err.most_keyframes - 1) * skip + 1
                raise UserInputError(f"--frames {frames or (s.keyframes - 1) * skip + 1}: {err}. "
                                     f"Ask for at most --frames {most}, or free memory") from None
            for (text, sd), path in zip(jobs, paths):
                label = f"[{jobs.index((text, sd)) + 1}/{len(jobs)}] " if multiple else ""
                with CascadeProgress(label, disable=quiet) as progress:
                    video = pipe(text, seed=sd, num_keyframes=keyframes, fps=key_fps, steps=step_table or None,
                                 guidance=guide_table or None, sampler=sampler, callback=progress.callback,
                                 candidates=candidates, matcher_guidance=matcher_guidance, select_times=select_times)
                if video.unknown_words:
                    console.warn(f"words this pack does not know (read as unknown): {', '.join(video.unknown_words)}")
                clip = video.frames if frames is None else video.frames[:frames]
                meta = {"prompt": text, "seed": sd, "pack": str(pipe.pack.path), "fps": video.fps,
                        "frames": int(clip.shape[0]), "size": list(clip.shape[1:3]), "steps": step_table or s.steps,
                        "guidance": guide_table or s.guidance,
                        "sampler": {st: pipe.stage_sampler(sampler, st) for st in s.steps}, "device": str(pipe.device),
                        "precision": pipe.precision,
                        "candidates": candidates or s.keyframe_candidates,
                        "matcher_guidance": s.matcher_guidance if matcher_guidance is None else matcher_guidance,
                        "select_times": list(s.keyframe_select_times if select_times is None else select_times),
                        "mavcli": _version(), "timings_s": {k: round(v, 3) for k, v in video.timings.items()}}
                written = write_video(path, clip, video.fps, format=fmt, metadata=meta, overwrite=overwrite)
                if verbose:
                    parts = ", ".join(f"{k} {v:.2f}s" for k, v in video.timings.items())
                    console.err.print(f"load {load_s:.2f}s, {parts}; {clip.shape[0]} frames {clip.shape[2]}x{clip.shape[1]} at {video.fps:g} fps")
                console.result(str(written))
            if verbose:
                console.err.print(f"total {time.perf_counter() - t_start:.2f}s in this command")


def _version() -> str:
    from mavcli import __version__

    return __version__
