"""The `mav` command: a Typer app whose command groups live one per module in mavcli.cli.

This is the only layer that imports typer and rich. Results and paths go to stdout,
progress and messages to stderr. Exit codes: 0 done, 1 a failure of the work, 2 bad usage
or input (see mavcli.errors).
"""

from __future__ import annotations

import sys

import typer

from mavcli import __version__
from mavcli.cli import console
from mavcli.errors import MavError

app = typer.Typer(
    name="mav",
    help="Make-A-Video from the command line: text to video, and frame interpolation of real footage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mavcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Make-A-Video from the command line."""


def _register() -> None:
    # Each command module adds its commands to `app`; imported here so `mav --help` lists them.
    import importlib

    for name in ("generate", "interpolate", "download", "info", "bench", "train", "evaluate"):
        try:
            module = importlib.import_module(f"mavcli.cli.{name}")
        except ModuleNotFoundError as err:  # a command group not built yet
            if err.name != f"mavcli.cli.{name}":
                raise
            continue
        module.register(app)


_register()


def main() -> None:
    """Entry point of the `mav` executable: user errors become a message and exit code."""
    try:
        app(standalone_mode=True)
    except MavError as err:  # raised outside a command's own handler
        console.error(str(err))
        sys.exit(err.exit_code)
