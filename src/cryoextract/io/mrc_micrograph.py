"""One micrograph read from an MRC file, into memory this thread reads every micrograph
into.

mrcfile validates the header and extended header (``header_only``, strict); the data
block is then read with one ``readinto`` into a buffer kept by the thread from one
micrograph to the next, as mrcfile would read it (its dtype and byte order, its shape,
the same "Expected N bytes" check of a truncated file). A fresh buffer per micrograph
(mrcfile's ``bytearray``) is zero-filled and then filled again by the read, and its
pages are new to the process each time the allocator cannot reuse them: on virtual
machines, where a page fault (or a huge page's allocation) is slow, 10-90 ms for a
4096² micrograph, against 3-4 ms to read into memory already in place. The buffer lives as
long as its thread: one largest micrograph per worker process, or per thread of a Dask
worker (kept between jobs, like the worker's other caches).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from cryoextract.errors import MicrographError, first_line

# MRC modes we read: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16.
READABLE_DTYPES = (np.int8, np.int16, np.float32, np.uint16, np.float16)
_HEADER_BYTES = 1024


@dataclass(frozen=True)
class MicrographHeader:
    """What the header says: shape ``(ny, nx)``, dtype and pixel size (0.0 if unset)."""

    shape_yx: tuple[int, int]
    dtype: np.dtype
    pixel_size_angstrom: float


class _ThreadBuffer(threading.local):
    """The memory a thread reads micrographs into, and whether a reading uses it."""

    memory: np.ndarray | None = None
    busy: bool = False


_buffer = _ThreadBuffer()


@contextmanager
def open_micrograph(path: str | os.PathLike[str]) -> Iterator[tuple[np.ndarray, MicrographHeader]]:
    """Read a 2D micrograph in one go (never per particle).

    Use as ``with open_micrograph(path) as (data, header): ...``. One sequential read
    is faster than page faults of a memory map when boxes cover much of the image.
    ``data`` lies in memory the thread reuses for its next micrograph: it (and any view
    of it) is valid inside the ``with`` block only. A micrograph opened while another is
    open in the same thread gets memory of its own.

    Yields
    ------
    data : np.ndarray
        ``(ny, nx)`` read-only array in the file's dtype (uint16 for mode 6).
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
            with mrcfile.open(path, mode="r", permissive=False, header_only=True) as handle:
                header = handle.header
                dtype = mrcfile.utils.data_dtype_from_header(header)
                shape = tuple(int(n) for n in mrcfile.utils.data_shape_from_header(header))
                offset = _HEADER_BYTES + int(header.nsymbt)
                voxel = float(handle.voxel_size.x)
    except (ValueError, OSError, EOFError) as exc:
        raise MicrographError(f"not a readable MRC file ({first_line(exc)})", path) from exc
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2 or min(shape) < 1:
        raise MicrographError(f"expected a single 2D micrograph, got shape {shape}", path)
    if dtype.type not in READABLE_DTYPES:
        raise MicrographError(f"unsupported MRC data type {dtype}", path)
    nbytes = shape[0] * shape[1] * dtype.itemsize
    try:
        available = max(0, path.stat().st_size - offset)
    except OSError as exc:
        raise MicrographError(f"not a readable MRC file ({first_line(exc)})", path) from exc
    if nbytes > available:  # a truncated file or a corrupt header: nothing is allocated
        raise MicrographError(
            f"not a readable MRC file (Expected {nbytes} bytes in data block but could only "
            f"read {available})", path)
    shared = not _buffer.busy
    memory = _memory(nbytes) if shared else np.empty(nbytes, np.uint8)
    if shared:
        _buffer.busy = True
    try:
        _read_into(path, offset, memory[:nbytes])
        data = memory[:nbytes].view(dtype).reshape(shape)
        data.flags.writeable = False
        yield data, MicrographHeader((int(shape[0]), int(shape[1])), dtype, voxel)
    finally:
        if shared:
            _buffer.busy = False


def _memory(nbytes: int) -> np.ndarray:
    """The thread's buffer, grown to at least ``nbytes`` (never shrunk)."""
    memory = _buffer.memory
    if memory is None or memory.nbytes < nbytes:
        _buffer.memory = None  # the old one is freed before the new one is made
        memory = _buffer.memory = np.empty(nbytes, np.uint8)
    return memory


def _read_into(path: Path, offset: int, out: np.ndarray) -> None:
    """Fill ``out`` with the bytes of ``path`` from ``offset``; MicrographError for a file
    that ends before (mrcfile's message for it)."""
    view = memoryview(out).cast("B")
    done = 0
    try:
        with open(path, "rb", buffering=0) as stream:
            stream.seek(offset)
            while done < len(view):
                got = stream.readinto(view[done:])
                if not got:
                    break
                done += got
    except OSError as exc:
        raise MicrographError(f"not a readable MRC file ({first_line(exc)})", path) from exc
    if done < len(view):
        raise MicrographError(
            f"not a readable MRC file (Expected {len(view)} bytes in data block but could "
            f"only read {done})", path)
