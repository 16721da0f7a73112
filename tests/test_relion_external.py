"""``cryoextract-relion`` as a RELION 3.1 External job, with RELION itself as the oracle.

A small project (MotionCorr, CtfFind and AutoPick jobs laid out as RELION writes them,
``relion_project.py``) gets an External job added and run by ``relion_pipeliner``, from
the project directory, exactly as the GUI would: the pipeliner must find the job finished
and register our particles (and the ``--also-bin-to`` ones) as particles nodes (type 3);
a Class2D job added on that node must run ``relion_refine`` to its last iteration on our
particles. Running the job again ("Continue") resumes it. Every refused job must exit 2
with one stderr line naming the problem, leave ``RELION_JOB_EXIT_FAILURE`` and nothing
RELION would register (``RELION_OUTPUT_NODES.star``); a failed job run by the pipeliner
must be marked failed (status 3) with no node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cryoextract.cli.relion_external import (
    JobError,
    extract_options,
    parameter_args,
    parse_relion_args,
    relion_coordinates,
)
from cryoextract.io.star import read_star
from helpers import cli_env, one_line_error
from prereq import require
from relion_project import COORDS_NODE, MICROGRAPHS_STAR, RelionProject, make_project

EXE = Path(sys.executable).parent / "cryoextract-relion"
EXTERNAL = "External/job005/"
CLASS2D = "Class2D/job006/"
PIPELINER_TIMEOUT_S = 300
N_MICROGRAPHS = 3


def _pipeliner(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``relion_pipeliner ARGS`` from the project directory (it waits for each job's exit
    file, so a job that never writes one would hang it: hence the timeout)."""
    program = shutil.which("relion_pipeliner")
    require(program, "relion_pipeliner not found (Debian package relion)")
    proc = subprocess.run([str(program), *args], cwd=project, capture_output=True, text=True,
                          timeout=PIPELINER_TIMEOUT_S, env=cli_env(), check=False)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _add_and_run(project: Path, job_type: str, options: dict[str, str], job: str) -> None:
    text = ";".join(f"{key} == {value}" for key, value in options.items())
    _pipeliner(project, "--addJob", job_type, "--addJobOptions", text)
    _pipeliner(project, "--RunJobs", job, "--sec_wait_after", "1")


def _external_options(**extra: str) -> dict[str, str]:
    require(EXE.is_file(), f"{EXE} missing: pip install -e . (console script)")
    return {"fn_exe": str(EXE), "in_mic": MICROGRAPHS_STAR, "in_coords": COORDS_NODE,
            "nr_threads": "2", **extra}


def _processes(project: Path) -> dict[str, tuple[int, int]]:
    table = read_star(project / "default_pipeline.star")["pipeline_processes"]
    return {str(row.rlnPipeLineProcessName): (int(row.rlnPipeLineProcessType),
                                              int(row.rlnPipeLineProcessStatus))
            for row in table.itertuples()}


def _nodes(project: Path) -> dict[str, int]:
    table = read_star(project / "default_pipeline.star")["pipeline_nodes"]
    return dict(zip(table["rlnPipeLineNodeName"].astype(str),
                    table["rlnPipeLineNodeType"].astype(int), strict=True))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> RelionProject:
    """The project, with the External job run by the pipeliner: box 128, binned to 64,
    and an additional 32-px output."""
    made = make_project(tmp_path_factory.mktemp("relion_project"), n_micrographs=N_MICROGRAPHS)
    _add_and_run(made.root, "External", _external_options(
        param1_label="box", param1_value="128", param2_label="bin_to", param2_value="64",
        param3_label="also_bin_to", param3_value="32"), EXTERNAL)
    return made


