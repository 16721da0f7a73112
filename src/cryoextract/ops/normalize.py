"""Background normalisation, ramp removal and dust removal of particle stacks.

RELION's ``normalise`` (docs/conventions.md, "Normalisation"): background = pixels whose
integer distance from the box centre (index ``n // 2``) exceeds the radius; dust is
replaced first, then a least-squares plane fitted to the background is subtracted, then
the image is shifted and scaled to background mean 0 and population std 1.
"""

from __future__ import annotations

import enum

import numpy as np

# RELION skips normalisation of an image whose background std is below this.
MIN_STD = 1e-10


class NormMode(str, enum.Enum):
    """Background circle with a ramp, background circle only, whole box, or none."""

    RAMP = "ramp"
    MEAN = "mean"
    WHOLE = "whole"
    NONE = "none"


def background_mask(box_px: int, radius_px: float) -> np.ndarray:
    """``(box, box)`` bool, True where ``i**2 + j**2 > radius**2`` (i, j from the centre)."""
    offsets = np.arange(box_px) - box_px // 2
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 > radius_px**2


def _masked_stats(images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each ``(n, h, w)`` image over a ``(h, w)`` bool mask."""
    count = int(mask.sum())
    mean = np.sum(images * mask, axis=(1, 2)) / count
    deviation = (images - mean[:, None, None]) * mask
    return mean, np.sqrt(np.sum(np.square(deviation), axis=(1, 2)) / count)


def remove_dust(
    images: np.ndarray,
    background: np.ndarray,
    rng: np.random.Generator,
    *,
    white_sigma: float | None = None,
    black_sigma: float | None = None,
) -> np.ndarray:
    """Replace outlier pixels by Gaussian draws from the background distribution, in place.

    As RELION's ``removeDust``: with the background mean ``m`` and std ``s`` of each
    image, every pixel (background or not) with ``v - m > white*s`` or
    ``v - m < -black*s`` is replaced by a draw from ``N(m, s)``.

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)`` float stack, modified in place.
    background : np.ndarray
        ``(h, w)`` bool background mask.
    rng : np.random.Generator
        Random source (seeded by the caller for reproducibility).
    white_sigma, black_sigma : float, optional
        Thresholds in background standard deviations; ``None`` disables.

    Returns
    -------
    np.ndarray
        ``(n,)`` int number of replaced pixels per image.
    """
    flat = images.reshape(len(images), -1)
    mean, std = _masked_stats(images, background)
    deviation = flat - mean[:, None]
    dust = np.zeros(flat.shape, dtype=bool)
    if white_sigma is not None:
        dust |= deviation > white_sigma * std[:, None]
    if black_sigma is not None:
        dust |= deviation < -black_sigma * std[:, None]
    rows, cols = np.nonzero(dust)
    if len(rows):
        flat[rows, cols] = rng.normal(mean[rows], std[rows])
    return dust.sum(axis=1)


def _plane_basis(background: np.ndarray) -> np.ndarray:
    """``(3, h*w)`` float32 rows ``mask*x``, ``mask*y``, ``mask`` (array indices)."""
    h, w = background.shape
    mask = background.ravel().astype(np.float32)
    x = np.tile(np.arange(w, dtype=np.float32), h)
    y = np.repeat(np.arange(h, dtype=np.float32), w)
    return np.stack([mask * x, mask * y, mask])


def _background_moments(flat: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background sums ``(sum x*v, sum y*v, sum v)`` ``(n, 3)`` and ``sum v**2`` ``(n,)``.

    ``flat`` is ``(n, h*w)``; accumulated in float64 (einsum: no BLAS threads in workers).
    """
    sums = np.einsum("nk,jk->nj", flat, basis, dtype=np.float64)
    squares = np.einsum("nk,nk,k->n", flat, flat, basis[2], dtype=np.float64)
    return sums, squares


