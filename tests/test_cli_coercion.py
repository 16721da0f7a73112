"""The CLI's option conversion without pydantic (``cryoextract.cli.coercion``).

The oracle is typer's own conversion (its pydantic adapters): for every option of every
command and many typed values, the fast conversion either gives exactly typer's result
or leaves the value to typer; for the values people type it never has to. A command
line then parses without importing pydantic, and a value it cannot convert still gets
typer's message.
"""

from __future__ import annotations

import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import typer.main
from typer._click import Context
from typer._coercion import build_runtime_param

from cryoextract.cli.app import app
from cryoextract.cli.coercion import _UNSURE, _convert, fast_coercion
from helpers import cli_env

#: leaf type -> (values people type, whose fast conversion must not defer; odd values)
SAMPLES: dict[Any, tuple[list[Any], list[Any]]] = {
    int: (["256", "-3", "+5", "007", "0", 7],
          [" 12", "12.0", "1e3", "abc", "", "1_000", "0x10", "1.5", True]),
    float: (["1.5", "-0.25", "1e-3", "2E5", "1.", ".5", "10", 3, 2.5],
            ["inf", "-inf", "nan", "abc", "", "1_0.5", " 1.5", "1,5", "0x1p3", False]),
    str: (["x", "a b", "_pick.star"], [None]),
    bool: ([True, False], ["true", "no", "1"]),
    Path: (["a/b.mrc", "Micrographs/", "/nonexistent/x.star"], [""]),
}


def _leaf_values(annotation: Any) -> tuple[list[Any], list[Any]]:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(m.value) for m in annotation] + list(annotation), ["bogus", "", " ramp"]
    if annotation is Any:
        return [("1", "2", "3"), "x"], []
    return SAMPLES[annotation]


def _values(annotation: Any) -> tuple[list[Any], list[Any]]:
    """Typical and odd values for an annotation, tuples and lists built from leaves."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is None:
        return _leaf_values(annotation)
    leaves = [_leaf_values(arg) for arg in args]
    if origin is tuple:
        typical = [tuple(values[0][i % len(values[0])] for values in leaves) for i in range(3)]
        odd = [tuple((values[1] or values[0])[0] for values in leaves), tuple(typical[0][:1])]
        return typical, odd
    typical_leaf, odd_leaf = leaves[0]
    return [tuple(typical_leaf[:2]), tuple(typical_leaf[:1])], \
        [(typical_leaf[0], *odd_leaf[:1])] if odd_leaf else []


def _parameters() -> list[tuple[str, Any]]:
    group = typer.main.get_command(app)
    return [(f"{name}:{param.name}", (command, param))
            for name, command in sorted(group.commands.items())  # type: ignore[attr-defined]
            for param in command.params]


@pytest.mark.parametrize(("label", "command_param"), _parameters(),
                         ids=[label for label, _ in _parameters()])
def test_fast_conversion_is_typers_or_defers(label: str, command_param: Any) -> None:
    command, param = command_param
    descriptor = param.type_descriptor
    ctx = Context(command)
    typers = build_runtime_param(descriptor)
    typical, odd = _values(descriptor.annotation)
    assert typical, label
    for value in typical + odd:
        ours = _convert(value, descriptor.annotation, descriptor.parameter_info, ctx)
        if ours is _UNSURE:
            assert value not in typical or _bounded(descriptor, value), (label, value)
            continue
        theirs = typers._coerce_value(value, param=param, ctx=ctx)
        assert type(ours) is type(theirs) and ours == theirs, (label, value, ours, theirs)


def _bounded(descriptor: Any, value: Any) -> bool:
    """An integer typical value outside the option's own min/max (typer words that)."""
    low = descriptor.parameter_info.min
    return low is not None and int(value) < low


def test_every_option_gets_the_fast_conversion() -> None:
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        fast_coercion(command, Context(command))
        slow = [p.name for p in command.params if type(p._runtime_param).__name__
                != "FastRuntimeParam"]
        assert not slow, (name, slow)


_PARSE = """
import sys
from cryoextract.cli.launch import defer_rich_modules
defer_rich_modules()
from cryoextract.cli.app import app
import cryoextract.cli.extract as extract
seen = {}
def record(**options):
    seen.update(options)
    raise SystemExit(0)
import typer.main
group = typer.main.get_command(app)
group.commands["extract"].callback = record
try:
    group.main(sys.argv[1:], prog_name="cryoextract")
except SystemExit as done:
    code = done.code
print(code, "pydantic" in sys.modules, repr(seen.get("box")), repr(seen.get("norm")),
      repr(seen.get("coords_dir")), repr(seen.get("bg_radius")))
"""


def test_a_command_line_parses_without_pydantic_and_bad_values_keep_typers_message(
        tmp_path: Path) -> None:
    args = ["extract", "--micrographs", "m.star", "--coords-dir", "Picks", "--box", "256",
            "--norm", "mean", "--bg-radius", "40.5", "--out", str(tmp_path / "o")]
    done = subprocess.run([sys.executable, "-c", _PARSE, *args], capture_output=True,
                          text=True, timeout=120, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False", "256", "<NormMode.MEAN:", "'mean'>",
                                   "PosixPath('Picks')", "40.5"], done.stdout
    bad = subprocess.run([sys.executable, "-m", "cryoextract", *args[:6], "12.5x",
                          *args[7:]], capture_output=True, text=True, timeout=120,
                         env=cli_env())
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "--box" in lines[0] and "valid integer" in lines[0], bad.stderr
