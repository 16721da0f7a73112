"""Issue 14: the job frame's promises on the paths the first fixes left open.

Every command that writes, run as a user runs it (a subprocess in a project folder):

- a write that fails (the output under a regular file, a report folder that is a
  file, an output STAR where a folder is wanted) is one line naming the file, exit 2,
  never a traceback, and changes nothing anywhere;
- ``simulate`` refuses parameters that can never work before anything is written;
- ``report`` on a folder whose job is running (its lock held) is refused;
- ``convert`` never writes over one of its inputs, not even with ``--overwrite``;
- ``extract --resume`` and ``extract --watch`` write only under their ``--out``;
  ``--resume`` continues only a job of the same version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cryoextract
from cryoextract.io.star import read_star, write_star
from cryoextract.sim.simulate import simulate_dataset
from helpers import cli_env, one_line_error
from helpers import cli_ok as ok
from helpers import cli_run as run
from test_safe_outputs import changes, outside, snapshot, subtract_extracted

BOX = 48
EXTRACT = ["extract", "--micrographs", "data/micrographs.star", "--coords-dir", "data/Picks",
           "--coords-suffix", "_autopick.star", "--box", str(BOX), "--workers", "1",
           "--quiet"]



@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``proj/``: a dataset (``data/``), its extraction (``ext/``, with ``.cs``), the
    particles with poses and a map, their subtraction (``sub/``), a copy of the
    extraction whose ``report`` is a file (``rep/``) and a plain file ``afile``."""
    root = tmp_path_factory.mktemp("safety") / "proj"
    simulate_dataset(root / "data", n_micrographs=1, shape_yx=(256, 256),
                     particles_per_micrograph=6, pixel_size_angstrom=2.0,
                     particle_diameter_angstrom=60.0, seed=3)
    (root / "afile").write_text("the user's own file\n")
    ok(run(root, *EXTRACT, "--out", "ext", "--write-cs"))
    subtract_extracted(root)
    (root / "rep").mkdir()
    for name in ("particles.star", "summary.json", "rejected_particles.tsv"):
        (root / "rep" / name).write_bytes((root / "ext" / name).read_bytes())
    (root / "rep" / "report").write_text("a file where the report folder would go\n")
    return root


# every command that writes, its output where no folder can be made
WRITE_FAILURES = {
    "extract": [*EXTRACT, "--out", "afile/out"],
    "restack": ["restack", "--particles", "ext/particles.star", "--out", "afile/out"],
    "downsample": ["downsample", "--particles", "ext/particles.star", "--box", "32", "--out",
                   "afile/out", "--workers", "1"],
    "subtract": ["subtract", "--particles", "posed.star", "--map", "map.mrc", "--out",
                 "afile/out", "--workers", "1"],
    "revert": ["subtract", "--revert", "sub/particles.star", "--out", "afile/out"],
    "select": ["select", "ext", "--where", "rlnCoordinateX > 0", "--out", "afile/sel.star"],
    "select_folder": ["select", "ext", "--where", "rlnCoordinateX > 0", "--out",
                      "ext/particles.cs"],
    "convert": ["convert", "data/Picks/mic_001_autopick.star", "--to", "box", "--box",
                str(BOX), "--out", "afile/picks.box"],
    "convert_folder": ["convert", "data/Picks/mic_001_autopick.star", "--to", "box",
                       "--box", str(BOX), "--out", "afile/picks"],
    "simulate": ["simulate", "--out", "afile/sim", "--micrographs", "1", "--size", "256",
                 "--pixel-size", "2"],
    "report": ["report", "rep"],
}


@pytest.mark.parametrize("command", list(WRITE_FAILURES))
def test_a_write_that_fails_is_one_line_and_changes_nothing(project: Path,
                                                            command: str) -> None:
    args = WRITE_FAILURES[command]
    before = snapshot(project)
    proc = run(project, *args)
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    named = "rep/report" if command == "report" else (
        "ext/particles.cs" if command == "select_folder" else "afile")
    assert named in line, line
    assert changes(before, snapshot(project)) == set()


