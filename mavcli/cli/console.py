"""Shared rich consoles: stdout for results, stderr for progress and messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from mavcli.errors import MavError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)
quiet = False


def set_quiet(value: bool) -> None:
    global quiet
    quiet = value


def info(message: str) -> None:
    if not quiet:
        err.print(escape(message))


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")


def result(message: str) -> None:
    """A result (a path, a table) on stdout: always printed, even with --quiet."""
    out.print(message, markup=False)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a MavError raised in a command into a message and its exit code (no traceback)."""
    try:
        yield
    except MavError as e:
        error(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        error("interrupted; nothing was written.")
        raise typer.Exit(130) from None
    except Exception as e:  # a full disk anywhere else (writing a pack, a report): said, not a traceback
        from mavcli.runtime import is_disk_full

        if not is_disk_full(e):
            raise
        error(f"a disk filled up: {e}. Free some space, or write to another disk, and run the command again")
        raise typer.Exit(1) from None
