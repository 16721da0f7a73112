"""The subtraction benchmark's data: a map of Gaussian blobs, a soft mask, particles
projected by ``relion_project --ctf`` plus noise; RELION's optimiser for
``relion_particle_subtract``; and the agreement of two subtractions
(see ``subtract_vs_relion.py``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy import ndimage

PIXEL_SIZE = 1.5


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
