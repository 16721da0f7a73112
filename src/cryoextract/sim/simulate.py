"""Realistic simulated cryo-EM data: micrographs, picks and a RELION 3.1 micrographs STAR.

Image model of one micrograph (pixel ``(row, col)`` = ``(y, x)``, 0-based)::

    micrograph = mean - signal + noise
    signal     = irfft2(CTF * rfft2(sum of particle projections))

The particles are projections of one random globular object (a few broad Gaussian
"domains" plus many narrow Gaussian "atom clusters", about ``particle_diameter_angstrom``
wide) in uniformly random 3D orientations, rendered at sub-pixel positions. The CTF is
:func:`cryoextract.ops.ctf.ctf_2d` with RELION's sign (positive at low frequency for
underfocus), so particles are *dark* on a light background, as in real micrographs;
extracting with contrast inversion makes them white and gives RELION's model
``image = CTF * projection``. The projections are rendered on a canvas padded by the CTF's
delocalisation, so parts of edge particles outside the micrograph still scatter fringes
into it and nothing wraps around.

``snr`` is the variance of ``signal`` over the pixels within half a particle diameter of
the true centres divided by the variance of the white Gaussian ``noise``. ``ice`` is
CTF-filtered white density noise, stationary over the whole micrograph (amorphous ice), with
``ice_fraction`` times the variance of ``noise``; it puts Thon rings into the power
spectrum, as in real data. ``noise`` mimics
a counting detector: ``mean`` is 90 electrons per pixel and the noise standard deviation
``sqrt(90)``; ``uint16`` micrographs hold these values rounded to integer counts (far below
32767, so a reader treating MRC mode 6 as signed, like RELION 3.1.3, sees the same
numbers).

Everything is drawn from ``numpy.random.default_rng(seed)``: a fixed seed gives the same
files, byte for byte except the STAR header comment's time stamp.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy import fft as sp_fft

from cryoextract.errors import ParameterError
from cryoextract.io.atomic import atomic_file, atomic_path
from cryoextract.ops.ctf import (
    CtfParams,
    ctf_2d,
    electron_wavelength_angstrom,
    frequency_grid_angstrom,
)

__all__ = ["SimulatedDataset", "simulate_dataset", "suggested_box_px", "write_truth"]

SimDtype = Literal["float32", "float16", "uint16"]

_MEAN_COUNTS_PER_PIXEL = 90.0
_NOISE_STD = float(np.sqrt(_MEAN_COUNTS_PER_PIXEL))
_EDGE_FRACTION = 0.15
_MIN_SEPARATION_DIAMETERS = 0.8
_N_DOMAINS = 14
_N_FINE = 48
_PLACEMENT_BATCH = 32
_PLACEMENT_ROUNDS = 8
_ICE_BFACTOR_ANGSTROM2 = 60.0
_MIN_EXPONENT = -40.0


@dataclass(frozen=True, eq=False)
class SimulatedDataset:
    """Paths and ground truth of a simulated data set.

    Attributes
    ----------
    out_dir
        Root folder; STAR names are relative to it.
    micrographs_star
        ``micrographs.star`` (RELION 3.1: ``data_optics`` and ``data_micrographs``).
    micrograph_paths, pick_paths
        One MRC file and one coordinate STAR file per micrograph.
    micrograph_names
        ``rlnMicrographName`` values, e.g. ``Micrographs/mic_001.mrc``.
    truth_csv
        ``truth.csv`` with columns micrograph_name, x_px, y_px, near_edge.
    positions_xy
        Per micrograph, true centres, shape (n, 2), columns (x, y) in 0-based pixels
        (x: column, y: row); the same values as the picks.
    near_edge
        Per micrograph, bool, shape (n,): ``min(x, y, nx - 1 - x, ny - 1 - y) < box_px / 2``,
        i.e. a ``box_px`` box around the centre leaves the micrograph. The other centres
        are at least ``box_px / 2 + 1`` from every edge.
    ctf_params
        Per micrograph, the CTF used (also written to ``micrographs.star``).
    pixel_size_angstrom
        Micrograph pixel size.
    shape_yx
        Micrograph shape (ny, nx).
    box_px
        Suggested (even) extraction box, about 1.5 particle diameters.
    """

    out_dir: Path
    micrographs_star: Path
    micrograph_paths: tuple[Path, ...]
    pick_paths: tuple[Path, ...]
    micrograph_names: tuple[str, ...]
    truth_csv: Path
    positions_xy: tuple[np.ndarray, ...]
    near_edge: tuple[np.ndarray, ...]
    ctf_params: tuple[CtfParams, ...]
    pixel_size_angstrom: float
    shape_yx: tuple[int, int]
    box_px: int


@dataclass(frozen=True)
class _GaussianObject:
    """A 3D object as a sum of isotropic Gaussians; arrays (k, 3), (k,), (k,), in Å."""

    centres_angstrom: np.ndarray
    sigmas_angstrom: np.ndarray
    weights: np.ndarray

    @property
    def radius_angstrom(self) -> float:
        """Radius beyond which every Gaussian has fallen below exp(-8) of its peak."""
        norms = np.linalg.norm(self.centres_angstrom, axis=1)
        return float(np.max(norms + 4.0 * self.sigmas_angstrom))


def suggested_box_px(particle_diameter_angstrom: float, pixel_size_angstrom: float) -> int:
    """Smallest even box of at least 1.5 particle diameters, in pixels."""
    return int(2 * np.ceil(0.75 * particle_diameter_angstrom / pixel_size_angstrom))


def _check_arguments(
    n_micrographs: int,
    shape_yx: tuple[int, int],
    pixel_size_angstrom: float,
    particles_per_micrograph: int,
    particle_diameter_angstrom: float,
    defocus_range_angstrom: tuple[float, float],
    astigmatism_range_angstrom: tuple[float, float],
    snr: float,
    ice_fraction: float,
    dtype: str,
) -> None:
    """Raise ParameterError for arguments the simulator cannot honour."""
    if n_micrographs < 0 or particles_per_micrograph < 0:
        raise ParameterError("numbers of micrographs and particles must be >= 0")
    if not (pixel_size_angstrom > 0 and particle_diameter_angstrom > 0 and snr > 0):
        raise ParameterError("pixel size, particle diameter and snr must be > 0")
    if not ice_fraction >= 0:
        raise ParameterError(f"ice fraction must be >= 0, got {ice_fraction}")
    if dtype not in ("float32", "float16", "uint16"):
        raise ParameterError(f"dtype must be float32, float16 or uint16, got {dtype!r}")
    low, high = defocus_range_angstrom
    if not 0 < low <= high:
        raise ParameterError(f"defocus range must satisfy 0 < low <= high, got {(low, high)}")
    a_low, a_high = astigmatism_range_angstrom
    if not 0 <= a_low <= a_high < 2 * low:
        raise ParameterError(
            f"astigmatism range must satisfy 0 <= low <= high < 2 * min defocus, "
            f"got {(a_low, a_high)}"
        )
    box = suggested_box_px(particle_diameter_angstrom, pixel_size_angstrom)
    if min(shape_yx) < box + 4:
        raise ParameterError(
            f"micrograph {tuple(shape_yx)} px is too small for {particle_diameter_angstrom} Å "
            f"particles at {pixel_size_angstrom} Å/px (box {box} px)"
        )


def _random_object(
    rng: np.random.Generator, diameter_angstrom: float, pixel_size_angstrom: float
) -> _GaussianObject:
    """A globular random object about ``diameter_angstrom`` wide."""

    def in_ball(n: int, radius: float) -> np.ndarray:
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        return direction * (radius * rng.uniform(size=(n, 1)) ** (1.0 / 3.0))

    fine_min = max(2.5, 0.8 * pixel_size_angstrom)
    centres = np.concatenate(
        [in_ball(_N_DOMAINS, 0.27 * diameter_angstrom), in_ball(_N_FINE, 0.36 * diameter_angstrom)]
    )
    sigmas = np.concatenate(
        [
            rng.uniform(0.06, 0.11, _N_DOMAINS) * diameter_angstrom,
            rng.uniform(fine_min, max(5.0, 2.0 * fine_min), _N_FINE),
        ]
    )
    weights = np.concatenate([rng.uniform(0.6, 1.0, _N_DOMAINS), rng.uniform(0.3, 0.6, _N_FINE)])
    return _GaussianObject(centres - centres.mean(axis=0), sigmas, weights)


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniformly distributed rotation matrices, shape (n, 3, 3)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def _edge_candidates(
    rng: np.random.Generator, n: int, shape_yx: tuple[int, int], half_box: float
) -> np.ndarray:
    """Centres within ``half_box - 1`` px of a random edge, shape (n, 2) as (x, y)."""
    ny, nx = shape_yx
    distance = rng.uniform(0.0, half_box - 1.0, n)
    side = rng.integers(0, 4, n)
    x = rng.uniform(0.0, nx - 1.0, n)
    y = rng.uniform(0.0, ny - 1.0, n)
    x = np.where(side == 0, distance, np.where(side == 1, nx - 1.0 - distance, x))
    y = np.where(side == 2, distance, np.where(side == 3, ny - 1.0 - distance, y))
    return np.stack([x, y], axis=1)


def _interior_candidates(
    rng: np.random.Generator, n: int, shape_yx: tuple[int, int], half_box: float
) -> np.ndarray:
    """Centres whose box lies inside with a pixel to spare, shape (n, 2) as (x, y)."""
    ny, nx = shape_yx
    margin = half_box + 1.0
    x = rng.uniform(margin, nx - 1.0 - margin, n)
    y = rng.uniform(margin, ny - 1.0 - margin, n)
    return np.stack([x, y], axis=1)


def _place_particles(
    rng: np.random.Generator,
    n: int,
    shape_yx: tuple[int, int],
    box_px: int,
    diameter_px: float,
    edge_picks: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Random non-overlapping centres (random sequential addition).

    Returns
    -------
    positions_xy : np.ndarray
        float64, shape (n, 2), columns (x, y), all inside ``[0, n - 1]``.
    near_edge : np.ndarray
        bool, shape (n,): a ``box_px`` box around the centre leaves the micrograph.
    """
    half_box = box_px / 2.0
    n_edge = max(1, round(_EDGE_FRACTION * n)) if edge_picks and n > 0 else 0
    min_distance = _MIN_SEPARATION_DIAMETERS * diameter_px
    placed = np.empty((0, 2))
    for index in range(n):
        sampler = _edge_candidates if index < n_edge else _interior_candidates
        for _ in range(_PLACEMENT_ROUNDS):
            candidates = sampler(rng, _PLACEMENT_BATCH, shape_yx, half_box)
            distances = np.linalg.norm(candidates[:, None, :] - placed[None, :, :], axis=2)
            free = np.all(distances >= min_distance, axis=1)
            if free.any():
                break
        chosen = candidates[int(np.argmax(free))] if free.any() else candidates[0]
        placed = np.vstack([placed, chosen])
    # Millipixel precision: the STAR picks (printed with 6 decimals) read back exactly.
    placed = np.round(placed[rng.permutation(n)], 3)
    ny, nx = shape_yx
    edge_distance = (
        np.minimum.reduce(
            [placed[:, 0], placed[:, 1], nx - 1.0 - placed[:, 0], ny - 1.0 - placed[:, 1]]
        )
        if n
        else np.empty(0)
    )
    return placed, edge_distance < half_box


