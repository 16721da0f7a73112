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


def _stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std along the last axis, in float64: ``(n,)``, ``(n,)``."""
    mean = values.mean(axis=-1, dtype=np.float64)
    std = np.sqrt(np.mean((values - mean[:, None]) ** 2, axis=-1))
    return mean, std


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
    mean, std = _stats(flat[:, background.ravel()])
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


def subtract_ramp(images: np.ndarray, background: np.ndarray) -> None:
    """Subtract the least-squares plane ``a*x + b*y + c`` fitted to the background, in place.

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)`` float stack.
    background : np.ndarray
        ``(h, w)`` bool background mask.
    """
    h, w = images.shape[-2:]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    design = np.stack([x[background], y[background], np.ones(int(background.sum()))], axis=1)
    # One pseudo-inverse serves every image: the mask is the same for all.
    solver = np.linalg.pinv(design)  # (3, n_bg)
    coefficients = images.reshape(len(images), -1)[:, background.ravel()] @ solver.T
    planes = coefficients @ np.stack([x.ravel(), y.ravel(), np.ones(h * w)])
    images -= planes.reshape(images.shape).astype(images.dtype)


def normalise(
    images: np.ndarray,
    mode: NormMode,
    *,
    radius_px: float,
    rng: np.random.Generator | None = None,
    white_sigma: float | None = None,
    black_sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a stack in place and report what was done per image.

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)`` float32 stack.
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

    Returns
    -------
    dust_count : np.ndarray
        ``(n,)`` pixels replaced as dust.
    flat : np.ndarray
        ``(n,)`` bool, True where the background std was below 1e-10 and the image
        was left unscaled.
    """
    n = len(images)
    background = background_mask(images.shape[-1], radius_px)
    if mode is NormMode.WHOLE:
        background = np.ones_like(background)
    dust_count = np.zeros(n, dtype=np.int64)
    if white_sigma is not None or black_sigma is not None:
        dust_count = remove_dust(
            images, background, rng or np.random.default_rng(0),
            white_sigma=white_sigma, black_sigma=black_sigma,
        )
    if mode is NormMode.NONE:
        return dust_count, np.zeros(n, dtype=bool)
    if mode is NormMode.RAMP:
        subtract_ramp(images, background)
    mean, std = _stats(images.reshape(n, -1)[:, background.ravel()])
    flat = std < MIN_STD
    scale = np.where(flat, 1.0, 1.0 / np.where(flat, 1.0, std))
    offset = np.where(flat, 0.0, mean)
    images -= offset[:, None, None].astype(images.dtype)
    images *= scale[:, None, None].astype(images.dtype)
    return dust_count, flat
