"""Benchmark: cryoextract vs RELION 3.1 ``relion_preprocess --extract`` on real micrographs.

Builds a dataset from the full-size real micrograph
``../shared/data/real/mrcfile_1.5.4_sdist/fei-extended.mrc`` (relative to the repository
root): ``--copies`` copies of it, ``--picks`` random picks on each (seeded, every box fully
inside the micrograph), RELION coordinate STAR files and a RELION 3.1 micrographs STAR.
Then times, after one untimed warm-up run of each (page cache warm), ``--repeats`` runs of

* RELION, one process: ``relion_preprocess --extract --extract_size 256 --scale 128
  --norm --bg_radius 48 --invert_contrast``
* cryoextract with ``--workers 2`` and with ``--workers 1`` (same operations: box 256,
  Fourier crop to 128, ramp normalisation with background radius 48, inverted contrast)

alternating the tools, and records wall time and peak resident memory per process (the
kernel's high-water mark ``VmHWM`` of every process in the tree, read every 20 ms).
``ru_maxrss`` from ``wait4`` is not used: after vfork + exec it carries the high-water
mark of the process that started the command (here the benchmark itself). Finally
checks that both wrote every particle and that the stacks agree pixel for pixel.

``--scale-test`` instead runs cryoextract alone on 4 and on 32 micrographs and prints
the peak RSS of the main process and of the workers for both.

Needs psutil (``.venv/bin/pip install psutil``). Run from anywhere::

    .venv/bin/python benchmarks/extract_vs_relion.py [--workdir DIR] [--copies 16]
        [--picks 300] [--repeats 3] [--keep] [--scale-test]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

try:
    import psutil
except ImportError:  # pragma: no cover - reported at start-up
    psutil = None

REPO = Path(__file__).resolve().parents[1]
MICROGRAPH = REPO.parent / "shared/data/real/mrcfile_1.5.4_sdist/fei-extended.mrc"
BOX = 256
BIN_TO = 128
BG_RADIUS = 48
PIXEL_SIZE = 0.8538
POLL_S = 0.020
MIN_CORRELATION = 0.9999
MAX_ABS_DIFF = 1e-3
MIB = 2**20
INT16_MAX = 32767


# --------------------------------------------------------------------------- dataset


def build_dataset(workdir: Path, copies: int, picks: int, seed: int) -> tuple[int, int]:
    """Write Micrographs/, Picks/Micrographs/ and micrographs.star under ``workdir``.

    Returns the micrograph shape (ny, nx).
    """
    with mrcfile.open(MICROGRAPH, permissive=True) as mrc:
        ny, nx = mrc.data.shape[-2:]
        # RELION 3.1.3 reads MRC mode 6 (uint16) as signed int16: pixels above 32767 wrap
        # to negative values. Keep them out of every box so the comparison is meaningful.
        wrapped = np.argwhere(mrc.data > INT16_MAX) if mrc.data.dtype == np.uint16 else []
    mic_dir = workdir / "Micrographs"
    pick_dir = workdir / "Picks" / "Micrographs"
    for d in (mic_dir, pick_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    half = BOX // 2
    # box spans [c - half, c + half - 1] around c = floor(pick): keep it inside
    lo, hi_x, hi_y = half, nx - half, ny - half
    names = []
    for i in range(copies):
        name = f"mic_{i:03d}"
        target = mic_dir / f"{name}.mrc"
        try:
            os.link(MICROGRAPH, target)
        except OSError:
            shutil.copyfile(MICROGRAPH, target)
        cx, cy = random_centres(rng, picks, (lo, hi_x), (lo, hi_y), wrapped)
        fx = np.minimum(rng.random(picks), 0.999)
        fy = np.minimum(rng.random(picks), 0.999)
        fom = rng.random(picks)
        lines = ["", "data_", "", "loop_", "_rlnCoordinateX #1", "_rlnCoordinateY #2",
                 "_rlnAutopickFigureOfMerit #3"]
        lines += [f"{x + a:12.3f} {y + b:12.3f} {f:10.6f}"
                  for x, y, a, b, f in zip(cx, cy, fx, fy, fom, strict=True)]
        (pick_dir / f"{name}_pick.star").write_text("\n".join(lines) + "\n\n")
        names.append(f"Micrographs/{name}.mrc")
    star = [
        "", "# version 30001", "", "data_optics", "", "loop_",
        "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2", "_rlnMicrographPixelSize #3",
        "_rlnVoltage #4", "_rlnSphericalAberration #5", "_rlnAmplitudeContrast #6",
        f"opticsGroup1 1 {PIXEL_SIZE:.6f} 300.000000 2.700000 0.100000",
        "", "", "# version 30001", "", "data_micrographs", "", "loop_",
        "_rlnMicrographName #1", "_rlnOpticsGroup #2",
        *(f"{n} 1" for n in names),
    ]
    (workdir / "micrographs.star").write_text("\n".join(star) + "\n\n")
    return int(ny), int(nx), len(wrapped)


def random_centres(
    rng: np.random.Generator, n: int, xr: tuple[int, int], yr: tuple[int, int],
    avoid: np.ndarray | list,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct integer box centres, uniform in the ranges, no box holding ``avoid``.

    Distinct centres make (micrograph, floor(pick)) identify a particle.
    """
    width = xr[1] - xr[0] + 1
    size = width * (yr[1] - yr[0] + 1)
    half = BOX // 2
    while True:
        flat = rng.choice(size, size=min(size, 2 * n), replace=False)
        cx = xr[0] + flat % width
        cy = yr[0] + flat // width
        keep = np.ones(len(flat), dtype=bool)
        for y, x in avoid:  # box spans [c - half, c + half - 1]
            keep &= ~((cx - half <= x) & (x <= cx + half - 1)
                      & (cy - half <= y) & (y <= cy + half - 1))
        if keep.sum() >= n:
            return cx[keep][:n], cy[keep][:n]


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    wall_s: float
    main_rss: int  # peak RSS (VmHWM) of the process started, bytes
    worker_rss: int  # largest peak RSS (VmHWM) over its descendants, 0 if none
    n_workers_seen: int