@pytest.mark.parametrize(("option", "value", "named"), [
    ("--pixel-size", "inf", "pixel size"), ("--pixel-size", "1e-320", "pixel size"),
    ("--size", "100000000", "micrograph side"), ("--seed", "-1", "seed"),
    ("--micrographs", "0", "number of micrographs"),
])
def test_simulate_refuses_what_can_never_work_before_writing(
        tmp_path: Path, option: str, value: str, named: str) -> None:
    args = {"--micrographs": "1", "--size": "256", "--pixel-size": "2", "--particles": "2"}
    args[option] = value
    proc = run(tmp_path, "simulate", "--out", "sim", *(x for kv in args.items() for x in kv))
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert named in line and value in line, line
    assert list(tmp_path.iterdir()) == []


def test_report_on_a_folder_whose_job_runs_is_refused(project: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from cryoextract.pipeline.frame import JobLock\n"
         "with JobLock(sys.argv[1]):\n print('held', flush=True)\n time.sleep(60)\n",
         str(project / "ext")], stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = snapshot(project / "ext" / "report")
        proc = run(project, "report", "ext")
        line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
        assert "in use" in line and f"pid {holder.pid}" in line, line
        assert changes(before, snapshot(project / "ext" / "report")) == set()
    finally:
        holder.kill()
        holder.wait()
    ok(run(project, "report", "ext"))  # the job gone, the report is written


def test_extract_resume_and_watch_write_only_under_their_output(project: Path) -> None:
    before = snapshot(project)
    ok(run(project, *EXTRACT, "--out", "out_resume", "--resume"))
    ok(run(project, *EXTRACT, "--out", "out_resume", "--resume"))
    started = time.monotonic()
    ok(run(project, *EXTRACT, "--out", "out_watch", "--watch", "--watch-timeout", "2",
           "--settle", "0.2"))
    assert time.monotonic() - started < 120
    changed = changes(before, snapshot(project))
    assert outside(changed, "out_resume", "out_watch") == []
    for out in ("out_resume", "out_watch"):
        assert (project / out / "particles.star").is_file()


@pytest.mark.parametrize("case", ["file", "folder", "micrographs"])
def test_convert_never_writes_over_an_input(project: Path, case: str) -> None:
    """Not even with --overwrite: the picks read, or a micrograph (--suffix .mrc)."""
    picks = "data/Picks/mic_001_autopick.star"
    args = {
        "file": [picks, "--to", "star", "--out", picks],
        "folder": [picks, "--to", "star", "--out", "data/Picks"],  # mic_001_autopick.star
        "micrographs": [picks, "--micrographs", "data/Micrographs/*.mrc", "--to", "star",
                        "--suffix", ".mrc", "--out", "data/Micrographs"],
    }[case]
    before = snapshot(project)
    proc = run(project, "convert", *args, "--overwrite")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "which convert would write" in line and "mic_001" in line, line
    assert changes(before, snapshot(project)) == set()


def test_resume_refuses_a_run_of_another_version(project: Path) -> None:
    """--resume continues only a job of the same inputs, parameters and version."""
    ok(run(project, *EXTRACT, "--out", "out_version", "--no-report"))
    job = project / "out_version" / ".cryoextract" / "job.json"
    definition = json.loads(job.read_text())
    assert definition["version"] == cryoextract.__version__
    job.write_text(json.dumps({**definition, "version": "0.0.1"}))
    before = snapshot(project)
    proc = run(project, *EXTRACT, "--out", "out_version", "--no-report", "--resume")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "0.0.1" in line and cryoextract.__version__ in line, line
    assert changes(before, snapshot(project)) == set()
    job.write_text(json.dumps(definition))  # the same version again: resumed
    ok(run(project, *EXTRACT, "--out", "out_version", "--no-report", "--resume"))


