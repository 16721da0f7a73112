"""The command line a person reads: help in an 80-column terminal, and usage errors.

Every command's ``--help`` is run as a user would, in a fresh process with ``COLUMNS=80``;
the oracle is the command's own declaration (click's list of option names), not a
stored copy of the help text.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers import cli_env, one_line_error


def _declared() -> dict[str, list[str]]:
    """Every command and the option names it declares (``--box``, ``--no-invert``...)."""
    import typer.main

    from cryoextract.cli.app import app

    group = typer.main.get_command(app)
    return {name: [opt for param in command.params  # type: ignore[attr-defined]
                   for opt in (*param.opts, *getattr(param, "secondary_opts", ()))
                   if opt.startswith("-")]
            for name, command in group.commands.items()}  # type: ignore[attr-defined]


COMMANDS = _declared()


def _cli(args: list[str], columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = cli_env()
    env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "cryoextract", *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("command", [None, *sorted(COMMANDS)])
def test_help_keeps_every_name_whole_at_80_columns(command: str | None) -> None:
    done = _cli(["--help"] if command is None else [command, "--help"])
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "…" not in text, text  # no name, type or word cut short
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for name in COMMANDS.get(command or "", []):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (name, text)


def test_extract_help_in_panels_in_order() -> None:
    text = _cli(["extract", "--help"]).stdout
    titles = re.findall(r"╭─ (.+?) ─", text)
    expected = ["Inputs", "Picks", "Box and binning", "Normalisation", "CTF",
                "Edges and sub-pixel", "Selection", "Outputs", "Execution"]
    assert [t for t in titles if t in expected] == expected, titles

    def panel(title: str) -> str:
        return text.split(f"╭─ {title} ─", 1)[1].split("╰", 1)[0]

    assert "--micrographs" in panel("Inputs") and "--coords-dir" in panel("Inputs")
    assert "--bin-factor" in panel("Box and binning")
    assert "--ctf-correct" in panel("CTF") and "--ctf-dir" in panel("CTF")
    assert "--workers" in panel("Execution") and "--resume" in panel("Execution")
    assert "--min-score" in panel("Selection")
    # no panel holds more than a screenful of options
    assert all(panel(t).count("\n│ ") <= 40 for t in expected)


@pytest.mark.parametrize(("args", "named"), [
    (["extract", "--bogus"], "--bogus"),
    (["extract", "--micrographs", "m.star", "--box"], "--box"),
    (["extract", "--box", "64", "--out", "o"], "--micrographs"),
    (["extract", "--micrographs", "m", "--box", "64", "--out", "o", "--norm", "bogus"],
     "--norm"),
    (["convert", "a.star", "--out", "b.star", "--to"], "--to"),
    (["restack", "--bogus", "1"], "--bogus"),
    (["bogus"], "bogus"),
], ids=["unknown", "no-value", "missing", "bad-choice", "convert-no-value", "restack",
        "command"])
def test_usage_error_is_one_line_naming_the_option(args: list[str], named: str) -> None:
    done = _cli(args)
    line = one_line_error(done.returncode, done.stdout, done.stderr)
    assert line.startswith("error: ") and named in line, line
    assert "╭" not in done.stderr and "Usage:" not in done.stderr, done.stderr
