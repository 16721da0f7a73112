"""Simulated particles of known maps, and their helpers, for the ``subtract`` tests
(``test_subtract*.py``).

Projections are computed here in real space (the map resampled at ``A.T @ r`` and summed),
shifted by ``-origin / apix``, CTF-modulated (:func:`observe`) and scaled: an oracle
independent of the Fourier-space projector under test.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy import ndimage

from conftest import OPTICS_300KV, posed_particles
from conftest import optics_table as conftest_optics_table
from conftest import write_mrc as conftest_write_mrc
from cryoextract.ops.ctf import CtfParams, ctf_2d
from cryoextract.ops.rotations import euler_to_matrix

N = 48
APIX = 2.0
CENTRE_A = np.array([16.0, 24.0, 24.0])  # domain centres, voxel indices (x, y, z)
CENTRE_B = np.array([32.0, 25.0, 23.0])
OPTICS = OPTICS_300KV


# --------------------------------------------------------------------------- helpers
def corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def domain(centre_xyz: np.ndarray, seed: int, n: int = N, count: int = 25,
           sigma_px: float = 1.3) -> np.ndarray:
    """Gaussian blobs within 5 voxels of ``centre_xyz``."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(count):
        x, y, z = np.round(centre_xyz + rng.uniform(-5, 5, 3)).astype(int)
        vol[z, y, x] += rng.uniform(0.5, 1.5)
    return ndimage.gaussian_filter(vol, sigma_px).astype(np.float32)


def sphere_mask(centre_xyz: np.ndarray, radius: float, edge: float, n: int = N) -> np.ndarray:
    """1 within ``radius`` voxels, a cosine edge ``edge`` voxels wide, 0 beyond."""
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float64)
    r = np.sqrt((x - centre_xyz[0]) ** 2 + (y - centre_xyz[1]) ** 2 + (z - centre_xyz[2]) ** 2)
    if edge == 0:
        return (r <= radius).astype(np.float32)
    t = np.clip((r - radius) / edge, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


#: particles with poses, offsets up to 3 px, CTFs and half-sets, on one micrograph
random_particles = partial(posed_particles, apix=APIX, micrographs=1)
write_mrc = partial(conftest_write_mrc, apix=APIX)


def optics_table(box: int = N, apix: float = APIX, mic_apix: float | None = None) -> pd.DataFrame:
    return conftest_optics_table(box, apix, mic_apix)


def write_star(path: Path, particles: pd.DataFrame, **optics) -> None:
    starfile.write({"optics": optics_table(**optics), "particles": particles}, path,
                   overwrite=True)


def real_space_projection(vol: np.ndarray, rot: float, tilt: float, psi: float) -> np.ndarray:
    """Sum along z of the map sampled (trilinearly) at ``A.T @ (x, y, z)``."""
    n = vol.shape[0]
    a = euler_to_matrix(rot, tilt, psi)
    g = np.arange(n) - n // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    map_xyz = np.stack([x, y, z], -1).reshape(-1, 3) @ a
    coords = np.stack([map_xyz[:, 2], map_xyz[:, 1], map_xyz[:, 0]]) + n // 2
    values = ndimage.map_coordinates(vol, coords, order=1, mode="constant", prefilter=False)
    return values.reshape(n, n, n).sum(axis=0)


def observe(projection: np.ndarray, row: dict, apix: float = APIX) -> np.ndarray:
    """Move a centred projection to ``centre - origin / apix`` and apply the CTF."""
    n = projection.shape[0]
    dx, dy = -row["rlnOriginXAngst"] / apix, -row["rlnOriginYAngst"] / apix
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    ramp = np.exp(-2j * np.pi * (kx * dx + ky * dy))
    ctf = ctf_2d(CtfParams.from_star_row({**OPTICS, **row}), n, apix)
    return np.fft.irfft2(np.fft.rfft2(projection) * ramp * ctf, s=(n, n)).astype(np.float32)


def simulate(vol: np.ndarray, particles: pd.DataFrame) -> np.ndarray:
    """Noise-free particle images ``(n, N, N)`` of ``vol`` in the particles' poses."""
    return np.stack([
        observe(real_space_projection(vol, r["rlnAngleRot"], r["rlnAngleTilt"],
                                      r["rlnAnglePsi"]), r)
        for r in particles.to_dict("records")
    ])


def removed(inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    return np.asarray(inputs, np.float64) - np.asarray(outputs, np.float64)


def read_output(out: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Output particles and their images, in STAR order."""
    particles = starfile.read(out / "particles.star")["particles"]
    stacks: dict[str, np.ndarray] = {}
    images = []
    for name in particles["rlnImageName"]:
        index, path = name.split("@")
        if path not in stacks:
            stacks[path] = mrcfile.read(out / path)
            stacks[path] = stacks[path][None] if stacks[path].ndim == 2 else stacks[path]
        images.append(stacks[path][int(index) - 1])
    return particles, np.stack(images)


def blob_dataset(root: Path, n: int = 12, seed: int = 0, mic_apix: float | None = 1.0
                 ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One compact blob off-centre at ``point`` (voxels); noise-free images."""
    point = np.array([30.0, 20.0, 27.0])
    vol = domain(point, seed + 11, count=6)
    particles = random_particles(n, seed=seed)
    images = simulate(vol, particles)
    write_mrc(root / "map.mrc", vol)
    write_mrc(root / "imgs.mrcs", images, stack=True)
    write_star(root / "p.star", particles, mic_apix=mic_apix)
    return particles, images, point


def two_domain_dataset(root: Path) -> dict:
    """Domains A and B, a soft mask on A, 16 noise-free particles with scales 0.5-2, in
    ``root`` (the ``two_domain`` fixture of ``conftest.py``)."""
    vol_a, vol_b = domain(CENTRE_A, 1), domain(CENTRE_B, 2)
    particles = random_particles(16, seed=5)
    rng = np.random.default_rng(6)
    scales = rng.uniform(0.5, 2.0, len(particles))
    truth_a = simulate(vol_a, particles) * scales[:, None, None]
    truth_b = simulate(vol_b, particles) * scales[:, None, None]
    noise = rng.normal(size=truth_a.shape).astype(np.float32) * float(truth_a.std()) * 2.0
    write_mrc(root / "map.mrc", vol_a + vol_b)
    write_mrc(root / "mask_a.mrc", sphere_mask(CENTRE_A, 7.0, 5.0))
    write_mrc(root / "imgs.mrcs", truth_a + truth_b, stack=True)
    write_mrc(root / "noisy.mrcs", truth_a + truth_b + noise, stack=True)
    write_star(root / "particles.star", particles)
    noisy = particles.assign(rlnImageName=[n.replace("imgs", "noisy")
                                           for n in particles["rlnImageName"]])
    write_star(root / "noisy.star", noisy)
    return {"root": root, "particles": particles, "scales": scales, "truth_a": truth_a,
            "truth_b": truth_b, "noise": noise, "vol_a": vol_a, "vol_b": vol_b}