def peak_rss(p: psutil.Process) -> int:
    """Peak RSS so far of a live process, bytes (0 if gone).

    The kernel's high-water mark ``VmHWM`` where /proc has it (exact, so a short spike
    between two polls is not missed), else the current RSS.
    """
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


def run_measured(cmd: list[str], cwd: Path, log: Path) -> Run:
    """Run ``cmd``; wall time around start..exit, peak RSS of every process in its tree."""
    peaks: dict[int, int] = {}
    stop = threading.Event()

    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

        def poll() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    tree = [root]
                for p in tree:
                    rss = peak_rss(p)
                    if rss > peaks.get(p.pid, 0):
                        peaks[p.pid] = rss
                stop.wait(POLL_S)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status = os.waitpid(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    workers = [v for pid, v in peaks.items() if pid != proc.pid]
    return Run(
        wall_s=wall,
        main_rss=peaks.get(proc.pid, 0),
        worker_rss=max(workers, default=0),
        n_workers_seen=len(workers),
    )


# --------------------------------------------------------------------------- tools


@dataclass
class Tool:
    label: str
    workers: int
    cmd: list[str]
    out_dir: str
    runs: list[Run] = field(default_factory=list)

    @property
    def is_relion(self) -> bool:
        return self.label == "RELION"


def relion_tool(relion: str) -> Tool:
    return Tool("RELION", 1, [
        relion, "--i", "micrographs.star", "--coord_dir", "Picks/",
        "--coord_suffix", "_pick.star", "--part_star", "Relion/particles.star",
        "--part_dir", "Relion/", "--extract", "--extract_size", str(BOX),
        "--scale", str(BIN_TO), "--norm", "--bg_radius", str(BG_RADIUS), "--invert_contrast",
    ], "Relion")


def ours_tool(workers: int) -> Tool:
    return Tool("cryoextract", workers, [
        sys.executable, "-m", "cryoextract", "extract", "--micrographs", "micrographs.star",
        "--coords-dir", "Picks", "--coords-suffix", "_pick.star", "--box", str(BOX),
        "--bin-to", str(BIN_TO), "--bg-radius", str(BG_RADIUS), "--out", "Ours",
        "--overwrite", "--no-report", "--workers", str(workers),
    ], "Ours")


def run_tool(tool: Tool, workdir: Path, tag: str) -> Run:
    # start every run from an empty output directory (outside the timing)
    shutil.rmtree(workdir / tool.out_dir, ignore_errors=True)
    log = workdir / "logs" / f"{tool.label}_w{tool.workers}_{tag}.log"
    return run_measured(tool.cmd, workdir, log)


# --------------------------------------------------------------------------- checking


def read_particles(star: Path) -> pd.DataFrame:
    blocks = starfile.read(star, always_dict=True)
    for block in blocks.values():
        if hasattr(block, "columns") and "rlnImageName" in block.columns:
            return block
    raise RuntimeError(f"no particles block in {star}")


def index_particles(star: Path, base: Path) -> dict[tuple[str, int, int], tuple[Path, int]]:
    """(micrograph stem, floor x, floor y) -> (stack path, 0-based slice)."""
    table = read_particles(star)
    index: dict[tuple[str, int, int], tuple[Path, int]] = {}
    for name, x, y, image in zip(table["rlnMicrographName"], table["rlnCoordinateX"],
                                 table["rlnCoordinateY"], table["rlnImageName"], strict=True):
        slice_no, path = str(image).split("@", 1)
        key = (Path(str(name)).stem, int(np.floor(float(x))), int(np.floor(float(y))))
        if key in index:
            raise RuntimeError(f"duplicate particle {key} in {star}")
        index[key] = (base / path, int(slice_no) - 1)
    return index


def count_particles(star: Path) -> int:
    return len(read_particles(star))


@dataclass
class Agreement:
    n_relion: int
    n_ours: int
    n_matched: int
    min_corr: float
    max_abs_diff: float
    median_abs_diff: float

    @property
    def ok(self) -> bool:
        return (self.n_matched == self.n_relion == self.n_ours
                and self.min_corr >= MIN_CORRELATION and self.max_abs_diff <= MAX_ABS_DIFF)


def compare(workdir: Path, ours_dir: str) -> Agreement:
    relion = index_particles(workdir / "Relion" / "particles.star", workdir)
    ours = index_particles(workdir / ours_dir / "particles.star", workdir / ours_dir)
    keys = sorted(set(relion) & set(ours))
    stacks: dict[Path, np.ndarray] = {}

    def image(path: Path, i: int) -> np.ndarray:
        if path not in stacks:
            if len(stacks) > 4:  # keep a few stacks in memory at a time
                stacks.pop(next(iter(stacks)))
            with mrcfile.open(path, permissive=True) as mrc:
                stacks[path] = np.asarray(mrc.data, dtype=np.float64)
        return stacks[path][i]

    corrs, diffs, med = [], [], []
    for key in keys:
        a = image(*relion[key])
        b = image(*ours[key])
        if a.shape != b.shape:
            raise RuntimeError(f"shape mismatch for {key}: {a.shape} vs {b.shape}")
        corrs.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
        d = np.abs(a - b)
        diffs.append(float(d.max()))
        med.append(float(np.median(d)))
    return Agreement(
        n_relion=len(relion), n_ours=len(ours), n_matched=len(keys),
        min_corr=min(corrs, default=float("nan")),
        max_abs_diff=max(diffs, default=float("nan")),
        median_abs_diff=float(np.median(med)) if med else float("nan"),
    )


# --------------------------------------------------------------------------- reporting


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (f"nproc {affinity} (os.cpu_count {os.cpu_count()}), CPU {model}, "
            f"RAM {mem:.1f} GiB, {platform.platform()}, Python {platform.python_version()}, "
            f"numpy {np.__version__}")


def relion_version(relion: str) -> str:
    try:
        out = subprocess.run([relion, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return " ".join(out.split()) or "unknown"


def mib(n: int) -> str:
    return f"{n / MIB:7.0f}" if n else "      -"


def print_table(tools: list[Tool], n_particles: int) -> None:
    relion = next((t for t in tools if t.is_relion), None)
    relion_med = statistics.median(r.wall_s for r in relion.runs) if relion else None
    header = (f"{'tool':<12} {'workers':>7} {'median s':>9} {'min s':>7} {'part/s':>8} "
              f"{'RSS main':>9} {'RSS wrk':>8} {'RELION/ours':>11}")
    print(header)
    print("-" * len(header))
    for t in tools:
        walls = [r.wall_s for r in t.runs]
        med = statistics.median(walls)
        ratio = "" if t.is_relion or relion_med is None else f"{relion_med / med:11.2f}"
        main = max(r.main_rss for r in t.runs)
        wrk = max(r.worker_rss for r in t.runs)
        print(f"{t.label:<12} {t.workers:>7} {med:9.2f} {min(walls):7.2f} "
              f"{n_particles / med:8.0f} {mib(main):>9} {mib(wrk):>8} {ratio:>11}")
    print("  (wall s over the timed runs; part/s from the median; RSS in MiB, peak over runs:")
    print("   'RSS main' = the process started, 'RSS wrk' = largest pool worker, both the")
    print("   kernel's VmHWM read every 20 ms)")
    for t in tools:
        print(f"  {t.label} w{t.workers} walls: " + ", ".join(f"{r.wall_s:.2f}" for r in t.runs))


# --------------------------------------------------------------------------- modes


def benchmark(args: argparse.Namespace, workdir: Path, relion: str) -> int:
    n_expected = args.copies * args.picks
    ny, nx, n_wrapped = build_dataset(workdir, args.copies, args.picks, args.seed)
    print(f"dataset: {args.copies} x {MICROGRAPH.name} ({nx}x{ny} px, "
          f"{MICROGRAPH.stat().st_size / MIB:.1f} MiB each), {args.picks} picks each = "
          f"{n_expected} particles; box {BOX} -> {BIN_TO}, bg radius {BG_RADIUS}, "
          f"ramp norm, inverted contrast")
    if n_wrapped:
        print(f"note: {n_wrapped} pixel(s) of the micrograph exceed {INT16_MAX}; RELION 3.1.3 "
              f"reads MRC mode 6 (uint16) as int16, so picks were drawn with no box holding "
              f"them")
    print(f"workdir: {workdir}")
    tools = [relion_tool(relion), ours_tool(2), ours_tool(1)]
    print("warm-up (untimed) ...", flush=True)
    for t in tools:
        run_tool(t, workdir, "warmup")
    agreements: dict[int, Agreement] = {}
    ok = True
    for rep in range(args.repeats):
        for t in tools:
            run = run_tool(t, workdir, f"r{rep}")
            t.runs.append(run)
            n = count_particles(workdir / t.out_dir / "particles.star")
            print(f"  repeat {rep + 1}/{args.repeats} {t.label:<11} w{t.workers}: "
                  f"{run.wall_s:6.2f} s, {n} particles", flush=True)
            if n != n_expected:
                print(f"ERROR: {t.label} wrote {n} particles, expected {n_expected}")
                ok = False
            if not t.is_relion and rep == args.repeats - 1:
                agreements[t.workers] = compare(workdir, t.out_dir)
    print()
    print_table(tools, n_expected)
    print()
    print(f"agreement with RELION (matched by micrograph + floor of the pick; "
          f"thresholds r >= {MIN_CORRELATION}, max |diff| <= {MAX_ABS_DIFF:g}):")
    for workers, a in agreements.items():
        verdict = "OK" if a.ok else "FAIL"
        print(f"  cryoextract w{workers}: RELION {a.n_relion}, ours {a.n_ours}, matched "
              f"{a.n_matched}; min Pearson r {a.min_corr:.10f} (1 - r {1 - a.min_corr:.1e}); "
              f"max |diff| {a.max_abs_diff:.2e}; median |diff| {a.median_abs_diff:.2e}  {verdict}")
        ok = ok and a.ok
    return 0 if ok else 1


def scale_test(args: argparse.Namespace, workdir: Path) -> int:
    ok = True
    rows = []
    for copies in (4, 32):
        sub = workdir / f"scale_{copies}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "logs").mkdir(exist_ok=True)
        build_dataset(sub, copies, args.picks, args.seed)
        tool = ours_tool(2)
        run_tool(tool, sub, "warmup")
        run = run_tool(tool, sub, "scale")
        n = count_particles(sub / tool.out_dir / "particles.star")
        ok = ok and n == copies * args.picks
        rows.append((copies, n, run))
        if not args.keep:
            shutil.rmtree(sub, ignore_errors=True)
    print(f"scale test: cryoextract --workers 2, {args.picks} picks per micrograph, box "
          f"{BOX} -> {BIN_TO} (one warm-up, then one measured run each)")
    header = (f"{'micrographs':>11} {'particles':>9} {'wall s':>7} {'RSS main':>9} "
              f"{'RSS wrk':>8} {'workers seen':>12}")
    print(header)
    print("-" * len(header))
    for copies, n, run in rows:
        print(f"{copies:>11} {n:>9} {run.wall_s:7.2f} {mib(run.main_rss):>9} "
              f"{mib(run.worker_rss):>8} {run.n_workers_seen:>12}")
    print("  (RSS in MiB: 'RSS main' = the cryoextract process, 'RSS wrk' = largest pool")
    print("   worker, both the kernel's VmHWM read every 20 ms)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="build the dataset here (default: temp)")
    parser.add_argument("--copies", type=int, default=16, help="micrographs (default 16)")
    parser.add_argument("--picks", type=int, default=300, help="picks per micrograph (300)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool (3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the picks (0)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--scale-test", action="store_true",
                        help="only run cryoextract on 4 and 32 micrographs and compare memory")
    args = parser.parse_args(argv)

    if psutil is None:
        print("error: psutil is needed: .venv/bin/pip install psutil", file=sys.stderr)
        return 2
    if not MICROGRAPH.is_file():
        print(f"error: real micrograph not found: {MICROGRAPH}\n(expected next to the "
              f"repository, in ../shared/data/real/)", file=sys.stderr)
        return 2
    relion = shutil.which("relion_preprocess")
    if relion is None and not args.scale_test:
        print("error: relion_preprocess not found on PATH (RELION 3.1 is needed)",
              file=sys.stderr)
        return 2
    if min(args.copies, args.picks, args.repeats) < 1:
        parser.error("--copies, --picks and --repeats must be >= 1")

    if args.workdir is not None:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        remove = False
    else:
        workdir = Path(tempfile.mkdtemp(prefix="cryoextract_bench_"))
        remove = not args.keep
    (workdir / "logs").mkdir(exist_ok=True)

    print(f"date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    if relion is not None:
        print(f"RELION: {relion} ({relion_version(relion)})")
    print(f"cryoextract: {sys.executable} -m cryoextract")
    try:
        if args.scale_test:
            return scale_test(args, workdir)
        return benchmark(args, workdir, relion)
    finally:
        if remove:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept: {workdir}")


if __name__ == "__main__":
    sys.exit(main())
