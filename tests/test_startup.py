"""Showing help and parsing arguments load none of the numerics (the CLI's start-up time).

Each command imports the library it wraps only when it runs, so ``cryoextract --help``,
``cryoextract extract --help`` and a refused command line need typer, rich and the
option declarations only. The oracle is what a fresh interpreter has imported
afterwards, not a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import cli_env

#: never imported to show help or to parse arguments
HEAVY = ("scipy", "pandas", "matplotlib", "numba", "mrcfile", "starfile", "markdown_it",
         "pygments",
         "cryoextract.pipeline.extraction.extract", "cryoextract.pipeline.extraction.task")

_MARK = "@@modules "
# the app as the console script runs it, then what the interpreter has imported
_SCRIPT = f"""
import json, sys
from cryoextract.cli.launch import defer_rich_modules
defer_rich_modules()
from cryoextract.cli.app import app
try:
    app(sys.argv[1:], prog_name="cryoextract")
except SystemExit as done:
    code = done.code
else:
    code = 0
print("\\n{_MARK}" + json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
"""


def _commands() -> list[str]:
    import typer.main

    from cryoextract.cli.app import app

    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def _run(args: list[str]) -> tuple[int, str, str, list[str]]:
    """Exit code, stdout (less the module list), stderr and the modules imported."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT, *args], capture_output=True,
                          text=True, timeout=120, env=cli_env())
    assert done.returncode == 0, done.stderr
    stdout, _, listing = done.stdout.rpartition(_MARK)
    record = json.loads(listing)
    return record["code"], stdout, done.stderr, record["modules"]


def _heavy(modules: list[str]) -> list[str]:
    return [name for name in HEAVY
            if any(m == name or m.startswith(name + ".") for m in modules)]


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help_imports_no_numerics(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    code, stdout, stderr, modules = _run(args)
    assert code == 0, stderr
    assert "Usage:" in stdout and "--help" in stdout, stdout
    assert not _heavy(modules), _heavy(modules)


@pytest.mark.parametrize("args", [
    ["extract", "--box", "64"],  # required options missing
    ["extract", "--micrographs", "m.star", "--box", "64", "--out", "o", "--norm", "bogus"],
    ["subtract", "--out", "o", "--mask-mode", "bogus"],
], ids=["missing", "bad-choice", "subtract-bad-choice"])
def test_refused_arguments_import_no_numerics(args: list[str]) -> None:
    code, _, stderr, modules = _run(args)
    assert code == 2, stderr
    assert not _heavy(modules), _heavy(modules)


def test_help_is_the_same_with_rich_deferred_and_rich_still_works() -> None:
    """The launcher's stand-ins for ``rich.markdown`` and ``rich.traceback`` change no help
    text, and a ``Markdown`` or ``Traceback`` made through them is the real one."""
    script = """
import sys
from cryoextract.cli.launch import defer_rich_modules
if sys.argv[1] == "defer":
    defer_rich_modules()
from typer.testing import CliRunner
from cryoextract.cli.app import app
print(CliRunner().invoke(app, ["extract", "--help"], env={"COLUMNS": "120"}).output)
if sys.argv[1] == "defer":
    import typer.rich_utils
    made = typer.rich_utils.Markdown("*x*")
    import rich.markdown
    assert type(made) is rich.markdown.Markdown, type(made)
    assert sys.modules["rich.markdown"] is rich.markdown and hasattr(rich.markdown, "Heading")
    try:
        1 / 0
    except ZeroDivisionError as exc:  # a pretty traceback through the stand-in class
        shown = typer.rich_utils.Traceback.from_exception(type(exc), exc, exc.__traceback__)
    from rich.traceback import install  # any other name loads the real module too
    import rich.traceback
    assert type(shown) is rich.traceback.Traceback and callable(install)
    assert sys.modules["rich.traceback"] is rich.traceback
"""
    texts = []
    for mode in ("defer", "plain"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                              text=True, timeout=120, env=cli_env())
        assert done.returncode == 0, done.stderr
        texts.append(done.stdout)
    assert texts[0] == texts[1] and "--micrographs" in texts[0]


def test_the_command_prints_python_warnings_on_one_line() -> None:
    script = ("import warnings\nfrom cryoextract.cli.launch import one_line_warnings\n"
              "one_line_warnings()\nwarnings.warn('a value RELION reads differently')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=cli_env())
    assert done.returncode == 0
    assert done.stderr == "warning: a value RELION reads differently\n"


_PRINT_ENV = ("import os, sys\n"
              "from cryoextract.cli.launch import huge_pages_for_malloc\n"
              "print('started', os.getpid())\n"
              "huge_pages_for_malloc(sys.argv[1:])\n"
              "print('tunables', os.environ.get('GLIBC_TUNABLES'))\n")


def _launch(args: list[str], tunables: str | None = None) -> list[str]:
    env = cli_env()
    env.pop("GLIBC_TUNABLES", None)
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, "-c", _PRINT_ENV, *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_command_restarts_once_with_huge_pages_for_malloc() -> None:
    """The launcher replaces the process once (same pid, the script run again) with
    glibc's malloc tunable for transparent huge pages, keeping the user's tunables; not
    for --help, and not again once it is set."""
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as mode:
        huge_pages_on = "[never]" not in mode.read()
    lines = _launch(["extract", "--box", "64"])
    started = [line for line in lines if line.startswith("started")]
    if huge_pages_on:
        assert len(started) == 2 and started[0] == started[1]  # exec: same process
        assert lines[-1] == "tunables glibc.malloc.hugetlb=1"
        kept = _launch(["extract"], tunables="glibc.malloc.check=0")
        assert kept[-1] == "tunables glibc.malloc.check=0:glibc.malloc.hugetlb=1"
    else:
        assert len(started) == 1 and lines[-1] == "tunables None"
    assert _launch(["extract", "--help"])[-1] == "tunables None"
    assert len(_launch(["x"], tunables="glibc.malloc.hugetlb=0")) == 2  # the user's choice