def test_pipeliner_runs_the_job_and_registers_our_particles(project: RelionProject) -> None:
    root = project.root
    job = root / EXTERNAL
    assert _processes(root)[EXTERNAL] == (99, 2)  # External, finished successfully
    nodes = _nodes(root)
    assert nodes[f"{EXTERNAL}particles.star"] == 3
    assert nodes[f"{EXTERNAL}also_32px/particles.star"] == 3
    assert (job / "RELION_JOB_EXIT_SUCCESS").is_file()
    assert not (job / "RELION_JOB_EXIT_FAILURE").exists()
    # RELION's calling convention, as the pipeliner recorded the command it ran
    note = (job / "note.txt").read_text()
    assert (f"{EXE} --o {EXTERNAL} --in_mics {MICROGRAPHS_STAR} --in_coords {COORDS_NODE} "
            f"--box 128 --bin_to 64 --also_bin_to 32 --j 2") in note
    out = (job / "run.out").read_text().splitlines()
    for name in project.micrograph_names:
        assert any(line.endswith(f"] {name}: {project.particles_per_micrograph} particles")
                   for line in out), out
    assert "Traceback" not in (job / "run.err").read_text()
    for star, box in ((job / "particles.star", 64), (job / "also_32px/particles.star", 32)):
        blocks = read_star(star)
        assert int(blocks["optics"]["rlnImageSize"].iloc[0]) == box
        names = blocks["particles"]["rlnImageName"].astype(str)
        assert len(names) == N_MICROGRAPHS * project.particles_per_micrograph
        # named as RELION names its own: relative to the project directory
        stacks = {name.split("@")[1] for name in names}
        assert all(s.startswith(str(star.parent.relative_to(root)) + "/Particles/")
                   and (root / s).is_file() for s in stacks), stacks


def test_class2d_runs_on_our_particles_node(project: RelionProject) -> None:
    root = project.root
    _add_and_run(root, "Class2D", {
        "fn_img": f"{EXTERNAL}particles.star", "nr_classes": "2", "nr_iter": "2",
        "tau_fudge": "2", "particle_diameter": "150", "psi_sampling": "30",
        "offset_range": "3", "offset_step": "2", "nr_pool": "10", "nr_threads": "2",
        "nr_mpi": "1", "use_gpu": "No", "do_combine_thru_disc": "No",
        "do_preread_images": "No"}, CLASS2D)
    job = root / CLASS2D
    assert "relion_refine" in (job / "note.txt").read_text()
    assert _processes(root)[CLASS2D] == (8, 2)  # Class2D, finished successfully
    assert (job / "RELION_JOB_EXIT_SUCCESS").is_file()  # relion_refine's exit status 0
    assert (job / "run_it002_model.star").is_file()
    data = read_star(job / "run_it002_data.star")["particles"]
    assert len(data) == N_MICROGRAPHS * project.particles_per_micrograph
    edges = read_star(root / "default_pipeline.star")["pipeline_input_edges"]
    assert ((edges["rlnPipeLineEdgeFromNode"] == f"{EXTERNAL}particles.star")
            & (edges["rlnPipeLineEdgeProcess"] == CLASS2D)).any()


def test_running_the_job_again_resumes_it(project: RelionProject) -> None:
    root = project.root
    star = root / EXTERNAL / "particles.star"
    before = star.read_bytes()
    _pipeliner(root, "--RunJobs", EXTERNAL, "--sec_wait_after", "1")
    out = (root / EXTERNAL / "run.out").read_text()
    assert "--resume" in out
    assert f"({N_MICROGRAPHS} kept from the earlier run)" in out
    assert star.read_bytes() == before
    assert _processes(root)[EXTERNAL] == (99, 2)


def test_pipeliner_marks_a_refused_job_failed(project: RelionProject) -> None:
    root = project.root
    job = "External/job007/"
    _add_and_run(root, "External", _external_options(
        param1_label="box", param1_value="128", param2_label="boxx", param2_value="3"), job)
    assert _processes(root)[job] == (99, 3)  # finished with an error
    assert not any(name.startswith(job) for name in _nodes(root))
    assert (root / job / "RELION_JOB_EXIT_FAILURE").is_file()
    assert not (root / job / "RELION_OUTPUT_NODES.star").exists()
    assert "boxx" in (root / job / "run.err").read_text()


