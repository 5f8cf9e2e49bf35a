"""`mav eval shapes`: does the pack make what the prompt says? Judged from pixels alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mavcli.cli import console
from mavcli.cli.loading import open_pipeline
from mavcli.errors import UserInputError


def register(app: typer.Typer) -> None:
    eval_app = typer.Typer(help="Measure quality: shapes prompts judged from pixels.", no_args_is_help=True)

    @eval_app.command("shapes")
    def shapes(
        pack: Optional[str] = typer.Option(None, help="Pack to evaluate (default: the bundled pack)."),
        prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="One canonical prompt per line (default: every held-out pair x motion x background)."),
        motions: list[str] = typer.Option([], "--motion", help="Restrict the default set to these motions."),
        backgrounds: list[str] = typer.Option([], "--background", help="Restrict the default set to these backgrounds."),
        seed: int = typer.Option(0, help="Seed of the first video (then +1 per video)."),
        steps: Optional[int] = typer.Option(None, help="Sampler steps for every stage (default: the pack's)."),
        out: Path = typer.Option(Path("eval-shapes.json"), "--out", "-o", help="Where to write the JSON report."),
        save_videos: Optional[Path] = typer.Option(None, "--save-videos", help="Also write every video into this folder."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        """Generate a video per prompt and measure background, colour, shape, motion and stability."""
        console.set_quiet(quiet)
        with console.user_errors():
            from mavcli.data.shapes import BACKGROUNDS, HELD_OUT, MOTIONS, parse_caption
            from mavcli.eval.shapes_eval import default_prompts, run_shapes_eval, write_report

            for m in motions:
                if m not in MOTIONS:
                    raise UserInputError(f"--motion {m!r}: choose from {', '.join(MOTIONS)}")
            for b in backgrounds:
                if b not in BACKGROUNDS:
                    raise UserInputError(f"--background {b!r}: choose from {', '.join(BACKGROUNDS)}")
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
            parent = out.parent if str(out.parent) else Path(".")
            if not parent.is_dir():
                raise UserInputError(f"the output folder {parent} does not exist")
            if save_videos is not None:
                save_videos.mkdir(parents=True, exist_ok=True)
            pipe = open_pipeline(pack, device)
            progress = Progress(TextColumn("[bold]eval shapes"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"),
                                TextColumn("{task.fields[last]}"), TimeRemainingColumn(), console=console.err, disable=quiet)
            with progress:
                task = progress.add_task("eval", total=len(prompts), last="")

                def on_video(i, n, row):
                    mark = "ok" if row["all_correct"] else "miss"
                    progress.update(task, completed=i, last=f"{mark}: {row['prompt']}")

                report = run_shapes_eval(pipe, prompts, seed=seed, steps=steps, on_video=on_video, save_dir=save_videos)
            table = Table(title=f"mav eval shapes: {report.prompts} prompts, {report.seconds_per_video:.1f} s per video")
            table.add_column("attribute")
            table.add_column("correct", justify="right")
            from mavcli.eval.shapes_metrics import ATTRIBUTES

            for k in ATTRIBUTES:
                if k in report.summary["accuracy"]:
                    table.add_row(k, f"{100 * report.summary['accuracy'][k]:.1f}%")
            table.add_row("all four", f"{100 * report.summary['all_correct']:.1f}%")
            for k, v in report.summary["stability"].items():
                table.add_row(f"stability: {k}", f"{v:.3f}")
            console.out.print(table)
            console.result(str(write_report(report, out)))

    app.add_typer(eval_app, name="eval")
