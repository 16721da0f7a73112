"""Detector MTF on a Fourier grid, as RELION 3.1's ``ObservationModel::getMtfImage``.

Pure numpy. ``relion_particle_subtract`` multiplies the projection it subtracts by the
ratio of a particle's MTF to the average MTF of all optics groups, and only when the
optics groups name different MTF files (docs "Optical aberrations").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cryoextract.errors import ParameterError
from cryoextract.ops.ctf import frequency_grid_angstrom

__all__ = ["mtf_image", "relative_mtfs"]


def mtf_image(
    resolution_inverse_px: np.ndarray, value: np.ndarray, detector_pixel_size_angstrom: float,
    box_px: int, pixel_size_angstrom: float,
) -> np.ndarray:
    """The MTF at every frequency of an ``N``-pixel image's rfft.

    As RELION: the curve's frequencies become 1/Å with the detector's pixel size
    (``rlnMicrographOriginalPixelSize``); a frequency ``|k|`` falls in bin
    ``floor(|k| / step)`` with ``step = (last - first) / n`` (RELION divides by the
    number of points, not the number of intervals), is linearly interpolated between
    that point and the next, and takes the first value at and below bin 0 and the last
    value from bin ``n - 1`` on.

    Parameters
    ----------
    resolution_inverse_px, value : np.ndarray
        ``(n,)`` the curve (:func:`cryoextract.io.mtf.read_mtf`).
    detector_pixel_size_angstrom : float
        Pixel size of the detector the curve is for.
    box_px, pixel_size_angstrom
        The images.

    Returns
    -------
    np.ndarray
        ``(N, N // 2 + 1)`` float64.
    """
    if not detector_pixel_size_angstrom > 0:
        raise ParameterError("the MTF needs the detector pixel size "
                             "(rlnMicrographOriginalPixelSize)")
    curve_x = np.asarray(resolution_inverse_px, dtype=np.float64) / detector_pixel_size_angstrom
    curve_y = np.asarray(value, dtype=np.float64)
    n = len(curve_x)
    step = (curve_x[-1] - curve_x[0]) / n
    if not step > 0:
        raise ParameterError("the MTF's resolutions do not increase")
    ky, kx = frequency_grid_angstrom(box_px, pixel_size_angstrom)
    radius = np.hypot(kx, ky)
    bins = np.floor(radius / step).astype(np.int64)
    inner = np.clip(bins, 0, n - 2)
    x0, x1 = curve_x[inner], curve_x[inner + 1]
    y0, y1 = curve_y[inner], curve_y[inner + 1]
    out = y0 + (y1 - y0) * (radius - x0) / (x1 - x0)
    out = np.where(bins <= 0, curve_y[0], out)
    return np.where(bins >= n - 1, curve_y[-1], out)


def relative_mtfs(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each MTF image divided by their average (RELION's ``divideByMtf`` with
    ``do_correct_average_mtf``)."""
    average = np.mean(np.stack(images), axis=0)
    return [image / average for image in images]
