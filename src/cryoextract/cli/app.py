"""The ``cryoextract`` command: thin wrappers over the library."""

from __future__ import annotations

import atexit
import os
import sys
import threading

import typer

from cryoextract.cli.common import OneLineErrors, err

# Showing help and parsing arguments import this module and the command modules only:
# each command imports the library it wraps when it runs (tests/test_startup.py).
app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Particle extraction and particle-stack preparation for cryo-EM.",
                  # the root's --help, when absent, is then False instead of None, which
                  # typer would coerce with pydantic (80 ms) before even `extract --help`
                  context_settings={"default_map": {"help": False}})



@app.callback()
def _root() -> None:
    """Particle extraction and particle-stack preparation for cryo-EM."""




def _register_commands() -> None:
    from cryoextract.cli.convert import convert_command
    from cryoextract.cli.extract import ExtractCommand, extract_command
    from cryoextract.cli.qc import report_command, select_command
    from cryoextract.cli.stacks import downsample_command, restack_command
    from cryoextract.cli.subtract import subtract_command
    from cryoextract.cli.tools import boxsize_command, simulate_command

    app.command("extract", cls=ExtractCommand)(extract_command)
    app.command("boxsize")(boxsize_command)
    app.command("simulate")(simulate_command)
    app.command("convert")(convert_command)
    app.command("select")(select_command)
    app.command("report")(report_command)
    app.command("subtract")(subtract_command)
    app.command("restack")(restack_command)
    app.command("downsample")(downsample_command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    from cryoextract.pipeline.allocator import keep_freed_memory

    keep_freed_memory()
    _build_only_the_command_run(sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except SystemExit as done:
        _exit_without_teardown(done.code)


def _build_only_the_command_run(args: list[str]) -> None:
    """Typer builds every registered command's click command (their signatures and
    annotations: 15-20 ms for all) before it parses anything: when the first argument
    names a command, only that one is kept (this process runs nothing else)."""
    if args and not args[0].startswith("-"):
        chosen = [info for info in app.registered_commands if info.name == args[0]]
        if chosen:
            app.registered_commands = chosen


def _exit_without_teardown(code: object) -> None:
    """End the process once a command has finished and every output is closed.

    The interpreter's teardown after numba, scipy and pandas are loaded takes 0.3-0.5 s,
    all of it freeing memory that the system takes back anyway. The atexit handlers still
    run (multiprocessing's among them); then the process leaves without the teardown.
    While another non-daemon thread runs, the interpreter's own exit winds it down.
    """
    others = [thread for thread in threading.enumerate()
              if thread is not threading.main_thread() and not thread.daemon]
    if others:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 1
    os._exit(status)