@pytest.mark.parametrize("command", ["extract", "restack", "downsample", "subtract",
                                     "revert"])
def test_an_output_no_star_can_name_is_refused_before_the_job(project: Path,
                                                              command: str) -> None:
    """A newline in --out goes into every rlnImageName: one line (the newline shown
    escaped), exit 2, before anything is written (restack, downsample and subtract
    wrote their stacks, then failed on the STAR in two lines)."""
    args = [a if a != "afile/out" else "o\nut" for a in WRITE_FAILURES[command]]
    before = snapshot(project)
    proc = run(project, *args)
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "o\\nut" in line and "control character" in line, line
    assert changes(before, snapshot(project)) == set()


def test_a_file_name_with_a_newline_is_named_on_one_line(project: Path) -> None:
    proc = run(project, "restack", "--particles", "no\nsuch.star", "--out", "out_nl")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "no\\nsuch.star" in line, line


def test_extract_overwrite_never_removes_micrographs_kept_in_its_output(
        project: Path) -> None:
    """--overwrite removes OUT/Particles: micrographs kept there were deleted, then
    reported missing."""
    particles = project / "kept" / "Particles"
    particles.mkdir(parents=True)
    (particles / "mic_001.mrc").write_bytes(
        (project / "data" / "Micrographs" / "mic_001.mrc").read_bytes())
    before = snapshot(project)
    proc = run(project, *(a if a != "data/micrographs.star" else "kept/Particles/*.mrc"
                          for a in EXTRACT), "--pixel-size", "2", "--out", "kept",
               "--overwrite")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "kept/Particles/mic_001.mrc" in line and "the extraction writes" in line, line
    assert changes(before, snapshot(project)) == set()


def test_overwrite_and_report_remove_only_their_own_files(project: Path) -> None:
    """extract --overwrite removed every OUT/also_*px folder, the report every PNG in
    OUT/report: a user's folder or picture there was lost."""
    ok(run(project, *EXTRACT, "--out", "own", "--also-bin-to", "32"))
    mine = [project / "own" / "also_my_notes_px" / "notes.txt",
            project / "own" / "report" / "my_figure.png"]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("the user's own file\n")
    ok(run(project, *EXTRACT, "--out", "own", "--also-bin-to", "32", "--overwrite"))
    ok(run(project, "report", "own"))
    assert all(p.read_text() == "the user's own file\n" for p in mine)
    assert (project / "own" / "also_32px" / "particles.star").is_file()
    assert (project / "own" / "report" / "gallery_random.png").is_file()


@pytest.mark.parametrize("command", ["extract", "restack"])
def test_overwrite_never_writes_through_a_link_to_outside(project: Path,
                                                          command: str) -> None:
    """OUT/Particles a link to another folder: --overwrite replaces the link (extract
    wrote its stacks into the folder it pointed to)."""
    out, elsewhere = project / f"linked_{command}", project / f"elsewhere_{command}"
    out.mkdir()
    elsewhere.mkdir()
    (out / "Particles").symlink_to(elsewhere)
    args = [a if a != "afile/out" else out.name for a in WRITE_FAILURES[command]]
    ok(run(project, *args, "--overwrite"))
    assert list(elsewhere.iterdir()) == []
    assert not (out / "Particles").is_symlink() and any((out / "Particles").iterdir())


def test_the_report_is_never_written_through_a_link(project: Path) -> None:
    """OUT/report a link to another folder: the report replaces the link."""
    shutil.copytree(project / "ext", project / "linked_report", symlinks=True)
    elsewhere = project / "elsewhere_report"
    elsewhere.mkdir()
    shutil.rmtree(project / "linked_report" / "report")
    (project / "linked_report" / "report").symlink_to(elsewhere)
    ok(run(project, "report", "linked_report"))
    assert list(elsewhere.iterdir()) == []
    assert (project / "linked_report" / "report" / "index.html").is_file()