def _render_particle(
    canvas: np.ndarray,
    obj: _GaussianObject,
    rotation: np.ndarray,
    centre_yx: tuple[float, float],
    pixel_size_angstrom: float,
) -> None:
    """Add the projection of ``obj`` rotated by ``rotation`` (3, 3) at a sub-pixel centre."""
    rotated = obj.centres_angstrom @ rotation.T / pixel_size_angstrom  # (k, 3) in px
    sigmas = obj.sigmas_angstrom / pixel_size_angstrom
    amplitudes = obj.weights * sigmas  # peak of the projected Gaussian ∝ σ
    half = int(np.ceil(obj.radius_angstrom / pixel_size_angstrom)) + 1
    y0 = int(np.floor(centre_yx[0])) - half
    x0 = int(np.floor(centre_yx[1])) - half
    rows = slice(max(y0, 0), min(y0 + 2 * half + 1, canvas.shape[0]))
    cols = slice(max(x0, 0), min(x0 + 2 * half + 1, canvas.shape[1]))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    inv_two_var = 1.0 / (2.0 * sigmas[:, None] ** 2)
    dy = np.arange(rows.start, rows.stop)[None, :] - (centre_yx[0] + rotated[:, 1:2])
    dx = np.arange(cols.start, cols.stop)[None, :] - (centre_yx[1] + rotated[:, 0:1])
    # Clipping the exponent keeps subnormal numbers (very slow in exp and BLAS) out.
    gy = np.exp(np.maximum(-(dy * dy) * inv_two_var, _MIN_EXPONENT)) * amplitudes[:, None]
    gx = np.exp(np.maximum(-(dx * dx) * inv_two_var, _MIN_EXPONENT))
    # einsum's own loop, not BLAS: a threaded gemm stalls on small matrices on busy machines.
    canvas[rows, cols] += np.einsum("ky,kx->yx", gy, gx)


