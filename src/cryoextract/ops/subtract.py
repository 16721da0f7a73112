"""Particle subtraction in Fourier space: least-squares scale, subtract, recentre, crop.

Pure numpy on batches. The model of a particle image ``I`` (rfft2 spectrum, phase origin
at pixel 0, the particle's box centre at pixel ``N // 2``) is ``I ≈ s · CTF · P_full``, with
``P_full`` the projection of the whole map (:mod:`cryoextract.ops.projection`) and ``s``
a per-particle scale (cryoSPARC's per-particle scale). The subtracted image is
``I - s · CTF · P_region``, with ``P_region`` the projection of the part of the map to
remove. ``s`` is the least-squares fit of ``CTF · P_full`` to ``I`` over every frequency
but 0 (the image mean is arbitrary), each rfft coefficient counted with its Hermitian
multiplicity.

The mask helpers check what docs/conventions.md ("Particle subtraction") asks of a mask:
values in [0, 1] and a soft edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from cryoextract.errors import ParameterError
from cryoextract.ops import fft_threads

__all__ = [
    "MaskReport",
    "SubtractedBatch",
    "centre_of_mass_xyz",
    "crop_centre",
    "fit_scale",
    "fit_weights",
    "inspect_mask",
    "rfft_weights",
    "subtract_images",
    "suggested_edge_px",
]

#: a mask value this close to 0 or 1 counts as "outside" or "inside" (not edge)
_EDGE_TOLERANCE = 0.01
#: mask values may leave [0, 1] by this much (float rounding in mask tools) before refusal
_RANGE_TOLERANCE = 1e-4
#: below this mean edge width (voxels) a mask counts as hard-edged
HARD_EDGE_PX = 2.0


def rfft_weights(box_px: int) -> np.ndarray:
    """Hermitian multiplicity of each rfft column of an even ``box_px`` image.

    Returns
    -------
    np.ndarray
        ``(box_px // 2 + 1,)`` float32: 1 for ``kx = 0`` and ``kx = N / 2``, else 2, so a
        sum over the half plane equals the sum over the full plane.
    """
    weights = np.full(box_px // 2 + 1, 2.0, dtype=np.float32)
    weights[0] = 1.0
    if box_px % 2 == 0:
        weights[-1] = 1.0
    return weights


def fit_scale(
    image_spectra: np.ndarray, model_spectra: np.ndarray, *, max_radius_px: float | None = None
) -> np.ndarray:
    """Per-image least-squares scale ``s`` minimising ``|I - s M|²`` (frequency 0 left out).

    Parameters
    ----------
    image_spectra, model_spectra : np.ndarray
        ``(B, N, N // 2 + 1)`` complex rfft2 spectra of the images and of their models.
    max_radius_px : float, optional
        Fit only frequencies ``0 < |k| <= max_radius_px`` (cycles per box); default all.

    Returns
    -------
    np.ndarray
        ``(B,)`` float64 ``Re<I, M> / <M, M>``; 0 where the model is 0.
    """
    weights = fit_weights(image_spectra.shape[-2], max_radius_px)
    cross = (image_spectra * np.conj(model_spectra)).real * weights
    power = (model_spectra.real ** 2 + model_spectra.imag ** 2) * weights
    numerator = cross.sum(axis=(1, 2), dtype=np.float64)
    denominator = power.sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(denominator > 0, numerator / denominator, 0.0)
    return scale


@lru_cache(maxsize=16)
def fit_weights(box_px: int, max_radius_px: float | None = None) -> np.ndarray:
    """``(N, N // 2 + 1)`` float32 weights of the scale fit: the Hermitian multiplicity
    (:func:`rfft_weights`) within ``0 < |k| <= max_radius_px``, else 0."""
    weights = np.broadcast_to(rfft_weights(box_px), (box_px, box_px // 2 + 1)).copy()
    weights[0, 0] = 0.0
    if max_radius_px is not None:
        ky = np.fft.fftfreq(box_px, 1.0 / box_px)[:, None]
        kx = np.arange(box_px // 2 + 1)[None, :]
        weights[ky ** 2 + kx ** 2 > max_radius_px ** 2] = 0.0
    weights.flags.writeable = False
    return weights


def crop_centre(images: np.ndarray, box_px: int) -> np.ndarray:
    """The central ``box_px`` window of ``(B, N, N)`` images, centre ``N // 2 -> M // 2``.

    Rows and columns ``N/2 - M/2 .. N/2 + M/2 - 1`` (RELION's ``window`` with
    ``FIRST_XMIPP_INDEX``); ``box_px`` even, at most ``N``.
    """
    n = images.shape[-1]
    if box_px % 2 or box_px > n or box_px < 2:
        raise ParameterError(f"new box must be even and at most {n}, got {box_px}")
    start = n // 2 - box_px // 2
    return images[..., start : start + box_px, start : start + box_px]


@dataclass(frozen=True)
class SubtractedBatch:
    """Result of :func:`subtract_images`.

    Attributes
    ----------
    images : np.ndarray
        ``(B, M, M)`` float32 subtracted (recentred, cropped) images.
    scales : np.ndarray
        ``(B,)`` float64 scale applied to each projection (1 without fitting).
    """

    images: np.ndarray
    scales: np.ndarray


def subtract_images(
    images: np.ndarray,
    region_spectra: np.ndarray,
    *,
    fit_spectra: np.ndarray | None = None,
    fit: bool = True,
    fit_radius_px: float | None = None,
    integer_shifts_xy: ArrayLike | None = None,
    box_px: int | None = None,
    workers: int = 1,
) -> SubtractedBatch:
    """Subtract CTF-modulated projections from particle images.

    With a scale to fit, the images are transformed and the subtraction is done in
    Fourier space; without, the projections are transformed back and subtracted in real
    space (one transform fewer per image, the same result to float32 rounding).

    Parameters
    ----------
    images : np.ndarray
        ``(B, N, N)`` particle images (any real dtype; computed in float32).
    region_spectra : np.ndarray
        ``(B, N, N // 2 + 1)`` complex spectra of the projections to remove
        (:func:`cryoextract.ops.projection.project_spectra`, CTF applied).
    fit_spectra : np.ndarray, optional
        Spectra of the projections of the whole map, used to fit the scale; default
        ``region_spectra``.
    fit : bool
        Fit a per-image scale (:func:`fit_scale`); False subtracts with scale 1.
    fit_radius_px : float, optional
        Fit over frequencies up to this radius only (cycles per box).
    integer_shifts_xy : array_like, optional
        ``(B, 2)`` integer ``(dx, dy)``: move the result's content by that many pixels
        (circular, exact) before cropping, for recentring.
    box_px : int, optional
        Crop to the central ``box_px`` pixels (:func:`crop_centre`).
    workers : int
        Threads for the FFTs (:mod:`cryoextract.ops.fft_threads`).

    Returns
    -------
    SubtractedBatch
    """
    n = images.shape[-1]
    count = images.shape[0]
    if fit:
        spectra = fft_threads.rfft2(np.asarray(images, dtype=np.float32), workers=workers)
        model = region_spectra if fit_spectra is None else fit_spectra
        scales = fit_scale(spectra, model, max_radius_px=fit_radius_px)
        spectra -= scales.astype(np.float32)[:, None, None] * region_spectra
        out = fft_threads.irfft2(spectra, s=(n, n), workers=workers, overwrite_x=True)
    else:
        # nothing to fit: subtract in real space and save the images' forward transforms
        scales = np.ones(count, dtype=np.float64)
        out = fft_threads.irfft2(region_spectra, s=(n, n), workers=workers)
        np.subtract(images, out, out=out)
    if integer_shifts_xy is not None:
        shifts = np.asarray(integer_shifts_xy, dtype=np.float64).reshape(count, 2)
        if np.any(shifts):
            out = _rolled(out, shifts)
    out = out.astype(np.float32, copy=False)
    if box_px is not None and box_px != n:
        out = np.ascontiguousarray(crop_centre(out, box_px))
    return SubtractedBatch(images=out, scales=scales)


def _rolled(images: np.ndarray, shifts_xy: np.ndarray) -> np.ndarray:
    """Images ``(B, N, N)`` moved circularly by integer ``(dx, dy)`` pixels each."""
    out = np.empty_like(images)
    for image, moved, (dx, dy) in zip(images, out, np.rint(shifts_xy).astype(int),
                                      strict=True):
        moved[...] = np.roll(image, (dy, dx), axis=(0, 1))
    return out


@dataclass(frozen=True)
class MaskReport:
    """What :func:`inspect_mask` found.

    Attributes
    ----------
    min_value, max_value : float
        Range of the mask values.
    inside_voxels : int
        Voxels with value >= 0.5.
    edge_voxels : int
        Voxels strictly between 0.01 and 0.99.
    surface_voxels : int
        Voxels >= 0.5 with a 6-neighbour < 0.5.
    edge_width_px : float
        Mean soft-edge width, ``edge_voxels / surface_voxels`` (0 for a binary mask).
    hard : bool
        ``edge_width_px`` below :data:`HARD_EDGE_PX`.
    """

    min_value: float
    max_value: float
    inside_voxels: int
    edge_voxels: int
    surface_voxels: int
    edge_width_px: float
    hard: bool


def inspect_mask(mask: np.ndarray) -> MaskReport:
    """Range and soft-edge width of a 3D mask.

    Parameters
    ----------
    mask : np.ndarray
        ``(N, N, N)`` values meant to lie in [0, 1].

    Returns
    -------
    MaskReport
        The edge width is the number of voxels in the soft transition divided by the
        number of voxels on the 0.5 surface: about the width in voxels of a cosine edge.

    Raises
    ------
    ParameterError
        If a value lies outside [0, 1] (beyond 1e-4) or is not finite.
    """
    values = np.asarray(mask, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ParameterError("mask holds non-finite values")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ParameterError(f"mask values must lie in [0, 1], found [{low:g}, {high:g}]")
    inside = values >= 0.5
    eroded = _eroded(inside)
    surface = int(np.count_nonzero(inside & ~eroded))
    edge = int(np.count_nonzero((values > _EDGE_TOLERANCE) & (values < 1.0 - _EDGE_TOLERANCE)))
    width = edge / surface if surface else 0.0
    return MaskReport(
        min_value=low, max_value=high, inside_voxels=int(np.count_nonzero(inside)),
        edge_voxels=edge, surface_voxels=surface, edge_width_px=float(width),
        hard=bool(surface > 0 and width < HARD_EDGE_PX),
    )


def suggested_edge_px(resolution_angstrom: float, pixel_size_angstrom: float) -> float:
    """cryoSPARC's minimum soft padding of a subtraction mask: ``5 · resolution / apix``.

    Parameters
    ----------
    resolution_angstrom : float
        The map's GSFSC resolution.
    pixel_size_angstrom : float
        The map's pixel size.

    Returns
    -------
    float
        Soft-edge width in voxels.
    """
    if not resolution_angstrom > 0 or not pixel_size_angstrom > 0:
        raise ParameterError("resolution and pixel size must be > 0")
    return 5.0 * resolution_angstrom / pixel_size_angstrom


def centre_of_mass_xyz(weights: np.ndarray) -> np.ndarray:
    """Centre of mass of a ``(z, y, x)`` volume as 0-based voxel indices ``(x, y, z)``.

    Raises
    ------
    ParameterError
        If the weights sum to 0 or less.
    """
    values = np.asarray(weights, dtype=np.float64)
    total = values.sum()
    if not total > 0:
        raise ParameterError("cannot take the centre of mass of an empty mask")
    z, y, x = (np.dot(values.sum(axis=tuple(a for a in range(3) if a != axis)),
                      np.arange(values.shape[axis], dtype=np.float64)) / total
               for axis in range(3))
    return np.array([x, y, z], dtype=np.float64)


def _eroded(inside: np.ndarray) -> np.ndarray:
    """Binary erosion of a ``(z, y, x)`` boolean volume by the 6-neighbour cross, with
    everything beyond the volume outside (``scipy.ndimage.binary_erosion(inside,
    border_value=0)``, whose import costs 0.2 s)."""
    padded = np.pad(inside, 1, constant_values=False)
    eroded = inside.copy()
    core = (slice(1, -1),) * 3
    for axis in range(3):
        for step in (-1, 1):
            shifted = list(core)
            shifted[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            eroded &= padded[tuple(shifted)]
    return eroded
