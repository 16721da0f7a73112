"""What every command shares: the two consoles and the one-line error exit."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cryoextract.options import PathStyle

EXIT_INPUT_ERROR = 2

#: ``--paths`` (shown as STYLE: the choices, named in the help, would crowd the names out)
PATHS_HELP = ("How the written STAR names files: relative-to-cwd (RELION's way, for a RELION "
              "project: relative to the directory the command runs in) or relative-to-star "
              "(to the STAR's own folder, for output folders that move).")

#: ``--paths``, the same for every command that writes a STAR
PathsOption = Annotated[PathStyle, typer.Option("--paths", metavar="STYLE", help=PATHS_HELP)]

err = Console(stderr=True)
out = Console()


def fail(message: str) -> None:
    """Print a one-line error naming the file (the message does) and exit with code 2."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT_ERROR)


def warn(message: str) -> None:
    """Print a warning on stderr."""
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
