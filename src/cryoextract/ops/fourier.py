"""Fourier cropping (downsampling) and sub-pixel shifting of image stacks.

The crop reproduces RELION's ``resizeMap``/``windowFourierTransform``: of the rfft of
an ``n``-pixel image it keeps rows ``ky`` in ``(-m/2, m/2]`` and columns ``kx`` in
``[0, m/2]`` and preserves the mean (docs/conventions.md, "Fourier crop").
"""

from __future__ import annotations

import numpy as np

from cryoextract.ops import fft_threads


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
        Threads for the FFTs (:mod:`cryoextract.ops.fft_threads`).

    Returns
    -------
    np.ndarray
        ``(..., m, m)`` float32. The output pixel size is ``n / m`` input pixels.
    """
    return fourier_crop_many(images, (out_px,), shifts_xy=shifts_xy, workers=workers)[0]


def fourier_crop_many(
    images: np.ndarray,
    out_sizes: tuple[int, ...],
    *,
    shifts_xy: np.ndarray | None = None,
    workers: int = 1,
) -> list[np.ndarray]:
    """:func:`fourier_crop_2d` to several sizes from one forward transform.

    Returns one ``(..., m, m)`` float32 array per entry of ``out_sizes``.
    """
    n = images.shape[-1]
    if images.shape[-2] != n:
        raise ValueError(f"images must be square, got {images.shape[-2:]}")
    for out_px in out_sizes:
        if out_px > n or out_px % 2 or n % 2:
            raise ValueError(f"need even sizes with out <= in, got {n} -> {out_px}")
    images = np.asarray(images, dtype=np.float32)
    if shifts_xy is None and all(m == n for m in out_sizes):
        return [images for _ in out_sizes]
    keep = max(out_sizes) // 2 + 1
    # The 2D DFT is separable: drop columns kx > max(m)/2 before the y transform.
    spectrum = fft_threads.rfft(images, axis=-1, workers=workers)[..., :keep]
    spectrum = fft_threads.fft(spectrum, axis=-2, workers=workers, overwrite_x=True)
    return [_crop_and_invert(spectrum, n, m, shifts_xy, workers) for m in out_sizes]


def _crop_and_invert(
    spectrum: np.ndarray, n: int, m: int, shifts_xy: np.ndarray | None, workers: int
) -> np.ndarray:
    """Keep rows ``ky`` in ``(-m/2, m/2]`` and columns ``[0, m/2]``, shift, invert."""
    half = m // 2
    if m < n:
        # rows ky = 0..m/2 then -(m/2 - 1)..-1: numpy order for size m
        cropped = np.concatenate(
            [spectrum[..., : half + 1, : half + 1], spectrum[..., n - half + 1 :, : half + 1]],
            axis=-2,
        )
        cropped *= (m / n) ** 2
    else:
        cropped = spectrum[..., : half + 1].copy()
    if shifts_xy is not None:
        cropped *= _phase_ramp(np.asarray(shifts_xy) * (m / n), m)
    out = fft_threads.irfft2(cropped, s=(m, m), workers=workers, overwrite_x=True)
    return out.astype(np.float32, copy=False)


def _phase_ramp(shifts_xy: np.ndarray, size: int) -> np.ndarray:
    """``(..., size, size//2+1)`` complex64 ramp moving content by ``shifts_xy`` pixels."""
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    dx = shifts_xy[..., 0, None, None]
    dy = shifts_xy[..., 1, None, None]
    return np.exp(-2j * np.pi * (kx * dx + ky * dy)).astype(np.complex64)
