"""Nothing lost, nothing overwritten, nothing outside the output (issue 14).

Each command runs from a project folder holding the inputs, a sentinel folder beside
the output and the user's own files; the whole tree is snapshot (paths, sizes, mtimes,
SHA-256) before and after. Only what lies under the output the command was told to
write may appear or change; every input stays as it was. Then the cases that broke it:
micrograph names with ``..`` that clash, a report column named with ``/../``, ``select``
writing over a ``.cs`` (its own input too), ``simulate`` into a dataset, a micrograph
listed under several names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_mrc
from cryoextract.io.names import safe_component, unique_components
from cryoextract.io.star import read_star, write_star
from cryoextract.pipeline.extraction.plan import unique_stack_names
from cryoextract.sim.simulate import simulate_dataset
from helpers import cli_ok as ok
from helpers import cli_run as run
from helpers import one_line_error

BOX = 48
SENTINEL = b"the user's own file\n"

Snapshot = dict[str, tuple]


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root``: files by size, mtime and hash; links by target."""
    entries: Snapshot = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[key] = ("dir",)
            else:
                stat = path.stat()
                entries[key] = ("file", stat.st_size, stat.st_mtime_ns,
                                hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def changes(before: Snapshot, after: Snapshot) -> set[str]:
    """Paths added, removed or changed (folders: only added or removed)."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def outside(changed: set[str], *outputs: str) -> list[str]:
    """The changed paths that lie under none of ``outputs`` (relative paths)."""
    def under(path: str, out: str) -> bool:
        return path == out or path.startswith(out.rstrip("/") + "/")
    return sorted(p for p in changed if not any(under(p, o) for o in outputs))


def subtract_extracted(root: Path) -> None:
    """``subtract`` into ``root/sub`` of the particles of ``root/ext`` given poses
    (``posed.star``), with a random map of their box (``map.mrc``)."""
    blocks = read_star(root / "ext" / "particles.star")
    n = len(blocks["particles"])
    blocks["particles"] = blocks["particles"].assign(
        rlnAngleRot=np.linspace(0, 90, n), rlnAngleTilt=45.0, rlnAnglePsi=0.0)
    write_star(root / "posed.star", blocks)
    write_mrc(root / "map.mrc", np.random.default_rng(0).normal(size=(BOX,) * 3), apix=2.0)
    ok(run(root, "subtract", "--particles", "posed.star", "--map", "map.mrc", "--out", "sub",
           "--workers", "1"))



@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``proj/``: a simulated dataset in ``data/``, an extraction in ``ext/`` (with
    ``particles.cs`` and the report), a sentinel folder and a user's file beside them;
    the extracted particles with poses (``posed.star``), a map of their box and their
    subtraction (``sub/``)."""
    root = tmp_path_factory.mktemp("safe") / "proj"
    simulate_dataset(root / "data", n_micrographs=2, shape_yx=(256, 256),
                     particles_per_micrograph=6, pixel_size_angstrom=2.0,
                     particle_diameter_angstrom=60.0, seed=4)
    (root / "sentinel").mkdir()
    (root / "sentinel" / "keep.txt").write_bytes(SENTINEL)
    (root / "mic.mrcs").write_bytes(SENTINEL)
    ok(run(root, "extract", "--micrographs", "data/micrographs.star", "--coords-dir",
           "data/Picks", "--coords-suffix", "_autopick.star", "--box", str(BOX), "--out",
           "ext", "--workers", "1", "--write-cs", "--quiet"))
    subtract_extracted(root)
    return root


COMMANDS = {
    "extract": (["extract", "--micrographs", "data/micrographs.star", "--coords-dir",
                 "data/Picks", "--coords-suffix", "_autopick.star", "--box", str(BOX),
                 "--bin-to", "32", "--out", "out_extract", "--workers", "1", "--quiet"],
                "out_extract"),
    "restack": (["restack", "--particles", "ext/particles.star", "--out", "out_restack",
                 "--batch-size", "4"], "out_restack"),
    "downsample": (["downsample", "--particles", "ext/particles.star", "--box", "32",
                    "--out", "out_downsample", "--workers", "1"], "out_downsample"),
    "select": (["select", "ext", "--where", "rlnCoordinateX > 0", "--out", "out_select"],
               "out_select"),
    "report": (["report", "ext"], "ext/report"),
    "subtract": (["subtract", "--particles", "posed.star", "--map", "map.mrc", "--out",
                  "out_subtract", "--workers", "1"], "out_subtract"),
    "revert": (["subtract", "--revert", "sub/particles.star", "--out", "out_revert"],
               "out_revert"),
    "simulate": (["simulate", "--out", "out_simulate", "--micrographs", "1", "--size",
                  "256", "--particles", "4"], "out_simulate"),
    "convert": (["convert", "data/Picks/mic_001_autopick.star",
                 "data/Picks/mic_002_autopick.star", "--to", "box", "--box", str(BOX),
                 "--out", "out_convert"], "out_convert"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_writes_only_under_its_output(project: Path, command: str) -> None:
    args, out = COMMANDS[command]
    before = snapshot(project)
    ok(run(project, *args))
    after = snapshot(project)
    changed = changes(before, after)
    assert outside(changed, out) == [], f"{command} wrote outside {out}"
    assert any(p.startswith(out) for p in changed), f"{command} wrote nothing in {out}"


# --------------------------------------------------------------------------- names


def test_safe_components_never_leave_their_folder() -> None:
    for text in ["../../etc/passwd", "..", ".", "", "-rf", ".hidden", "a\nb", "a\\..\\b",
                 "x/../../y", "a b:c#d@e\"f'g", "\x00\x1f\u2028", "µ-graph", "a" * 400]:
        name = safe_component(text)
        assert name and "/" not in name and "\\" not in name and ".." not in name
        assert not name.startswith((".", "-")) and name.isprintable()
        assert len(name.encode()) <= 200
        assert Path("/out", name).parent == Path("/out")
    assert safe_component("mic_001") == "mic_001"
    names = unique_components(["mic", "mic", "Mic", "x"], ["a/mic.mrc", "b/mic.mrc", "Mic",
                                                           "x.mrc"])
    assert len({n.casefold() for n in names}) == 4 and names[3] == "x"
    assert names == unique_components(["mic", "mic", "Mic", "x"],
                                      ["a/mic.mrc", "b/mic.mrc", "Mic", "x.mrc"])


def test_stack_names_are_flat_unique_and_the_same_on_every_run() -> None:
    names = ["a/../mic.mrc", "b/../../mic.mrc", "Micrographs/mic_001.mrc", "c/MIC.mrc"]
    stacks = unique_stack_names(names)
    assert stacks == unique_stack_names(names)
    assert stacks[2] == "mic_001"
    assert len({s.casefold() for s in stacks}) == 4
    assert all("/" not in s and ".." not in s for s in stacks)


def test_clashing_micrograph_names_with_dots_stay_in_out(tmp_path: Path) -> None:
    """``a/../mic.mrc`` and ``b/../../mic.mrc`` (two files called mic.mrc) once gave
    ``Particles/../../mic.mrcs``, which replaced the user's ``mic.mrcs`` beside OUT."""
    proj = tmp_path / "proj"
    data = simulate_dataset(proj / "data", n_micrographs=2, shape_yx=(256, 256),
                            particles_per_micrograph=5, pixel_size_angstrom=2.0,
                            particle_diameter_angstrom=60.0, seed=2)
    shutil.copy(data.micrograph_paths[0], proj / "mic.mrc")
    shutil.copy(data.micrograph_paths[1], tmp_path / "mic.mrc")
    for folder in ("a", "b", "Picks"):
        (proj / folder).mkdir()
    for i, pick in enumerate(data.pick_paths):
        shutil.copy(pick, proj / "Picks" / ("mic_autopick.star" if i == 0 else "x.star"))
    (proj / "mic.mrcs").write_bytes(SENTINEL)  # beside OUT's Particles/../..
    star = read_star(data.micrographs_star)
    star["micrographs"]["rlnMicrographName"] = ["a/../mic.mrc", "b/../../mic.mrc"]
    write_star(proj / "mics.star", star)
    before = snapshot(tmp_path)
    ok(run(proj, "extract", "--micrographs", "mics.star", "--coords-dir", "Picks",
           "--coords-suffix", "_autopick.star", "--box", str(BOX), "--out", "out",
           "--workers", "1", "--quiet", "--no-report"))
    assert outside(changes(before, snapshot(tmp_path)), "proj/out") == []
    assert (proj / "mic.mrcs").read_bytes() == SENTINEL
    stacks = sorted(p.name for p in (proj / "out/Particles").iterdir())
    assert len(stacks) == 2 and all(s.startswith("mic_") for s in stacks)
    # the same names again on a resumed run
    ok(run(proj, "extract", "--micrographs", "mics.star", "--coords-dir", "Picks",
           "--coords-suffix", "_autopick.star", "--box", str(BOX), "--out", "out",
           "--workers", "1", "--quiet", "--no-report", "--resume"))
    assert sorted(p.name for p in (proj / "out/Particles").iterdir()) == stacks


def test_a_micrograph_listed_under_several_names_is_extracted_once(project: Path,
                                                                   tmp_path: Path) -> None:
    star = read_star(project / "data/micrographs.star")
    mics = star["micrographs"]
    first = str(mics["rlnMicrographName"].iloc[0])
    extra = mics.iloc[[0, 0]].copy()
    extra["rlnMicrographName"] = [f"./{first}", first.replace("/", "//")]
    star["micrographs"] = pd.concat([mics, extra], ignore_index=True)
    write_star(project / "data/twice.star", star)
    try:
        ok(run(project, "extract", "--micrographs", "data/twice.star", "--coords-dir",
               "data/Picks", "--coords-suffix", "_autopick.star", "--box", str(BOX),
               "--out", str(tmp_path / "out"), "--workers", "1", "--quiet", "--no-report"))
    finally:
        (project / "data/twice.star").unlink()
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    skipped = summary["micrographs_skipped"]
    assert set(skipped) == {f"./{first}", first.replace("/", "//")}
    assert all(first in reason for reason in skipped.values())
    assert any(first in w and "./" in w for w in summary["warnings"]), summary["warnings"]
    particles = read_star(tmp_path / "out/particles.star")["particles"]
    assert sorted(set(particles["rlnMicrographName"])) == sorted(mics["rlnMicrographName"])
    reference = read_star(project / "ext/particles.star")["particles"]
    assert len(particles) == len(reference)
    assert len(list((tmp_path / "out/Particles").iterdir())) == 2


@pytest.mark.parametrize("where", ["micrograph", "out"])
def test_names_no_star_can_hold_are_refused_before_anything_is_written(
        project: Path, tmp_path: Path, where: str) -> None:
    """A micrograph file (or output folder) named with a newline: its name would go into
    ``rlnMicrographName`` (``rlnImageName``); refused before the job writes anything."""
    source = project / "data" / "Micrographs" / "mic_001.mrc"
    name = "odd\nname.mrc" if where == "micrograph" else "mic.mrc"
    shutil.copy(source, tmp_path / name)
    shutil.copy(project / "data/Picks/mic_001_autopick.star", tmp_path / "picks.star")
    out = "out\nnew" if where == "out" else "out"
    before = snapshot(tmp_path)
    proc = run(tmp_path, "extract", "--micrographs", "*.mrc", "--pixel-size", "2.0",
               "--coords", "picks.star", "--box", str(BOX), "--out", out, "--workers", "1",
               "--quiet")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "control character" in line and "\\n" in line
    assert changes(before, snapshot(tmp_path)) == set()


# --------------------------------------------------------------------------- report


def test_a_report_column_named_with_dots_stays_in_the_report(project: Path) -> None:
    """A descriptor column ``ce/../../../sentinel/evil`` once named its gallery
    ``report/gallery_worst_ce/../../../sentinel/evil.png``."""
    evil = project / "evil"
    shutil.copytree(project / "ext", evil)
    try:
        star = read_star(evil / "particles.star")
        particles = star["particles"]
        particles["ce/../../../sentinel/evil"] = np.arange(len(particles), dtype=float)
        write_star(evil / "particles.star", star)
        shutil.rmtree(evil / "report", ignore_errors=True)
        (evil / "report" / "gallery_worst_ce").mkdir(parents=True)  # any leftover folder
        before = snapshot(project)
        ok(run(project, "report", "evil"))
        changed = changes(before, snapshot(project))
        assert outside(changed, "evil/report") == []
        pngs = [p.name for p in (evil / "report").glob("gallery_worst_ce_*.png")]
        assert len(pngs) == 1 and "/" not in pngs[0]
    finally:
        shutil.rmtree(evil)


# --------------------------------------------------------------------------- select


def test_select_does_not_replace_a_cs_without_overwrite(project: Path) -> None:
    out = project / "sel_cs"
    out.mkdir()
    (out / "particles.cs").write_bytes(SENTINEL)
    try:
        before = snapshot(project)
        proc = run(project, "select", "ext", "--where", "rlnCoordinateX > 0", "--out",
                   "sel_cs/particles.star")
        line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
        assert "particles.cs exists" in line and "--overwrite" in line
        assert changes(before, snapshot(project)) == set()
    finally:
        shutil.rmtree(out)


def test_select_never_writes_over_its_input(project: Path) -> None:
    """``select ext/particles.cs --out ext/particles.star`` writes ``ext/particles.cs``:
    its own input; refused even with --overwrite."""
    before = snapshot(project)
    for args in (["ext/particles.cs", "--out", "ext/particles.star", "--overwrite"],
                 ["ext/particles.star", "--out", "ext", "--overwrite"],
                 ["ext", "--out", "ext/./particles.star", "--overwrite"]):
        proc = run(project, "select", *args[:1], "--where", "rlnCoordinateX > 0", *args[1:])
        line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
        assert "would replace its input" in line, args
    assert changes(before, snapshot(project)) == set()


# --------------------------------------------------------------------------- simulate


def test_simulate_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_bytes(SENTINEL)
    args = ["simulate", "--out", "data", "--micrographs", "1", "--size", "256",
            "--particles", "3"]
    before = snapshot(tmp_path)
    proc = run(tmp_path, *args)
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "not empty" in line and "--overwrite" in line
    assert changes(before, snapshot(tmp_path)) == set()
    ok(run(tmp_path, *args, "--overwrite"))
    assert (tmp_path / "data" / "notes.txt").read_bytes() == SENTINEL
    assert (tmp_path / "data" / "micrographs.star").is_file()


def test_a_job_that_extracts_nothing_exits_2_and_leaves_no_star(project: Path,
                                                               tmp_path: Path) -> None:
    """Every micrograph unreadable, or none with picks: a one-line error, exit 2, and no
    particles.star (an empty one would pass for a finished job)."""
    data = tmp_path / "data"
    shutil.copytree(project / "data", data)
    for mrc in (data / "Micrographs").glob("*.mrc"):
        mrc.write_bytes(b"not an MRC file")
    args = ["extract", "--micrographs", "micrographs.star", "--coords-dir", "Picks",
            "--coords-suffix", "_autopick.star", "--box", str(BOX), "--workers", "1",
            "--quiet", "--no-report"]
    proc = run(data, *args, "--out", "broken")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "no micrograph could be extracted" in line and ".mrc" in line
    assert not (data / "broken" / "particles.star").exists()
    proc = run(data, *args[:6], "_nothing.star", *args[7:], "--out", "nopicks")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "no micrograph to extract" in line
    assert not (data / "nopicks").exists()


def test_resume_into_a_folder_cryoextract_did_not_make_is_refused(project: Path,
                                                                  tmp_path: Path) -> None:
    """``--resume`` into, say, a RELION Extract job folder: a one-line error, exit 2, and
    its files untouched."""
    folder = tmp_path / "Extract" / "job007"
    (folder / "Movies").mkdir(parents=True)
    (folder / "particles.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n"
                                           "000001@Extract/job007/Movies/mic.mrcs\n")
    (folder / "Movies" / "mic.mrcs").write_bytes(b"RELION's stack")
    before = snapshot(tmp_path)
    proc = run(project / "data", "extract", "--micrographs", "micrographs.star",
               "--coords-dir", "Picks", "--coords-suffix", "_autopick.star", "--box",
               str(BOX), "--workers", "1", "--quiet", "--no-report", "--out", str(folder),
               "--resume")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "--resume" in line and "job007" in line
    assert snapshot(tmp_path) == before
