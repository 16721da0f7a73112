"""Issue 14: two runs started together on one output folder never both write there.

``simulate`` took no lock: two runs on one new folder both found it empty and wrote
their datasets into each other's. Now it holds the folder's job lock
(:class:`cryoextract.pipeline.frame.JobLock`) as the other commands do: of two runs
started together, one writes the dataset and the other is refused in one line (the
folder in use, or no longer empty).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
                         "micrographs.star", "truth.csv"], files