def fit_background_planes(images: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Least-squares planes ``a*x + b*y + c`` fitted to each image's background.

    ``x`` and ``y`` are array indices (column, row); the 3x3 normal equations are shared
    by every image (the mask is the same for all).

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)`` float stack.
    background : np.ndarray
        ``(h, w)`` bool background mask.

    Returns
    -------
    np.ndarray
        ``(n, 3)`` float64 coefficients ``(a, b, c)``.
    """
    basis = _plane_basis(background)
    sums, _ = _background_moments(images.reshape(len(images), -1), basis)
    return _solve_planes(sums, basis)


def _solve_planes(sums: np.ndarray, basis: np.ndarray) -> np.ndarray:
    exact = basis.astype(np.float64)
    return np.linalg.solve(exact @ exact.T, sums.T).T


def subtract_ramp(images: np.ndarray, background: np.ndarray) -> None:
    """Subtract the least-squares background plane of each ``(n, h, w)`` image, in place."""
    _apply_affine(images, fit_background_planes(images, background), np.ones(len(images)))


def _apply_affine(images: np.ndarray, planes: np.ndarray, scale: np.ndarray) -> None:
    """``images = (images - plane) * scale`` in place, in the stack's dtype.

    ``planes`` is ``(n, 3)`` ``(a, b, c)`` of ``a*x + b*y + c``; ``scale`` is ``(n,)``.
    """
    h, w = images.shape[-2:]
    dtype = images.dtype
    x = np.arange(w, dtype=np.float64)
    y = np.arange(h, dtype=np.float64)
    images -= (planes[:, 0, None, None] * x).astype(dtype)  # (n, 1, w)
    images -= (planes[:, 1, None] * y + planes[:, 2, None])[:, :, None].astype(dtype)  # (n, h, 1)
    images *= scale[:, None, None].astype(dtype)


def normalise(
    images: np.ndarray,
    mode: NormMode,
    *,
    radius_px: float,
    rng: np.random.Generator | None = None,
    white_sigma: float | None = None,
    black_sigma: float | None = None,
    invert: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a stack in place and report what was done per image.

    Background sums are accumulated in float64 from images first centred on their own
    mean (so float32 products do not cancel); the background mean and std after the
    plane fit follow from the normal equations, and the correction is applied in one
    pass in the stack's dtype. Agrees with RELION's double-precision result to ~1e-5.

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)`` float stack, modified in place.
    mode : NormMode
        ``ramp`` and ``mean`` use the background outside ``radius_px``; ``whole``
        uses every pixel and no ramp; ``none`` leaves the values (dust is still
        removed if asked).
    radius_px : float
        Background radius, in pixels of these images.
    rng : np.random.Generator, optional
        Random source for dust replacement.
    white_sigma, black_sigma : float, optional
        Dust thresholds; ``None`` disables.
    invert : bool
        Multiply by -1 after normalising (RELION's ``--invert_contrast``).

    Returns
    -------
    dust_count : np.ndarray
        ``(n,)`` pixels replaced as dust.
    flat : np.ndarray
        ``(n,)`` bool, True where the background std was below 1e-10 and the image
        was left unscaled.
    """
    n, _, width = images.shape
    background = background_mask(width, radius_px)
    if mode is NormMode.WHOLE:
        background = np.ones_like(background)
    dust_count = np.zeros(n, dtype=np.int64)
    if white_sigma is not None or black_sigma is not None:
        dust_count = remove_dust(
            images, background, rng or np.random.default_rng(0),
            white_sigma=white_sigma, black_sigma=black_sigma,
        )
    sign = -1.0 if invert else 1.0
    if mode is NormMode.NONE:
        if invert:
            np.negative(images, out=images)
        return dust_count, np.zeros(n, dtype=bool)
    flat = images.reshape(n, -1)
    centre = flat.mean(axis=1, dtype=np.float64).astype(images.dtype)
    flat -= centre[:, None]
    basis = _plane_basis(background)
    sums, squares = _background_moments(flat, basis)
    count = float(background.sum())
    planes = np.zeros((n, 3))
    if mode is NormMode.RAMP:
        planes = _solve_planes(sums, basis)
        # the fit has a constant term, so the residual has mean 0 over the background
        variance = (squares - np.einsum("nj,nj->n", planes, sums)) / count
    else:
        planes[:, 2] = sums[:, 2] / count
        variance = squares / count - planes[:, 2] ** 2
    std = np.sqrt(np.maximum(variance, 0.0))
    is_flat = std < MIN_STD
    planes[is_flat] = 0.0
    planes[is_flat, 2] = -centre[is_flat]  # leave flat images as they came
    _apply_affine(images, planes, sign / np.where(is_flat, 1.0, std))
    return dust_count, is_flat
