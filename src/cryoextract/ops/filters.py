"""Small-image filters in plain numpy: a Gaussian low-pass and bilinear sampling.

They stand in for ``scipy.ndimage.gaussian_filter(mode="nearest")`` and
``scipy.ndimage.map_coordinates(order=1, mode="nearest")`` on the per-micrograph maps of
the descriptors (tens of pixels square), where importing scipy.ndimage (0.1 s) would
cost more than the filtering.
"""

from __future__ import annotations

import numpy as np

#: Gaussian kernel half-width in standard deviations (scipy.ndimage's ``truncate``)
TRUNCATE = 4.0


def gaussian_nearest(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian low-pass, edges extended by their nearest pixel.

    Parameters
    ----------
    image : np.ndarray
        ``(h, w)`` real.
    sigma : float
        Standard deviation, pixels; the kernel reaches ``round(4 sigma)`` pixels.

    Returns
    -------
    np.ndarray
        ``(h, w)`` float64.
    """
    out = np.asarray(image, dtype=np.float64)
    radius = int(TRUNCATE * sigma + 0.5)
    if sigma <= 0 or radius < 1:
        return out.copy()
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        size = out.shape[axis]
        out = sum(weight * np.take(padded, np.arange(k, k + size), axis=axis)
                  for k, weight in enumerate(taps))
    return out


def bilinear_nearest(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``(n,)`` bilinear samples of ``(h, w)`` ``values`` at fractional ``(rows, cols)``.

    Positions beyond the array take the value of the nearest edge (coordinates clipped
    to ``[0, h - 1]`` and ``[0, w - 1]``).
    """
    values = np.asarray(values, dtype=np.float64)
    h, w = values.shape
    r = np.clip(np.asarray(rows, dtype=np.float64), 0, h - 1)
    c = np.clip(np.asarray(cols, dtype=np.float64), 0, w - 1)
    r0 = np.minimum(np.floor(r).astype(np.int64), max(h - 2, 0))
    c0 = np.minimum(np.floor(c).astype(np.int64), max(w - 2, 0))
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = r - r0, c - c0
    top = values[r0, c0] * (1 - fc) + values[r0, c1] * fc
    bottom = values[r1, c0] * (1 - fc) + values[r1, c1] * fc
    return top * (1 - fr) + bottom * fr
