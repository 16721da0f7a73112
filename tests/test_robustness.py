"""Never lose work: resume after kill -9, the output lock, unwritable and full disks, Dask."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryoextract.pipeline.extraction.executors import DASK_PLUGIN
from cryoextract.sim.simulate import simulate_dataset
from prereq import require_module

ARGS = ["--coords-dir", "Picks", "--coords-suffix", "_autopick.star", "--box", "96",
        "--bin-to", "48", "--white-dust", "3", "--black-dust", "3", "--seed", "7", "--no-report"]


def command(out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cryoextract", "extract", "--micrographs", "micrographs.star",
            *ARGS, "--out", out, *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    simulate_dataset(root, n_micrographs=8, shape_yx=(384, 384), particles_per_micrograph=25,
                     pixel_size_angstrom=2.0, seed=3)
    subprocess.run(command("reference", "--workers", "1"), cwd=root, check=True,
                   capture_output=True, timeout=300)
    return root


def output_files(out: Path) -> dict[str, bytes]:
    """Every output that a later step trusts, by relative path (not the summary's paths).

    The STARs name their stacks relative to where the command ran (``NAME/Particles/...``
    for ``--out NAME``): that folder name is replaced by ``OUT`` so that runs into
    different folders compare byte for byte otherwise.
    """
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out).as_posix()
        if path.is_file() and not relative.startswith(".cryoextract") and \
                relative != "summary.json":
            data = path.read_bytes()
            if path.suffix == ".star":
                data = data.replace(f"@{out.name}/".encode(), b"@OUT/")
            files[relative] = data
    return files


def test_resume_after_kill_gives_identical_outputs(dataset):
    reference = output_files(dataset / "reference")
    assert "particles.star" in reference
    for attempt, delay in enumerate((0.9, 1.3, 1.8)):
        out = f"killed{attempt}"
        proc = subprocess.Popen(command(out, "--workers", "1"), cwd=dataset,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # nothing half-written is trusted: no temporary file under a final name
        star = dataset / out / "particles.star"
        assert not star.exists() or \
            output_files(dataset / out)["particles.star"] == reference["particles.star"]
        done = subprocess.run(command(out, "--resume", "--workers", "2"), cwd=dataset,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert output_files(dataset / out) == reference
        assert not list((dataset / out).rglob(".*.tmp"))


def test_resume_removes_what_a_killed_run_left_half_written(dataset):
    """A kill between opening a stack's temporary file and renaming it leaves the file."""
    reference = output_files(dataset / "reference")
    out = dataset / "half_written"
    shutil.copytree(dataset / "reference", out)
    stack = sorted((out / "Particles").glob("*.mrcs"))[0]
    leftovers = [stack.with_name(f".{stack.name}.999999.tmp"),
                 out / ".cryoextract" / "done" / ".0123456789abcdef.particles.arrow.999999.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(stack.read_bytes()[:3000])
    done = subprocess.run(command("half_written", "--resume", "--workers", "1"), cwd=dataset,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not any(leftover.exists() for leftover in leftovers)
    assert output_files(out) == reference


def test_a_run_removes_what_a_dead_worker_left_half_written(dataset, monkeypatch):
    """A worker killed while writing a stack (its micrograph is then done elsewhere) leaves
    its temporary file; the run removes it before publishing."""
    from cryoextract import ExtractParams, extract

    monkeypatch.chdir(dataset)
    out = dataset / "dead_worker"
    planted = []

    # another tool's temporary file in a folder of its own under OUT is not ours
    others = out / "report" / ".index.html.9.tmp"
    others.parent.mkdir(parents=True)
    others.write_text("being written")

    def plant(result) -> None:  # a MicrographResult is done: its stack is in place
        if not planted:
            leftover = out / "Particles" / f".{Path(result.micrograph_name).stem}.mrcs.9.tmp"
            leftover.write_bytes(b"\0" * 1024)
            planted.append(leftover)

    summary = extract("micrographs.star", out, ExtractParams(box_px=96), coords_dir="Picks",
                      coords_suffix="_autopick.star", workers=1, on_progress=plant,
                      overwrite=True)  # OUT holds the other tool's folder
    assert planted and summary.particles_kept > 0
    assert not planted[0].exists()
    assert list(out.rglob(".*.tmp")) == [others]


def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(dataset):
    out = dataset / "locked"
    (out / ".cryoextract").mkdir(parents=True)
    lock = out / ".cryoextract" / "lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f'{{"pid": {sleeper.pid}, "host": "{socket.gethostname()}", '
                        f'"started": {time.time()}}}')
        proc = subprocess.run(command("locked"), cwd=dataset, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2
        assert f"pid {sleeper.pid}" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    finally:
        sleeper.kill()
        sleeper.wait()
    # the owner is gone: the lock is stale and the run goes ahead
    proc = subprocess.run(command("locked"), cwd=dataset, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not lock.exists()


def test_unwritable_output_is_a_clear_error(dataset):
    (dataset / "a_file").write_text("not a directory")
    proc = subprocess.run(command("a_file/out"), cwd=dataset, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "a_file" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_full_disk_leaves_nothing_half_written_and_resume_finishes(dataset):
    proc = subprocess.run(command("full", "--workers", "1"), cwd=dataset, capture_output=True,
                          text=True, timeout=300, preexec_fn=_limit_file_size)
    out = dataset / "full"
    stacks = list((out / "Particles").glob("*.mrcs"))
    # the stacks that did not fit are reported, never left truncated under their name
    from cryoextract.io.mrc import stack_image_count

    assert all(stack_image_count(s) > 0 for s in stacks)
    assert "Traceback" not in proc.stderr
    assert not list(out.rglob(".*.tmp"))
    done = subprocess.run(command("full", "--resume", "--workers", "2"), cwd=dataset,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert output_files(out) == output_files(dataset / "reference")


def test_dask_cluster_equals_local_run_even_when_a_worker_dies(dataset):
    distributed = require_module("distributed")
    from cryoextract.pipeline.extraction.dask_plugin import ExtractionWorker
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        proc = subprocess.run(command("dask", "--dask-scheduler", cluster.scheduler_address),
                              cwd=dataset, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert output_files(dataset / "dask") == output_files(dataset / "reference")
        # kill one worker while the job runs: its micrographs are redone elsewhere
        run = subprocess.Popen(command("dask_killed", "--dask-scheduler",
                                       cluster.scheduler_address),
                               cwd=dataset, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        with distributed.Client(cluster.scheduler_address) as client:
            deadline = time.time() + 60
            while time.time() < deadline and not client.processing() and run.poll() is None:
                time.sleep(0.05)
            pids = client.run(os.getpid)
            victim = next(iter(pids.values()))
            os.kill(victim, signal.SIGKILL)
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        with distributed.Client(cluster.scheduler_address) as client:
            client.wait_for_workers(2, timeout=60)
            # the run removed its plugin: every worker (the restarted one too) profiles
            after = client.run(_plugin_and_profiler)
            client.register_plugin(ExtractionWorker(), name=DASK_PLUGIN)
            during = client.run(_plugin_and_profiler)
            client.unregister_worker_plugin(DASK_PLUGIN)
            again = client.run(_plugin_and_profiler)
        assert victim not in after and len(after) == 2
        assert set(after.values()) == set(again.values()) == {(False, True)}, (after, again)
        assert set(during.values()) == {(True, False)}, during
    assert output_files(dataset / "dask_killed") == output_files(dataset / "reference")


def _plugin_and_profiler(dask_worker) -> tuple[bool, bool]:
    """Whether our plugin is on the worker, and whether its profiler runs."""
    return DASK_PLUGIN in dask_worker.plugins, \
        dask_worker.periodic_callbacks["profile"].is_running()


def test_dask_workers_that_cannot_take_the_plugin_give_one_line(monkeypatch):
    """A worker whose cryoextract differs (here: a plugin whose setup fails) stops the run
    before any work, with a one-line error naming the scheduler."""
    distributed = require_module("distributed")
    from cryoextract.errors import ParameterError
    from cryoextract.pipeline.extraction import dask_plugin
    from cryoextract.pipeline.extraction.executors import run_tasks

    def broken(self, worker):
        raise AttributeError("Can't get attribute 'ExtractionWorker'\nsecond line")

    monkeypatch.setattr(dask_plugin.ExtractionWorker, "setup", broken)
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cl:
        with pytest.raises(ParameterError) as info:
            list(run_tasks([], dask_scheduler=cl.scheduler_address))
    message = str(info.value)
    assert "\n" not in message
    assert cl.scheduler_address in message and "same cryoextract version" in message
