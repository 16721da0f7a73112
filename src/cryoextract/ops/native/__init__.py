"""Compiled inner loops in C, loaded with ctypes; numba where they were not built.

``fill_slices.c`` is compiled when the package is built or installed (``hatch_build.py``
at the repository root, with the system C compiler) into ``_fill_slices_<hash>.so`` next
to it, the hash being that of the C source: a library built from another version of the
source is never loaded. Where it is missing (no compiler at install time) or
``CRYOEXTRACT_KERNEL=numba`` is set, :func:`slice_filler` returns the numba version
(:mod:`cryoextract.ops.slice_kernel`), which computes the same values (to float32
rounding) but costs 1.4 s of CPU to import and load in every process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from cryoextract.ops.native.naming import library_name

__all__ = ["SOURCE", "kernel_backend", "library_path", "slice_filler"]

#: the C source of the slice loop
SOURCE = Path(__file__).with_name("fill_slices.c")

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


@lru_cache(maxsize=1)
def _c_filler() -> SliceFiller | None:
    if os.environ.get("CRYOEXTRACT_KERNEL", "").lower() == "numba":
        return None
    import ctypes

    try:
        library = ctypes.CDLL(str(library_path()))
    except OSError:
        return None
    function = library.fill_slices
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    function.argtypes = [p, i64, i64, i64, f32, p, i64, p, p, p, i64, p, p, p, i64, p, i64,
                         p, i64, i64, p, i64]
    function.restype = ctypes.c_int

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
