"""What every command shares: the two consoles, the one-line error exit, and the app's
command group, which reports usage errors in the same one line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from cryoextract.errors import os_error_message
from cryoextract.io.pickformats.registry import describe, readable
from cryoextract.options import PathStyle

EXIT_INPUT_ERROR = 2

#: ``--paths`` (shown as STYLE: the choices, named in the help, would crowd the names out)
PATHS_HELP = ("How the written STAR names files: relative-to-cwd (RELION's way, for a RELION "
              "project: relative to the directory the command runs in) or relative-to-star "
              "(to the STAR's own folder, for output folders that move).")

#: ``--paths``, the same for every command that writes a STAR
PathsOption = Annotated[PathStyle, typer.Option("--paths", metavar="STYLE", help=PATHS_HELP)]

#: ``--coords-format``, for every command that reads picks (io/pickformats/registry.py)
COORDS_FORMAT_HELP = ("Pick format: auto (by extension, checked against the content) or "
                      + describe(readable()) + ".")

err = Console(stderr=True)
out = Console()


def fail(message: str) -> None:
    """Print a one-line error naming the file (the message does) and exit with code 2."""
    print_error(message)
    raise typer.Exit(EXIT_INPUT_ERROR)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, on one line (control characters of a file name in
    it, a newline say, shown escaped)."""
    err.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False,
              soft_wrap=True)


def one_line(message: str) -> str:
    """``message`` with its control characters escaped (``\\n``), so it prints on one line."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def warn(message: str) -> None:
    """Print a warning on stderr."""
    err.print(f"[yellow]warning:[/] {escape(one_line(message))}", highlight=False,
              soft_wrap=True)


class OneLineErrors(TyperGroup):
    """The app's command group. A usage error (an unknown option, a missing value, a
    choice not offered) is one line naming the option, ``error: cryoextract extract: No
    such option: --bogus ...``, exit code 2, like every other error; not typer's framed
    box under the usage. An ``OSError`` a command lets through (an output folder that
    cannot be created, a full disk, a file where a folder should be) is the same one
    line, naming the file, exit code 2: never a traceback."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """The command to run, its plain options converted without pydantic
        (:mod:`cryoextract.cli.coercion`)."""
        from cryoextract.cli.coercion import fast_coercion

        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            fast_coercion(command, ctx)
        return name, command, rest

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:  # the caller handles errors (cryoextract-relion does)
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        except OSError as exc:  # a write or read no command caught: one line naming the file
            print_error(os_error_message(exc))
            sys.exit(EXIT_INPUT_ERROR)
        except typer.TyperException as exc:
            # no arguments at all: typer has printed the help already
            if type(exc).__name__ != "NoArgsIsHelpError":
                ctx = getattr(exc, "ctx", None)
                where = f"{ctx.command_path}: " if ctx is not None else ""
                print_error(where + " ".join(exc.format_message().split()))
            sys.exit(EXIT_INPUT_ERROR)
        sys.exit(code if isinstance(code, int) else 0)
