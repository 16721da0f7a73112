"""Display thumbnails of micrographs, cheap enough for the extraction workers to make.

A worker already holds each micrograph in memory; :func:`micrograph_thumbnail` turns it
into a small uint8 image in about 15 ms (4096 x 4096 pixels, one core), which the job
hands to :func:`cryoextract.report.write_report` (keeping only those the report will
show: :class:`cryoextract.pipeline.extraction.thumbnail_gate.ThumbnailShortlist`) so that the
report never reads a micrograph again.
Only numpy is imported here (no matplotlib, pandas or scipy).

The recipe: block means over ``factor x factor`` pixels, ``factor`` the smallest
integer that brings the longer side to at most :data:`THUMBNAIL_PX` (the last
``n % factor`` rows and columns are left out); a Gaussian low-pass of
:data:`DISPLAY_SIGMA_PX` thumbnail pixels, so that particles show through the noise;
the 1st and 99th percentiles mapped to 0 and 255 (percentiles of every third pixel along
each axis: after the low-pass they hardly differ from those of all pixels, at a ninth
of the cost). Non-finite pixels are left out of their block's mean; a block without a
finite pixel takes the mean of the others.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["DISPLAY_SIGMA_PX", "THUMBNAIL_PX", "Thumbnail",
           "binning_factor", "block_mean", "display_range", "micrograph_thumbnail", "smooth",
           "to_uint8"]

#: largest side of a micrograph thumbnail, pixels
THUMBNAIL_PX = 768
#: low-pass of micrograph thumbnails (thumbnail pixels): particles show through the noise
DISPLAY_SIGMA_PX = 1.5
#: Gaussian kernel half-width, in sigmas (as scipy.ndimage's default ``truncate``)
_TRUNCATE = 4.0
#: block rows converted to float32 at a time (the buffer stays in the CPU cache) ...
_CHUNK_ROWS = 16
#: ... unless that makes more than this many bytes (very wide micrographs)
_CHUNK_BYTES = 2 * 2**20
#: blocks with a NaN or inf pixel redone at a time (bounds the float64 copy)
_FIX_BLOCKS = 4096


@dataclass(frozen=True)
class Thumbnail:
    """A display-ready micrograph thumbnail.

    Attributes
    ----------
    pixels : np.ndarray
        ``(h, w)`` uint8, display-scaled (0 black, 255 white); it covers the whole
        micrograph (``h / ny`` and ``w / nx`` about equal).
    shape_yx : tuple of int
        ``(ny, nx)`` of the micrograph, pixels: pick coordinates are drawn in this frame.
    """

    pixels: np.ndarray
    shape_yx: tuple[int, int]

    def __post_init__(self) -> None:
        pixels = self.pixels
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 \
                or not pixels.size:
            raise ValueError("Thumbnail.pixels must be a non-empty 2D uint8 array")
        ny, nx = (int(n) for n in self.shape_yx)
        if ny < 1 or nx < 1:
            raise ValueError(f"Thumbnail.shape_yx must be positive, got {self.shape_yx}")
        object.__setattr__(self, "shape_yx", (ny, nx))


_Alloc = Callable[[str, tuple[int, ...]], np.ndarray]
_SCRATCH = threading.local()


def _fresh(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A new float32 array (``name`` unused): for results handed to the caller."""
    return np.empty(shape, dtype=np.float32)


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` that this thread reuses at the next call by ``name``.

    Fresh memory costs a page fault per 4 KiB, about 4 ms of a 4096 x 4096 thumbnail's
    15: :func:`micrograph_thumbnail` keeps its few working arrays (about 10 MB, bounded
    by :data:`THUMBNAIL_PX`) from one call to the next, one set per thread. Never
    returned to a caller.
    """
    arrays: dict[str, np.ndarray] = _SCRATCH.__dict__.setdefault("arrays", {})
    size = math.prod(shape)
    held = arrays.get(name)
    if held is None or held.size < size:
        held = arrays[name] = np.empty(size, dtype=np.float32)
    return held[:size].reshape(shape)


def micrograph_thumbnail(image: np.ndarray, max_px: int = THUMBNAIL_PX) -> Thumbnail:
    """The display thumbnail of a micrograph (see the module docstring for the recipe).

    Parameters
    ----------
    image : np.ndarray
        ``(ny, nx)`` micrograph, any real dtype and byte order (e.g. uint16, float16,
        big-endian float32); never copied whole, never changed.
    max_px : int
        Longest side of the thumbnail, at most.

    Returns
    -------
    Thumbnail
        ``pixels`` of shape ``(ny // f, nx // f)``, ``f = binning_factor(...)``.

    Raises
    ------
    ValueError
        ``image`` is not 2D or is empty.
    """
    image = np.asarray(image)
    if image.ndim != 2 or not image.size:
        raise ValueError(f"expected a non-empty 2D micrograph, got shape {image.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, beyond float32's range
        means = _block_mean(image, binning_factor(image.shape, max_px), _scratch)
        finite = np.isfinite(means)
        if not finite.all():
            means[~finite] = means[finite].mean() if finite.any() else 0.0
        smoothed = _smooth(means, DISPLAY_SIGMA_PX, _scratch)
        lo, hi = display_range(smoothed[::3, ::3])  # neighbours agree after the low-pass
        pixels = to_uint8(smoothed, lo, hi, overwrite=True)
    return Thumbnail(pixels, (int(image.shape[0]), int(image.shape[1])))


def binning_factor(shape_yx: tuple[int, ...], max_px: int = THUMBNAIL_PX) -> int:
    """Smallest integer ``f`` with ``max(shape_yx) // f <= max_px`` (at least 1)."""
    return max(1, math.ceil(max(shape_yx) / max(1, int(max_px))))


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor x factor`` blocks of the last two axes, over finite pixels.

    Parameters
    ----------
    image : np.ndarray
        ``(..., h, w)``, any real dtype.
    factor : int
        Block side; ``<= 1`` gives a float32 copy.

    Returns
    -------
    np.ndarray
        ``(..., h // factor, w // factor)`` float32; NaN where a block holds no finite
        pixel. The rows and columns past the last whole block are left out.
    """
    image = np.asarray(image)
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, float64 beyond float32
        return _block_mean(image, max(1, int(factor)), _fresh)


def _block_mean(image: np.ndarray, f: int, alloc: _Alloc) -> np.ndarray:
    """:func:`block_mean` with its arrays (the result included) from ``alloc``."""
    h, w = (image.shape[-2] // f) * f, (image.shape[-1] // f) * f
    if f == 1:
        out = alloc("means", image.shape)
        np.copyto(out, image, casting="unsafe")
    elif image.ndim == 2:  # a micrograph: convert a few block rows at a time
        out = alloc("means", (h // f, w // f))
        nx = image.shape[1]
        chunk = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // (4 * f * nx)))
        buffer, strips = alloc("rows", (chunk * f, nx)), alloc("strips", (chunk, nx))
        as_is = image.dtype == np.dtype(np.float32)  # native float32: added where it lies
        for first in range(0, h // f, chunk):
            last = min(first + chunk, h // f)
            if as_is:
                rows = image[first * f : last * f]
            else:
                rows = buffer[: (last - first) * f]
                np.copyto(rows, image[first * f : last * f], casting="unsafe")
            _block_sum_into(out[first:last], rows, f, w, strips[: last - first])
        out *= np.float32(1.0 / (f * f))
    else:  # a stack of particle images: small
        out = np.empty((*image.shape[:-2], h // f, w // f), dtype=np.float32)
        rows = image[..., :h, :].astype(np.float32)
        _block_sum_into(out, rows, f, w, np.empty_like(rows[..., ::f, :]))
        out *= np.float32(1.0 / (f * f))
    finite = np.isfinite(out)
    if finite.all():
        return out
    bad = np.nonzero(~finite)
    for start in range(0, len(bad[0]), _FIX_BLOCKS):  # rare: blocks holding NaN or inf
        where = tuple(i[start : start + _FIX_BLOCKS] for i in bad)
        out[where] = _finite_block_means(image, f, where)
    return out


def _block_sum_into(
    out: np.ndarray, rows: np.ndarray, f: int, w: int, strips: np.ndarray
) -> None:
    """``out[..., i, j] = rows[..., i*f:(i+1)*f, j*f:(j+1)*f].sum()`` by strided adds.

    ``rows`` is ``(..., f * k, n)`` float32 and ``strips`` a ``(..., k, n)`` float32
    scratch array.
    """
    np.add(rows[..., 0::f, :], rows[..., 1::f, :], out=strips)
    for k in range(2, f):
        strips += rows[..., k::f, :]
    np.add(strips[..., 0:w:f], strips[..., 1:w:f], out=out)
    for k in range(2, f):
        out += strips[..., k:w:f]


def _finite_block_means(image: np.ndarray, f: int, where: tuple[np.ndarray, ...]) -> np.ndarray:
    """Means over the finite pixels of the blocks at ``where`` (NaN if none), float32."""
    *lead, by, bx = where
    ys = by[:, None, None] * f + np.arange(f)[None, :, None]
    xs = bx[:, None, None] * f + np.arange(f)[None, None, :]
    blocks = image[(*(i[:, None, None] for i in lead), ys, xs)].astype(np.float64)
    finite = np.isfinite(blocks)
    count = finite.sum(axis=(1, 2))
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of a 2D image (edges mirrored, as scipy.ndimage's ``reflect``).

    Parameters
    ----------
    image : np.ndarray
        ``(h, w)`` float, finite.
    sigma : float
        Standard deviation, pixels; the kernel reaches ``4 sigma``.

    Returns
    -------
    np.ndarray
        ``(h, w)`` float32.
    """
    return _smooth(np.asarray(image, dtype=np.float32), sigma, _fresh)


def _smooth(image: np.ndarray, sigma: float, alloc: _Alloc) -> np.ndarray:
    """:func:`smooth` of a float32 image with its arrays (the result's too) from ``alloc``."""
    radius = int(_TRUNCATE * sigma + 0.5)
    if sigma <= 0 or radius < 1:
        return image.copy()
    taps = np.exp(-0.5 * (np.arange(radius + 1) / sigma) ** 2)
    weights = (taps / (2.0 * taps.sum() - taps[0])).astype(np.float32)
    h, w = image.shape
    if radius >= min(h, w):  # a tiny image: np.pad mirrors again and again
        tall = np.pad(image, ((radius, radius), (0, 0)), mode="symmetric")
        rows = np.empty((h, w), dtype=np.float32)
        _filter_along(tall, weights, 0, rows, np.empty_like(rows))
        wide = np.pad(rows, ((0, 0), (radius, radius)), mode="symmetric")
        out = np.empty((h, w), dtype=np.float32)
        _filter_along(wide, weights, 1, out, rows)
        return out
    tall, pair = alloc("tall", (h + 2 * radius, w)), alloc("pair", (h, w))
    wide = alloc("wide", (h, w + 2 * radius))
    tall[radius : radius + h] = image
    tall[:radius] = image[radius - 1 :: -1]
    tall[radius + h :] = image[: h - radius - 1 : -1]
    _filter_along(tall, weights, 0, wide[:, radius : radius + w], pair)
    wide[:, :radius] = wide[:, radius : 2 * radius][:, ::-1]
    wide[:, radius + w :] = wide[:, w : w + radius][:, ::-1]
    out = tall[:h]  # free again: the row pass is done
    _filter_along(wide, weights, 1, out, pair)
    return out


def _filter_along(
    padded: np.ndarray, weights: np.ndarray, axis: int, out: np.ndarray, pair: np.ndarray
) -> None:
    """``out = sum_k weights[|k|] * padded shifted by k`` along ``axis`` (0 or 1).

    ``padded`` is ``out`` with ``len(weights) - 1`` mirrored pixels added at both ends
    of ``axis``; ``pair`` is scratch of ``out``'s shape. All float32, on slices only.
    """
    n, radius = out.shape[axis], len(weights) - 1

    def shifted(k: int) -> np.ndarray:
        return padded[radius + k : radius + k + n] if axis == 0 else \
            padded[:, radius + k : radius + k + n]

    np.multiply(shifted(0), weights[0], out=out)
    for k in range(1, radius + 1):
        np.add(shifted(-k), shifted(k), out=pair)
        pair *= weights[k]
        out += pair


def display_range(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Percentile contrast limits of the finite pixels; a flat image gets ``(v - 1, v + 1)``.

    Parameters
    ----------
    image : np.ndarray
        Any shape.
    low, high : float
        Percentiles mapped to black and white.
    """
    image = np.asarray(image)
    finite = image if np.isfinite(image).all() else image[np.isfinite(image)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        return lo - 1.0, lo + 1.0
    return lo, hi


def to_uint8(image: np.ndarray, lo: float, hi: float, *, overwrite: bool = False
             ) -> np.ndarray:
    """``round(255 * clip((image - lo) / (hi - lo), 0, 1))`` as uint8; NaN gives 0.

    Parameters
    ----------
    image : np.ndarray
        Any shape, float.
    lo, hi : float
        Black and white levels, ``hi > lo``.
    overwrite : bool
        Scale a float32 ``image`` in place (saves a copy; its values are lost).
    """
    if overwrite and isinstance(image, np.ndarray) and image.dtype == np.float32:
        scaled = image
        scaled -= np.float32(lo)
    else:
        scaled = np.asarray(image, dtype=np.float32) - np.float32(lo)
    scaled *= np.float32(255.0 / (hi - lo))
    np.fmax(scaled, np.float32(0.0), out=scaled)  # fmax and fmin turn NaN into the bound
    np.fmin(scaled, np.float32(255.0), out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)
