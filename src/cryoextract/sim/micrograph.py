"""Simulated micrographs: where the particles sit, the CTF, ice and detector noise.

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
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
from scipy import fft as sp_fft

from cryoextract.ops.ctf import (
    CtfParams,
    ctf_2d,
    electron_wavelength_angstrom,
    frequency_grid_angstrom,
)
from cryoextract.sim.specimen import GaussianObject, random_rotations, render_particle

SimDtype = Literal["float32", "float16", "uint16"]

_MEAN_COUNTS_PER_PIXEL = 90.0
_NOISE_STD = float(np.sqrt(_MEAN_COUNTS_PER_PIXEL))
_EDGE_FRACTION = 0.15
_MIN_SEPARATION_DIAMETERS = 0.8
_PLACEMENT_BATCH = 32
_PLACEMENT_ROUNDS = 8
_ICE_BFACTOR_ANGSTROM2 = 60.0


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


def place_particles(
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


def random_ctf(
    rng: np.random.Generator,
    defocus_range_angstrom: tuple[float, float],
    astigmatism_range_angstrom: tuple[float, float],
    optics: CtfParams,
) -> CtfParams:
    """One micrograph's CTF: ``optics`` (voltage, Cs, Q0) with a uniform mean defocus,
    astigmatism and angle."""
    mean = rng.uniform(*defocus_range_angstrom)
    astigmatism = rng.uniform(*astigmatism_range_angstrom)
    angle = rng.uniform(0.0, 180.0)
    return replace(
        optics,
        defocus_u_angstrom=round(mean + astigmatism / 2, 2),
        defocus_v_angstrom=round(mean - astigmatism / 2, 2),
        defocus_angle_degrees=round(angle, 2),
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
    obj: GaussianObject,
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
        render_particle(canvas, obj, rotation, (y + pad, x + pad), pixel_size_angstrom)
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


def to_dtype(image: np.ndarray, dtype: SimDtype) -> np.ndarray:
    """Cast to the output type; ``uint16`` as rounded, clipped counts."""
    if dtype == "uint16":
        return np.clip(np.rint(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image.astype(dtype)


def simulate_micrograph(
    rng: np.random.Generator,
    obj: GaussianObject,
    positions_xy: np.ndarray,
    shape_yx: tuple[int, int],
    ctf: CtfParams,
    pixel_size_angstrom: float,
    diameter_px: float,
    snr: float,
    ice_fraction: float,
) -> np.ndarray:
    """One micrograph ``mean - signal + ice + noise``, float64, shape (ny, nx)."""
    rotations = random_rotations(rng, len(positions_xy))
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
