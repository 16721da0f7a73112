"""The layers import only downward (docs/conventions.md, "Layers").

``io/`` reads and writes, ``ops/`` computes, ``pipeline/`` runs the jobs on both, ``cli/``
parses the command line. The oracle is the source itself: every ``import`` and
``from ... import`` statement of every module, at any depth (imports inside functions
included), parsed with :mod:`ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cryoextract"

#: the one arrow from io/ into ops/: cryoSPARC's axis-angle poses <-> RELION Euler angles
ALLOWED_IO_TO_OPS = {("io/cryosparc", "cryoextract.ops.rotations")}


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules the file at ``path`` imports."""
    package = ["cryoextract", *path.relative_to(SRC).parent.parts]
    return _imported_names(path.read_text(encoding="utf-8"), package)


def _imported_names(source: str, package: list[str]) -> list[str]:
    """Every import in ``source`` (a module of ``package``) as absolute names:
    ``from a.b import c`` gives ``a.b`` and ``a.b.c`` (``c`` may be a module); relative
    imports resolved."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _modules(layer: str) -> list[Path]:
    paths = sorted((SRC / layer).rglob("*.py"))
    assert paths, f"no modules under {layer}/"
    return paths


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(SRC)} imports {name}" for path in _modules(layer)
            for name in _imports(path)
            if any(_within(name, f"cryoextract.{other}") for other in forbidden)]


def test_io_imports_nothing_above_it() -> None:
    """io/ reads and writes: no jobs, command line, report or simulator."""
    assert not (SRC / "io" / "pickformats" / "conversion.py").exists()  # convert is a job
    assert _violations("io", ("pipeline", "cli", "report", "sim")) == []


def test_io_uses_ops_only_for_cs_poses() -> None:
    """Of ops/, io/ imports the rotations only, and only in io/cryosparc (the poses)."""
    found = set()
    for path in _modules("io"):
        where = path.relative_to(SRC).with_suffix("").as_posix()
        for name in _imports(path):
            if not _within(name, "cryoextract.ops"):
                continue
            if name == "cryoextract.ops":  # ``from cryoextract import ops``
                pytest.fail(f"{where} imports the whole of cryoextract.ops")
            module = ".".join(name.split(".")[:3])
            arrow = next((a for a in ALLOWED_IO_TO_OPS
                          if _within(where.replace("/", "."), a[0].replace("/", "."))
                          and module == a[1]), None)
            assert arrow is not None, f"{where} imports {name}: only {ALLOWED_IO_TO_OPS}"
            found.add(arrow)
    # the allowed arrow is the one documented; when it goes, the documentation goes too
    assert found == ALLOWED_IO_TO_OPS


def test_ops_imports_no_other_layer() -> None:
    """ops/ holds pure array functions: no readers, jobs, command line, report."""
    assert _violations("ops", ("io", "pipeline", "cli", "report", "sim")) == []


def test_pipeline_does_not_import_the_cli() -> None:
    assert _violations("pipeline", ("cli",)) == []


def test_the_checker_sees_every_kind_of_import() -> None:
    """Plain, ``from``, lazy (inside a function), ``from package import module`` and
    relative imports are all seen, so the tests above passing means something."""
    source = ("import cryoextract.cli.app\n"
              "from cryoextract import pipeline\n"
              "from ..report import write_report\n"
              "def later():\n"
              "    from cryoextract.ops.ctf import ctf_2d\n")
    names = set(_imported_names(source, ["cryoextract", "io", "pickformats"]))
    assert {"cryoextract.cli.app", "cryoextract.pipeline", "cryoextract.io.report",
            "cryoextract.ops.ctf"} <= names
    names = set(_imported_names("from ..report import x\n", ["cryoextract", "io"]))
    assert "cryoextract.report" in names
