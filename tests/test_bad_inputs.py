"""Bad input, tried for real: the ``cryoextract extract`` command against broken inputs.

Every case copies a small simulated dataset, breaks one thing and runs the CLI
(``python -m cryoextract extract``) in a subprocess. The outcome is one of:

* ``Error``: exit code 2, exactly one line on stderr naming the file (and the line, for
  text formats) or the option at fault, and no traceback;
* ``Skip``: one bad micrograph among good ones is skipped and reported in
  ``summary.json`` (``micrographs_skipped``), the others are extracted (exit code 0);
* ``Works``: the input is odd but valid (paths with spaces, empty pick files, NaN
  pixels): exit code 0.

Whatever the outcome, nothing is lost or corrupted: no temporary file is left, every
``rlnImageName`` of every particles STAR points at a complete stack holding that image,
and every stack holds finite pixels only. The cases run concurrently (threads over
subprocesses); each costs about 2 s of CPU, mostly start-up imports, so the default set
takes about 40 s on two idle cores. ``CRYOEXTRACT_ALL_BAD_INPUTS=1`` adds the extra cases
(variants of the default ones, marked ``extra=True``). The cases are in
``bad_input_cases.py``; running and checking them is here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bad_input_cases import (
    CASES,
    LINE_FROM_FILE,
    N_MICROGRAPHS,
    RUN_CASES,
    Case,
    Error,
    Skip,
    read_pixels,
)
from cryoextract.errors import CryoExtractError
from cryoextract.io.mrc import stack_image_count
from cryoextract.io.star import read_star
from cryoextract.sim.simulate import simulate_dataset
from helpers import cli_env, one_line_error, stack_of


@dataclass
class Run:
    case: Case
    root: Path
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


# --------------------------------------------------------------------------- running
def _command(args: list[str], fsize_limit: int | None) -> list[str]:
    """The CLI command; a file-size limit is set in a wrapper that then execs the CLI.

    (``preexec_fn`` is not safe with threads, and the cases run from a thread pool.)
    """
    command = [sys.executable, "-m", "cryoextract", "extract", *args]
    if fsize_limit is None:
        return command
    wrapper = (
        "import os, resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize_limit}, {fsize_limit}))\n"
        "os.execv(sys.executable, sys.argv[1:])\n"
    )
    return [sys.executable, "-c", wrapper, *command]


def _run_case(case: Case, dataset: Path, base: Path) -> Run:
    root = base / case.name
    shutil.copytree(dataset, root, symlinks=True)
    args = case.setup(root)
    start = time.perf_counter()
    proc = subprocess.run(_command(args, case.fsize_limit), cwd=root, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=180,
                          env=cli_env())
    return Run(case, root, args, proc.returncode, proc.stdout, proc.stderr,
               time.perf_counter() - start)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs_data")
    simulate_dataset(root, n_micrographs=N_MICROGRAPHS, shape_yx=(256, 256),
                     particles_per_micrograph=10, seed=11)
    return root


@pytest.fixture(scope="module")
def runs(request, dataset, tmp_path_factory) -> dict[str, Run]:
    """Run every selected case at once, concurrently."""
    selected = {item.callspec.params["case"].name for item in request.session.items
                if getattr(item, "module", None) is request.module
                and hasattr(item, "callspec") and "case" in item.callspec.params}
    cases = [c for c in RUN_CASES if c.name in selected] or RUN_CASES
    base = tmp_path_factory.mktemp("bad_inputs")
    threads = min(8, (os.cpu_count() or 2) + 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        done = list(pool.map(lambda c: _run_case(c, dataset, base), cases))
    yield {run.case.name: run for run in done}
    for run in done:  # let tmp_path clean-up through (chmod 000 inputs)
        for path in run.root.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o755)


# --------------------------------------------------------------------------- checks
def check_outputs(out: Path) -> int:
    """No temporary files; every STAR row points at a complete stack holding its image.

    Returns the number of particle rows of ``out/particles.star`` (0 if absent).
    """
    if not out.is_dir():
        return 0
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left: {leftovers}"
    for stack in out.rglob("*.mrcs"):
        assert stack_image_count(stack) >= 0, f"partial stack under its final name: {stack}"
        assert np.isfinite(read_pixels(stack)).all(), f"non-finite pixels in {stack}"
    rows = 0
    for star in out.rglob("particles.star"):
        try:
            particles = read_star(star)["particles"]
        except CryoExtractError as exc:
            raise AssertionError(f"the output STAR does not read back: {exc}") from None
        counts: dict[str, int] = {}
        for name in particles["rlnImageName"].astype(str):
            index, _, stack = name.partition("@")
            assert stack and index.isdigit(), f"{star}: rlnImageName {name!r} (shifted row?)"
            counts[stack] = max(counts.get(stack, 0), int(index))
        for stack, needed in counts.items():
            path = stack_of(star, stack)
            assert path.is_file(), f"{star} points at a missing stack {stack}"
            held = stack_image_count(path)
            assert held >= needed, f"{star}: {stack} holds {held} images, rows need {needed}"
        if star.parent == out:
            rows = len(particles)
    return rows


def check_expectation(run: Run) -> None:
    expect = run.case.expect
    where = f"{run.case.name}: rc={run.returncode}\nstderr:\n{run.stderr}\nstdout:\n{run.stdout}"
    assert "Traceback" not in run.stderr + run.stdout, where
    out = run.root / run.case.out
    if isinstance(expect, Error):
        message = one_line_error(run.returncode, run.stdout, run.stderr, where)
        assert expect.names in message, where
        if expect.line is not None:
            line = expect.line
            if line == -1:  # the last line of the cut file
                name = LINE_FROM_FILE[run.case.name]
                line = len((run.root / name).read_text().splitlines())
            assert f"{expect.names}:{line}" in message, where
        assert not (out / "particles.star").exists(), where
        if run.case.keeps is not None:
            assert (run.root / run.case.keeps).is_file(), f"{run.case.keeps} lost\n{where}"
        return
    assert run.returncode == 0, where
    stray = [line for line in run.stderr.splitlines()
             if line.strip() and not line.startswith("warning: ")]
    assert not stray, f"stderr lines that are not warnings: {stray}\n{where}"
    summary = json.loads((out / "summary.json").read_text())
    rows = check_outputs(out)
    assert summary["particles_kept"] == rows, where
    if isinstance(expect, Skip):
        skipped = summary["micrographs_skipped"]
        assert list(skipped) == [expect.micrograph], where
        assert expect.names in skipped[expect.micrograph], where
        assert summary["micrographs_done"] == N_MICROGRAPHS - 1, where
        assert rows > 0, where
        return
    assert summary["micrographs_skipped"] == {}, where
    assert summary["micrographs_done"] == expect.done, where
    if expect.dropped is not None:
        assert any(expect.dropped in reason for reason in summary["particles_dropped"]), where
    if expect.particles is not None:
        assert rows == expect.particles, where


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.name for c in RUN_CASES])
def test_bad_input(case: Case, runs: dict[str, Run]) -> None:
    run = runs[case.name]
    check_expectation(run)
    # whatever happened, nothing under the output is half-written
    check_outputs(run.root / case.out)


def test_enough_cases_and_fast_enough(runs: dict[str, Run]) -> None:
    assert len(RUN_CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    slow = {name: round(run.seconds, 1) for name, run in runs.items() if run.seconds > 60}
    assert not slow, slow
