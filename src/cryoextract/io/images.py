"""Particle images referenced by a STAR table: ``NNNNNN@stack.mrcs`` names in, pixels out.

RELION names one image of a stack ``<index>@<path>``: the index is 1-based and has any
number of digits (6 up to RELION 5.0.0, 8 from 5.0.1); a bare ``<path>`` names a file
holding a single image. Relative paths are looked up in each of the given base
directories in turn (see :func:`locate_images`).

Each stack's header is read once through ``mrcfile.mmap`` (which also accepts old
headers without the ``MAP`` label); the pixels by positioned reads of runs of
consecutive images, so only the images asked for are read. :func:`read_images` yields
the pixels in bounded batches in table order, in the file's own dtype (float16 stays
float16, so a copy is bit-exact); within a batch each stack is read in file order
whatever the table order.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import mrcfile
import mrcfile.mrcmemmap
import numpy as np
import pandas as pd

from cryoextract.errors import InputError, first_line
from cryoextract.io.paths import locate

#: default upper bound of one batch, counted as float32 pixels (bytes)
MAX_BATCH_BYTES = 256 * 2**20
# MRC modes read: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16.
_READABLE = (np.int8, np.int16, np.float32, np.uint16, np.float16)

# Problems that make one particle unreadable (the job skips it and reports the reason).
BAD_NAME = "bad image name"
STACK_NOT_FOUND = "stack not found"
UNREADABLE_STACK = "unreadable stack"
INDEX_OUT_OF_RANGE = "index out of range"


@dataclass(frozen=True)
class StackInfo:
    """What a stack's header says.

    Attributes
    ----------
    count : int
        Number of images (``nz``; 1 for a single 2D image).
    shape_yx : tuple of int
        ``(h, w)`` of each image, pixels.
    dtype : np.dtype
        Native-byte-order dtype of the pixels (uint16 for MRC mode 6).
    pixel_size_angstrom : float
        Header voxel size along x (0.0 when unset; often wrong in particle stacks).
    data_offset : int
        Byte offset of the first pixel (header plus extended header).
    file_dtype : np.dtype
        The pixels' dtype with the file's byte order.
    """

    count: int
    shape_yx: tuple[int, int]
    dtype: np.dtype
    pixel_size_angstrom: float
    data_offset: int = 1024
    file_dtype: np.dtype | None = None


@dataclass(frozen=True)
class ImageLocations:
    """Where each row's image lives; built by :func:`locate_images`.

    Attributes
    ----------
    names : list of str
        ``rlnImageName`` per row, as written.
    stack : list of str
        Resolved stack path per row (``""`` when the name could not be parsed).
    index : np.ndarray
        ``(n,)`` int64, 0-based image index in ``stack``; -1 for an unreadable row.
    problem : list of str or None
        Per row ``None`` when readable, else one of ``BAD_NAME``, ``STACK_NOT_FOUND``,
        ``UNREADABLE_STACK``, ``INDEX_OUT_OF_RANGE``.
    detail : list of str
        Per row a human-readable explanation of ``problem`` (``""`` when readable).
    stacks : dict
        Resolved path to :class:`StackInfo` for every readable stack.
    """

    names: list[str]
    stack: list[str]
    index: np.ndarray
    problem: list[str | None]
    detail: list[str]
    stacks: dict[str, StackInfo]

    @cached_property
    def ok(self) -> np.ndarray:
        """``(n,)`` bool, True where the image can be read."""
        return np.array([p is None for p in self.problem], dtype=bool)

    @cached_property
    def stack_code(self) -> np.ndarray:
        """``(n,)`` int64 number of each row's stack in :attr:`stack_paths`."""
        return pd.factorize(pd.Series(self.stack, dtype=object))[0].astype(np.int64)

    @cached_property
    def stack_paths(self) -> list[str]:
        """Distinct values of :attr:`stack`, numbered by :attr:`stack_code`."""
        return [str(p) for p in pd.unique(pd.Series(self.stack, dtype=object))]

    @cached_property
    def kind(self) -> np.ndarray:
        """``(n,)`` int64 code of each row's (image shape, dtype); -1 when unreadable."""
        kinds: dict[tuple[tuple[int, int], str], int] = {}
        per_stack = np.full(len(self.stack_paths), -1, dtype=np.int64)
        for code, path in enumerate(self.stack_paths):
            info = self.stacks.get(path)
            if info is not None:
                per_stack[code] = kinds.setdefault((info.shape_yx, info.dtype.str), len(kinds))
        if not len(self.stack):
            return np.zeros(0, dtype=np.int64)
        return np.where(self.ok, per_stack[self.stack_code], -1)

    def shape_of(self, row: int) -> tuple[int, int]:
        """``(h, w)`` of a readable row's image."""
        return self.stacks[self.stack[row]].shape_yx

    def dtype_of(self, row: int) -> np.dtype:
        """Pixel dtype of a readable row's image."""
        return self.stacks[self.stack[row]].dtype


