"""Detector MTF curves: RELION's MTF STAR files (``rlnMtfFileName`` of an optics group)."""

from __future__ import annotations

import os

import numpy as np

from cryoextract.errors import InputError
from cryoextract.io.star import find_block, read_star

MTF_COLUMNS = ("rlnResolutionInversePixel", "rlnMtfValue")


def read_mtf(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an MTF curve.

    Returns
    -------
    resolution_inverse_px : np.ndarray
        ``(n,)`` float64 frequencies in 1/pixel of the detector (0 to 0.5), increasing.
    value : np.ndarray
        ``(n,)`` float64 MTF values, all > 0 (RELION refuses zero or negative ones).

    Raises
    ------
    InputError
        Unreadable file, missing columns, values that are not numbers, fewer than two
        points, resolutions that do not increase, or MTF values <= 0.
    """
    table = find_block(read_star(path), path, MTF_COLUMNS)
    try:
        resolution = table["rlnResolutionInversePixel"].to_numpy(dtype=np.float64)
        value = table["rlnMtfValue"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("MTF values are not numbers", path) from None
    if len(resolution) < 2 or not np.all(np.isfinite(resolution)) or \
            not np.all(np.diff(resolution) > 0):
        raise InputError("MTF resolutions must be two or more increasing numbers", path)
    if not np.all(value > 1e-10):  # RELION's test
        raise InputError("MTF values must be > 0", path)
    return resolution, value
