"""CTF phase flipping and premultiplication of images (docs/conventions.md, "CTF correction").

As RELION 3.1's ``--phase_flip`` / ``--premultiply_ctf`` (``CTF::getFftwImage`` with
damping, ``CTF::getCTF``): the image's Fourier transform is multiplied by
``scale * sign(-sin(gamma))`` (``+scale`` where the undamped CTF is 0 or positive; the
B-factor envelope never changes a sign) or by the CTF itself (with its B-factor envelope
and scale), computed for the image's own size and pixel size. RELION multiplies the flip
by ``rlnCtfScalefactor`` too (``relion_preprocess --phase_flip`` on a micrograph with
scale 2 gives particles twice those of a plain ``±1`` flip), so unnormalised output equals
RELION's (tests/test_ctf_correct.py). Done in a box larger than the particle box, then
windowed, so the signal the defocus moved out of the particle box is brought back in
(docs/conventions.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from cryoextract.ops.ctf import CtfParams, ctf_2d
from cryoextract.options import CtfCorrection


def ctf_multiplier(
    params: CtfParams, shape_yx: int | tuple[int, int], pixel_size_angstrom: float,
    mode: CtfCorrection,
) -> np.ndarray:
    """``(h, w//2+1)`` float32 factor for an rfft2 spectrum: ``scale * sign(CTF)`` or ``CTF``.

    The sign is taken from the CTF without its B-factor envelope, as RELION: with a large
    B-factor the damped CTF underflows to 0 in float32 at high frequency and would lose it.

    For an even width the last rfft column holds ``kx = +w/2`` and ``-w/2`` at once: the
    coefficients at ``(ky, w/2)`` and ``(-ky, w/2)`` are complex conjugates, and an inverse
    real FFT keeps only their conjugate-symmetric part, i.e. it applies the *mean* of the
    two factors given there. An astigmatic CTF differs at ``(+w/2, ky)`` and
    ``(+w/2, -ky)``; where the two signs disagree a plain sign flip (RELION's) averages to
    0 and wipes those coefficients, so flipping twice would not give the image back. The
    flip therefore uses the sign of the mean of the two CTF values on that column (the
    same on both rows): a true ``±scale`` factor, an involution up to ``scale²``, and
    RELION's result everywhere else. Premultiplication needs no change: the inverse FFT
    already applies the mean of the two CTF values there.
    """
    if mode is CtfCorrection.FLIP:
        undamped = ctf_2d(replace(params, bfactor_angstrom2=0.0, scale=1.0), shape_yx,
                          pixel_size_angstrom, rfft=True)
        width = shape_yx if isinstance(shape_yx, int) else shape_yx[1]
        if int(width) % 2 == 0:
            column = undamped[:, -1].astype(np.float64)
            mirror = column[-np.arange(len(column)) % len(column)]
            undamped[:, -1] = (column + mirror) / 2
        scale = np.float32(params.scale)
        return np.where(undamped < 0, -scale, scale)
    if mode is CtfCorrection.PREMULTIPLY:
        return ctf_2d(params, shape_yx, pixel_size_angstrom, rfft=True)
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
    import scipy.fft  # 0.17 s to import: only where a CTF is corrected

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
