"""The driver scales linearly: planning and STAR writing at 1x and 4x size, no images read.

A real dataset is 10,000+ micrographs and millions of particles. The driver reads the
micrograph list and the picks, plans one task per micrograph and, at the end, writes the
particles STAR. None of that may hold a quadratic step. Planning 100,000 micrographs
with 10 million picks, and writing a 10-million-row STAR, take minutes, too long for CI,
so the tests measure each step at two sizes, the second four times the first, and check
that time and memory grow by less than 8x: linear growth gives 4x, a quadratic step 16x.
The threshold sits halfway between the two (on a log scale), so a single measurement
would have to be disturbed by 2x to fail a linear driver, and a driver whose time a
quadratic step dominates could not pass. A time ratio over the threshold is measured
once more and each size's faster run kept (the usual defence against a busy machine);
memory is not noisy.

* planning (``cryoextract.pipeline.extraction.extract.prepare_job``: read the micrographs STAR and
  a particles STAR of picks with ``rlnMicrographName``, split the picks, plan the tasks)
  for 2,500 micrographs / 250,000 picks and 10,000 / 1,000,000. The micrograph files
  do not exist: planning never opens them;
* ``cryoextract.io.star.write_star`` of a 250,000 and a 1,000,000-row particles table
  (the columns of a real extraction's ``particles.star``).

Each measurement runs in a fresh subprocess (this file run as a script) so peak memory
is its own; times are CPU times of that process, which other jobs on the machine disturb
less than wall time. ``python tests/test_scale_planning.py full DIR`` runs the full sizes (100,000
micrographs, 10 million picks, a 10-million-row STAR) and prints their times.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

MAX_RATIO = 8.0  # sqrt(4 * 16): between linear (4x) and quadratic (16x) growth
PLAN_SIZES = [(2_500, 250_000), (10_000, 1_000_000)]  # (micrographs, picks)
STAR_ROWS = [250_000, 1_000_000]
FULL = os.environ.get("CRYOEXTRACT_SCALE_FULL", "") not in ("", "0")


# --------------------------------------------------------------------------- inputs
def write_inputs(root: Path, n_micrographs: int, n_picks: int, seed: int = 0) -> None:
    """``micrographs.star`` (RELION 3.1) and ``picks.star`` (one particles STAR of all picks).

    Written with plain pandas, not with cryoextract, so the inputs do not depend on the
    code under test. Micrograph files are not created.
    """
    root.mkdir(parents=True, exist_ok=True)
    names = np.char.add(np.char.add("MotionCorr/job002/Movies/mic_",
                                    np.char.zfill(np.arange(n_micrographs).astype(str), 6)),
                        ".mrc")
    rng = np.random.default_rng(seed)
    micrographs = pd.DataFrame({
        "rlnMicrographName": names, "rlnOpticsGroup": 1,
        "rlnDefocusU": rng.uniform(8000, 25000, n_micrographs).round(2),
        "rlnDefocusAngle": rng.uniform(0, 180, n_micrographs).round(2),
    })
    micrographs["rlnDefocusV"] = micrographs["rlnDefocusU"] - 300
    with open(root / "micrographs.star", "w") as stream:
        stream.write("\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
                     "_rlnMicrographPixelSize #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n"
                     "_rlnAmplitudeContrast #6\nopticsGroup1 1 1.0 300.0 2.7 0.1\n\n"
                     "data_micrographs\n\nloop_\n")
        stream.writelines(f"_{c} #{i}\n" for i, c in enumerate(micrographs.columns, 1))
        micrographs.to_csv(stream, sep="\t", header=False, index=False)
    owner = np.sort(rng.integers(0, n_micrographs, n_picks))
    picks = pd.DataFrame({
        "rlnMicrographName": names[owner],
        "rlnCoordinateX": rng.uniform(0, 4096, n_picks).round(1),
        "rlnCoordinateY": rng.uniform(0, 4096, n_picks).round(1),
        "rlnAutopickFigureOfMerit": rng.uniform(0, 1, n_picks).round(4),
    })
    with open(root / "picks.star", "w") as stream:
        stream.write("\ndata_particles\n\nloop_\n")
        stream.writelines(f"_{c} #{i}\n" for i, c in enumerate(picks.columns, 1))
        picks.to_csv(stream, sep="\t", header=False, index=False)


def particles_table(n: int, n_micrographs: int = 100_000) -> pd.DataFrame:
    """A particles table with the columns of an extraction's ``particles.star``."""
    rng = np.random.default_rng(1)
    owner = np.sort(rng.integers(0, n_micrographs, n))
    index = np.arange(n) - np.searchsorted(owner, owner) + 1  # 1-based within micrograph
    stems = np.char.add("mic_", np.char.zfill(owner.astype(str), 6))
    return pd.DataFrame({
        "rlnCoordinateX": rng.uniform(0, 4096, n).round(0),
        "rlnCoordinateY": rng.uniform(0, 4096, n).round(0),
        "rlnAutopickFigureOfMerit": rng.uniform(0, 1, n),
        "rlnClassNumber": np.zeros(n, dtype=np.int64),
        "rlnOpticsGroup": np.ones(n, dtype=np.int64),
        "rlnDefocusU": rng.uniform(8000, 25000, n),
        "rlnDefocusV": rng.uniform(8000, 25000, n),
        "rlnDefocusAngle": rng.uniform(0, 180, n),
        "rlnCtfBfactor": np.zeros(n),
        "rlnCtfScalefactor": np.ones(n),
        "rlnPhaseShift": np.zeros(n),
        "rlnImageName": np.char.add(np.char.add(np.char.zfill(index.astype(str), 6),
                                                "@Particles/"), np.char.add(stems, ".mrcs")),
        "rlnMicrographName": np.char.add(np.char.add("MotionCorr/job002/Movies/", stems),
                                         ".mrc"),
        "rlnOriginXAngst": rng.uniform(-0.5, 0.5, n),
        "rlnOriginYAngst": rng.uniform(-0.5, 0.5, n),
    })