def _random_ctf(
    rng: np.random.Generator,
    defocus_range_angstrom: tuple[float, float],
    astigmatism_range_angstrom: tuple[float, float],
    voltage_kv: float,
    spherical_aberration_mm: float,
    amplitude_contrast: float,
) -> CtfParams:
    """One micrograph's CTF: uniform mean defocus, astigmatism and angle."""
    mean = rng.uniform(*defocus_range_angstrom)
    astigmatism = rng.uniform(*astigmatism_range_angstrom)
    angle = rng.uniform(0.0, 180.0)
    return CtfParams(
        defocus_u_angstrom=round(mean + astigmatism / 2, 2),
        defocus_v_angstrom=round(mean - astigmatism / 2, 2),
        defocus_angle_degrees=round(angle, 2),
        voltage_kv=float(voltage_kv),
        spherical_aberration_mm=float(spherical_aberration_mm),
        amplitude_contrast=float(amplitude_contrast),
    )


def _delocalisation_px(params: CtfParams, pixel_size_angstrom: float) -> int:
    """Padding (px) covering the CTF's delocalisation up to Nyquist, plus the Cs term."""
    wavelength = electron_wavelength_angstrom(params.voltage_kv)
    nyquist = 1.0 / (2.0 * pixel_size_angstrom)
    defocus = max(params.defocus_u_angstrom, params.defocus_v_angstrom)
    cs = params.spherical_aberration_mm * 1e7
    shift = wavelength * defocus * nyquist + cs * wavelength**3 * nyquist**3
    return int(np.ceil(shift / pixel_size_angstrom)) + 8


