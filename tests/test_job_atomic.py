"""Issue 14: every file every command writes is written under a temporary name and
renamed into place, so no later step (nor a resumed run) ever trusts a half-written file.

Each command of the tree-snapshot test (``test_safe_outputs.COMMANDS``: extract,
restack, downsample, select, report, subtract, ``--revert``, simulate, convert) runs
in this process with ``os.replace`` recording where it renamed to (in worker processes
too: they are forked with the recorder); afterwards every file under the command's
output must be one it renamed into place, none written in place under its own name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_mrc
from cryoextract.cli.app import app
from cryoextract.io.star import read_star, write_star
from cryoextract.sim.simulate import simulate_dataset
from test_safe_outputs import BOX, COMMANDS


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inputs ``COMMANDS`` read: ``data/``, its extraction ``ext/`` (with ``.cs``),
    ``posed.star`` with a map of its box, and its subtraction ``sub/``."""
    root = tmp_path_factory.mktemp("atomic") / "proj"
    simulate_dataset(root / "data", n_micrographs=2, shape_yx=(256, 256),
                     particles_per_micrograph=6, pixel_size_angstrom=2.0,
                     particle_diameter_angstrom=60.0, seed=4)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        _ok(["extract", "--micrographs", "data/micrographs.star", "--coords-dir", "data/Picks",
             "--coords-suffix", "_autopick.star", "--box", str(BOX), "--out", "ext",
             "--workers", "1", "--write-cs", "--quiet"])
        blocks = read_star(root / "ext" / "particles.star")
        n = len(blocks["particles"])
        blocks["particles"] = blocks["particles"].assign(
            rlnAngleRot=np.linspace(0, 90, n), rlnAngleTilt=45.0, rlnAnglePsi=0.0)
        write_star(root / "posed.star", blocks)
        write_mrc(root / "map.mrc", np.random.default_rng(0).normal(size=(BOX,) * 3),
                  apix=2.0)
        _ok(["subtract", "--particles", "posed.star", "--map", "map.mrc", "--out", "sub",
             "--workers", "1"])
    finally:
        os.chdir(cwd)
    return root


def _ok(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{args}\n{result.output}\n{result.exception!r}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_file_a_command_writes_is_renamed_into_place(
        project: Path, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "renamed.txt"
    real_replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        with open(log, "a", encoding="utf-8") as stream:  # append: one line per rename
            stream.write(os.path.abspath(dst) + "\n")

    monkeypatch.setattr(os, "replace", recording_replace)
    monkeypatch.chdir(project)
    args, out = COMMANDS[command]
    _ok(args)
    renamed = set(log.read_text(encoding="utf-8").splitlines()) if log.exists() else set()
    written = {str(p.absolute()) for p in (project / out).rglob("*") if p.is_file()}
    assert written, f"{command} wrote nothing under {out}"
    in_place = sorted(os.path.relpath(p, project) for p in written - renamed)
    assert in_place == [], f"{command} wrote these under their own names"
