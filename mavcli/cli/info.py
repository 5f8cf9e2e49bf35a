"""`mav info` and `mav packs`: what is installed, which device was found, which packs are where."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from mavcli import __version__
from mavcli.cli import console
from mavcli.weights.manifest import load_manifest
from mavcli.weights.resolve import list_packs

_ManifestOption = Annotated[
    Optional[Path],
    typer.Option("--manifest", help="Read this weights.toml instead of mavcli's own.", dir_okay=False),
]


def _torch_and_device() -> tuple[str, str]:
    """(torch version, best device) without failing when torch or a driver is missing."""
    try:
        import torch
    except Exception as err:  # a broken install should not break `mav info`
        return f"not importable ({err.__class__.__name__})", "cpu"
    version = torch.__version__
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        device = f"cuda ({name}{f', {count} devices' if count > 1 else ''})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    return version, device


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _packs_table(manifest: Path | None) -> Table:
    man = load_manifest(manifest)
    # Text(), not str: a description or path with [brackets] must not be read as rich markup.
    table = Table(title=Text(f"packs ({man.path})"), title_justify="left")
    for column in ("pack", "state", "location", "size", "stages", "licence", "description"):
        table.add_column(column, overflow="fold")
    for row in list_packs(man):
        name = f"{row.name} (default)" if row.is_default else row.name
        size = ""
        if row.kind == "downloadable":
            size = _human(row.size) if row.size_known else f"over {_human(row.size)}" if row.size else "not published"
        cells = (name, row.kind, row.location, size, row.stages, row.licence or "", row.description)
        table.add_row(*(Text(cell) for cell in cells))
    if not man.packs:
        table.add_row("-", "", "weights.toml lists no packs", "", "", "", "")
    return table


def info(manifest: _ManifestOption = None) -> None:
    """Show the installed version, the device found, and where each pack is."""
    from huggingface_hub import constants

    with console.user_errors():
        table = _packs_table(manifest)
        torch_version, device = _torch_and_device()
        lines = [
            f"mavcli       {__version__}",
            f"python       {platform.python_version()}",
            f"torch        {torch_version}",
            f"device       {device}",
            f"hub cache    {constants.HF_HUB_CACHE}"
            + ("  (offline: HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else ""),
        ]
        for line in lines:
            console.result(line)
        console.out.print(table)


def packs(manifest: _ManifestOption = None) -> None:
    """List the packs of weights.toml: bundled, cached locally, or downloadable."""
    with console.user_errors():
        console.out.print(_packs_table(manifest))


def register(app: typer.Typer) -> None:
    """Add `mav info` and `mav packs` to the app."""
    app.command("info")(info)
    app.command("packs")(packs)
