"""The job frame every writing command shares (``pipeline/frame.py``): the output lock.

Oracle: the processes themselves. Each run that gets the lock records when it held it;
no two such intervals may overlap, whatever the start order, with or without a stale
lock file left by a dead run.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryoextract.pipeline.frame import JobLock, JobLockedError, claim_output

HOLDER = """
import json, sys, time
from pathlib import Path
from cryoextract.pipeline.frame import JobLock, JobLockedError
out, log = Path(sys.argv[1]), Path(sys.argv[2])
try:
    with JobLock(out):
        start = time.monotonic()
        time.sleep(0.15)
        end = time.monotonic()
except JobLockedError:
    sys.exit(3)
with open(log, "a") as stream:
    stream.write(json.dumps([start, end]) + "\\n")
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("stale", [False, True])
def test_runs_started_together_never_hold_the_lock_at_once(tmp_path, stale):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    out, log = tmp_path / "out", tmp_path / "held.jsonl"
    refused = 0
    for _ in range(6):
        if stale:  # a lock file left by a run killed with kill -9
            (out / ".cryoextract").mkdir(parents=True, exist_ok=True)
            (out / ".cryoextract" / "lock").write_text(json.dumps(
                {"pid": _dead_pid(), "host": socket.gethostname(), "started": 0.0}))
        procs = [subprocess.Popen([sys.executable, str(script), str(out), str(log)])
                 for _ in range(4)]
        codes = [p.wait(timeout=60) for p in procs]
        assert set(codes) <= {0, 3} and 0 in codes, codes
        refused += codes.count(3)
    held = sorted(json.loads(line) for line in log.read_text().splitlines())
    for (_, end), (start, _) in itertools.pairwise(held):
        assert start >= end, held  # one holder at a time
    assert refused > 0  # the runs did meet
    assert not (out / ".cryoextract" / "lock").exists()


def test_a_live_owner_is_respected_and_a_dead_one_taken_over(tmp_path):
    lock_file = tmp_path / ".cryoextract" / "lock"
    lock_file.parent.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock_file.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                         "started": time.time()}))
        with pytest.raises(JobLockedError, match=f"pid {sleeper.pid}"):
            with JobLock(tmp_path):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with JobLock(tmp_path) as lock:
        assert lock.stale_owner is not None and lock.stale_owner["pid"] == sleeper.pid
        with pytest.raises(JobLockedError, match="in use"):  # not even by its own process
            with JobLock(tmp_path):
                pass
    assert not lock_file.exists()


def test_claim_output_refuses_a_folder_in_use_and_an_input_it_would_replace(tmp_path):
    out = tmp_path / "out"
    (out / "Particles").mkdir(parents=True)
    (out / "Particles" / "in.mrcs").write_bytes(b"input")
    with pytest.raises(Exception, match="not empty"):
        with claim_output(out, overwrite=False, outputs=[out / "Particles"]):
            pass
    with pytest.raises(Exception, match="which --overwrite would replace"):
        with claim_output(out, overwrite=True, outputs=[out / "Particles"],
                          inputs=[out / "Particles" / "in.mrcs"]):
            pass
    assert (out / "Particles" / "in.mrcs").read_bytes() == b"input"
    with JobLock(out):
        with pytest.raises(JobLockedError):
            with claim_output(out, overwrite=True, outputs=[out / "Particles"]):
                pass
    assert (out / "Particles" / "in.mrcs").exists()  # nothing removed while locked
    with claim_output(out, overwrite=True, outputs=[out / "Particles"]):
        assert not (out / "Particles").exists()
    assert Path(out).is_dir() and not (out / ".cryoextract" / "lock").exists()


def test_parameters_that_can_never_work_are_refused_before_anything_is_written(tmp_path):
    """downsample and subtract: one-line errors naming the option, nothing created."""
    from cryoextract.errors import ParameterError
    from cryoextract.pipeline.stacks.restack import downsample, restack
    from cryoextract.pipeline.stacks.subtract import subtract_particles

    star, out = tmp_path / "p.star", tmp_path / "out"
    cases = [
        (lambda: restack(star, out, batch_size=0), "batch size"),
        (lambda: downsample(star, out, box_px=32, workers=0), "workers"),
        (lambda: downsample(star, out, pixel_size_angstrom=float("inf")), "pixel size"),
        (lambda: subtract_particles(star, out, map_path="m.mrc", workers=-2), "workers"),
        (lambda: subtract_particles(star, out, map_path="m.mrc", padding_factor=float("inf")),
         "padding"),
        (lambda: subtract_particles(star, out, map_path="m.mrc",
                                    map_resolution_angstrom=float("nan")), "resolution"),
    ]
    for call, words in cases:
        with pytest.raises(ParameterError, match=words):
            call()
    assert not out.exists()