def _refused_cases(mics: str, coords: str) -> dict[str, tuple[list[str], list[str]]]:
    """Job directory -> (arguments, words the one-line error must contain)."""
    nodes = ["--in_mics", mics, "--in_coords", coords]
    return {
        "External/job020/": (["--box", "128", "--j", "1"], ["no input node"]),
        "External/job021/": ([*nodes, "--box", "128", "--boxx", "3", "--j", "1"],
                             ["unknown parameter label", "boxx"]),
        "External/job022/": (["--in_mics", mics, "--in_coords",
                              "AutoPick/job004/coords_suffix_manualpick.star", "--box", "128",
                              "--j", "1"],
                             ["RELION's rule",
                              "AutoPick/job004/Micrographs/mic_001_manualpick.star"]),
        "External/job023/": ([*nodes, "--box", "abc", "--j", "1"], ["--box", "integer"]),
        "External/job024/": ([*nodes, "--box", "127", "--j", "1"], ["127"]),
        "External/job025/": ([*nodes, "--box", "128", "--workers", "4", "--j", "1"],
                             ["workers", "--j"]),
        "External/job026/": (["--in_mics", mics, "--box", "128", "--j", "1"],
                             ["--in_coords", "--in_parts"]),
    }


def test_refused_jobs_fail_as_relion_expects(project: RelionProject) -> None:
    root = project.root
    cases = _refused_cases(MICROGRAPHS_STAR, COORDS_NODE)
    for job in cases:  # left by an earlier run: must not survive a failed one
        (root / job).mkdir(parents=True)
        (root / job / "RELION_OUTPUT_NODES.star").write_text("stale\n")
        (root / job / "RELION_JOB_EXIT_SUCCESS").touch()
    procs = {job: subprocess.Popen([str(EXE), "--o", job, *args], cwd=root, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=cli_env())
             for job, (args, _) in cases.items()}
    for job, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        line = one_line_error(proc.returncode, stdout, stderr, f"{job}\n{stderr}\n{stdout}")
        for word in cases[job][1]:
            assert word in line, (job, line)
        assert (root / job / "RELION_JOB_EXIT_FAILURE").is_file(), job
        assert not (root / job / "RELION_OUTPUT_NODES.star").exists(), job
        assert not (root / job / "RELION_JOB_EXIT_SUCCESS").exists(), job


def test_missing_job_directory_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([str(EXE), "--in_mics", "m.star", "--box", "128", "--j", "1"],
                          cwd=tmp_path, capture_output=True, text=True, env=cli_env(),
                          timeout=60, check=False)
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "--o" in line
    assert not any(tmp_path.iterdir())


