"""Benchmark: ``cryoextract subtract`` vs RELION 3.1 particle subtraction.

Builds a dataset in a temporary directory: a ``--box``³ map of Gaussian blobs (pixel
1.5 Å), a soft spherical mask covering part of it, and ``--particles`` particle images
(the map's CTF-modulated projections from ``relion_project --ctf`` plus white noise,
written once) with random poses, offsets, and one CTF per micrograph of
``--per-micrograph`` particles (as after CTFFIND; RELION recomputes it for every
particle anyway). Then times, alternating the tools, after one untimed warm-up run of
each (page cache warm), ``--repeats`` runs of:

* RELION, one process (``relion_project`` has no threads):
  ``relion_project --i map.mrc --mask mask.mrc --ang particles.star --ctf --subtract_exp``
  which removes the projection of map·mask from every image;
* cryoextract, the same work: ``cryoextract subtract --mask-mode subtract --scale none``
  with 2 and with 1 worker threads, and with the per-particle scale fit
  (``--scale per-particle``, which projects the whole map too), each a fresh command
  (interpreter start-up and imports included).

With ``--particle-subtract`` it also times ``relion_particle_subtract --mask (1 - mask)``
(the same result, RELION's keep-mask) on an optimiser made by a one-iteration
``relion_refine --skip_align`` (not timed).

Peak memory is measured two ways over every process of a run, read every 20 ms: the sum
of their high-water marks ``VmHWM`` (an upper bound that counts pages shared by forked
workers, such as the Fourier volume, in every process), and, in the untimed warm-up run
only (reading it walks the page tables and slows the run), the largest sum of their
proportional set sizes (``Pss`` of ``/proc/PID/smaps_rollup``: shared pages count once).
Finally it checks that both remove the same projections (per-particle correlation of
``input - output`` >= 0.99) and, with ``--scale-test``, that our peak memory does not grow
with the number of particles (1x and 4x the particles).

Run from the repository root::

    .venv/bin/python benchmarks/subtract_vs_relion.py [--box 128] [--particles 8000]
        [--per-micrograph 100] [--repeats 3] [--scale-test] [--particle-subtract]
        [--workdir DIR] [--keep]

Exit status: 0 when every check passes, 1 when a check fails, 2 when RELION or psutil is
missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy import ndimage

try:
    import psutil
except ImportError:  # pragma: no cover - reported at start-up
    psutil = None

PIXEL_SIZE = 1.5
POLL_S = 0.020
MIB = 2**20
MIN_CORRELATION = 0.99


# --------------------------------------------------------------------------- dataset
def build_dataset(root: Path, box: int, count: int, per_micrograph: int, seed: int,
                  stack: str = "imgs.mrcs", star: str = "particles.star") -> None:
    """Map, mask, particles STAR and noisy particle images under ``root``."""
    rng = np.random.default_rng(seed)
    if not (root / "map.mrc").exists():
        vol = np.zeros((box, box, box), np.float32)
        for _ in range(300):
            z, y, x = rng.integers(box // 4, 3 * box // 4, 3)
            vol[z, y, x] += rng.uniform(0.5, 1.5)
        _write_mrc(root / "map.mrc", ndimage.gaussian_filter(vol, 2.0))
        g = np.arange(box) - box // 2
        z, y, x = np.meshgrid(g, g, g, indexing="ij")
        r = np.sqrt((x - box / 8) ** 2 + y ** 2 + z ** 2)
        t = np.clip((r - box / 6) / (box / 12), 0.0, 1.0)
        _write_mrc(root / "mask.mrc", (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32))
    micrograph = np.arange(count) // per_micrograph
    mics = micrograph.max() + 1
    defocus_u = rng.uniform(8000, 25000, mics)[micrograph]
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(count)],
        "rlnMicrographName": [f"Micrographs/mic_{m:05d}.mrc" for m in micrograph],
        "rlnCoordinateX": rng.uniform(200, 3500, count).round(1),
        "rlnCoordinateY": rng.uniform(200, 3500, count).round(1),
        "rlnAngleRot": rng.uniform(-180, 180, count),
        "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(-1, 1, count))),
        "rlnAnglePsi": rng.uniform(-180, 180, count),
        "rlnOriginXAngst": rng.normal(0, 3, count),
        "rlnOriginYAngst": rng.normal(0, 3, count),
        "rlnDefocusU": defocus_u,
        "rlnDefocusV": defocus_u - rng.uniform(0, 1000, mics)[micrograph],
        "rlnDefocusAngle": rng.uniform(0, 180, mics)[micrograph],
        "rlnOpticsGroup": 1,
        "rlnRandomSubset": rng.integers(1, 3, count),
    })
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
        "rlnImagePixelSize": [PIXEL_SIZE], "rlnImageSize": [box],
        "rlnImageDimensionality": [2],
    })
    starfile.write({"optics": optics, "particles": particles}, root / star, overwrite=True)
    # signal: RELION's own projections of the map, then noise of twice their std
    subprocess.run(["relion_project", "--i", "map.mrc", "--ang", star, "--ctf", "--o",
                    "signal"], cwd=root, check=True, capture_output=True)
    with mrcfile.mmap(root / "signal.mrcs", mode="r") as signal, \
            mrcfile.new_mmap(root / stack, shape=(count, box, box), mrc_mode=2,
                             overwrite=True) as out:
        step = 1000
        for start in range(0, count, step):
            part = np.asarray(signal.data[start : start + step], np.float32)
            noise = rng.normal(0, 2.0 * part.std(), part.shape).astype(np.float32)
            out.data[start : start + step] = part + noise
        out.set_image_stack()
        out.voxel_size = PIXEL_SIZE
    for suffix in (".mrcs", ".star"):
        (root / f"signal{suffix}").unlink()


def _write_mrc(path: Path, data: np.ndarray) -> None:
    with mrcfile.new(path, overwrite=True) as handle:
        handle.set_data(np.asarray(data, np.float32))
        handle.voxel_size = PIXEL_SIZE


# --------------------------------------------------------------------------- running
@dataclass
class Result:
    name: str
    seconds: float
    peak_pss_mib: float
    peak_hwm_mib: float
    cpu_seconds: float


def run_measured(name: str, command: list[str], cwd: Path, proportional: bool = False
                 ) -> Result:
    """Run ``command``; wall time, CPU time (user + system) and peak memory of its tree
    (peak PSS only when ``proportional``, else 0)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    peak_pss, peak_hwm = [0], [0]
    done = threading.Event()

    def poll() -> None:
        parent = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                if proportional:
                    peak_pss[0] = max(peak_pss[0], sum(_proc_kib(p, "smaps_rollup", "Pss:")
                                                       for p in tree))
                peak_hwm[0] = max(peak_hwm[0], sum(_proc_kib(p, "status", "VmHWM:")
                                                   for p in tree))
            except psutil.Error:
                pass
            time.sleep(POLL_S)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed ({process.returncode}): {stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Result(name, seconds, peak_pss[0] * 1024 / MIB, peak_hwm[0] * 1024 / MIB, cpu)


def _proc_kib(process: psutil.Process, table: str, key: str) -> int:
    """A ``kB`` line of ``/proc/PID/<table>`` (0 once the process is gone)."""
    try:
        with open(f"/proc/{process.pid}/{table}") as lines:
            for line in lines:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def ours_command(star: str, out: str, workers: int, scale: str, mask: str = "mask.mrc",
                 mode: str = "subtract") -> list[str]:
    """The ``cryoextract subtract`` command line, as a user runs it."""
    return [sys.executable, "-m", "cryoextract", "subtract", "--particles", star,
            "--map", "map.mrc", "--mask", mask, "--mask-mode", mode, "--scale", scale,
            "--workers", str(workers), "--out", out, "--overwrite"]


def relion_command(star: str, out: str) -> list[str]:
    return ["relion_project", "--i", "map.mrc", "--mask", "mask.mrc", "--ang", star, "--ctf",
            "--subtract_exp", "--o", out]


def relion_optimiser(root: Path, star: str, box: int) -> str:
    """Optimiser for relion_particle_subtract (see tests/test_subtract.py), untimed."""
    (root / "C").mkdir(exist_ok=True)
    subprocess.run(["relion_refine", "--i", star, "--o", "C/run", "--ref", "map.mrc",
                    "--ini_high", "60", "--K", "1", "--iter", "1", "--skip_align", "--ctf",
                    "--particle_diameter", str(int(box * PIXEL_SIZE * 0.8)), "--tau2_fudge",
                    "1", "--j", "2", "--firstiter_cc"], cwd=root, check=True,
                   capture_output=True)
    model = root / "C" / "run_it001_model.star"
    lines = [f"_rlnCurrentImageSize {box}" if line.startswith("_rlnCurrentImageSize") else line
             for line in model.read_text().splitlines()]
    model.write_text("\n".join(lines) + "\n")
    shutil.copy(root / "map.mrc", root / "C" / "run_it001_class001.mrc")
    keep = 1.0 - mrcfile.read(root / "mask.mrc")
    _write_mrc(root / "keep.mrc", keep)
    return "C/run_it001_optimiser.star"


# --------------------------------------------------------------------------- checks
def agreement(root: Path, relion_stack: str, ours_dir: str, stack: str) -> tuple[float, float]:
    """(min per-particle correlation of the removed parts, max |difference| / max |input|)."""
    inputs = mrcfile.mmap(root / stack, mode="r").data
    relion = mrcfile.mmap(root / relion_stack, mode="r").data
    ours = starfile.read(root / ours_dir / "particles.star")["particles"]
    worst, diff = 1.0, 0.0
    scale = float(np.abs(inputs[: min(200, len(inputs))]).max())
    cache: dict[str, np.ndarray] = {}
    for row, name in enumerate(ours["rlnImageName"]):
        index, path = name.split("@")
        if path not in cache:
            cache[path] = mrcfile.mmap(root / path, mode="r").data  # named from root
        mine = np.asarray(cache[path][int(index) - 1], np.float64)
        source = np.asarray(inputs[row], np.float64)
        theirs = np.asarray(relion[row], np.float64)
        a, b = source - mine, source - theirs
        a -= a.mean()
        b -= b.mean()
        worst = min(worst, float(a.ravel() @ b.ravel() / np.sqrt((a.ravel() @ a.ravel())
                                                               * (b.ravel() @ b.ravel()))))
        diff = max(diff, float(np.abs(mine - theirs).max()) / scale)
    return worst, diff


# --------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--particles", type=int, default=8000)
    parser.add_argument("--per-micrograph", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale-test", action="store_true")
    parser.add_argument("--particle-subtract", action="store_true")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if psutil is None:
        print("needs psutil: .venv/bin/pip install psutil", file=sys.stderr)
        return 2
    if shutil.which("relion_project") is None:
        print("needs RELION 3.1 (relion_project) on PATH", file=sys.stderr)
        return 2
    root = args.workdir or Path(tempfile.mkdtemp(prefix="subtract_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _run(root, args)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, args: argparse.Namespace) -> int:
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, workdir {root}")
    t0 = time.perf_counter()
    build_dataset(root, args.box, args.particles, args.per_micrograph, args.seed)
    print(f"# dataset: {args.particles} particles of {args.box} px "
          f"({args.particles * args.box ** 2 * 4 / MIB:.0f} MiB), map {args.box}^3, "
          f"{args.per_micrograph} particles per micrograph; built in "
          f"{time.perf_counter() - t0:.0f} s")
    runs = {
        "RELION relion_project --subtract_exp": relion_command("particles.star", "relion_sub"),
        "cryoextract --scale none, 2 workers": ours_command("particles.star", "ours2", 2, "none"),
        "cryoextract --scale none, 1 worker": ours_command("particles.star", "ours1", 1, "none"),
        "cryoextract --scale per-particle, 2 workers": ours_command(
            "particles.star", "oursp", 2, "per-particle"),
    }
    if args.particle_subtract:
        optimiser = relion_optimiser(root, "particles.star", args.box)
        runs["RELION relion_particle_subtract"] = ["relion_particle_subtract", "--i", optimiser,
                                                   "--mask", "keep.mrc", "--o", "PS/"]
    results: dict[str, list[Result]] = {name: [] for name in runs}
    warm_up: dict[str, Result] = {}
    for repeat in range(args.repeats + 1):
        for name, command in runs.items():
            result = run_measured(name, command, root, proportional=not repeat)
            if repeat:  # the first round warms the page cache
                results[name].append(result)
            else:
                warm_up[name] = result
    reference = statistics.median(r.seconds for r in results[next(iter(runs))])
    reference_cpu = statistics.median(r.cpu_seconds for r in results[next(iter(runs))])
    load = os.getloadavg()[0]
    print(f"\n| run | wall s (median of {args.repeats}) | particles/s | CPU s "
          f"| peak PSS MiB (warm-up) "
          f"| sum of VmHWM MiB | wall speed-up | CPU-time ratio |  (load average now {load:.1f})")
    print("|---|---|---|---|---|---|---|---|")
    for name, measured in results.items():
        seconds = statistics.median(r.seconds for r in measured)
        cpu = statistics.median(r.cpu_seconds for r in measured)
        pss = warm_up[name].peak_pss_mib
        hwm = max(r.peak_hwm_mib for r in measured)
        print(f"| {name} | {seconds:.2f} | {args.particles / seconds:,.0f} | {cpu:.2f} "
              f"| {pss:.0f} | {hwm:.0f} | {reference / seconds:.2f}x "
              f"| {reference_cpu / cpu:.2f}x |")
    ok = True
    worst, diff = agreement(root, "relion_sub.mrcs", "ours2", "imgs.mrcs")
    print(f"\nagreement with RELION: min per-particle correlation of the removed projections "
          f"{worst:.5f}, max |ours - RELION| / max |input| {diff:.2e}")
    ok &= worst >= MIN_CORRELATION
    if args.scale_test:
        ok &= _scale_test(root, args)
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


def _scale_test(root: Path, args: argparse.Namespace) -> bool:
    """Peak memory (PSS) of ours with 4x the particles (another stack of the same box)."""
    count = 4 * args.particles
    build_dataset(root, args.box, count, args.per_micrograph, args.seed + 1,
                  stack="imgs4.mrcs", star="particles4.star")
    small = run_measured("1x", ours_command("particles.star", "s1", 2, "per-particle"), root,
                         proportional=True)
    large = run_measured("4x", ours_command("particles4.star", "s4", 2, "per-particle"), root,
                         proportional=True)
    print(f"\nscale test (per-particle, 2 workers): {args.particles} particles -> peak PSS "
          f"{small.peak_pss_mib:.0f} MiB ({small.seconds:.1f} s); {count} particles "
          f"({count * args.box ** 2 * 4 / MIB:.0f} MiB of images) -> "
          f"{large.peak_pss_mib:.0f} MiB ({large.seconds:.1f} s)")
    return large.peak_pss_mib < 1.25 * small.peak_pss_mib + 50


if __name__ == "__main__":
    sys.exit(main())
