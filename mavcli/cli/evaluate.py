"""`mav eval shapes`: does the pack make what the prompt says? Judged from pixels alone.
`mav eval interpolate`: how well are dropped frames of real clips rebuilt, against classical baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mavcli.cli import console
from mavcli.cli.loading import check_matcher_options, open_pipeline
from mavcli.errors import UserInputError
from mavcli.models import STOP_AFTER_STAGES


def check_choices(option: str, values, allowed) -> None:
    """A clear error for the first value of a repeatable option that is not one of `allowed`."""
    for v in values:
        if v not in allowed:
            raise UserInputError(f"{option} {v!r}: choose from {', '.join(allowed)}")


def register(app: typer.Typer) -> None:
    eval_app = typer.Typer(help="Measure quality: shapes prompts judged from pixels, frame interpolation of real clips.", no_args_is_help=True)

    @eval_app.command("shapes")
    def shapes(
        pack: Optional[str] = typer.Option(None, help="Pack to evaluate (default: the bundled pack)."),
        prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="One canonical prompt per line (default: every held-out pair x motion x background)."),
        motions: list[str] = typer.Option([], "--motion", help="Restrict the default set to these motions."),
        backgrounds: list[str] = typer.Option([], "--background", help="Restrict the default set to these backgrounds."),
        seed: int = typer.Option(0, help="Seed of the first video (then +1 per video)."),
        seeds: list[int] = typer.Option([], "--seeds", help="Several disjoint seed sets, each a whole run of the prompts from this first seed (repeat: --seeds 0 --seeds 1000); the report has each set's breakdown."),
        steps: Optional[int] = typer.Option(None, help="Sampler steps for every stage (default: the pack's)."),
        out: Path = typer.Option(Path("eval-shapes.json"), "--out", "-o", help="Where to write the JSON report."),
        save_videos: Optional[Path] = typer.Option(None, "--save-videos", help="Also write every video into this folder."),
        stop_after: Optional[str] = typer.Option(None, "--stop-after", help="Judge an early stage's frames instead: keyframes, interpolation or sr_video (tells which stage loses a fact)."),
        candidates: Optional[int] = typer.Option(None, "--candidates", help="Keyframe clips sampled per video, the best kept by the pack's matcher (default: the pack's)."),
        matcher_guidance: Optional[float] = typer.Option(None, "--matcher-guidance", help="Steer keyframe sampling by the matcher's gradient (default: the pack's; 0 is off)."),
        select_at: list[float] = typer.Option([], "--select-at", help="Rank the keyframe candidates on the noisy clips at this diffusion time, keeping the better half (the best at the last time given); repeat for several; 0: rank the finished clips (default: the pack's)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        """Generate a video per prompt and measure background, colour, shape, motion and stability."""
        console.set_quiet(quiet)
        with console.user_errors():
            from mavcli.data.shapes import BACKGROUNDS, HELD_OUT, MOTIONS, parse_caption
            from mavcli.eval.shapes_eval import (
                breakdown,
                default_prompts,
                disjoint_seed_sets,
                run_shapes_eval,
                write_report,
                write_seed_sets,
            )

            check_choices("--motion", motions, MOTIONS)
            check_choices("--background", backgrounds, BACKGROUNDS)
            if stop_after is not None and stop_after not in STOP_AFTER_STAGES:
                raise UserInputError(f"--stop-after {stop_after!r}: choose one of {', '.join(STOP_AFTER_STAGES)}")
            select_times = check_matcher_options(candidates, matcher_guidance, select_at)
            if prompts_file is not None:
                try:
                    prompts = [ln.strip() for ln in prompts_file.read_text().splitlines() if ln.strip()]
                except OSError as err:
                    raise UserInputError(f"cannot read {prompts_file}: {err.strerror}") from None
                for p in prompts:
                    parse_caption(p)  # a clear error for a prompt the judge cannot read
            else:
                prompts = default_prompts(sorted(HELD_OUT), motions or MOTIONS, backgrounds or tuple(BACKGROUNDS))
            if not prompts:
                raise UserInputError("no prompts to evaluate")
            if seeds and seed != 0:
                raise UserInputError("give --seed (one set) or --seeds (several), not both")
            disjoint_seed_sets(seeds, len(prompts))
            parent = out.parent if str(out.parent) else Path(".")
            if not parent.is_dir():
                raise UserInputError(f"the output folder {parent} does not exist")
            if save_videos is not None:
                save_videos.mkdir(parents=True, exist_ok=True)
            pipe = open_pipeline(pack, device)
            progress = Progress(TextColumn("[bold]eval shapes"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"),
                                TextColumn("{task.fields[last]}"), TimeRemainingColumn(), console=console.err, disable=quiet)
            sets = seeds or [seed]
            reports = []
            with progress:
                task = progress.add_task("eval", total=len(prompts) * len(sets), last="")
                for k, first in enumerate(sets):
                    def on_video(i, n, row, done=k * len(prompts)):
                        mark = "ok" if row["all_correct"] else "miss"
                        progress.update(task, completed=done + i, last=f"{mark}: {row['prompt']}")

                    reports.append((first, run_shapes_eval(
                        pipe, prompts, seed=first, steps=steps, on_video=on_video, save_dir=save_videos,
                        stop_after=stop_after, candidates=candidates, matcher_guidance=matcher_guidance,
                        select_times=select_times)))
            stage = f", after {stop_after}" if stop_after else ""
            per_video = sum(r.seconds_per_video for _, r in reports) / len(reports)
            table = Table(title=f"mav eval shapes: {len(prompts)} prompts{stage}, {per_video:.1f} s per video")
            table.add_column("attribute")
            for first, _ in reports:
                table.add_column(f"seeds {first}-{first + len(prompts) - 1}" if seeds else "correct", justify="right")
            from mavcli.eval.shapes_metrics import ATTRIBUTES

            sums = [r.summary for _, r in reports]
            for k in ATTRIBUTES:
                if k in sums[0]["accuracy"]:
                    table.add_row(k, *(f"{100 * sm['accuracy'][k]:.1f}%" for sm in sums))
            table.add_row("all four", *(f"{100 * sm['all_correct']:.1f}%" for sm in sums))
            details = [breakdown(r.rows) for _, r in reports] if seeds else []
            if seeds:
                table.add_row("stable (area rel. std < 0.10)", *(f"{100 * d['stable']:.1f}%" for d in details))
                for shape in details[0]["by_shape"]:
                    table.add_row(f"shape right: {shape}", *(f"{d['by_shape'][shape]['shape_right']}/{d['by_shape'][shape]['n']}"
                                                             for d in details))
                for bg in details[0]["by_background"]:
                    table.add_row(f"all four: on {bg}", *(f"{d['by_background'][bg]['all_right']}/{d['by_background'][bg]['n']}"
                                                          for d in details))
                for key in details[0]["fill_ratio"]:
                    table.add_row(f"fill min / median: {key}", *(
                        f"{d['fill_ratio'][key]['min']:.3f} / {d['fill_ratio'][key]['median']:.3f}" if key in d["fill_ratio"] else "-"
                        for d in details))
            for k in sums[0]["stability"]:
                table.add_row(f"stability: {k}", *(f"{sm['stability'].get(k, float('nan')):.3f}" for sm in sums))
            console.out.print(table)
            written = write_seed_sets(reports, details, out) if seeds else write_report(reports[0][1], out)
            console.result(str(written))

    @eval_app.command("interpolate")
    def interpolate(
        videos: list[Path] = typer.Argument(..., help="Clips to evaluate on (anything ffmpeg decodes, or folders of frames).", show_default=False),
        height: int = typer.Option(256, help="Resize every clip to this height first (aspect kept); 0 keeps the clip's size."),
        tasks: list[str] = typer.Option([], "--task", help="x2: rebuild every odd frame; x4: keep every 4th frame, rebuild the 3 between (default: both)."),
        methods: list[str] = typer.Option([], "--method", help=f"{', '.join(INTERP_METHODS)} (default: {', '.join(INTERP_DEFAULT)}; rife fetches its pack once)."),
        start: float = typer.Option(0.0, help="Evaluate only from this fraction of each clip on (0.7: the last 30%)."),
        pack: Optional[str] = typer.Option(None, help="Pack of the mavcli method (default: the realinterp pack)."),
        rife_pack: Optional[str] = typer.Option(None, "--rife-pack", help="Pack or folder of the rife method (default: the rife pack)."),
        device: str = typer.Option("auto", help="Device of the mavcli method: auto, cpu, cuda or mps."),
        out: Path = typer.Option(Path("eval-interpolate.json"), "--out", "-o", help="Where to write the JSON report."),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        """Drop frames of real clips, rebuild them with each method, and score PSNR / SSIM / time."""
        console.set_quiet(quiet)
        with console.user_errors():
            from mavcli.eval.interp_eval import TASKS, baseline_methods, evaluate_clip, load_clip, task_windows, write_report
            from mavcli.video import probe_video

            tasks = list(dict.fromkeys(tasks or TASKS))
            names = list(dict.fromkeys(methods or INTERP_DEFAULT))
            check_choices("--task", tasks, TASKS)
            check_choices("--method", names, INTERP_METHODS)
            if height < 0 or 0 < height < 16:
                raise UserInputError(f"--height {height}: use 16 or more, or 0 to keep each clip's size")
            if not 0.0 <= start < 1.0:
                raise UserInputError(f"--start {start:g}: give a fraction in [0, 1), e.g. 0.7 to evaluate the last 30% of each clip")
            parent = out.parent if str(out.parent) else Path(".")
            if not parent.is_dir():
                raise UserInputError(f"the output folder {parent} does not exist")
            if pack is not None and "mavcli" not in names:
                console.warn("--pack is only used by --method mavcli")
            if rife_pack is not None and "rife" not in names:
                console.warn("--rife-pack is only used by --method rife")
            for v in videos:
                probe_video(v)  # a bad path fails now, before any clip is decoded
            clips = []
            for v in videos:
                console.info(f"reading {v}")
                clip = load_clip(v, height or None)
                for t in tasks:
                    task_windows(clip.frames.shape[0], t, start, name=str(v))  # too short: fails before any work
                clips.append(clip)

            interpolators = baseline_methods([m for m in names if m not in ("mavcli", "rife")])
            if "mavcli" in names:
                from mavcli.cli.loading import open_flow_interpolator

                interpolators["mavcli"] = open_flow_interpolator(pack, device)
            if "rife" in names:
                from mavcli.cli.loading import open_rife_interpolator

                interpolators["rife"] = open_rife_interpolator(rife_pack, device)
            interpolators = {m: interpolators[m] for m in names}  # the order asked

            total = sum(len(task_windows(c.frames.shape[0], t, start)) for c in clips for t in tasks) * len(names)
            progress = Progress(TextColumn("[bold]eval interpolate"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"),
                                TextColumn("{task.fields[now]}"), TimeRemainingColumn(), console=console.err, disable=quiet)
            reports = []
            with progress:
                bar = progress.add_task("eval", total=total, now="")
                for clip in clips:
                    seen = {}  # (task, method) -> windows done so far: the bar advances by the difference

                    def on_progress(task, method, done, _total, clip=clip, seen=seen):
                        progress.update(bar, advance=done - seen.get((task, method), 0), now=f"{clip.name} {task} {method}")
                        seen[(task, method)] = done

                    reports.append(evaluate_clip(clip, tasks, interpolators, start=start, on_progress=on_progress))
            console.out.print(_interp_table(reports, names))
            for r in reports:
                name = Path(r.path).name
                if r.cuts:
                    left = ", ".join(f"{x.windows_left_out} of {x.windows} {x.task}" for x in r.results if x.method == names[0])
                    console.info(f"{name}: scene cuts at frames {', '.join(map(str, r.cuts))}; windows spanning one left out of the scores: {left}")
            settings = {"height": height or None, "start": start, "tasks": tasks, "methods": names, "pack": pack, "rife_pack": rife_pack}
            console.result(str(write_report(reports, out, settings)))

    app.add_typer(eval_app, name="eval")


INTERP_METHODS = ("blend", "ffmpeg", "dis", "mavcli", "rife")
#: what --method leaves out by default: rife needs its pack from the Hub (21 MB)
INTERP_DEFAULT = INTERP_METHODS[:4]


def _interp_table(reports, methods: list[str]) -> Table:
    """Rows clip / size / task, a column per method: "PSNR / SSIM, ms per rebuilt frame"."""
    table = Table(title="mav eval interpolate: PSNR dB / SSIM over rebuilt frames, ms per rebuilt frame")
    for name in ("clip", "size", "task"):
        table.add_column(name)
    for m in methods:
        table.add_column(m, justify="right")
    for r in reports:
        for task in dict.fromkeys(x.task for x in r.results):
            by_method = {x.method: x for x in r.results if x.task == task}
            table.add_row(Path(r.path).name, f"{r.width}x{r.height}", task, *(_cell(by_method[m]) for m in methods))
    return table


def _cell(result) -> str:
    ms = f"{result.ms_per_frame:.0f}" if result.ms_per_frame >= 10 else f"{result.ms_per_frame:.1f}"
    if result.psnr is None:
        return f"n/a (every window spans a cut), {ms} ms"
    return f"{result.psnr:.2f} / {result.ssim:.4f}".replace(" 0.", " .") + f", {ms} ms"
