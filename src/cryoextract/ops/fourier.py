"""Fourier cropping (downsampling) and sub-pixel shifting of image stacks.

The crop reproduces RELION's ``resizeMap``/``windowFourierTransform``: of the rfft of
an ``n``-pixel image it keeps rows ``ky`` in ``(-m/2, m/2]`` and columns ``kx`` in
``[0, m/2]`` and preserves the mean (docs/conventions.md, "Fourier crop").
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

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
    _check_sizes(n, out_sizes)
    images = np.asarray(images, dtype=np.float32)
    if shifts_xy is None and all(m == n for m in out_sizes):
        return [images for _ in out_sizes]
    if workers == 1 and fftw_available():
        batch = images.shape[:-2]
        return [crop.reshape(*batch, m, m) for m, crop in zip(
            out_sizes, _fftw_crop_many(images.reshape(-1, n, n), out_sizes, shifts_xy),
            strict=True)]
    keep = max(out_sizes) // 2 + 1
    # The 2D DFT is separable: drop columns kx > max(m)/2 before the y transform.
    spectrum = fft_threads.rfft(images, axis=-1, workers=workers)[..., :keep]
    spectrum = fft_threads.fft(spectrum, axis=-2, workers=workers, overwrite_x=True)
    return [_crop_and_invert(spectrum, n, m, shifts_xy, workers) for m in out_sizes]


def fourier_crop_boxes(
    boxes: Sequence[np.ndarray],
    out_sizes: tuple[int, ...],
    *,
    shifts_xy: np.ndarray | None = None,
) -> list[np.ndarray]:
    """:func:`fourier_crop_many` of ``n`` separate ``(n_px, n_px)`` boxes of any real dtype.

    With FFTW each box is converted straight into the transform's input buffer (views
    of a micrograph are never copied whole); otherwise they are stacked first. The
    results are always new float32 arrays, one ``(n, m, m)`` per size.
    """
    if not len(boxes):
        return [np.zeros((0, m, m), dtype=np.float32) for m in out_sizes]
    n = boxes[0].shape[-1]
    _check_sizes(n, out_sizes)
    if fftw_available() and (shifts_xy is not None or any(m != n for m in out_sizes)):
        return _fftw_crop_many(boxes, out_sizes, shifts_xy)
    stacked = np.empty((len(boxes), n, n), dtype=np.float32)
    for i, box in enumerate(boxes):
        stacked[i] = box
    return fourier_crop_many(stacked, out_sizes, shifts_xy=shifts_xy)


def _check_sizes(n: int, out_sizes: tuple[int, ...]) -> None:
    for out_px in out_sizes:
        if out_px > n or out_px % 2 or n % 2:
            raise ValueError(f"need even sizes with out <= in, got {n} -> {out_px}")


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


# --------------------------------------------------------------------------- FFTW
# With pyFFTW installed, one box at a time through FFTW plans made once per thread:
# each box stays in the CPU cache from its row transform to its inverse, and FFTW's
# SIMD codelets beat pocketfft on these sizes (docs/conventions.md, "Fourier crop").

_PLANS = threading.local()
#: modules whose absence makes pyFFTW skip its Dask and scipy interfaces
_PYFFTW_EXTRAS = ("dask.array.fft", "scipy.fftpack")


@lru_cache(maxsize=1)
def fftw_available() -> bool:
    """Whether pyFFTW imports; imported once per process, without its optional interfaces.

    pyFFTW's package imports ``dask.array`` and ``scipy.fft`` when they are installed
    (0.2 s each, for interfaces we never use): while it imports, the modules that
    trigger them are marked missing unless something imported them already.
    """
    blocked = [name for name in _PYFFTW_EXTRAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import pyfftw  # noqa: F401
    except ImportError:
        return False
    finally:
        for name in blocked:
            del sys.modules[name]
    return True


class _BoxPlans:
    """FFTW plans and aligned buffers cropping one ``(n, n)`` box to each of ``sizes``.

    The row transform keeps columns ``kx <= max(sizes) / 2`` only, the column
    transform runs on those, and each size has its own inverse; FFTW's backward
    transforms are not normalised, so every crop is scaled by ``1 / n**2``
    (``(m / n)**2`` of the crop times ``1 / m**2`` of the inverse).

    With ``ops/native/real_rows.c`` built, each row's real transform is a complex
    transform of half its length on the row read as sample pairs (FFTW's estimated
    plans for it are 3x faster than for the real transform), unpacked in C into the
    kept columns; otherwise FFTW's real transform of the rows.
    """

    def __init__(self, n: int, sizes: tuple[int, ...]):
        import pyfftw

        from cryoextract.ops.native import real_rows_unpacker

        flags = ("FFTW_ESTIMATE",)  # planning once per process must cost nothing
        self.n = n
        self.keep = max(sizes) // 2 + 1
        unpack = real_rows_unpacker()
        self._unpack: Any = None
        if unpack is None:
            self.box = pyfftw.empty_aligned((n, n), dtype="float32")
            # rows padded to an even number of complex64 values: each row then starts on
            # a 16-byte boundary and FFTW's SIMD codelets apply (about 20 % faster)
            rows = _padded_rows(pyfftw, n, n // 2 + 1)
            self.forward_x = pyfftw.FFTW(self.box, rows, axes=(1,), flags=flags, threads=1)
            self.columns = rows[:, : self.keep]  # transformed along y in place
        else:
            packed = pyfftw.empty_aligned((n, n // 2), dtype="complex64")
            self.box = packed.view(np.float32)  # (n, n): each row as n/2 sample pairs
            self.forward_x = pyfftw.FFTW(packed, packed, axes=(1,), flags=flags, threads=1)
            self.columns = _padded_rows(pyfftw, n, self.keep)
            self._twiddle = np.exp(-2j * np.pi * np.arange(self.keep) / n).astype(np.complex64)
            self._unpack = partial(unpack, packed.ctypes.data, n, n // 2,
                                   self._twiddle.ctypes.data, self.keep,
                                   self.columns.ctypes.data, self.columns.strides[0] // 8)
            self._buffers = (packed, self.columns, self._twiddle)  # kept alive
        self.forward_y = pyfftw.FFTW(self.columns, self.columns, axes=(0,), flags=flags,
                                     threads=1)
        self.inverse: dict[int, tuple[np.ndarray, np.ndarray, Any]] = {}
        for m in sizes:
            spectrum = _padded_rows(pyfftw, m, m // 2 + 1)
            image = pyfftw.empty_aligned((m, m), dtype="float32")
            plan = pyfftw.FFTW(spectrum, image, axes=(0, 1), direction="FFTW_BACKWARD",
                               flags=(*flags, "FFTW_DESTROY_INPUT"), threads=1)
            self.inverse[m] = (spectrum, image, plan)

    def transform(self, box: np.ndarray) -> None:
        """Forward transform of one ``(n, n)`` box into :attr:`columns`."""
        np.copyto(self.box, box, casting="unsafe")
        self.forward_x.execute()
        if self._unpack is not None:
            self._unpack()
        self.forward_y.execute()

    def crop(self, m: int, factor: np.ndarray | np.float32) -> np.ndarray:
        """The ``(m, m)`` image of the last transformed box, its crop times ``factor``.

        ``factor`` is a scalar or an ``(m, m // 2 + 1)`` phase ramp; the returned array
        is overwritten by the next call.
        """
        spectrum, image, plan = self.inverse[m]
        half = m // 2
        top, bottom = (factor[: half + 1], factor[half + 1 :]) \
            if isinstance(factor, np.ndarray) else (factor, factor)
        np.multiply(self.columns[: half + 1, : half + 1], top, out=spectrum[: half + 1])
        np.multiply(self.columns[self.n - half + 1 :, : half + 1], bottom,
                    out=spectrum[half + 1 :])
        plan.execute()
        return image


def _padded_rows(pyfftw: Any, n_rows: int, width: int) -> np.ndarray:
    """An aligned ``(n_rows, width)`` complex64 view whose rows start 16 bytes apart."""
    return pyfftw.empty_aligned((n_rows, width + width % 2), dtype="complex64")[:, :width]


def _box_plans(n: int, sizes: tuple[int, ...]) -> _BoxPlans:
    cache: dict[tuple[int, tuple[int, ...]], _BoxPlans] | None = getattr(_PLANS, "cache", None)
    if cache is None:
        cache = _PLANS.cache = {}
    key = (n, sizes)
    if key not in cache:
        cache[key] = _BoxPlans(n, sizes)
    return cache[key]


def _fftw_crop_many(
    boxes: Sequence[np.ndarray], out_sizes: tuple[int, ...], shifts_xy: np.ndarray | None
) -> list[np.ndarray]:
    """:func:`fourier_crop_many` of ``n`` ``(n_px, n_px)`` boxes one by one through FFTW
    (same coefficients); ``(n, m, m)`` float32 per entry of ``out_sizes``."""
    n = boxes[0].shape[-1]
    sizes = tuple(sorted(set(out_sizes)))
    plans = _box_plans(n, sizes)
    scale = np.float32(1.0 / n**2)
    shifts = None if shifts_xy is None else np.asarray(shifts_xy).reshape(-1, 2)
    results = {m: np.empty((len(boxes), m, m), dtype=np.float32) for m in sizes}
    ramps = {} if shifts is None else \
        {m: _phase_ramp(shifts * (m / n), m) * scale for m in sizes}
    for i, box in enumerate(boxes):
        plans.transform(box)
        for m, result in results.items():
            result[i] = plans.crop(m, scale if shifts is None else ramps[m][i])
    return [results[m] for m in out_sizes]
