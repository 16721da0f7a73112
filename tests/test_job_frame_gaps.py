"""Issue 14: the job frame's gaps an audit found, closed.

- ``select`` and ``convert`` took no lock: two runs on one output could interleave.
  Now a folder output is held by its own ``OUT/.cryoextract/lock`` and a single output
  file ``x.star`` by a hidden ``.x.star.lock`` beside it (removed afterwards); a run
  that finds either held is refused in one line and writes nothing.
- ``select``, ``convert``, ``report`` and ``simulate`` wrote no summary: now
  ``OUT/summary.json``, for a single output file the sidecar ``x.star.summary.json``
  (an extraction's own ``summary.json`` beside it is left byte for byte), and for the
  report ``OUT/report/summary.json``.
- ``--watch`` refusals started with ``--resume:``.
- ``--resume`` wrote through a symbolic link put in place of ``OUT/Particles`` or
  ``OUT/report``.
- A helical rise cutting a tube into more than a million segments left an empty
  ``OUT/Particles`` behind.

The locks are held here with ``fcntl.flock`` on the documented paths, not through the
code under test; counts are checked against the inputs read with ``starfile``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import starfile

import cryoextract
from cryoextract.sim.simulate import simulate_dataset
from helpers import cli_ok as ok
from helpers import cli_run as run
from helpers import one_line_error
from test_safe_outputs import changes, snapshot

N_PICKS = 6
EXTRACT = ["extract", "--micrographs", "data/micrographs.star", "--coords-dir", "data/Picks",
           "--coords-suffix", "_autopick.star", "--box", "48", "--workers", "1", "--quiet"]
PICKS = "data/Picks/mic_001_autopick.star"



@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``proj/``: a dataset (``data/``) and its extraction (``ext/``, with ``.cs``)."""
    root = tmp_path_factory.mktemp("frame_gaps") / "proj"
    simulate_dataset(root / "data", n_micrographs=1, shape_yx=(256, 256),
                     particles_per_micrograph=N_PICKS, pixel_size_angstrom=2.0, seed=3)
    ok(run(root, *EXTRACT, "--out", "ext", "--write-cs", "--no-report"))
    return root


@contextmanager
def held(lock: Path) -> Iterator[None]:
    """Another run's hold of a job lock: an exclusive ``flock`` on ``lock``."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def summary(path: Path) -> dict:
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["cryoextract_version"] == cryoextract.__version__
    return record


# --------------------------------------------------------------------------- locks
LOCKED = {  # command, its output, the lock another run holds
    "select-file": (["select", "ext", "--where", "rlnCoordinateX > 0", "--out", "ext/sel.star"],
                    "ext/.sel.star.lock"),
    "select-folder": (["select", "ext", "--where", "rlnCoordinateX > 0", "--out", "seldir"],
                      "seldir/.cryoextract/lock"),
    "convert-file": (["convert", PICKS, "--out", "conv/picks.star"], "conv/.picks.star.lock"),
    "convert-folder": (["convert", PICKS, "--to", "box", "--box", "48", "--out", "convdir"],
                       "convdir/.cryoextract/lock"),
}


@pytest.mark.parametrize("case", sorted(LOCKED))
def test_select_and_convert_take_the_output_lock(project: Path, case: str) -> None:
    """Before, a held lock was ignored: both runs wrote the output, the last one won."""
    args, lock = LOCKED[case]
    with held(project / lock):
        before = snapshot(project)
        proc = run(project, *args)
        line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
        assert "in use by another run" in line, line
        assert changes(before, snapshot(project)) == set()
    ok(run(project, *args))  # free: it runs, and lets go of its lock
    assert not (project / lock).exists()
    ok(run(project, *args, "--overwrite"))
    assert not (project / lock).exists()


# --------------------------------------------------------------------------- summaries
def test_select_to_a_file_writes_a_sidecar_summary_and_spares_the_folders(
        project: Path) -> None:
    """A bare summary.json beside ext/sel.star would replace the extraction's own."""
    own = (project / "ext" / "summary.json").read_bytes()
    n_in = len(starfile.read(project / "ext" / "particles.star")["particles"])
    ok(run(project, "select", "ext", "--where", "rlnCoordinateX > 100", "--out",
           "ext/side.star"))
    n_out = len(starfile.read(project / "ext" / "side.star")["particles"])
    assert 0 < n_out < n_in == N_PICKS
    assert (project / "ext" / "summary.json").read_bytes() == own
    record = summary(project / "ext" / "side.star.summary.json")
    assert record["command"] == "select"
    assert record["counts"] == {"particles_in": n_in, "particles_out": n_out}
    assert record["parameters"]["where"] == "rlnCoordinateX > 100"
    assert record["inputs"] == ["ext/particles.star", "ext/particles.cs"]
    assert record["outputs"] == ["ext/side.star", "ext/side.cs"]
    ok(run(project, "select", "ext", "--where", "rlnCoordinateX > 100", "--out", "sel_out"))
    record = summary(project / "sel_out" / "summary.json")
    assert record["counts"] == {"particles_in": n_in, "particles_out": n_out}