def test_revert_whose_originals_are_all_gone_writes_nothing(project: Path) -> None:
    """A STAR every name of which points nowhere is nothing usable: exit 2, not a STAR
    and two warnings."""
    blocks = read_star(project / "sub" / "particles.star")
    particles = blocks["particles"]
    particles["rlnImageOriginalName"] = particles["rlnImageOriginalName"].str.replace(
        "ext/", "gone/", regex=False)
    write_star(project / "sub_gone.star", blocks)
    before = snapshot(project)
    proc = run(project, "subtract", "--revert", "sub_gone.star", "--out", "out_gone")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert line.startswith("error: sub_gone.star: none of the") and "gone/" in line, line
    assert changes(before, snapshot(project)) == set()


def test_watch_into_a_folder_no_cryoextract_run_made_is_refused(project: Path) -> None:
    """--watch always resumes: into a RELION Extract job folder it replaced its
    particles.star; --watch --overwrite (ignored before) replaces a run of other
    parameters."""
    job = project / "Extract" / "job007"
    job.mkdir(parents=True)
    (job / "particles.star").write_text("RELION's own\n")
    watch = [*EXTRACT, "--watch", "--watch-timeout", "1", "--settle", "0.2"]
    before = snapshot(project)
    proc = run(project, *watch, "--out", "Extract/job007")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "no cryoextract run made" in line, line
    assert changes(before, snapshot(project)) == set()
    ok(run(project, *watch, "--out", "Extract/job007", "--overwrite"))
    ok(run(project, *[a if a != str(BOX) else "64" for a in watch], "--out",
           "Extract/job007", "--overwrite"))
    assert json.loads((job / "summary.json").read_text())["box_px"] == 64


@pytest.mark.parametrize("log", ["data/micrographs.star", "data/Picks/mic_001_autopick.star",
                                 "data/Micrographs/mic_001.mrc"])
def test_the_progress_log_never_appends_to_an_input(project: Path, log: str) -> None:
    """--progress-log appended its JSON lines to whatever file it was given: the
    micrographs STAR itself could no longer be read."""
    before = snapshot(project)
    proc = run(project, *EXTRACT, "--out", "out_log", "--progress-log", log)
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert f"--progress-log {log}" in line, line
    assert changes(before, snapshot(project)) == set()
    ok(run(project, *EXTRACT, "--out", "out_log", "--progress-log", "log.jsonl"))
    ok(run(project, *EXTRACT, "--out", "out_log", "--resume", "--progress-log", "log.jsonl"))
    assert json.loads((project / "log.jsonl").read_text().splitlines()[-1])["event"] == "end"
    (project / "log.jsonl").unlink()
    shutil.rmtree(project / "out_log")


@pytest.mark.parametrize("suffix", ["/../../evil.star", "\\evil.star", "a\nb.star"])
def test_convert_suffix_never_leaves_the_output_folder(project: Path, suffix: str) -> None:
    """--suffix /../../evil.star wrote every micrograph's picks to one file outside
    --out, each over the last."""
    before = snapshot(project)
    proc = run(project, "convert", "data/Picks/mic_001_autopick.star", "--to", "star",
               "--suffix", suffix, "--out", "out_convert/sub")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "--suffix" in line, line
    assert changes(before, snapshot(project)) == set()


@pytest.mark.parametrize("record", ["{cut", "[1]", "null", ""])
def test_resume_with_a_job_record_it_cannot_read_is_one_line(project: Path,
                                                             record: str) -> None:
    """A job.json cut short or edited: a traceback (JSONDecodeError, AttributeError)."""
    out = project / "out_record"
    if not out.is_dir():
        ok(run(project, *EXTRACT, "--out", out.name, "--no-report"))
    (out / ".cryoextract" / "job.json").write_text(record)
    before = snapshot(project)
    proc = run(project, *EXTRACT, "--out", out.name, "--no-report", "--resume")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "job.json is not a job record" in line, line
    assert changes(before, snapshot(project)) == set()
