"""What every command shares: the two consoles and the one-line error exit."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

EXIT_INPUT_ERROR = 2

err = Console(stderr=True)
out = Console()


def fail(message: str) -> None:
    """Print a one-line error naming the file (the message does) and exit with code 2."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT_ERROR)


def warn(message: str) -> None:
    """Print a warning on stderr."""
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
