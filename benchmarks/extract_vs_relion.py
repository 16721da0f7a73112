"""Benchmark: the default ``cryoextract extract`` vs RELION 3.1 ``relion_preprocess --extract``.

For each micrograph shape (``--shapes``):

* ``real``: the real 3710x3838 uint16 micrograph
  ``../shared/data/real/mrcfile_1.5.4_sdist/fei-extended.mrc`` (relative to the repository
  root), 0.8538 Å/px;
* ``sim4096``: 4096x4096 uint16 micrographs from the project's simulator
  (``cryoextract simulate --size 4096 --dtype uint16``), 1.5 Å/px;

it builds ``--copies`` micrographs (hard links of the source ones), ``--picks`` random picks
on each (seeded; every 256 px box inside the micrograph; no box holding a pixel above
32767, which RELION 3.1 reads as a negative int16), RELION coordinate STAR files and a
RELION 3.1 micrographs STAR. Then, after one untimed warm-up run of each (page cache
warm), it times ``--repeats`` rounds of, in turn:

* RELION, one process: ``relion_preprocess --extract --extract_size 256 --scale 128
  --norm --bg_radius 48 --invert_contrast``;
* cryoextract exactly as the README shows it (console script, descriptors and QC report
  on, all cores): ``cryoextract extract --micrographs micrographs.star --coords-dir Picks
  --coords-suffix _pick.star --box 256 --bin-to 128 --out Ours`` (ramp normalisation,
  background radius 0.375 x 128 = 48 and inverted contrast are its defaults);
* the same with ``--workers 1`` (per core);
* the naive floor ``benchmarks/floor_extract.py`` (read, cut, one batched
  ``rfft2``/``irfft2`` Fourier crop, write one stack per micrograph; 2 processes).

Each run starts from an empty output directory. The report's share is measured inside
the default run itself: the time its page states it took (``written ... in 0.12 s``,
from reading the run to writing the page; the workers' thumbnails are part of their
micrographs' time) over that run's wall time. Measured per run: wall time (start to
reaped), CPU seconds (user + system of the process and every child it waited for, from
``wait4``), and peak RSS per process (the kernel's ``VmHWM`` of the process and of every
descendant, read every 20 ms; ``ru_maxrss`` is not used: after vfork + exec it carries the
benchmark's own high-water mark). It also times ``cryoextract --help``, ``cryoextract
extract --help`` and ``python -c "import numpy"`` (median of 7), checks that every run
wrote every particle and that the default run's particles agree with RELION's (matched
by micrograph and integer box centre: Pearson r >= 0.9999, max |diff| <= 1e-3), and runs a
memory case: one micrograph with ``--memory-picks`` picks (default 100,000), default
command, peak RSS per process.

Needs psutil. Run from anywhere::

    .venv/bin/python benchmarks/extract_vs_relion.py [--shapes real,sim4096] [--copies 16]
        [--picks 300] [--repeats 3] [--memory-picks 100000] [--workdir DIR] [--keep]

Exit status: 0 when every check passes, 1 when a particle count or the agreement fails,
2 when something it needs is missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
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
REAL_MICROGRAPH = REPO.parent / "shared/data/real/mrcfile_1.5.4_sdist/fei-extended.mrc"
BIN = Path(sys.executable).parent
BOX = 256
BIN_TO = 128
BG_RADIUS = 48
POLL_S = 0.020
MIN_CORRELATION = 0.9999
MAX_ABS_DIFF = 1e-3
MIB = 2**20
INT16_MAX = 32767
SIM_SOURCES = 2  # simulated micrographs; the copies are hard links of these


# --------------------------------------------------------------------------- dataset


@dataclass
class Shape:
    name: str
    sources: list[Path]
    pixel_size: float


def real_shape(_: Path) -> Shape:
    return Shape("real", [REAL_MICROGRAPH], 0.8538)


def sim_shape(root: Path) -> Shape:
    sim = root / "sim4096_source"
    if not (sim / "micrographs.star").is_file():
        subprocess.run([str(BIN / "cryoextract"), "simulate", "--out", str(sim),
                        "--micrographs", str(SIM_SOURCES), "--size", "4096",
                        "--dtype", "uint16", "--particles", "300", "--seed", "1"],
                       check=True, capture_output=True)
    return Shape("sim4096", sorted((sim / "Micrographs").glob("*.mrc")), 1.5)


SHAPES = {"real": real_shape, "sim4096": sim_shape}


def build_dataset(workdir: Path, shape: Shape, copies: int, picks: int,
                  seed: int) -> tuple[int, int]:
    """Micrographs/, Picks/Micrographs/ and micrographs.star under ``workdir``; (ny, nx)."""
    mic_dir = workdir / "Micrographs"
    pick_dir = workdir / "Picks" / "Micrographs"
    for d in (mic_dir, pick_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(copies):
        source = shape.sources[i % len(shape.sources)]
        with mrcfile.open(source, permissive=True) as mrc:
            ny, nx = mrc.data.shape[-2:]
            # RELION 3.1.3 reads MRC mode 6 (uint16) as int16: keep such pixels out of boxes
            wrapped = np.argwhere(mrc.data > INT16_MAX) if mrc.data.dtype == np.uint16 else []
        name = f"mic_{i:03d}"
        target = mic_dir / f"{name}.mrc"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        write_picks(pick_dir / f"{name}_pick.star", rng, picks, (ny, nx), wrapped)
        names.append(f"Micrographs/{name}.mrc")
    star = [
        "", "# version 30001", "", "data_optics", "", "loop_",
        "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2", "_rlnMicrographPixelSize #3",
        "_rlnVoltage #4", "_rlnSphericalAberration #5", "_rlnAmplitudeContrast #6",
        f"opticsGroup1 1 {shape.pixel_size:.6f} 300.000000 2.700000 0.100000",
        "", "", "# version 30001", "", "data_micrographs", "", "loop_",
        "_rlnMicrographName #1", "_rlnOpticsGroup #2",
        *(f"{n} 1" for n in names),
    ]
    (workdir / "micrographs.star").write_text("\n".join(star) + "\n\n")
    return int(ny), int(nx)


def write_picks(path: Path, rng: np.random.Generator, n: int, shape_yx: tuple[int, int],
                avoid: np.ndarray | list) -> None:
    """``n`` picks with random fractions, distinct integer centres, boxes inside."""
    ny, nx = shape_yx
    half = BOX // 2
    cx, cy = random_centres(rng, n, (half, nx - half), (half, ny - half), avoid)
    fx = np.minimum(rng.random(n), 0.999)
    fy = np.minimum(rng.random(n), 0.999)
    fom = rng.random(n)
    lines = ["", "data_", "", "loop_", "_rlnCoordinateX #1", "_rlnCoordinateY #2",
             "_rlnAutopickFigureOfMerit #3"]
    lines += [f"{x + a:12.3f} {y + b:12.3f} {f:10.6f}"
              for x, y, a, b, f in zip(cx, cy, fx, fy, fom, strict=True)]
    path.write_text("\n".join(lines) + "\n\n")


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
    cpu_s: float  # user + system of the process and the children it waited for
    main_rss: int  # peak RSS (VmHWM) of the process started, bytes
    worker_rss: int  # largest peak RSS (VmHWM) over its descendants, 0 if none
    report_s: float = 0.0  # the QC report's own time, as its page states (0: no report)


def peak_rss(p: psutil.Process) -> int:
    """Peak RSS so far of a live process, bytes (0 if gone): ``VmHWM``, else current RSS."""
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
    """Run ``cmd``: wall time, CPU time of its tree (wait4), peak RSS of each process."""
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
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    workers = [v for pid, v in peaks.items() if pid != proc.pid]
    return Run(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
               main_rss=peaks.get(proc.pid, 0), worker_rss=max(workers, default=0))


def median_wall(cmd: list[str], repeats: int = 7) -> float:
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


# --------------------------------------------------------------------------- tools


@dataclass
class Tool:
    label: str
    cmd: list[str]
    out_dir: str
    counts: bool = True  # writes a particles STAR to count
    runs: list[Run] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(getattr(r, key) for r in self.runs)


def tools(relion: str) -> list[Tool]:
    ours = [str(BIN / "cryoextract"), "extract", "--micrographs", "micrographs.star",
            "--coords-dir", "Picks", "--coords-suffix", "_pick.star", "--box", str(BOX),
            "--bin-to", str(BIN_TO), "--out"]
    return [
        Tool("RELION (1 process)", [
            relion, "--i", "micrographs.star", "--coord_dir", "Picks/",
            "--coord_suffix", "_pick.star", "--part_star", "Relion/particles.star",
            "--part_dir", "Relion/", "--extract", "--extract_size", str(BOX),
            "--scale", str(BIN_TO), "--norm", "--bg_radius", str(BG_RADIUS),
            "--invert_contrast"], "Relion"),
        Tool("ours, default", [*ours, "Ours"], "Ours"),
        Tool("ours, --workers 1", [*ours, "OursW1", "--workers", "1"], "OursW1"),
        Tool("floor (2 processes)", [
            sys.executable, str(REPO / "benchmarks" / "floor_extract.py"), "micrographs.star",
            "Picks", "_pick.star", "--box", str(BOX), "--bin-to", str(BIN_TO),
            "--out", "Floor", "--processes", "2"], "Floor", counts=False),
    ]


def run_tool(tool: Tool, workdir: Path, tag: str) -> Run:
    shutil.rmtree(workdir / tool.out_dir, ignore_errors=True)  # not timed
    log = workdir / "logs" / f"{tool.out_dir}_{tag}.log"
    run = run_measured(tool.cmd, workdir, log)
    page = workdir / tool.out_dir / "report" / "index.html"
    if page.is_file():  # "written <date> in 0.12 s": the report's part of this very run
        found = re.search(r"written [^<]* in ([0-9.]+) s</p>", page.read_text())
        run.report_s = float(found.group(1)) if found else float("nan")
    return run


# --------------------------------------------------------------------------- checking


def read_particles(star: Path) -> pd.DataFrame:
    blocks = starfile.read(star, always_dict=True)
    for block in blocks.values():
        if hasattr(block, "columns") and "rlnImageName" in block.columns:
            return block
    raise RuntimeError(f"no particles block in {star}")


def index_particles(star: Path, workdir: Path) -> dict[tuple[str, int, int], tuple[Path, int]]:
    """(micrograph stem, floor x, floor y) -> (stack path, 0-based slice).

    Stack paths are looked up relative to ``workdir`` (where the command ran, RELION's
    convention), then relative to the STAR's folder.
    """
    table = read_particles(star)
    index: dict[tuple[str, int, int], tuple[Path, int]] = {}
    for name, x, y, image in zip(table["rlnMicrographName"], table["rlnCoordinateX"],
                                 table["rlnCoordinateY"], table["rlnImageName"], strict=True):
        slice_no, path = str(image).split("@", 1)
        stack = workdir / path
        if not stack.is_file():
            stack = star.parent / path
        key = (Path(str(name)).stem, int(np.floor(float(x))), int(np.floor(float(y))))
        if key in index:
            raise RuntimeError(f"duplicate particle {key} in {star}")
        index[key] = (stack, int(slice_no) - 1)
    return index


@dataclass
class Agreement:
    n_relion: int
    n_ours: int
    n_matched: int
    min_corr: float
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return (self.n_matched == self.n_relion == self.n_ours
                and self.min_corr >= MIN_CORRELATION and self.max_abs_diff <= MAX_ABS_DIFF)


def compare(workdir: Path, ours_dir: str) -> Agreement:
    relion = index_particles(workdir / "Relion" / "particles.star", workdir)
    ours = index_particles(workdir / ours_dir / "particles.star", workdir)
    keys = sorted(set(relion) & set(ours))
    stacks: dict[Path, np.ndarray] = {}

    def image(path: Path, i: int) -> np.ndarray:
        if path not in stacks:
            if len(stacks) > 4:
                stacks.pop(next(iter(stacks)))
            with mrcfile.open(path, permissive=True) as mrc:
                stacks[path] = np.asarray(mrc.data, dtype=np.float64)
        return stacks[path][i]

    corrs, diffs = [], []
    for key in keys:
        a, b = image(*relion[key]), image(*ours[key])
        corrs.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
        diffs.append(float(np.abs(a - b).max()))
    return Agreement(len(relion), len(ours), len(keys), min(corrs, default=float("nan")),
                     max(diffs, default=float("nan")))


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
    return (f"nproc {len(os.sched_getaffinity(0))}, CPU {model}, RAM {mem:.1f} GiB, "
            f"{platform.platform()}, Python {platform.python_version()}, "
            f"numpy {np.__version__}")


def mib(n: int) -> str:
    return f"{n / MIB:.0f}" if n else "-"


def print_shape(shape: Shape, ny: int, nx: int, table: list[Tool], n: int) -> None:
    relion, default, _, floor = table
    print(f"\n== {shape.name}: {nx}x{ny} px uint16, {n} particles, box {BOX} -> {BIN_TO} ==")
    header = (f"{'run':<22} {'wall s':>7} {'CPU s':>7} {'part/s':>7} {'RSS main':>9} "
              f"{'RSS wrk':>8} {'RELION/ours wall':>17} {'RELION/ours CPU':>16}")
    print(header)
    print("-" * len(header))
    for t in table:
        wall, cpu = t.median("wall_s"), t.median("cpu_s")
        ratios = ("", "") if t is relion or t is floor else (
            f"{relion.median('wall_s') / wall:.2f}", f"{relion.median('cpu_s') / cpu:.2f}")
        print(f"{t.label:<22} {wall:7.2f} {cpu:7.2f} {n / wall:7.0f} "
              f"{mib(max(r.main_rss for r in t.runs)):>9} "
              f"{mib(max(r.worker_rss for r in t.runs)):>8} {ratios[0]:>17} {ratios[1]:>16}")
    print("  (medians over the timed rounds; RSS = peak VmHWM in MiB of the process started /"
          " of its largest child)")
    for t in table:
        print(f"  {t.label} walls: " + ", ".join(f"{r.wall_s:.2f}" for r in t.runs)
              + "; CPU: " + ", ".join(f"{r.cpu_s:.2f}" for r in t.runs))
    share = statistics.median(r.report_s / r.wall_s for r in default.runs)
    print(f"  ours/floor wall: {default.median('wall_s') / floor.median('wall_s'):.2f} "
          f"(goal <= 0.8); CPU {default.median('cpu_s') / floor.median('cpu_s'):.2f}")
    print(f"  report's share of the default run's wall time: {share:.1%} (goal <= 10 %)")


# --------------------------------------------------------------------------- modes


def benchmark_shape(args: argparse.Namespace, root: Path, shape: Shape, relion: str) -> bool:
    workdir = root / shape.name
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    n = args.copies * args.picks
    ny, nx = build_dataset(workdir, shape, args.copies, args.picks, args.seed)
    table = tools(relion)
    print(f"[{shape.name}] warm-up ...", flush=True)
    for t in table:
        run_tool(t, workdir, "warmup")
    ok = True
    for rep in range(args.repeats):
        for t in table:
            t.runs.append(run_tool(t, workdir, f"r{rep}"))
            if t.counts:
                got = len(read_particles(workdir / t.out_dir / "particles.star"))
                if got != n:
                    print(f"ERROR: {t.label} wrote {got} particles, expected {n}")
                    ok = False
        print(f"[{shape.name}] round {rep + 1}/{args.repeats}: " + ", ".join(
            f"{t.label} {t.runs[-1].wall_s:.2f} s" for t in table), flush=True)
    print_shape(shape, ny, nx, table, n)
    agreement = compare(workdir, "Ours")
    print(f"  agreement with RELION: matched {agreement.n_matched} of {agreement.n_relion} "
          f"(ours {agreement.n_ours}); min r {agreement.min_corr:.8f}; max |diff| "
          f"{agreement.max_abs_diff:.2e}  {'OK' if agreement.ok else 'FAIL'}")
    return ok and agreement.ok


def startup() -> None:
    numpy_s = median_wall([sys.executable, "-c", "import numpy"])
    print("\n== start-up (median of 7) ==")
    print(f"python -c 'import numpy'      {numpy_s:.3f} s")
    for cmd in (["--help"], ["extract", "--help"]):
        wall = median_wall([str(BIN / "cryoextract"), *cmd])
        print(f"cryoextract {' '.join(cmd):<17} {wall:.3f} s = {wall / numpy_s:.2f}x numpy "
              f"(goal <= 2.5x)")


def memory_case(args: argparse.Namespace, root: Path) -> bool:
    workdir = root / "memory"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    shape = real_shape(root)
    build_dataset(workdir, Shape("memory", shape.sources, shape.pixel_size), 1,
                  args.memory_picks, args.seed)
    tool = tools("relion_preprocess")[1]
    run = run_tool(tool, workdir, "memory")
    got = len(read_particles(workdir / tool.out_dir / "particles.star"))
    print(f"\n== memory: one micrograph, {args.memory_picks} picks, default command ==")
    print(f"wall {run.wall_s:.1f} s, CPU {run.cpu_s:.1f} s, {got} particles; peak RSS main "
          f"{mib(run.main_rss)} MiB, largest worker {mib(run.worker_rss)} MiB (goal <= 1024)")
    return got == args.memory_picks


def byte_compile() -> None:
    """Byte-compile the package as ``pip install`` does for a user.

    An editable install (``make venv``) is compiled on first import, but not where
    ``PYTHONDONTWRITEBYTECODE`` is set: then every run, and every worker, would compile
    the package's sources again (0.1 s per process), which no installed copy does.
    """
    package = Path(__import__("cryoextract").__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True,
                   stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="real,sim4096", help="real, sim4096 or both")
    parser.add_argument("--workdir", type=Path, help="build the datasets here (default: temp)")
    parser.add_argument("--copies", type=int, default=16, help="micrographs (16)")
    parser.add_argument("--picks", type=int, default=300, help="picks per micrograph (300)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (3)")
    parser.add_argument("--memory-picks", type=int, default=100_000,
                        help="picks on the one micrograph of the memory case (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the picks (0)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if psutil is None:
        print("error: psutil is needed: .venv/bin/pip install psutil", file=sys.stderr)
        return 2
    if not REAL_MICROGRAPH.is_file():
        print(f"error: real micrograph not found: {REAL_MICROGRAPH}", file=sys.stderr)
        return 2
    relion = shutil.which("relion_preprocess")
    if relion is None:
        print("error: relion_preprocess not found on PATH (RELION 3.1)", file=sys.stderr)
        return 2
    if any(s not in SHAPES for s in shapes) or min(args.copies, args.picks, args.repeats) < 1:
        parser.error("--shapes takes real and/or sim4096; counts must be >= 1")
    root = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(
        prefix="cryoextract_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    byte_compile()
    print(f"date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(f"RELION: {relion}; cryoextract: {BIN / 'cryoextract'}; workdir {root}")
    ok = True
    try:
        for name in shapes:
            ok = benchmark_shape(args, root, SHAPES[name](root), relion) and ok
        startup()
        if args.memory_picks:
            ok = memory_case(args, root) and ok
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept: {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