def test_convert_writes_its_summary(project: Path) -> None:
    n_picks = len(starfile.read(project / PICKS))
    ok(run(project, "convert", PICKS, "--out", "cv/picks.box", "--box", "48"))
    assert not (project / "cv" / "summary.json").exists()
    record = summary(project / "cv" / "picks.box.summary.json")
    assert record["command"] == "convert" and record["inputs"] == [PICKS]
    assert record["counts"]["picks_in"] == record["counts"]["picks_out"] == n_picks
    assert record["parameters"]["box_px"] == 48 and record["outputs"] == ["cv/picks.box"]
    ok(run(project, "convert", PICKS, "--to", "star", "--out", "cv_each"))
    record = summary(project / "cv_each" / "summary.json")
    assert record["counts"]["files_out"] == 1 and record["counts"]["picks_out"] == n_picks


def test_report_summary_goes_to_its_own_folder(project: Path) -> None:
    own = (project / "ext" / "summary.json").read_bytes()
    ok(run(project, "report", "ext", "--particles", "4", "--worst", "2"))
    assert (project / "ext" / "summary.json").read_bytes() == own
    record = summary(project / "ext" / "report" / "summary.json")
    assert record["command"] == "report"
    assert record["counts"]["particles_in"] == N_PICKS
    assert record["parameters"]["n_random"] == 4 and record["parameters"]["n_worst"] == 2


def test_simulate_writes_its_summary(tmp_path: Path) -> None:
    ok(run(tmp_path, "simulate", "--out", "sim", "--micrographs", "2", "--size", "128",
           "--pixel-size", "4", "--particles", "3", "--seed", "5"))
    record = summary(tmp_path / "sim" / "summary.json")
    picks = sum(len(starfile.read(p)) for p in (tmp_path / "sim" / "Picks").glob("*.star"))
    assert record["command"] == "simulate" and record["inputs"] == []
    assert record["counts"] == {"micrographs_out": 2, "picks_out": picks}
    assert picks == 6 and record["parameters"]["seed"] == 5


# --------------------------------------------------------------------------- extraction
def test_watch_refusals_name_watch(project: Path) -> None:
    """A --watch into a run of other parameters said '--resume: ...'."""
    out = project / "ext_watch"
    ok(run(project, *EXTRACT, "--out", out.name, "--no-report"))
    before = snapshot(project)
    other = [a if a != "48" else "64" for a in EXTRACT]
    proc = run(project, *other, "--out", out.name, "--no-report", "--watch",
               "--watch-timeout", "1", "--settle", "0.1")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert line.startswith("error: --watch: ") and "--resume" not in line, line
    assert changes(before, snapshot(project)) == set()


@pytest.mark.parametrize("folder", ["Particles", "report"])
def test_resume_never_writes_through_a_link(project: Path, folder: str) -> None:
    """--resume wrote its stacks (or report) through a link put in place of the folder,
    to wherever it pointed."""
    out = project / f"ext_link_{folder}"
    ok(run(project, *EXTRACT, "--out", out.name))
    elsewhere = project / f"elsewhere_{folder}"
    shutil.move(out / folder, elsewhere)
    (out / folder).symlink_to(elsewhere.resolve(), target_is_directory=True)
    shutil.rmtree(out / ".cryoextract" / "done")  # the micrograph is to be done again
    before = snapshot(project)
    proc = run(project, *EXTRACT, "--out", out.name, "--resume")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert line.startswith("error: --resume: ") and f"{out / folder} is a symbolic link" \
        in line, line
    assert changes(before, snapshot(project)) == set()


def test_a_rise_of_too_many_segments_leaves_nothing(project: Path) -> None:
    """Every micrograph failed on it (exit 2), and an empty OUT/Particles was left."""
    before = snapshot(project)
    proc = run(project, *EXTRACT, "--helix", "--helical-tubes", "--helical-rise-angstrom",
               "1e-4", "--out", "hx")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "no micrograph could be extracted" in line and PICKS.split("/")[-1] in line, line
    assert "1000000 segments" in line, line
    assert changes(before, snapshot(project)) == set()
    assert not (project / "hx").exists()
