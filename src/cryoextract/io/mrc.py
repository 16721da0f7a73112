"""MRC micrographs in, MRC particle stacks out (via mrcfile)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.mrcmemmap
import numpy as np

from cryoextract.errors import InputError, MicrographError

# MRC modes we read: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16.
READABLE_DTYPES = (np.int8, np.int16, np.float32, np.uint16, np.float16)


@dataclass(frozen=True)
class MicrographHeader:
    """What the header says: shape ``(ny, nx)``, dtype and pixel size (0.0 if unset)."""

    shape_yx: tuple[int, int]
    dtype: np.dtype
    pixel_size_angstrom: float


@contextmanager
def open_micrograph(path: str | os.PathLike[str]) -> Iterator[tuple[np.ndarray, MicrographHeader]]:
    """Memory-map a 2D micrograph; nothing is read until pixels are indexed.

    Use as ``with open_micrograph(path) as (data, header): ...``; the map is closed
    on exit.

    Yields
    ------
    data : np.ndarray
        ``(ny, nx)`` read-only memory map in the file's dtype (uint16 for mode 6).
    header : MicrographHeader

    Raises
    ------
    MicrographError
        Missing, not MRC, truncated, unsupported mode or not a single 2D image.
    """
    path = Path(path)
    if not path.is_file():
        raise MicrographError("micrograph not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = mrcfile.mmap(path, mode="r", permissive=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MicrographError(f"not a readable MRC file ({_first_line(exc)})", path) from exc
    with handle:
        yield _checked_data(handle, path)


def _checked_data(
    handle: mrcfile.mrcmemmap.MrcMemmap, path: Path
) -> tuple[np.ndarray, MicrographHeader]:
    data = handle.data
    if data is None:
        raise MicrographError("MRC file has no data block", path)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise MicrographError(f"expected a single 2D micrograph, got shape {data.shape}", path)
    if data.dtype.type not in READABLE_DTYPES:
        raise MicrographError(f"unsupported MRC data type {data.dtype}", path)
    voxel = handle.voxel_size
    header = MicrographHeader(
        shape_yx=(int(data.shape[0]), int(data.shape[1])),
        dtype=data.dtype,
        pixel_size_angstrom=float(voxel.x),
    )
    return data, header


def write_stack(
    path: str | os.PathLike[str],
    images: np.ndarray,
    pixel_size_angstrom: float,
    *,
    float16: bool = False,
) -> None:
    """Write an image stack atomically: to a temporary name, then renamed.

    Parameters
    ----------
    path : path-like
        Destination ``.mrcs``; its directory must exist.
    images : np.ndarray
        ``(n, h, w)`` stack.
    pixel_size_angstrom : float
        Written to the header.
    float16 : bool
        Write MRC mode 12 instead of mode 2.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = np.ascontiguousarray(images, dtype=np.float16 if float16 else np.float32)
    try:
        with mrcfile.new(tmp, overwrite=True) as out:
            out.set_data(data)
            out.set_image_stack()
            out.voxel_size = pixel_size_angstrom
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_stack(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a whole particle stack ``(n, h, w)`` (a single image gives ``n = 1``)."""
    try:
        with mrcfile.open(path, mode="r", permissive=False) as handle:
            data = np.array(handle.data)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable MRC stack ({_first_line(exc)})", path) from exc
    return data[None] if data.ndim == 2 else data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
