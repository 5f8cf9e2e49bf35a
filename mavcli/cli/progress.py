"""Rich progress for the cascade: one bar per stage with its step count and time left."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mavcli.cli import console

STAGE_NAMES = {
    "prior": "prior P",
    "keyframes": "keyframes D^t",
    "interpolation": "interpolation F_i",
    "sr_video": "video SR_l^t",
    "sr_image": "frame SR_h",
    "vae_decode": "VAE decode",
    "upscale": "upscale SR_l^t",
}


class CascadeProgress:
    """A context manager whose `callback(stage, step, total)` drives one bar per stage."""

    def __init__(self, label: str = "", *, disable: bool = False) -> None:
        self.label = label
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console.err, disable=disable, transient=False,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> CascadeProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def callback(self, stage: str, step: int, total: int) -> None:
        task = self.tasks.get(stage)
        if task is None:
            name = STAGE_NAMES.get(stage, stage)
            task = self.tasks[stage] = self.progress.add_task(f"{self.label}{name}", total=total)
        self.progress.update(task, completed=step, total=total)
