"""CTF phase flipping and premultiplication of images (docs/conventions.md, "CTF correction").

As RELION's ``--phase_flip`` / ``--premultiply_ctf``: the image's Fourier transform is
multiplied by ``sign(CTF)`` (``+1`` where the CTF is 0 or positive) or by the CTF itself
(with its B-factor envelope and scale), computed for the image's own size and pixel size.
Done in a box larger than the particle box, then windowed, so the signal the defocus moved
out of the particle box is brought back in (docs/conventions.md).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
import scipy.fft

from cryoextract.ops.ctf import CtfParams, ctf_2d


class CtfCorrection(str, enum.Enum):
    """What to do with the CTF at extraction."""

    NONE = "none"
    FLIP = "flip"
    PREMULTIPLY = "premultiply"


def ctf_multiplier(
    params: CtfParams, shape_yx: int | tuple[int, int], pixel_size_angstrom: float,
    mode: CtfCorrection,
) -> np.ndarray:
    """``(h, w//2+1)`` float32 factor for an rfft2 spectrum: ``sign(CTF)`` or ``CTF``."""
    ctf = ctf_2d(params, shape_yx, pixel_size_angstrom, rfft=True)
    if mode is CtfCorrection.FLIP:
        return np.where(ctf < 0, np.float32(-1), np.float32(1))
    if mode is CtfCorrection.PREMULTIPLY:
        return ctf
    raise ValueError(f"no CTF multiplier for {mode}")


def apply_fourier_multiplier(images: np.ndarray, multiplier: np.ndarray) -> np.ndarray:
    """Multiply the rfft2 of each image by a real factor and transform back.

    Parameters
    ----------
    images : np.ndarray
        ``(..., h, w)`` real images.
    multiplier : np.ndarray
        ``(..., h, w//2+1)`` real factors, broadcast against the images' spectra.

    Returns
    -------
    np.ndarray
        ``(..., h, w)`` float32.
    """
    h, w = images.shape[-2:]
    spectrum = scipy.fft.rfft2(np.asarray(images, dtype=np.float32))
    spectrum *= multiplier
    return scipy.fft.irfft2(spectrum, s=(h, w), overwrite_x=True).astype(np.float32, copy=False)


def correct_boxes(
    boxes: np.ndarray,
    params: Sequence[CtfParams],
    pixel_size_angstrom: float,
    mode: CtfCorrection,
) -> np.ndarray:
    """Phase-flip or premultiply each box with its own CTF.

    Parameters
    ----------
    boxes : np.ndarray
        ``(n, b, b)`` boxes (the padded CTF box).
    params : sequence of CtfParams
        ``n`` CTFs, one per box; identical ones share one computation.
    pixel_size_angstrom : float
        Pixel size of the boxes.
    mode : CtfCorrection
        ``flip`` or ``premultiply``.

    Returns
    -------
    np.ndarray
        ``(n, b, b)`` float32.
    """
    size = boxes.shape[-1]
    unique: dict[CtfParams, np.ndarray] = {}
    for p in params:
        if p not in unique:
            unique[p] = ctf_multiplier(p, size, pixel_size_angstrom, mode)
    if len(unique) == 1:
        multiplier = next(iter(unique.values()))
    else:
        multiplier = np.stack([unique[p] for p in params])
    return apply_fourier_multiplier(boxes, multiplier)


def window_centre(images: np.ndarray, size: int) -> np.ndarray:
    """Cut the central ``size`` x ``size`` window, keeping index ``n//2`` at ``size//2``.

    ``(..., n, n)`` -> ``(..., size, size)`` (a view).
    """
    n = images.shape[-1]
    start = n // 2 - size // 2
    return images[..., start : start + size, start : start + size]