def _disc_mask(shape_yx: tuple[int, int], positions_xy: np.ndarray, radius_px: float) -> np.ndarray:
    """True within ``radius_px`` of any centre; bool, shape (ny, nx)."""
    mask = np.zeros(shape_yx, dtype=bool)
    r = int(np.ceil(radius_px))
    for x, y in positions_xy:
        y0, x0 = max(int(y) - r, 0), max(int(x) - r, 0)
        y1, x1 = min(int(y) + r + 2, shape_yx[0]), min(int(x) + r + 2, shape_yx[1])
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= (yy - y) ** 2 + (xx - x) ** 2 <= radius_px**2
    return mask


def _micrograph_signal(
    obj: _GaussianObject,
    rotations: np.ndarray,
    positions_xy: np.ndarray,
    shape_yx: tuple[int, int],
    ctf: CtfParams,
    pixel_size_angstrom: float,
) -> np.ndarray:
    """CTF-filtered sum of projections, float64, shape (ny, nx); positive particles."""
    ny, nx = shape_yx
    pad = min(_delocalisation_px(ctf, pixel_size_angstrom), max(ny, nx))
    canvas_shape = (
        sp_fft.next_fast_len(ny + 2 * pad, real=True),
        sp_fft.next_fast_len(nx + 2 * pad, real=True),
    )
    canvas = np.zeros(canvas_shape)
    for rotation, (x, y) in zip(rotations, positions_xy, strict=True):
        _render_particle(canvas, obj, rotation, (y + pad, x + pad), pixel_size_angstrom)
    spectrum = sp_fft.rfft2(canvas)
    spectrum *= ctf_2d(ctf, canvas_shape, pixel_size_angstrom)
    filtered = sp_fft.irfft2(spectrum, s=canvas_shape)
    return filtered[pad : pad + ny, pad : pad + nx]