def test_abort_request_stops_the_job(project: RelionProject) -> None:
    """RELION's Abort button touches RELION_JOB_ABORT_NOW; the job ends as aborted."""
    root = project.root
    job = root / "External/job030"
    job.mkdir(parents=True)
    (job / "RELION_JOB_ABORT_NOW").touch()
    proc = subprocess.run([str(EXE), "--o", "External/job030/", "--in_mics", MICROGRAPHS_STAR,
                           "--in_coords", COORDS_NODE, "--box", "128", "--j", "1"],
                          cwd=root, capture_output=True, text=True, env=cli_env(),
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert (job / "RELION_JOB_EXIT_ABORTED").is_file()
    assert not (job / "RELION_JOB_EXIT_SUCCESS").exists()
    assert not (job / "RELION_OUTPUT_NODES.star").exists()


def test_reextraction_from_a_particles_node(project: RelionProject) -> None:
    """``--in_parts`` (with the micrographs) re-extracts at the particles' positions."""
    root = project.root
    proc = subprocess.run([str(EXE), "--o", "External/job031/", "--in_mics", MICROGRAPHS_STAR,
                           "--in_parts", f"{EXTERNAL}particles.star", "--box", "96", "--j", "1",
                           "--report", "no"], cwd=root, capture_output=True, text=True,
                          env=cli_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    nodes = (root / "External/job031/RELION_OUTPUT_NODES.star").read_text()
    assert "External/job031/particles.star 3" in nodes
    again = read_star(root / "External/job031/particles.star")
    assert len(again["particles"]) == N_MICROGRAPHS * project.particles_per_micrograph
    assert not (root / "External/job031/report").exists()
    # continued with other parameters: refused, with what to do instead
    changed = subprocess.run([str(EXE), "--o", "External/job031/", "--in_mics",
                              MICROGRAPHS_STAR, "--in_parts", f"{EXTERNAL}particles.star",
                              "--box", "64", "--j", "1", "--report", "no"], cwd=root,
                             capture_output=True, text=True, env=cli_env(), timeout=120,
                             check=False)
    assert "--resume" in one_line_error(changed.returncode, changed.stdout, changed.stderr)
    assert "make a new job" in changed.stdout
    assert (root / "External/job031/RELION_JOB_EXIT_FAILURE").is_file()
    assert not (root / "External/job031/RELION_OUTPUT_NODES.star").exists()


# ---------------------------------------------------------------- parameters, unit level

def test_parameters_map_onto_extract_options() -> None:
    options = extract_options()
    assert parameter_args(["--box", "256", "--bin-to", "128", "--ctf_correct", "flip"],
                          options) == ["--box", "256", "--bin-to", "128", "--ctf-correct",
                                       "flip"]
    assert parameter_args(["--invert", "no", "--float16", "--also_bin_to", "64", "32"],
                          options) == ["--no-invert", "--float16", "--also-bin-to", "64",
                                       "--also-bin-to", "32"]
    assert parameter_args(["--recenter_xyz", "1", "-2.5", "3", "--no_invert", "yes"],
                          options) == ["--recenter-xyz", "1", "-2.5", "3", "--no-invert"]
    assert parameter_args(["--edge=replicate"], options) == ["--edge", "replicate"]


@pytest.mark.parametrize(("tokens", "words"), [
    (["--bogus", "1"], ["unknown parameter label", "bogus"]),
    (["--out", "x"], ["'out'", "--o"]),
    (["--coords_dir", "x"], ["--in_coords"]),
    (["--box", "1", "2"], ["'box'", "1 value"]),
    (["--invert", "maybe"], ["yes or no"]),
    (["128"], ["unexpected argument"]),
])
def test_bad_parameters_are_refused(tokens: list[str], words: list[str]) -> None:
    with pytest.raises(JobError) as refused:
        parameter_args(tokens, extract_options())
    for word in words:
        assert word in str(refused.value)


def test_coordinate_node_gives_relion_directory_and_suffix() -> None:
    assert relion_coordinates("AutoPick/job004/coords_suffix_autopick.star") == (
        "AutoPick/job004", "_autopick.star")
    assert relion_coordinates("Import/job001/coords_suffix.box") == ("Import/job001", ".box")
    with pytest.raises(JobError, match="coords_suffix"):
        relion_coordinates("AutoPick/job004/autopick.star")
    assert os.path.basename(COORDS_NODE) == "coords_suffix_autopick.star"


def test_relion_arguments_are_taken_apart() -> None:
    """What the pipeliner passes: its own flags, the parameters in between, ``--j`` last,
    ``--pipeline_control`` when the line holds ``relion_``, words of a spaced value."""
    args, extras = parse_relion_args([
        "--o", "External/job005/", "--in_mics", "CtfFind/job003/micrographs_ctf.star",
        "--in_coords", COORDS_NODE, "--box", "128", "--recenter_xyz", "1", "-2", "3",
        "--j", "2", "--pipeline_control", "External/job005/"])
    assert (args.job_dir, args.in_mics, args.in_coords, args.in_parts, args.j) == (
        "External/job005/", MICROGRAPHS_STAR, COORDS_NODE, None, 2)
    assert extras == ["--box", "128", "--recenter_xyz", "1", "-2", "3"]
    with pytest.raises(JobError, match="--o"):
        parse_relion_args(["--in_mics", "a.star", "--j", "1"])