# --------------------------------------------------------------------------- measuring
class PeakRss:
    """Peak resident memory (bytes) of this process while the block runs (sampled).

    Freed heap memory is handed back to the kernel first (glibc ``malloc_trim``), so the
    growth counts what the block allocates, not what it reuses of earlier garbage.
    """

    def __enter__(self) -> PeakRss:
        gc.collect()
        _malloc_trim()
        self.before = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.before


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _rss() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure_plan(root: Path) -> dict[str, float]:
    from cryoextract.pipeline.extraction.extract import ExtractInputs, prepare_job
    from cryoextract.pipeline.extraction.params import ExtractParams
    from cryoextract.pipeline.frame import JobPaths

    os.chdir(root)
    inputs = ExtractInputs(micrographs="micrographs.star", coords="picks.star")
    params = ExtractParams(box_px=256, out_box_px=128)
    wall, cpu = time.perf_counter(), time.process_time()
    with PeakRss() as memory:
        _, plan, _ = prepare_job(inputs, params, JobPaths(root / "out"))
    return {
        "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
        "rss_growth": memory.growth, "tasks": len(plan.tasks),
        "picks": sum(len(t.picks) for t in plan.tasks),
        "opened": sum(Path(t.micrograph_path).exists() for t in plan.tasks[:100]),
    }


def _measure_write(root: Path, rows: int) -> dict[str, float]:
    from cryoextract.io.star import write_star

    table = particles_table(rows)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnImagePixelSize": [2.0], "rlnImageSize": [128]})
    path = root / f"particles_{rows}.star"
    wall, cpu = time.perf_counter(), time.process_time()
    with PeakRss() as memory:
        write_star(path, {"optics": optics, "particles": table})
    result = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
              "rss_growth": memory.growth, "bytes": path.stat().st_size}
    with open(path) as stream:
        result["lines"] = sum(1 for _ in stream)
    path.unlink()
    return result


def measure(*args: str) -> dict[str, float]:
    """Run one measurement of this file, as a script, in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(what: str, sizes: list[str], results: list[dict[str, float]]) -> str:
    lines = [f"{what}:"]
    for size, r in zip(sizes, results, strict=True):
        lines.append(f"  {size}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                     f"+{r['rss_growth'] / 2**20:.0f} MiB")
    return "\n".join(lines)


# --------------------------------------------------------------------------- tests
def assert_linear(what: str, sizes: list[str], runs: list[Callable[[], dict[str, float]]]
                  ) -> list[dict[str, float]]:
    """Measure the small and the large size; their CPU time and memory must grow linearly.

    A time ratio over ``MAX_RATIO`` is measured once more, keeping each size's faster run.
    """
    results = [run() for run in runs]
    if results[1]["cpu_s"] / results[0]["cpu_s"] >= MAX_RATIO:
        again = [run() for run in runs]
        for result, repeat in zip(results, again, strict=True):
            result["cpu_s"] = min(result["cpu_s"], repeat["cpu_s"])
    print(_report(what, sizes, results))
    small, large = results
    assert large["cpu_s"] / small["cpu_s"] < MAX_RATIO, (small, large)
    assert large["rss_growth"] / max(small["rss_growth"], 2**20) < MAX_RATIO, (small, large)
    return results


def test_planning_grows_linearly(tmp_path: Path) -> None:
    roots = []
    for n_micrographs, n_picks in PLAN_SIZES:
        roots.append(tmp_path / f"plan_{n_micrographs}")
        write_inputs(roots[-1], n_micrographs, n_picks)
    results = assert_linear(
        "planning", [f"{m} micrographs, {p} picks" for m, p in PLAN_SIZES],
        [partial(measure, "plan", str(root)) for root in roots])
    for (n_micrographs, n_picks), result in zip(PLAN_SIZES, results, strict=True):
        assert result["tasks"] == n_micrographs
        assert result["picks"] == n_picks
        assert result["opened"] == 0  # the micrographs do not exist and were not needed


def test_star_writing_grows_linearly(tmp_path: Path) -> None:
    results = assert_linear(
        "write_star", [f"{rows} rows" for rows in STAR_ROWS],
        [partial(measure, "write", str(tmp_path), str(rows)) for rows in STAR_ROWS])
    for rows, result in zip(STAR_ROWS, results, strict=True):
        assert result["lines"] > rows


def full_size_check(tmp_path: Path) -> None:
    """The issue's full sizes (minutes; not a CI test): ``python tests/test_scale_planning.py
    full DIR``."""
    write_inputs(tmp_path / "full", 100_000, 10_000_000)
    plan = measure("plan", str(tmp_path / "full"))
    assert plan["tasks"] == 100_000 and plan["picks"] == 10_000_000
    write = measure("write", str(tmp_path), "10000000")
    print(_report("full size", ["plan 100,000 micrographs, 10M picks", "write_star 10M rows"],
                  [plan, write]))


if __name__ == "__main__":
    mode, directory, *rest = sys.argv[1:]
    if mode == "full":
        full_size_check(Path(directory))
        sys.exit(0)
    if mode == "plan":
        outcome = _measure_plan(Path(directory))
    else:
        outcome = _measure_write(Path(directory), int(rest[0]))
    print(json.dumps(outcome))