def _ice_texture(
    rng: np.random.Generator, shape_yx: tuple[int, int], ctf: CtfParams, pixel_size_angstrom: float
) -> np.ndarray:
    """CTF-filtered white density noise (amorphous ice), unit variance, shape (ny, nx).

    Stationary, so the FFT's wrap-around is invisible; it puts Thon rings into the power
    spectrum of the whole micrograph.
    """
    spectrum = sp_fft.rfft2(rng.standard_normal(shape_yx))
    ky, kx = frequency_grid_angstrom(shape_yx, pixel_size_angstrom)
    spectrum *= ctf_2d(ctf, shape_yx, pixel_size_angstrom) * np.exp(
        -_ICE_BFACTOR_ANGSTROM2 / 4.0 * (kx * kx + ky * ky)
    )
    ice = sp_fft.irfft2(spectrum, s=shape_yx)
    std = float(ice.std())
    return ice / std if std > 0 else ice


def _to_dtype(image: np.ndarray, dtype: SimDtype) -> np.ndarray:
    """Cast to the output type; ``uint16`` as rounded, clipped counts."""
    if dtype == "uint16":
        return np.clip(np.rint(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image.astype(dtype)


def _simulate_micrograph(
    rng: np.random.Generator,
    obj: _GaussianObject,
    positions_xy: np.ndarray,
    shape_yx: tuple[int, int],
    ctf: CtfParams,
    pixel_size_angstrom: float,
    diameter_px: float,
    snr: float,
    ice_fraction: float,
) -> np.ndarray:
    """One micrograph ``mean - signal + ice + noise``, float64, shape (ny, nx)."""
    rotations = _random_rotations(rng, len(positions_xy))
    signal = _micrograph_signal(obj, rotations, positions_xy, shape_yx, ctf, pixel_size_angstrom)
    if len(positions_xy):
        inside = signal[_disc_mask(shape_yx, positions_xy, diameter_px / 2.0)]
        signal_std = float(inside.std()) if inside.size > 1 else 0.0
        if signal_std > 0:
            signal *= _NOISE_STD * np.sqrt(snr) / signal_std
    image = _MEAN_COUNTS_PER_PIXEL - signal
    if ice_fraction > 0:
        ice = _ice_texture(rng, shape_yx, ctf, pixel_size_angstrom)
        image += ice * (_NOISE_STD * np.sqrt(ice_fraction))
    image += rng.standard_normal(shape_yx) * _NOISE_STD
    return image


def _write_mrc(path: Path, image: np.ndarray, pixel_size_angstrom: float) -> None:
    """Write a 2D image with the pixel size in the header."""
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(image)
        mrc.voxel_size = pixel_size_angstrom


def _write_picks(path: Path, positions_xy: np.ndarray, figure_of_merit: np.ndarray) -> None:
    """RELION coordinate STAR (one ``data_`` block), as written by LoG autopicking."""
    table = pd.DataFrame(
        {
            "rlnCoordinateX": positions_xy[:, 0],
            "rlnCoordinateY": positions_xy[:, 1],
            "rlnAutopickFigureOfMerit": figure_of_merit,
            "rlnClassNumber": np.zeros(len(positions_xy), dtype=int),
        }
    )
    with atomic_path(path) as tmp:
        starfile.write(table, tmp, overwrite=True)


def _write_micrographs_star(
    path: Path,
    names: Sequence[str],
    ctfs: Sequence[CtfParams],
    pixel_size_angstrom: float,
    voltage_kv: float,
    spherical_aberration_mm: float,
    amplitude_contrast: float,
) -> None:
    """RELION 3.1 ``micrographs.star`` with an optics table and the micrographs' CTFs."""
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [float(pixel_size_angstrom)],
            "rlnVoltage": [float(voltage_kv)],
            "rlnSphericalAberration": [float(spherical_aberration_mm)],
            "rlnAmplitudeContrast": [float(amplitude_contrast)],
            "rlnMicrographPixelSize": [float(pixel_size_angstrom)],
        }
    )
    micrographs = pd.DataFrame(
        {
            "rlnMicrographName": list(names),
            "rlnOpticsGroup": np.ones(len(names), dtype=int),
            "rlnDefocusU": [c.defocus_u_angstrom for c in ctfs],
            "rlnDefocusV": [c.defocus_v_angstrom for c in ctfs],
            "rlnDefocusAngle": [c.defocus_angle_degrees for c in ctfs],
            "rlnCtfBfactor": [c.bfactor_angstrom2 for c in ctfs],
            "rlnCtfScalefactor": [c.scale for c in ctfs],
            "rlnPhaseShift": [c.phase_shift_degrees for c in ctfs],
        }
    )
    with atomic_path(path) as tmp:
        starfile.write({"optics": optics, "micrographs": micrographs}, tmp, overwrite=True)


