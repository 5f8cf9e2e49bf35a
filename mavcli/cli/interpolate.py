"""`mav interpolate INPUT`: more frames between a real video's frames. Default method `flow`:
DIS optical flow refined by the realinterp pack's network (deterministic, one evaluation per new
frame); `diffusion`: the cascade pack's masked-frame diffusion network F_i (Make-A-Video 3.3)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mavcli.cli import console
from mavcli.cli.loading import open_pipeline
from mavcli.errors import UserInputError

FACTORS = (2, 4, 8)


def register(app: typer.Typer) -> None:
    @app.command()
    def interpolate(
        input: Path = typer.Argument(..., help="A video file (mp4, webm, gif, ...) or a folder of frames."),
        factor: Optional[int] = typer.Option(None, "--factor", "-x", help="2, 4 or 8 times the frames (default 2)."),
        target_fps: Optional[float] = typer.Option(None, "--fps", help="Target fps instead of --factor (rounded to 2, 4 or 8)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: INPUT-x2.mp4 beside the input)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        method: str = typer.Option("flow", help="flow (fast, deterministic; for real footage) or diffusion (F_i, sampled)."),
        pack: Optional[str] = typer.Option(None, help="Pack to use (default: realinterp for flow, the default pack for diffusion)."),
        steps: Optional[int] = typer.Option(None, help="diffusion: sampler steps of F_i (default: the pack's)."),
        seed: int = typer.Option(0, help="diffusion: random seed of the sampler."),
        chunk: int = typer.Option(9, help="Input frames held in memory at a time."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        """Write a video with 2, 4 or 8 times the frames: same size, fps scaled, audio copied,
        scene cuts never blended across."""
        console.set_quiet(quiet)
        with console.user_errors():
            from mavcli.video import VideoWriter, detect_scene_cuts, iter_video_frames, probe_video

            if method not in ("flow", "diffusion"):
                raise UserInputError(f"--method must be flow or diffusion; got {method!r}")
            if method == "flow" and steps is not None:
                raise UserInputError("--steps applies to --method diffusion only (the flow method samples nothing)")
            if factor is not None and target_fps is not None:
                raise UserInputError("give --factor or --fps, not both")
            info = probe_video(input)  # clear errors for missing / unreadable / non-video input
            if target_fps is not None:
                if not target_fps > info.fps:
                    raise UserInputError(f"--fps {target_fps:g} must be above the input's {info.fps:g} fps")
                want = target_fps / info.fps
                factor = min(FACTORS, key=lambda f: abs(f - want))
                if abs(factor - want) > 1e-6:
                    console.warn(f"--fps {target_fps:g} is {want:.2f}x the input; using x{factor} ({info.fps * factor:g} fps)")
            factor = factor or 2
            if factor not in FACTORS:
                raise UserInputError(f"--factor must be one of {', '.join(map(str, FACTORS))}; got {factor}")
            if chunk < 3:
                raise UserInputError("--chunk must be >= 3")
            if out is None:
                out = input.with_name(f"{input.stem}-x{factor}.mp4")
            if out.exists() and not overwrite:
                raise UserInputError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
            parent = out.parent if str(out.parent) else Path(".")
            if not parent.is_dir():
                raise UserInputError(f"the output folder {parent} does not exist; create it or choose another --out")

            t0 = time.perf_counter()
            cuts = detect_scene_cuts(iter_video_frames(input))
            count = sum(1 for _ in iter_video_frames(input)) if not info.exact else info.num_frames
            if count < 2:
                raise UserInputError(f"{input} has {count} frame; interpolation needs at least 2")
            if cuts:
                console.info(f"scene cuts at frames {', '.join(map(str, cuts))}: never blended across")

            if method == "flow":
                from mavcli.cli.loading import open_flow_interpolator

                interp = open_flow_interpolator(pack, device)
                used = interp.path

                def stream(cb):
                    return interp.interpolate_stream(iter_video_frames(input), factor, cuts=cuts, chunk=chunk, callback=cb)
            else:
                pipe = open_pipeline(pack, device)
                used = pipe.pack.path
                opts = {"steps": steps} if steps else {}

                def stream(cb):
                    return pipe.interpolate_stream(iter_video_frames(input), factor, fps=info.fps, cuts=cuts,
                                                   seed=seed, chunk=chunk, callback=cb, **opts)
            new_fps = info.fps * factor
            progress = Progress(TextColumn("[bold]interpolate"), BarColumn(), MofNCompleteColumn(), TextColumn("input frames"),
                                TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), console=console.err, disable=quiet)
            written = 0
            with progress, VideoWriter(out, new_fps, audio_from=input if info.has_audio else None, overwrite=overwrite,
                                       metadata={"source": str(input), "factor": factor, "fps": new_fps,
                                                 "scene_cuts": cuts, "method": method, "pack": str(used)}) as writer:
                task = progress.add_task("frames", total=count, speed="")

                def cb(stage, done, _total):
                    rate = written / max(time.perf_counter() - t0, 1e-9)
                    progress.update(task, completed=done, speed=f"{rate:.1f} new frames/s")

                for frame in stream(cb):
                    writer.append(frame[None])
                    written += 1
            console.info(f"{count} -> {written} frames, {info.fps:g} -> {new_fps:g} fps, "
                         f"{time.perf_counter() - t0:.1f}s" + (" (audio copied)" if info.has_audio else ""))
            console.result(str(out))
