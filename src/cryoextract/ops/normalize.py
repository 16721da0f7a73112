"""Background normalisation, ramp removal and dust removal of particle stacks.

RELION's ``normalise`` (docs/conventions.md, "Normalisation"): background = pixels whose
integer distance from the box centre (index ``n // 2``) exceeds the radius; dust is
replaced first, then a least-squares plane fitted to the background is subtracted, then
the image is shifted and scaled to background mean 0 and population std 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cryoextract.options import NormMode

# RELION skips normalisation of an image whose background std is below this.
MIN_STD = 1e-10


@lru_cache(maxsize=32)
def background_mask(box_px: int, radius_px: float) -> np.ndarray:
    """``(box, box)`` bool, True where ``i**2 + j**2 > radius**2`` (i, j from the centre).

    Cached and read-only: copy it to modify it.
    """
    offsets = np.arange(box_px) - box_px // 2
    mask = offsets[:, None] ** 2 + offsets[None, :] ** 2 > radius_px**2
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True)
class _Region:
    """A background region and what every least-squares fit over it shares.

    ``weights`` is the ``(h, w)`` float32 0/1 mask; ``x`` ``(w,)`` and ``y`` ``(h,)`` are
    pixel coordinates about the box centre (float64); ``gram_inverse`` is the
    (pseudo-)inverse of the ``3x3`` normal matrix of the plane ``a*x + b*y + c`` over
    the region.
    """

    weights: np.ndarray
    count: float
    x: np.ndarray
    y: np.ndarray
    gram_inverse: np.ndarray


@lru_cache(maxsize=32)
def _region(box_px: int, radius_px: float | None) -> _Region:
    """The pixels outside ``radius_px`` of a square box; all of them for ``None``."""
    mask = np.ones((box_px, box_px), dtype=bool) if radius_px is None \
        else background_mask(box_px, radius_px)
    return _mask_region(mask)


@lru_cache(maxsize=16)  # a few tubes' masks (box**2 bytes of key, 4 box**2 of weights)
def _cached_mask_region(mask_bytes: bytes, box_px: int) -> _Region:
    """:func:`_mask_region` of a ``(box, box)`` bool mask given by its bytes."""
    return _mask_region(np.frombuffer(mask_bytes, dtype=bool).reshape(box_px, box_px))


def _mask_region(mask: np.ndarray) -> _Region:
    """The region of a ``(box, box)`` bool mask (read-only arrays)."""
    box_px = mask.shape[-1]
    x = np.arange(box_px, dtype=np.float64) - box_px // 2
    weights = mask.astype(np.float32)
    # the normal matrix of a*x + b*y + c over the mask, from its row and column counts
    columns, rows = mask.sum(axis=0, dtype=np.float64), mask.sum(axis=1, dtype=np.float64)
    sxy = float((weights * x.astype(np.float32)).sum(axis=1, dtype=np.float64) @ x)
    sx, sy, count = float(columns @ x), float(rows @ x), float(rows.sum())
    gram = np.array([[columns @ x**2, sxy, sx], [sxy, rows @ x**2, sy], [sx, sy, count]])
    region = _Region(weights, count, x, x.copy(), np.linalg.pinv(gram))
    for array in (region.weights, region.x, region.y, region.gram_inverse):
        array.setflags(write=False)
    return region


def _region_sums(images: np.ndarray, region: _Region) -> np.ndarray:
    """``(n, 4)`` float64 sums over the region ``(x*v, y*v, v, v**2)`` of each image.

    ``images`` is ``(n, h, w)`` float32, best centred near 0 (the sums are float32 per
    row and column). Element-wise numpy only, no BLAS (whose threads would compete
    with the worker processes): the masked stack is summed along each axis and those
    ``(n, w)`` and ``(n, h)`` profiles are weighted by the coordinates.
    """
    n = len(images)
    masked = images * region.weights
    columns = masked.sum(axis=1).astype(np.float64)  # (n, w)
    rows = masked.sum(axis=2).astype(np.float64)  # (n, h)
    squares = np.einsum("nk,nk->n", masked.reshape(n, -1), images.reshape(n, -1))
    return np.stack([np.einsum("nw,w->n", columns, region.x),
                     np.einsum("nh,h->n", rows, region.y),
                     rows.sum(axis=1), squares.astype(np.float64)], axis=1)


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
    count = float(background.sum())
    weights = background.astype(images.dtype)
    centre = flat.mean(axis=1)
    deviation = flat - centre[:, None]
    masked = deviation * weights.ravel()
    offset = masked.sum(axis=1, dtype=np.float64) / count
    variance = np.einsum("nk,nk->n", masked, deviation).astype(np.float64) / count
    mean = centre + offset
    std = np.sqrt(np.maximum(variance - offset**2, 0.0))
    deviation -= offset[:, None].astype(images.dtype)
    dust = np.zeros(flat.shape, dtype=bool)
    if white_sigma is not None:
        dust |= deviation > white_sigma * std[:, None]
    if black_sigma is not None:
        dust |= deviation < -black_sigma * std[:, None]
    rows, cols = np.nonzero(dust)
    if len(rows):
        flat[rows, cols] = rng.normal(mean[rows], std[rows])
    return dust.sum(axis=1)


def _apply_affine(images: np.ndarray, planes: np.ndarray, scale: np.ndarray,
                  region: _Region) -> None:
    """``images = (images - plane) * scale`` in place, in the stack's dtype.

    ``planes`` is ``(n, 3)`` ``(a, b, c)`` of ``a*x + b*y + c`` in the region's centred
    coordinates; ``scale`` is ``(n,)``.
    """
    dtype = images.dtype
    images -= (planes[:, 0, None, None] * region.x).astype(dtype)  # (n, 1, w)
    images -= (planes[:, 1, None] * region.y + planes[:, 2, None])[:, :, None].astype(dtype)
    images *= scale[:, None, None].astype(dtype)


def _compiled_kernel(images: np.ndarray) -> Callable[..., np.ndarray] | None:
    """The compiled normalisation (``ops/native/normalise.c``) when it is built and
    ``images`` is a writeable C-contiguous float32 stack; None for the numpy path."""
    if images.dtype != np.float32 or not images.flags.c_contiguous \
            or not images.flags.writeable:
        return None
    from cryoextract.ops.native import normaliser

    return normaliser()


def normalise(
    images: np.ndarray,
    mode: NormMode,
    *,
    radius_px: float,
    rng: np.random.Generator | None = None,
    white_sigma: float | None = None,
    black_sigma: float | None = None,
    invert: bool = False,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a stack in place and report what was done per image.

    Each image is first centred on its own mean (so that float32 sums do not cancel);
    the background sums ``(x*v, y*v, v, v**2)`` then give the least-squares plane and
    the residual's std through the normal equations, shared by every image, and the
    correction is applied in one pass in the stack's dtype. Agrees with RELION's
    double-precision result to ~1e-5. The same computation runs compiled, image by
    image with double-precision sums (``ops/native/normalise.c``), on C-contiguous
    float32 stacks where the library was built.

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)`` float stack (``h == w``), modified in place.
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
    background : np.ndarray, optional
        ``(h, w)`` bool: the background of ``ramp`` and ``mean`` (and dust) instead of
        the pixels outside ``radius_px`` (helical segments:
        :func:`cryoextract.ops.helix.normalise_segments`).

    Returns
    -------
    dust_count : np.ndarray
        ``(n,)`` pixels replaced as dust.
    flat : np.ndarray
        ``(n,)`` bool, True where the background std was below 1e-10 and the image
        was left unscaled.
    """
    n, _, width = images.shape
    region = _region(width, None if mode is NormMode.WHOLE else float(radius_px)) \
        if background is None or mode is NormMode.WHOLE else \
        _cached_mask_region(np.ascontiguousarray(background, dtype=bool).tobytes(), width)
    dust_count = np.zeros(n, dtype=np.int64)
    if white_sigma is not None or black_sigma is not None:
        dust_count = remove_dust(
            images, region.weights.astype(bool), rng or np.random.default_rng(0),
            white_sigma=white_sigma, black_sigma=black_sigma,
        )
    sign = -1.0 if invert else 1.0
    if mode is NormMode.NONE:
        if invert:
            np.negative(images, out=images)
        return dust_count, np.zeros(n, dtype=bool)
    kernel = _compiled_kernel(images)
    if kernel is not None:
        return dust_count, kernel(images, region.weights, region.x, region.y,
                                  region.gram_inverse, region.count,
                                  mode is NormMode.RAMP, sign, MIN_STD)
    centre = images.reshape(n, -1).mean(axis=1)  # float32, pairwise summation
    images -= centre[:, None, None]
    sums = _region_sums(images, region)
    rhs, squares = sums[:, :3], sums[:, 3]
    planes = np.zeros((n, 3))
    if mode is NormMode.RAMP:
        planes = rhs @ region.gram_inverse
        # the fit has a constant term, so the residual has mean 0 over the background
        variance = (squares - np.einsum("nj,nj->n", planes, rhs)) / region.count
    else:
        planes[:, 2] = rhs[:, 2] / region.count
        variance = squares / region.count - planes[:, 2] ** 2
    std = np.sqrt(np.maximum(variance, 0.0))
    is_flat = std < MIN_STD
    planes[is_flat] = 0.0
    planes[is_flat, 2] = -centre[is_flat]  # leave flat images as they came
    _apply_affine(images, planes, sign / np.where(is_flat, 1.0, std), region)
    return dust_count, is_flat