def write_truth(
    path: Path,
    micrograph_names: Sequence[str],
    positions_xy: Sequence[np.ndarray],
    near_edge: Sequence[np.ndarray],
) -> None:
    """Write the true particle centres as CSV.

    Parameters
    ----------
    path
        Output file (``truth.csv``).
    micrograph_names
        ``rlnMicrographName`` of each micrograph.
    positions_xy
        Per micrograph, shape (n, 2): (x, y) in 0-based pixels.
    near_edge
        Per micrograph, shape (n,): whether the suggested box leaves the micrograph.

    Notes
    -----
    Columns: ``micrograph_name, x_px, y_px, near_edge``; one row per particle, in pick
    order, with full float precision.
    """
    frames = [
        pd.DataFrame(
            {
                "micrograph_name": [name] * len(xy),
                "x_px": xy[:, 0] if len(xy) else np.empty(0),
                "y_px": xy[:, 1] if len(xy) else np.empty(0),
                "near_edge": np.asarray(edge, dtype=bool),
            }
        )
        for name, xy, edge in zip(micrograph_names, positions_xy, near_edge, strict=True)
    ]
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["micrograph_name", "x_px", "y_px", "near_edge"])
    )
    with atomic_file(path, "w", encoding="utf-8", newline="") as stream:
        table.to_csv(stream, index=False, float_format="%.17g")


_OURS_MRC = re.compile(r"mic_\d{3,}\.mrc")
_OURS_PICKS = re.compile(r"mic_\d{3,}_autopick\.star")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder holding anything unless ``overwrite``; then remove our own files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ParameterError(f"{out_dir} exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ParameterError(f"output folder {out_dir} exists and is not empty; use "
                             "--overwrite to replace the dataset in it")
    ours = [p for p in out_dir.glob("Micrographs/mic_*.mrc") if _OURS_MRC.fullmatch(p.name)]
    ours += [p for p in out_dir.glob("Picks/mic_*_autopick.star")
             if _OURS_PICKS.fullmatch(p.name)]
    for path in [*ours, out_dir / "micrographs.star", out_dir / "truth.csv"]:
        if path.is_symlink() or path.is_file():  # a link goes, not what it points to
            path.unlink()