def parse_image_name(name: str) -> tuple[int | None, str]:
    """Split a RELION image name.

    Parameters
    ----------
    name : str
        ``"000012@Particles/a.mrcs"`` (any number of digits, 1-based) or a bare path.

    Returns
    -------
    index : int or None
        0-based image index (``11`` above); ``None`` for a bare path (a file holding a
        single image).
    path : str
        The stack path as written.

    Raises
    ------
    ValueError
        Empty name, empty path, or a non-numeric or non-positive index.
    """
    text = str(name).strip()
    head, sep, tail = text.partition("@")
    if not sep:
        if not text:
            raise ValueError("empty image name")
        return None, text
    if not head.isdigit() or not tail.strip():
        raise ValueError(f"not an image name of the form NNNNNN@path: {text!r}")
    number = int(head)
    if number < 1:
        raise ValueError(f"image numbers are 1-based, got {head!r} in {text!r}")
    return number - 1, tail.strip()


def format_image_name(index: int, path: str, digits: int = 6) -> str:
    """``NNNNNN@path`` for a 0-based ``index`` (at least ``digits`` digits, 1-based)."""
    return f"{index + 1:0{digits}d}@{path}"


def image_key(name: str) -> tuple[int, str] | None:
    """A comparable key for an image name: ``(0-based index, normalised path)``.

    ``"12@./a/b.mrcs"`` and ``"000012@a/b.mrcs"`` give the same key; a bare path has
    index 0. ``None`` when the name cannot be parsed.
    """
    try:
        index, path = parse_image_name(name)
    except ValueError:
        return None
    return (0 if index is None else index), os.path.normpath(path)


def scan_stack(path: str | os.PathLike[str]) -> StackInfo:
    """Read a stack's header (through a memory map: no pixels are read).

    Old-style headers without the ``MAP`` label (e.g. from early RELION/Xmipp) are
    accepted; the data block must be complete.

    Raises
    ------
    InputError
        Not an MRC file, truncated, unsupported mode, or not a stack of 2D images.
    """
    try:
        with _open_mmap(path) as handle:
            data = _image_array(handle, path)
            voxel = float(handle.voxel_size.x)
            offset = int(handle.data.offset)
    except InputError:
        raise
    except (ValueError, OSError, EOFError, TypeError, KeyError) as exc:
        raise InputError(f"not a readable MRC stack ({first_line(exc)})", path) from exc
    return StackInfo(
        count=int(data.shape[0]), shape_yx=(int(data.shape[1]), int(data.shape[2])),
        dtype=data.dtype.newbyteorder("="), pixel_size_angstrom=voxel,
        data_offset=offset, file_dtype=data.dtype,
    )


def locate_images(names: Iterable[str], base_dirs: Sequence[Path]) -> ImageLocations:
    """Resolve every image name and check it against its stack's header.

    Parameters
    ----------
    names : iterable of str
        ``rlnImageName`` values, one per row.
    base_dirs : sequence of Path
        Directories where relative stack paths are looked up, in order (first match).

    Returns
    -------
    ImageLocations
        Unreadable rows carry a problem instead of raising: one bad particle never stops
        a job. Each stack's header is read once.
    """
    names = [str(n) for n in names]
    stack: list[str] = []
    index = np.full(len(names), -1, dtype=np.int64)
    problem: list[str | None] = [None] * len(names)
    detail = [""] * len(names)
    stacks: dict[str, StackInfo] = {}
    resolved: dict[str, tuple[str, str | None, str]] = {}  # written path -> (path, problem, why)
    for row, name in enumerate(names):
        try:
            image, written = parse_image_name(name)
        except ValueError as exc:
            stack.append("")
            problem[row], detail[row] = BAD_NAME, str(exc)
            continue
        if written not in resolved:
            resolved[written] = _resolve_stack(written, base_dirs, stacks)
        path, issue, why = resolved[written]
        stack.append(path)
        if issue is not None:
            problem[row], detail[row] = issue, why
            continue
        info = stacks[path]
        if image is None and info.count != 1:
            problem[row] = INDEX_OUT_OF_RANGE
            detail[row] = f"bare name of a stack of {info.count} images (use NNNNNN@{written})"
        elif image is not None and image >= info.count:
            problem[row] = INDEX_OUT_OF_RANGE
            detail[row] = f"image {image + 1} of a stack of {info.count}"
        else:
            index[row] = 0 if image is None else image
    return ImageLocations(names, stack, index, problem, detail, stacks)


def _resolve_stack(
    written: str, base_dirs: Sequence[Path], stacks: dict[str, StackInfo]
) -> tuple[str, str | None, str]:
    found = locate(written, base_dirs)
    if found is None:
        where = ", ".join(str(b) for b in base_dirs)
        return written, STACK_NOT_FOUND, f"{written} not found (looked in {where})"
    path = str(found)
    try:
        stacks[path] = scan_stack(path)
    except InputError as exc:
        return path, UNREADABLE_STACK, str(exc)
    return path, None, ""


