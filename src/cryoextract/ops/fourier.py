"""Fourier cropping (downsampling) and sub-pixel shifting of image stacks.

The crop reproduces RELION's ``resizeMap``/``windowFourierTransform``: of the rfft of
an ``n``-pixel image it keeps rows ``ky`` in ``(-m/2, m/2]`` and columns ``kx`` in
``[0, m/2]`` and preserves the mean (docs/conventions.md, "Fourier crop").
"""

from __future__ import annotations

import numpy as np
import scipy.fft


def fourier_crop_2d(
    images: np.ndarray,
    out_px: int,
    *,
    shifts_xy: np.ndarray | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Downsample square images by Fourier cropping, optionally shifting them.

    Parameters
    ----------
    images : np.ndarray
        ``(..., n, n)`` real images, ``n`` even.
    out_px : int
        Output side ``m``, even, ``m <= n``. ``m == n`` only shifts.
    shifts_xy : np.ndarray, optional
        ``(..., 2)`` shifts ``(dx, dy)`` in *input* pixels applied to the image content
        (a feature at ``x`` moves to ``x + dx``), by a phase ramp.
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    np.ndarray
        ``(..., m, m)`` float32. The output pixel size is ``n / m`` input pixels.
    """
    n = images.shape[-1]
    if images.shape[-2] != n:
        raise ValueError(f"images must be square, got {images.shape[-2:]}")
    if out_px > n or out_px % 2 or n % 2:
        raise ValueError(f"need even sizes with out <= in, got {n} -> {out_px}")
    if out_px == n and shifts_xy is None:
        return np.asarray(images, dtype=np.float32)
    half = out_px // 2
    images = np.asarray(images, dtype=np.float32)
    if out_px < n:
        # The 2D DFT is separable: drop columns kx > m/2 before the y transform, then keep
        # rows ky = 0..m/2 and -(m/2 - 1)..-1 (numpy order for size m).
        spectrum = scipy.fft.rfft(images, axis=-1, workers=workers)[..., : half + 1]
        spectrum = scipy.fft.fft(spectrum, axis=-2, workers=workers, overwrite_x=True)
        spectrum = np.concatenate(
            [spectrum[..., : half + 1, :], spectrum[..., n - half + 1 :, :]], axis=-2
        )
    else:
        spectrum = scipy.fft.rfft2(images, workers=workers)
    if shifts_xy is not None:
        spectrum *= _phase_ramp(np.asarray(shifts_xy) * (out_px / n), out_px)
    out = scipy.fft.irfft2(spectrum, s=(out_px, out_px), workers=workers, overwrite_x=True)
    if out_px < n:
        out *= (out_px / n) ** 2
    return out.astype(np.float32, copy=False)


def _phase_ramp(shifts_xy: np.ndarray, size: int) -> np.ndarray:
    """``(..., size, size//2+1)`` complex64 ramp moving content by ``shifts_xy`` pixels."""
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    dx = shifts_xy[..., 0, None, None]
    dy = shifts_xy[..., 1, None, None]
    return np.exp(-2j * np.pi * (kx * dx + ky * dy)).astype(np.complex64)
