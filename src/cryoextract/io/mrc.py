"""MRC micrographs in (:mod:`.mrc_micrograph`), MRC particle stacks out (via mrcfile)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.constants
import mrcfile.dtypes
import mrcfile.mrcfile
import mrcfile.utils
import numpy as np

from cryoextract.errors import InputError, first_line
from cryoextract.io.atomic import temporary_path
from cryoextract.io.mrc_micrograph import READABLE_DTYPES

#: values summed per row (in their own dtype) by ImageStats before the float64 total
STATS_ROW = 1024


@dataclass(frozen=True)
class ImageStats:
    """Header statistics of some written pixels, mergeable across writers.

    ``minimum``, ``maximum``, ``total`` (sum) and ``total_sq`` (sum of squares) of the
    values; the sums are float64. The writer knows how many values there are.
    """

    minimum: float = np.inf
    maximum: float = -np.inf
    total: float = 0.0
    total_sq: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> ImageStats:
        """Statistics of ``values`` (any shape; counted in their own dtype's values)."""
        flat = values.reshape(-1)
        if not flat.size:
            return cls()
        # sums per row of STATS_ROW values in the values' own dtype (fast, short enough
        # to stay exact to ~1e-7), the rows' sums added in float64
        rows = flat.reshape(-1, STATS_ROW) if flat.size % STATS_ROW == 0 else flat[None]
        dtype = np.promote_types(flat.dtype, np.float32)  # float16 sums in float32
        return cls(
            minimum=float(flat.min()), maximum=float(flat.max()),
            total=float(rows.sum(axis=1, dtype=dtype).sum(dtype=np.float64)),
            total_sq=float(np.einsum("ij,ij->i", rows, rows, dtype=dtype)
                           .sum(dtype=np.float64)),
        )

    def merged(self, other: ImageStats) -> ImageStats:
        """Statistics of both sets of values."""
        return ImageStats(
            minimum=min(self.minimum, other.minimum), maximum=max(self.maximum, other.maximum),
            total=self.total + other.total, total_sq=self.total_sq + other.total_sq,
        )


class StackWriter:
    """Write an image stack chunk by chunk, then publish it atomically.

    The count and image size are fixed up front; pixels go straight to the file
    (no memory map, no full stack in memory) under a temporary name that is renamed
    to ``path`` by :meth:`close` only once every image is written and the header
    statistics are final. Use as a context manager; on an exception the temporary
    file is removed and ``path`` is left untouched.

    Images are appended in order with :meth:`write`, or written at their place by
    other processes with :func:`write_images_at` into :attr:`part_path` and accounted
    for with :meth:`record`.

    Parameters
    ----------
    path : path-like
        Destination ``.mrcs``; its directory must exist.
    count : int
        Number of images.
    shape_yx : tuple of int
        ``(h, w)`` of each image.
    pixel_size_angstrom : float
        Written to the header.
    float16 : bool
        MRC mode 12 instead of mode 2.
    """

    def __init__(
        self, path: str | os.PathLike[str], count: int, shape_yx: tuple[int, int],
        pixel_size_angstrom: float, *, float16: bool = False,
    ):
        self.path = Path(path)
        self.count = count
        self.shape_yx = (int(shape_yx[0]), int(shape_yx[1]))
        self.dtype = stack_dtype(float16)
        self.pixel_size_angstrom = pixel_size_angstrom
        self._tmp = temporary_path(self.path)
        self._file = open(self._tmp, "wb")
        self._file.write(bytes(HEADER_BYTES))
        self._file.flush()
        self._written = 0
        self._stats = ImageStats()

    @property
    def written(self) -> int:
        """Images written (or recorded) so far."""
        return self._written

    @property
    def part_path(self) -> Path:
        """The temporary file being written (renamed to :attr:`path` by :meth:`close`)."""
        return self._tmp

    def write(self, images: np.ndarray) -> None:
        """Append ``(k, h, w)`` images."""
        data = np.ascontiguousarray(images, dtype=self.dtype)
        if data.shape[1:] != self.shape_yx or self._written + len(data) > self.count:
            raise ValueError(f"stack of {self.count}x{self.shape_yx} cannot take {data.shape}")
        with _naming(self.path):
            self._file.write(memoryview(data).cast("B"))
        self.record(len(data), ImageStats.of(data))

    def record(self, images: int, stats: ImageStats) -> None:
        """Account for ``images`` images with statistics ``stats`` written elsewhere
        (:func:`write_images_at`)."""
        if self._written + images > self.count:
            raise ValueError(f"stack of {self.count} images cannot take {images} more")
        self._written += images
        self._stats = self._stats.merged(stats)

    def close(self) -> None:
        """Finish the header and rename the file into place."""
        if self._written != self.count:
            self.abort()
            raise ValueError(f"wrote {self._written} of {self.count} images to {self.path}")
        try:
            with _naming(self.path):
                self._file.seek(0)  # flushes: a full disk shows here
                self._file.write(self._header().tobytes())
                self._file.close()
                os.replace(self._tmp, self.path)
        except OSError:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file (also when closing it fails, e.g. on a full disk)."""
        try:
            self._file.close()
        except OSError:
            pass
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _header(self) -> np.ndarray:
        h, w = self.shape_yx
        stats = self._stats
        n_values = max(1, self.count * h * w)
        mean = stats.total / n_values
        header = np.zeros((), dtype=mrcfile.dtypes.HEADER_DTYPE)
        header["nx"], header["ny"], header["nz"] = w, h, self.count
        header["mode"] = mrcfile.utils.mode_from_dtype(self.dtype)
        header["mx"], header["my"], header["mz"] = w, h, 1
        size = self.pixel_size_angstrom
        header["cella"] = (w * size, h * size, size)
        header["cellb"] = (90.0, 90.0, 90.0)
        header["mapc"], header["mapr"], header["maps"] = 1, 2, 3
        header["ispg"] = mrcfile.utils.IMAGE_STACK_SPACEGROUP
        header["map"] = mrcfile.constants.MAP_ID
        header["machst"] = mrcfile.utils.machine_stamp_from_byte_order("<")
        header["nversion"] = 20140
        if self.count:
            header["dmin"], header["dmax"], header["dmean"] = stats.minimum, stats.maximum, mean
            header["rms"] = np.sqrt(max(0.0, stats.total_sq / n_values - mean**2))
        else:
            header["dmin"], header["dmax"], header["dmean"], header["rms"] = 0, -1, -2, -1
        return header


HEADER_BYTES = np.zeros((), dtype=mrcfile.dtypes.HEADER_DTYPE).nbytes


@contextmanager
def _naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """A failed write (its OSError names no file: a full disk) names the output."""
    try:
        yield
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise


def stack_dtype(float16: bool) -> np.dtype:
    """Little-endian pixel type of the stacks written: float16 (mode 12) or float32 (mode 2)."""
    return np.dtype(np.float16 if float16 else np.float32).newbyteorder("<")


def write_images_at(
    part_path: str | os.PathLike[str], positions: np.ndarray, images: np.ndarray
) -> None:
    """Write image ``k`` of ``(K, h, w)`` images as image ``positions[k]`` of a stack.

    ``part_path`` is a :attr:`StackWriter.part_path`, possibly of a writer in another
    process: each process writes its own images at their place (positioned writes, no
    shared file offset; runs of consecutive positions in one call), and the writer's
    owner accounts for them with :meth:`StackWriter.record`. ``images`` must have the
    stack's :func:`stack_dtype`: the caller converts them, so that the statistics it
    records are those of the values written.

    Raises
    ------
    ValueError
        ``images`` are neither float32 nor float16.
    OSError
        The file cannot be written (e.g. the disk is full).
    """
    if images.dtype not in (stack_dtype(False), stack_dtype(True)):
        raise ValueError(f"stack images must be float32 or float16, got {images.dtype}")
    data = np.ascontiguousarray(images)
    positions = np.asarray(positions, dtype=np.int64)
    if not len(data):
        return
    image_bytes = data[0].nbytes
    starts = np.flatnonzero(np.diff(positions, prepend=positions[0] - 2) != 1)
    with _naming(part_path):  # a full disk names the stack
        fd = os.open(part_path, os.O_WRONLY)
        try:
            for first, stop in zip(starts, [*starts[1:], len(data)], strict=True):
                view = memoryview(data[first:stop]).cast("B")
                offset = HEADER_BYTES + int(positions[first]) * image_bytes
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
        finally:
            os.close(fd)


def write_stack(
    path: str | os.PathLike[str],
    images: np.ndarray,
    pixel_size_angstrom: float,
    *,
    float16: bool = False,
) -> None:
    """Write a whole ``(n, h, w)`` stack atomically (see :class:`StackWriter`)."""
    images = np.asarray(images)
    with StackWriter(path, len(images), images.shape[1:], pixel_size_angstrom,
                     float16=float16) as writer:
        writer.write(images)


def read_stack(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a whole particle stack ``(n, h, w)`` (a single image gives ``n = 1``)."""
    try:
        with mrcfile.open(path, mode="r", permissive=False) as handle:
            data = np.array(handle.data)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable MRC stack ({first_line(exc)})", path) from exc
    return data[None] if data.ndim == 2 else data


def read_volume(path: str | os.PathLike[str], what: str = "map") -> tuple[np.ndarray, float]:
    """Read a 3D MRC volume (a map or a mask), strictly as every MRC we read.

    Returns
    -------
    volume : np.ndarray
        ``(N, N, N)`` float32, axes ``(z, y, x)``.
    pixel_size_angstrom : float
        The header's voxel size along x (0.0 when unset).

    Raises
    ------
    InputError
        Missing, not a valid MRC file (header, size), unsupported mode, not a cube, or
        non-finite values; the message names ``what`` and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=False) as handle:
                data = handle.data
                if data is None:
                    raise InputError("MRC file has no data block", path)
                if data.dtype.type not in READABLE_DTYPES:
                    raise InputError(f"unsupported MRC data type {data.dtype}", path)
                volume = np.array(data, dtype=np.float32)
                voxel = float(handle.voxel_size.x)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a readable MRC {what} ({first_line(exc)})", path) from exc
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(f"{what} must be a cube, got shape {volume.shape}", path)
    if not np.all(np.isfinite(volume)):
        raise InputError(f"{what} holds non-finite values", path)
    return volume, voxel


def stack_image_count(path: str | os.PathLike[str]) -> int:
    """Images in a complete MRC stack, or -1 if it is missing, unreadable or truncated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", header_only=True, permissive=False) as handle:
                header = handle.header
                nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                dtype = mrcfile.utils.dtype_from_mode(header.mode)
                expected = (HEADER_BYTES + int(header.nsymbt)
                            + nx * ny * nz * np.dtype(dtype).itemsize)
    except (ValueError, OSError, EOFError):
        return -1
    return nz if os.path.getsize(path) == expected else -1


def mrc_shape_yx(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(ny, nx)`` from an MRC header, without reading the data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                return int(mrc.header.ny), int(mrc.header.nx)
    except (OSError, ValueError, AttributeError, EOFError) as exc:
        raise InputError(f"cannot read the MRC header ({first_line(exc)})", path) from exc
