"""Benchmark: extraction throughput vs workers and dataset size, local pool vs Dask.

Builds datasets of 16, 64 and 256 micrographs (``--counts``) from ``--unique`` simulated
micrographs (``cryoextract.sim.simulate.simulate_dataset``, ``--size`` px square,
``--particles`` picks each), hard-linked under new names, with one RELION coordinate
STAR per micrograph and a micrographs STAR. ``--source real`` uses hard links of the real
micrograph ``../shared/data/real/mrcfile_1.5.4_sdist/fei-extended.mrc`` (3710 x 3838 px,
uint16) with random picks instead.

For every size it runs the ``cryoextract extract`` command (a subprocess, as a user
would) with

* ``--workers 1`` (in-process),
* ``--workers 2`` (local process pool),
* ``--dask-scheduler`` of a ``distributed.LocalCluster(n_workers=2, threads_per_worker=1,
  processes=True)`` on loopback, started once by this script,

after one untimed warm-up run of each mode (page cache warm, Dask workers have imported
cryoextract), and prints a table of wall time, CPU time and particles/s (particles
written / wall time of the command, process start-up included), the best of
``--repeats`` runs. CPU time is that of the command's process tree plus, for Dask, of the
cluster (workers, nannies, scheduler): on a shared machine it is steadier than wall time.
The Dask overhead over the local pool at 64 micrographs is reported at the end (goal:
under 10 %), with the machine load (1-minute load average) before and after each run.
The extract command itself tunes the Dask workers' allocator and pauses their
statistical profiler for the run (a worker plugin), so the cluster starts with Dask's
defaults.
The QC report is switched off (``--no-report``): it is the same work whatever runs the
micrographs. Outputs of the Dask and local runs are checked to be byte-identical.

Needs ``distributed`` and psutil (``pip install -e '.[test,dask]'``). Run from anywhere::

    .venv/bin/python benchmarks/scaling.py [--counts 16 64 256] [--repeats 1]
        [--size 1024] [--particles 100] [--box 128] [--workdir DIR] [--keep]
        [--source sim|real]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import psutil
except ImportError:  # pragma: no cover - reported at start-up
    psutil = None

REPO = Path(__file__).resolve().parents[1]
REAL_MICROGRAPH = REPO.parent / "shared/data/real/mrcfile_1.5.4_sdist/fei-extended.mrc"
REAL_SHAPE_YX = (3838, 3710)
REAL_PIXEL_SIZE = 0.8538
GOAL_OVERHEAD = 0.10


@dataclass
class Run:
    mode: str
    count: int
    wall_s: float
    cpu_s: float
    particles: int
    load_before: float
    load_after: float

    @property
    def rate(self) -> float:
        return self.particles / self.wall_s


# --------------------------------------------------------------------------- datasets
def simulated_base(workdir: Path, unique: int, size: int, particles: int) -> Path:
    from cryoextract.sim.simulate import simulate_dataset

    base = workdir / "base"
    simulate_dataset(base, n_micrographs=unique, shape_yx=(size, size),
                     particles_per_micrograph=particles, pixel_size_angstrom=1.5, seed=0)
    return base


def real_base(workdir: Path, unique: int, particles: int, box: int) -> Path:
    """Hard links of the real micrograph with random picks (boxes fully inside)."""
    if not REAL_MICROGRAPH.is_file():
        sys.exit(f"error: {REAL_MICROGRAPH} not found (needed by --source real)")
    base = workdir / "base"
    (base / "Micrographs").mkdir(parents=True)
    (base / "Picks").mkdir()
    rng = np.random.default_rng(0)
    ny, nx = REAL_SHAPE_YX
    for i in range(1, unique + 1):
        _link(REAL_MICROGRAPH, base / "Micrographs" / f"mic_{i:03d}.mrc")
        xy = rng.uniform(box, [nx - box, ny - box], size=(particles, 2))
        rows = "".join(f"{x:.2f}\t{y:.2f}\n" for x, y in xy)
        (base / "Picks" / f"mic_{i:03d}_autopick.star").write_text(
            f"\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n{rows}")
    _write_micrographs_star(base / "micrographs.star",
                            [f"Micrographs/mic_{i:03d}.mrc" for i in range(1, unique + 1)],
                            REAL_PIXEL_SIZE)
    return base


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_micrographs_star(path: Path, names: list[str], pixel_size: float) -> None:
    rows = "".join(f"{name}\t1\n" for name in names)
    path.write_text(
        "\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
        "_rlnMicrographPixelSize #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n"
        f"_rlnAmplitudeContrast #6\nopticsGroup1\t1\t{pixel_size}\t300.0\t2.7\t0.1\n\n"
        "data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n" + rows)


def _pixel_size(base: Path) -> float:
    text = (base / "micrographs.star").read_text().splitlines()
    header = [line.split()[0] for line in text if line.startswith("_rln")]
    values = next(line.split() for line in text if line.startswith("opticsGroup"))
    return float(values[header.index("_rlnMicrographPixelSize")])


def grown_dataset(base: Path, workdir: Path, count: int) -> Path:
    """``count`` micrographs: hard links of the base micrographs (and picks) cycled."""
    root = workdir / f"mics_{count}"
    (root / "Micrographs").mkdir(parents=True)
    (root / "Picks").mkdir()
    sources = sorted((base / "Micrographs").glob("*.mrc"))
    names = []
    for i in range(count):
        source = sources[i % len(sources)]
        name = f"mic_{i + 1:04d}"
        _link(source, root / "Micrographs" / f"{name}.mrc")
        _link(base / "Picks" / f"{source.stem}_autopick.star",
              root / "Picks" / f"{name}_autopick.star")
        names.append(f"Micrographs/{name}.mrc")
    _write_micrographs_star(root / "micrographs.star", names, _pixel_size(base))
    return root


# --------------------------------------------------------------------------- runs
def extract(root: Path, out: str, box: int, bin_to: int | None, mode: list[str]) -> tuple[
    float, int
]:
    """Run the CLI once; (wall seconds, particles written)."""
    shutil.rmtree(root / out, ignore_errors=True)
    command = [sys.executable, "-m", "cryoextract", "extract", "--micrographs",
               "micrographs.star", "--coords-dir", "Picks", "--coords-suffix",
               "_autopick.star", "--box", str(box), "--out", out, "--quiet", "--no-report",
               *(["--bin-to", str(bin_to)] if bin_to else []), *mode]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{proc.stderr}")
    summary = json.loads((root / out / "summary.json").read_text())
    if summary["micrographs_skipped"]:
        sys.exit(f"error: micrographs skipped: {summary['micrographs_skipped']}")
    return wall, int(summary["particles_kept"])


class CpuMeter:
    """CPU seconds of a run: the command's process tree and, for Dask, the cluster.

    The command's tree (its pool workers included) comes from ``RUSAGE_CHILDREN``; the
    Dask workers and nannies are read with psutil, the scheduler runs in this process.
    """

    def __init__(self, cluster_pids: list[int]):
        self.cluster_pids = cluster_pids

    def sample(self, with_cluster: bool) -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = usage.ru_utime + usage.ru_stime
        if with_cluster:
            total += time.process_time()
            for pid in self.cluster_pids:
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += times.user + times.system
        return total


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.relative_to(out).as_posix().startswith(".cryoextract")
            and p.name != "summary.json"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--source", choices=["sim", "real"], default="sim")
    parser.add_argument("--unique", type=int, default=16,
                        help="distinct micrographs behind the hard links")
    parser.add_argument("--size", type=int, default=1024, help="simulated micrograph side")
    parser.add_argument("--particles", type=int, default=100, help="picks per micrograph")
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--bin-to", type=int, default=64)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if psutil is None:
        sys.exit("error: needs psutil (.venv/bin/pip install psutil)")

    from distributed import Client, LocalCluster

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cryoextract_scaling_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; workdir {workdir}")
    print(f"# load average at start: {os.getloadavg()[0]:.2f}")
    if args.source == "sim":
        base = simulated_base(workdir, args.unique, args.size, args.particles)
        what = f"simulated {args.size}x{args.size} float32"
    else:
        base = real_base(workdir, args.unique, args.particles, args.box)
        what = "real 3710x3838 uint16 (fei-extended.mrc)"
    print(f"# micrographs: {what}, {args.particles} picks each, box {args.box} -> "
          f"{args.bin_to or args.box} px")
    datasets = {n: grown_dataset(base, workdir, n) for n in args.counts}

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    client = Client(cluster)
    workers = list(client.run(os.getpid).values())
    meter = CpuMeter(workers + [psutil.Process(pid).ppid() for pid in workers])
    scheduler = ["--dask-scheduler", cluster.scheduler_address]
    modes = {"local x1": ["--workers", "1"], "local x2": ["--workers", "2"],
             "dask 2 workers": scheduler}
    runs: list[Run] = []
    try:
        warm = datasets[min(args.counts)]
        for mode in modes.values():  # warm-up: page cache, worker imports
            extract(warm, "warmup", args.box, args.bin_to, mode)
        for count in args.counts:
            root = datasets[count]
            for _ in range(args.repeats):
                for name, mode in modes.items():
                    dask = name.startswith("dask")
                    before, cpu = os.getloadavg()[0], meter.sample(dask)
                    wall, particles = extract(root, name.replace(" ", "_"), args.box,
                                              args.bin_to, mode)
                    cpu = meter.sample(dask) - cpu
                    runs.append(Run(name, count, wall, cpu, particles, before,
                                    os.getloadavg()[0]))
                    print(f"  {count:4d} micrographs  {name:15s} {wall:7.2f} s wall "
                          f"{cpu:7.2f} s CPU {particles / wall:9.0f} particles/s  "
                          f"(load {before:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
            same = outputs(root / "dask_2_workers") == outputs(root / "local_x2")
            if not same:
                print(f"  WARNING: Dask and local outputs differ at {count} micrographs")
    finally:
        client.close()
        cluster.close()

    best = {}
    for run in runs:
        key = (run.count, run.mode)
        if key not in best or run.wall_s < best[key].wall_s:
            best[key] = run
    print()
    print("wall s / CPU s / particles per wall s (best of the repeats):")
    print(f"| micrographs | particles | {' | '.join(modes)} |")
    print("|" + "---|" * (2 + len(modes)))
    for count in args.counts:
        cells = [f"{best[(count, m)].wall_s:.2f} / {best[(count, m)].cpu_s:.2f} / "
                 f"{best[(count, m)].rate:,.0f}" for m in modes]
        print(f"| {count} | {best[(count, 'local x1')].particles} | {' | '.join(cells)} |")
    print()
    for count in args.counts:
        local, dask = best[(count, "local x2")], best[(count, "dask 2 workers")]
        speedup = best[(count, "local x1")].wall_s / local.wall_s
        overhead = dask.wall_s / local.wall_s - 1
        cpu_overhead = dask.cpu_s / local.cpu_s - 1
        print(f"{count:4d} micrographs: 2 local workers {speedup:.2f}x faster than 1; "
              f"Dask over the local pool: {overhead:+.1%} wall, {cpu_overhead:+.1%} CPU")
    loads = [r.load_before for r in runs] + [r.load_after for r in runs]
    print(f"load average during the runs: {min(loads):.2f} .. {max(loads):.2f} "
          f"({os.cpu_count()} cores)")
    status = 0
    if 64 in args.counts:
        overhead = best[(64, "dask 2 workers")].wall_s / best[(64, "local x2")].wall_s - 1
        ok = overhead < GOAL_OVERHEAD
        print(f"Dask overhead at 64 micrographs: {overhead:+.1%} "
              f"({'within' if ok else 'above'} the {GOAL_OVERHEAD:.0%} goal)")
        status = 0 if ok else 1
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