def simulate_dataset(
    out_dir: Path,
    *,
    n_micrographs: int = 4,
    shape_yx: tuple[int, int] = (1024, 1024),
    pixel_size_angstrom: float = 1.5,
    particles_per_micrograph: int = 60,
    particle_diameter_angstrom: float = 150.0,
    voltage_kv: float = 300.0,
    spherical_aberration_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    defocus_range_angstrom: tuple[float, float] = (8000.0, 25000.0),
    astigmatism_range_angstrom: tuple[float, float] = (0.0, 1000.0),
    snr: float = 0.05,
    ice_fraction: float = 0.1,
    dtype: SimDtype = "float32",
    edge_picks: bool = True,
    seed: int = 0,
    overwrite: bool = False,
) -> SimulatedDataset:
    """Simulate micrographs with particles, CTF and noise, their picks and STAR files.

    Parameters
    ----------
    out_dir
        Output folder (created). Writes ``Micrographs/mic_NNN.mrc``,
        ``Picks/mic_NNN_autopick.star``, ``micrographs.star`` and ``truth.csv``
        (NNN from 001). A folder that exists and is not empty is refused unless
        ``overwrite``.
    n_micrographs
        Number of micrographs.
    shape_yx
        Micrograph shape (ny, nx) in pixels; need not be square.
    pixel_size_angstrom
        Micrograph pixel size.
    particles_per_micrograph
        Particles (and picks) per micrograph. They do not overlap (centres at least 0.8
        diameters apart) unless the micrograph is too crowded to place them otherwise.
    particle_diameter_angstrom
        Approximate diameter of the simulated object.
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Optics, written to the optics table.
    defocus_range_angstrom
        Range of the mean defocus, drawn uniformly per micrograph.
    astigmatism_range_angstrom
        Range of ``U - V``, drawn uniformly per micrograph; the angle is uniform in
        [0, 180) degrees.
    snr
        Signal variance within the particles over noise variance (see the module
        docstring).
    ice_fraction
        Variance of the CTF-filtered ice background over the noise variance; 0 disables it.
    dtype
        ``float32`` (MRC mode 2), ``float16`` (mode 12) or ``uint16`` (mode 6, counts).
    edge_picks
        Place about 15% (at least one) of each micrograph's particles closer than half the
        suggested box to an edge, so their boxes leave the micrograph; all centres are
        inside. Otherwise every box fits with a pixel to spare.
    seed
        Seed of ``numpy.random.default_rng``.
    overwrite
        Replace a dataset in ``out_dir``: the files named as this function names them
        are removed first (so no micrograph of a larger earlier dataset stays); other
        files are left.

    Returns
    -------
    SimulatedDataset
        Paths and the true positions, which equal the picks.
    """
    shape_yx = (int(shape_yx[0]), int(shape_yx[1]))
    _check_arguments(
        n_micrographs,
        shape_yx,
        pixel_size_angstrom,
        particles_per_micrograph,
        particle_diameter_angstrom,
        defocus_range_angstrom,
        astigmatism_range_angstrom,
        snr,
        ice_fraction,
        dtype,
    )
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    (out_dir / "Micrographs").mkdir(parents=True, exist_ok=True)
    (out_dir / "Picks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    diameter_px = particle_diameter_angstrom / pixel_size_angstrom
    box_px = suggested_box_px(particle_diameter_angstrom, pixel_size_angstrom)
    obj = _random_object(rng, particle_diameter_angstrom, pixel_size_angstrom)

    names, mic_paths, pick_paths, positions, edges, ctfs = [], [], [], [], [], []
    for index in range(1, n_micrographs + 1):
        ctf = _random_ctf(
            rng,
            defocus_range_angstrom,
            astigmatism_range_angstrom,
            voltage_kv,
            spherical_aberration_mm,
            amplitude_contrast,
        )
        xy, near_edge = _place_particles(
            rng, particles_per_micrograph, shape_yx, box_px, diameter_px, edge_picks
        )
        image = _simulate_micrograph(
            rng, obj, xy, shape_yx, ctf, pixel_size_angstrom, diameter_px, snr, ice_fraction
        )
        name = f"Micrographs/mic_{index:03d}.mrc"
        pick_path = out_dir / "Picks" / f"mic_{index:03d}_autopick.star"
        _write_mrc(out_dir / name, _to_dtype(image, dtype), pixel_size_angstrom)
        _write_picks(pick_path, xy, rng.uniform(0.2, 1.0, len(xy)))
        names.append(name)
        mic_paths.append(out_dir / name)
        pick_paths.append(pick_path)
        positions.append(xy)
        edges.append(near_edge)
        ctfs.append(ctf)

    star_path = out_dir / "micrographs.star"
    _write_micrographs_star(
        star_path,
        names,
        ctfs,
        pixel_size_angstrom,
        voltage_kv,
        spherical_aberration_mm,
        amplitude_contrast,
    )
    truth_path = out_dir / "truth.csv"
    write_truth(truth_path, names, positions, edges)
    return SimulatedDataset(
        out_dir=out_dir,
        micrographs_star=star_path,
        micrograph_paths=tuple(mic_paths),
        pick_paths=tuple(pick_paths),
        micrograph_names=tuple(names),
        truth_csv=truth_path,
        positions_xy=tuple(positions),
        near_edge=tuple(edges),
        ctf_params=tuple(ctfs),
        pixel_size_angstrom=float(pixel_size_angstrom),
        shape_yx=shape_yx,
        box_px=box_px,
    )
