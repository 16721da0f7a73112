"""Compiled inner loops in C, loaded with ctypes; numba or numpy where they were not built.

Each ``X.c`` here is compiled when the package is built or installed (``hatch_build.py``
at the repository root, with the system C compiler) into ``_X_<hash>.so`` next to it,
the hash being that of the C source: a library built from another version of the source
is never loaded. Where one is missing (no compiler at install time) or
``CRYOEXTRACT_KERNEL=numba`` (or ``=numpy``; either turns off every library) is set,
the callers use their Python versions, which compute the same values (to float32
rounding):

- ``fill_slices.c``: :func:`slice_filler`, else numba's
  (:mod:`cryoextract.ops.slice_kernel`, 1.4 s of CPU to import and load per process);
- ``normalise.c``: :func:`normaliser`, else None and
  :func:`cryoextract.ops.normalize.normalise` runs its numpy path (3x slower);
- ``real_rows.c``: :func:`real_rows_unpacker`, else None and
  :mod:`cryoextract.ops.fourier` transforms rows with FFTW's real transform (2x slower).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cryoextract.ops.native.naming import library_name

__all__ = ["NORMALISE_SOURCE", "REAL_ROWS_SOURCE", "SOURCE", "kernel_backend", "library_path",
           "normaliser", "real_rows_unpacker", "slice_filler"]

#: the C source of the slice loop
SOURCE = Path(__file__).with_name("fill_slices.c")
#: the C source of the background normalisation
NORMALISE_SOURCE = Path(__file__).with_name("normalise.c")
#: the C source of the rows' real DFTs from half-length complex ones
REAL_ROWS_SOURCE = Path(__file__).with_name("real_rows.c")

SliceFiller = Callable[..., None]


def library_path(source: Path = SOURCE) -> Path:
    """Where the library built from ``source`` lies (:func:`.naming.library_name`, the
    rule ``hatch_build.py`` builds by)."""
    return source.with_name(library_name(source))


def kernel_backend() -> str:
    """``"c"`` when the compiled library is used, else ``"numba"``."""
    return "numba" if _c_filler() is None else "c"


def slice_filler() -> SliceFiller:
    """The slice loop, with the signature of
    :func:`cryoextract.ops.slice_kernel.fill_slices`."""
    filler = _c_filler()
    if filler is not None:
        return filler
    from cryoextract.ops.slice_kernel import fill_slices

    return fill_slices  # type: ignore[no-any-return]


@lru_cache(maxsize=4)
def _library(source: Path) -> Any:
    """The ``ctypes.CDLL`` built from ``source``; None when it was not built or
    ``CRYOEXTRACT_KERNEL`` asks for the Python versions."""
    if os.environ.get("CRYOEXTRACT_KERNEL", "").lower() in ("numba", "numpy"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(str(library_path(source)))
    except OSError:
        return None


def _c_function(source: Path, name: str, argtypes: str, restype: Any) -> Any:
    """Function ``name`` of the library built from ``source``, with its ctypes signature
    (``argtypes``: one letter per argument, ``p`` pointer, ``q`` int64, ``i`` int, ``f``
    float, ``d`` double); None where the library is not loaded."""
    import ctypes

    library = _library(source)
    if library is None:
        return None
    kinds = {"p": ctypes.c_void_p, "q": ctypes.c_int64, "i": ctypes.c_int,
             "f": ctypes.c_float, "d": ctypes.c_double}
    function = getattr(library, name)
    function.argtypes = [kinds[letter] for letter in argtypes]
    function.restype = restype
    return function


@lru_cache(maxsize=1)
def _c_filler() -> SliceFiller | None:
    import ctypes

    function = _c_function(SOURCE, "fill_slices", "pqqqfpqpppqpppqpqpqqpq", ctypes.c_int)
    if function is None:
        return None

    def fill_slices(
        voxels: np.ndarray, channels: int, plane_stride: int, row_stride: int,
        half_padded: float, axes: np.ndarray, flat: np.ndarray, rows: np.ndarray,
        cols: np.ndarray, kx: np.ndarray, ky: np.ndarray, phase_x: np.ndarray,
        phase_y: np.ndarray, ctf: np.ndarray, out: np.ndarray,
    ) -> None:
        """ctypes call of ``fill_slices.c`` (arguments as the numba version's)."""
        # the volume and the output are used in place (a copy of the volume would cost
        # hundreds of MiB per call); the small per-call arrays are made contiguous
        for name, array, ndim in (("voxels", voxels, 1), ("out", out, 3)):
            if array.dtype != np.complex64 or array.ndim != ndim \
                    or not array.flags.c_contiguous:
                raise TypeError(f"fill_slices: {name} must be a C-contiguous {ndim}D "
                                f"complex64 array, got {array.dtype} {array.shape}")
        axes, flat, rows, cols, kx, ky, phase_x, phase_y, ctf = (
            np.ascontiguousarray(array, dtype=dtype) for array, dtype in (
                (axes, np.float32), (flat, np.int64), (rows, np.int64), (cols, np.int64),
                (kx, np.float32), (ky, np.float32), (phase_x, np.complex64),
                (phase_y, np.complex64), (ctf, np.float32)))
        poses, points = axes.shape[0], flat.shape[0]
        if (axes.ndim != 3 or axes.shape[1:] != (2, 3) or out.shape[:2] != (channels, poses)
                or phase_x.ndim != 2 or phase_y.ndim != 2 or ctf.ndim != 2
                or len(phase_x) != poses or len(phase_y) != poses
                or len(ctf) not in (1, poses) or not len(rows) == len(cols) == len(kx)
                == len(ky) == points):
            raise TypeError("fill_slices: array shapes do not fit together")
        status = function(
            voxels.ctypes.data, channels, plane_stride, row_stride, half_padded,
            axes.ctypes.data, poses, flat.ctypes.data, rows.ctypes.data, cols.ctypes.data,
            points, kx.ctypes.data, ky.ctypes.data, phase_x.ctypes.data, phase_x.shape[1],
            phase_y.ctypes.data, phase_y.shape[1], ctf.ctypes.data, len(ctf), ctf.shape[1],
            out.ctypes.data, out.shape[2])
        if status != 0:
            raise MemoryError("fill_slices: no memory for the slice loop's scratch arrays")

    return fill_slices


Normaliser = Callable[..., np.ndarray]


@lru_cache(maxsize=1)
def normaliser() -> Normaliser | None:
    """``normalise_images(images, weights, x, y, gram_inverse, count, fit_ramp, sign,
    min_std)``: ``normalise.c`` on an ``(n, h, w)`` C-contiguous float32 stack in place,
    returning the ``(n,)`` bool flat flags; None where the library was not built."""
    function = _c_function(NORMALISE_SOURCE, "normalise_images", "pqqqpppppdiddp", None)
    if function is None:
        return None

    def normalise_images(
        images: np.ndarray, weights: np.ndarray, x: np.ndarray, y: np.ndarray,
        gram_inverse: np.ndarray, count: float, fit_ramp: bool, sign: float,
        min_std: float,
    ) -> np.ndarray:
        """ctypes call of ``normalise.c`` (arrays as :class:`~cryoextract.ops.normalize`'s
        region holds them)."""
        if images.dtype != np.float32 or images.ndim != 3 or not images.flags.c_contiguous \
                or not images.flags.writeable:
            raise TypeError(f"normalise_images: images must be a writeable C-contiguous 3D "
                            f"float32 array, got {images.dtype} {images.shape}")
        n, h, w = images.shape
        weights = np.ascontiguousarray(weights, dtype=np.float32)
        x, y, gram_inverse = (np.ascontiguousarray(a, dtype=np.float64)
                              for a in (x, y, gram_inverse))
        x_float = x.astype(np.float32)
        if weights.shape != (h, w) or x.shape != (w,) or y.shape != (h,) \
                or gram_inverse.shape != (3, 3):
            raise TypeError("normalise_images: array shapes do not fit together")
        flat = np.zeros(n, dtype=np.uint8)
        function(images.ctypes.data, n, h, w, weights.ctypes.data, x.ctypes.data,
                 x_float.ctypes.data, y.ctypes.data, gram_inverse.ctypes.data, count,
                 int(fit_ramp), sign, min_std, flat.ctypes.data)
        return flat.astype(bool)

    return normalise_images


@lru_cache(maxsize=1)
def real_rows_unpacker() -> Callable[[int, int, int, int, int, int, int], None] | None:
    """``unpack_real_rows(packed, rows, m, twiddle, keep, out, out_stride)`` of
    ``real_rows.c``, on raw addresses; None where the library was not built.

    ``packed`` is the address of ``(rows, m)`` complex64 DFTs of the rows' sample pairs,
    ``twiddle`` of ``(keep,)`` complex64 ``exp(-2 pi i k / (2 m))``, ``out`` of
    ``(rows, out_stride)`` complex64 whose first ``keep <= m + 1`` columns receive the
    rows' real DFTs. The caller owns those buffers and checks them once
    (:class:`cryoextract.ops.fourier`'s plans): this runs once per box, where checking
    the arrays would cost more than the call.
    """
    return _c_function(REAL_ROWS_SOURCE, "unpack_real_rows", "pqqpqpq", None)  # type: ignore[no-any-return]
