"""Issue 14: two runs started together on one output folder never both write there.

``simulate`` took no lock: two runs on one new folder both found it empty and wrote
their datasets into each other's. Now it holds the folder's job lock
(:class:`cryoextract.pipeline.frame.JobLock`) as the other commands do: of two runs
started together, one writes the dataset and the other is refused in one line (the
folder in use, or no longer empty).

A run killed by SIGTERM or SIGKILL (its own process, not its group) left its worker
processes running for good, and they held the lock they inherited: workers now die
with their driver (PR_SET_PDEATHSIG) and a forked child closes its copy of the lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryoextract.pipeline.frame import JobLock, JobLockedError
from cryoextract.sim.simulate import simulate_dataset
from helpers import cli_env, one_line_error

ROUNDS = 4


def _simulate(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cryoextract", "simulate", "--out", str(out), "--micrographs",
         "2", "--size", "256", "--pixel-size", "2", "--particles", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())


def test_two_simulate_runs_on_one_folder_never_both_write(tmp_path: Path) -> None:
    for attempt in range(ROUNDS):
        out = tmp_path / f"sim{attempt}"
        runs = [_simulate(out), _simulate(out)]
        results = [(p.wait(timeout=300), *p.communicate()) for p in runs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 2], results
        code, stdout, stderr = next(r for r in results if r[0] == 2)
        line = one_line_error(code, stdout, stderr)
        assert "in use by another run" in line or "not empty" in line, line
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert files == ["Micrographs/mic_001.mrc", "Micrographs/mic_002.mrc",
                         "Picks/mic_001_autopick.star", "Picks/mic_002_autopick.star",
                         "micrographs.star", "summary.json", "truth.csv"], files


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_leaves_no_worker_and_resumes(tmp_path: Path, sig: int) -> None:
    """Killed with SIGTERM or SIGKILL (not its process group), an extraction left its
    workers running for good, holding the folder's lock: --resume was refused as 'in
    use by another run' until they were found and killed by hand."""
    simulate_dataset(tmp_path / "data", n_micrographs=16, shape_yx=(1024, 1024),
                     particles_per_micrograph=60, pixel_size_angstrom=2.0, seed=2)
    args = [sys.executable, "-m", "cryoextract", "extract", "--micrographs",
            "data/micrographs.star", "--coords-dir", "data/Picks", "--coords-suffix",
            "_autopick.star", "--box", "96", "--out", "out", "--workers", "2", "--quiet",
            "--no-report"]
    run = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=cli_env())
    deadline = time.monotonic() + 60
    while len(workers := _children(run.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.poll() is None and len(workers) == 2, "the run ended before its workers ran"
    run.send_signal(sig)
    run.wait(timeout=60)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "workers outlived their run"
    resumed = subprocess.run([*args, "--resume"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, env=cli_env(), check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "out" / "particles.star").is_file()


def test_a_forked_child_holds_no_lock_and_never_removes_it(tmp_path: Path) -> None:
    """A child forked while a lock is held (a worker) closes its copy: the parent still
    holds the lock, and once the parent is gone the child keeps no one out."""
    script = (
        "import os, sys, time\n"
        "from cryoextract.pipeline.frame import JobLock\n"
        "lock = JobLock(sys.argv[1]).__enter__()\n"
        "if os.fork() == 0:\n"
        "    assert lock._fd is None\n"
        "    lock.__exit__(None, None, None)  # a child unwinding: leaves the file\n"
        "    print('child', os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, env=cli_env())
    assert parent.stdout is not None
    child = int(parent.stdout.readline().split()[1])
    try:
        assert (tmp_path / ".cryoextract" / "lock").exists()
        with pytest.raises(JobLockedError):  # the parent holds it still
            JobLock(tmp_path).__enter__()
        parent.kill()
        parent.wait()
        assert _alive(child)
        with JobLock(tmp_path):  # the child alive, holding nothing
            pass
    finally:
        os.kill(child, signal.SIGKILL)
