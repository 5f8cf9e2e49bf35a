"""`mav download weights`: fetch model packs from the Hub into the Hugging Face cache (or a folder).

Progress bars go to stderr, the folder of each pack to stdout (one line per pack), so
`PACK=$(mav download weights shapes)` works in scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mavcli.cli import console
from mavcli.errors import PackError, UserInputError
from mavcli.weights.hub import download_pack, download_repo
from mavcli.weights.manifest import load_manifest
from mavcli.weights.resolve import bundled_pack_dir


class RichDownloadProgress:
    """The `DownloadProgress` of mavcli.weights.hub as one rich bar per file (bytes, speed, ETA).

    Used as a context manager; the bars appear on stderr with the first transfer, so a pack
    served from the cache prints no empty progress block.
    """

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def _bar(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),  # file names are not markup
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console.err,
                disable=console.quiet,
            )
            self._progress.start()
        return self._progress

    def __enter__(self) -> RichDownloadProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def file_started(self, path: str, total: int | None, initial: int) -> None:
        # A re-fetch of the same file (hash mismatch) gets a fresh bar.
        self._tasks[path] = self._bar().add_task(path, total=total, completed=initial)

    def file_advanced(self, path: str, nbytes: int) -> None:
        task = self._tasks.get(path)
        if task is not None:
            self._bar().advance(task, nbytes)

    def file_finished(self, path: str) -> None:
        task = self._tasks.get(path)
        if task is not None:
            self._bar().stop_task(task)

    def note(self, message: str) -> None:
        if not console.quiet:
            console.warn(message)


def weights(
    packs: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Pack names from weights.toml (default: its default pack).",
            metavar="PACK",
            show_default=False,
        ),
    ] = None,
    manifest: Annotated[
        Optional[Path],
        typer.Option("--manifest", help="Read this weights.toml instead of mavcli's own.", dir_okay=False),
    ] = None,
    repo: Annotated[
        Optional[str],
        typer.Option("--repo", help="Fetch any pack-layout Hub repository (owner/name) instead."),
    ] = None,
    revision: Annotated[
        Optional[str],
        typer.Option("--revision", help="Branch, tag or commit of --repo (default: main)."),
    ] = None,
    dir: Annotated[
        Optional[Path],
        typer.Option(
            "--dir",
            help="Put the files in this plain folder instead of the Hugging Face cache "
            "(with several packs: one sub-folder per pack).",
            file_okay=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")] = False,
) -> None:
    """Download model packs and verify every file's sha256; print where each pack is.

    Files go to the Hugging Face cache (HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE apply).

    A pack already downloaded is only re-verified, with no request to the Hub.
    """
    console.set_quiet(quiet)
    if quiet:
        _quiet_hub_logging()
    with console.user_errors():
        if revision is not None and repo is None:
            raise UserInputError("--revision needs --repo")
        if repo is not None:
            if packs:
                raise UserInputError("give pack names or --repo, not both")
            _download_adhoc(repo, revision, dir)
            return

        man = load_manifest(manifest)
        names = list(packs or [])
        if not names:
            if man.default is None:
                raise UserInputError(
                    "weights.toml sets no default pack: name one "
                    f"({', '.join(man.names()) or 'it lists none'})"
                )
            names = [man.default]
        unknown = [name for name in names if name not in man.packs]
        if unknown:
            raise UserInputError(
                f"unknown pack(s) {', '.join(unknown)}; known packs: "
                f"{', '.join(man.names()) or 'none'}"
            )

        for name in dict.fromkeys(names):  # each pack once, in the order given
            entry = man.packs[name]
            bundled = bundled_pack_dir(entry)
            if bundled is not None:
                note = " (--dir is not used)" if dir is not None else ""
                console.info(f"{name} is bundled with mavcli; no download needed{note}")
                console.result(str(bundled))
                continue
            if not entry.downloadable:
                raise PackError(
                    f"pack {name!r} should ship inside mavcli but is not installed, and it has no "
                    "Hub repo to download from; reinstall mavcli"
                )
            target = None if dir is None else (dir if len(names) == 1 else dir / name)
            announce_pack(name, entry)
            with RichDownloadProgress() as progress:
                path = download_pack(
                    entry,
                    local_dir=target,
                    progress=progress,
                    fetch_command=man.fetch_command(name),
                )
            by_hub = sum(f.sha256 is None for f in entry.files)
            how = (f" ({by_hub} against the hashes the Hub reports at {entry.revision_label}, recorded for later loads)"
                   if by_hub else "")
            console.info(f"{name}: {len(entry.files)} files, sha256 verified{how}")
            console.result(str(path))


def announce_pack(name: str, entry) -> None:
    """Before a pack's first download: its licence, and a warning when its revision is a ref."""
    if entry.licence:
        console.info(f"{name}: licence {entry.licence} (the model card: https://huggingface.co/{entry.repo})")
    if not entry.pinned:
        console.warn(f"{name}: {entry.revision} is not pinned to a commit ({entry.unpinned}); the files "
                     "are verified against the hashes the Hub reports for it now")


def _quiet_hub_logging() -> None:
    """--quiet: keep huggingface_hub's own retry warnings off stderr too (errors still show)."""
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()


def _download_adhoc(repo: str, revision: str | None, dir: Path | None) -> None:
    if revision is None:
        console.warn(f"no --revision given: fetching {repo} at branch 'main', which is not pinned")
    with RichDownloadProgress() as progress:
        path = download_repo(repo, revision or "main", local_dir=dir, progress=progress)
    console.info(
        "sha256 hashes are not pinned for a repository outside weights.toml: sizes and the "
        "safetensors layout were checked"
    )
    console.result(str(path))


def register(app: typer.Typer) -> None:
    """Add the `download` command group to the `mav` app."""
    group = typer.Typer(
        name="download",
        help="Download model packs from the Hugging Face Hub.",
        no_args_is_help=True,
    )
    group.command("weights")(weights)
    app.add_typer(group, name="download")