def read_images(
    table: pd.DataFrame,
    base_dirs: Sequence[Path] = (),
    *,
    locations: ImageLocations | None = None,
    rows: Sequence[int] | np.ndarray | None = None,
    max_batch_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the images of a particles table in bounded batches, in table order.

    Parameters
    ----------
    table : pd.DataFrame
        Rows with ``rlnImageName``.
    base_dirs : sequence of Path
        Where relative stack paths are looked up, in order (see :func:`locate_images`).
    locations : ImageLocations, optional
        The result of :func:`locate_images` for ``table`` (saves a second header scan).
    rows : sequence of int, optional
        0-based positions in ``table`` to read, in the order wanted (default: every
        row). Unreadable rows (see ``locations.problem``) are skipped silently; ask
        :func:`locate_images` for them.
    max_batch_bytes : int
        Upper bound of one batch, counted as float32 pixels; at least one image.

    Yields
    ------
    rows : np.ndarray
        ``(k,)`` int64 positions in ``table``.
    images : np.ndarray
        ``(k, h, w)`` pixels in the stack's dtype (native byte order, never converted:
        float16 stays float16). A batch never mixes image shapes or dtypes.
    """
    if locations is None:
        locations = locate_images(table["rlnImageName"], base_dirs)
    order = np.arange(len(locations.names)) if rows is None else np.asarray(rows, np.int64)
    order = order[locations.ok[order]] if len(order) else order
    for batch in _batches(order, locations, max_batch_bytes):
        info = locations.stacks[locations.stack[int(batch[0])]]
        out = np.empty((len(batch), *info.shape_yx), dtype=info.dtype)
        _read_batch_into(out, batch, locations)
        yield batch, out


def _batches(
    order: np.ndarray, locations: ImageLocations, max_batch_bytes: int
) -> Iterator[np.ndarray]:
    """Consecutive runs of ``order`` with one shape and dtype, each within the byte bound."""
    if not len(order):
        return
    kinds = locations.kind[order]
    cuts = np.flatnonzero(np.diff(kinds)) + 1
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(order)], strict=True):
        h, w = locations.shape_of(int(order[start]))
        limit = max(1, max_batch_bytes // (4 * h * w))
        for first in range(int(start), int(stop), limit):
            yield order[first : min(first + limit, int(stop))]


def _read_batch_into(out: np.ndarray, batch: np.ndarray, locations: ImageLocations) -> None:
    """Read a batch stack by stack, each stack's images in file order, into ``out``."""
    codes = locations.stack_code[batch]
    wanted = locations.index[batch]
    order = np.lexsort((wanted, codes))
    cuts = np.flatnonzero(np.diff(codes[order])) + 1
    for part in np.split(order, cuts):
        path = locations.stack_paths[int(codes[part[0]])]
        info = locations.stacks[path]
        first = int(part[0])
        same_dtype = info.file_dtype is None or info.file_dtype == out.dtype
        in_place = (same_dtype
                    and int(part[-1]) - first == len(part) - 1 and np.all(np.diff(part) == 1))
        if in_place:  # the usual case: table order is file order
            _read_images(path, info, wanted[part], out[first : first + len(part)])
        else:
            data = np.empty((len(part), *info.shape_yx), dtype=info.file_dtype or info.dtype)
            out[part] = _read_images(path, info, wanted[part], data)


def _read_images(path: str, info: StackInfo, wanted: np.ndarray, data: np.ndarray
                 ) -> np.ndarray:
    """Images ``wanted`` (ascending) of one stack into ``data``, by positioned reads.

    Plain reads, not a memory map: the kernel copies straight into the array, without a
    page fault per 4 KiB, and the process never maps more than it asked for. ``data``
    has the file's dtype.
    """
    h, w = info.shape_yx
    image_bytes = h * w * data.dtype.itemsize
    starts = np.flatnonzero(np.diff(wanted, prepend=wanted[0] - 2) != 1)
    try:
        with open(path, "rb", buffering=0) as stream:
            for first, stop in zip(starts, [*starts[1:], len(wanted)], strict=True):
                target = memoryview(data[first:stop]).cast("B")
                offset = info.data_offset + int(wanted[first]) * image_bytes
                while len(target):
                    got = os.preadv(stream.fileno(), [target], offset)
                    if got <= 0:
                        raise InputError("stack became shorter than its header says", path)
                    target, offset = target[got:], offset + got
    except OSError as exc:
        raise InputError(f"stack became unreadable ({first_line(exc)})", path) from exc
    return data


def _open_mmap(path: str | os.PathLike[str]) -> mrcfile.mrcmemmap.MrcMemmap:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mrcfile.mmap(path, mode="r", permissive=True)


def _image_array(handle: mrcfile.mrcmemmap.MrcMemmap, path: str | os.PathLike[str]) -> np.ndarray:
    """The data block as ``(n, h, w)`` (a single 2D image gives ``n = 1``)."""
    data = handle.data
    if data is None:
        raise InputError("not a readable MRC stack (no or truncated data block)", path)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError(f"expected a stack of 2D images, got shape {data.shape}", path)
    if data.dtype.type not in _READABLE:
        raise InputError(f"unsupported MRC data type {data.dtype}", path)
    return data  # big-endian files are converted when copied into native arrays

