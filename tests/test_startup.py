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
         "cryoextract.pipeline.extraction.extract", "cryoextract.pipeline.extraction.task")

_MARK = "@@modules "
# the app as the console script runs it, then what the interpreter has imported
_SCRIPT = f"""
import json, sys
from cryoextract.cli.launch import defer_rich_markdown
defer_rich_markdown()
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


def test_help_is_the_same_with_markdown_deferred_and_markdown_still_works() -> None:
    """The launcher's stand-in for ``rich.markdown`` changes no help text, and a
    ``Markdown`` made through it is the real one."""
    script = """
import sys
from cryoextract.cli.launch import defer_rich_markdown
if sys.argv[1] == "defer":
    defer_rich_markdown()
from typer.testing import CliRunner
from cryoextract.cli.app import app
print(CliRunner().invoke(app, ["extract", "--help"], env={"COLUMNS": "120"}).output)
if sys.argv[1] == "defer":
    import typer.rich_utils
    made = typer.rich_utils.Markdown("*x*")
    import rich.markdown
    assert type(made) is rich.markdown.Markdown, type(made)
    assert sys.modules["rich.markdown"] is rich.markdown and hasattr(rich.markdown, "Heading")
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
