"""Projections of a 3D map by the central-slice theorem, as RELION 3.1's ``Projector``.

The map is Fourier-transformed once (:func:`fourier_volume`): gridding-corrected, padded
to ``P = padding_factor * N`` voxels (even, as RELION's ``padoridim``) with its centre
voxel ``N // 2`` ("Box centre" in docs/conventions.md) as the phase origin, and kept as the
half transform ``(P, P, P // 2 + 1)``. A projection in the pose ``A`` (RELION's Euler
matrix, :func:`cryoextract.ops.rotations.euler_to_matrix`) is then the central slice
through that transform (:func:`central_slices`): the 2D frequency ``(kx, ky)`` of the
``N``-pixel image is read at the 3D frequency ``padding_factor * A.T @ (kx, ky, 0)`` by
trilinear interpolation (Friedel's law for ``x < 0``), as RELION's
``Projector::project``. Conventions shared with RELION 3.1.3 (``src/projector.cpp``,
``src/apps/project.cpp``):

- the slice holds only frequencies with ``kx² + ky² <= (N / 2)²`` (RELION's ``r_max``);
  the corners beyond Nyquist are 0;
- the gridding correction divides the real-space map by the Fourier transform of the
  trilinear kernel on the padded grid. RELION uses the radial ``sinc²(r / P)``; we use the
  exact separable one, ``sinc²(x / P) sinc²(y / P) sinc²(z / P)`` (``x, y, z`` voxels from
  the centre), which differs by less than 4 % at the corner of the box for ``P = 2N``;
- the scale is that of a line integral: the inverse transform of a slice is the sum of
  the map along the projection direction (RELION's ``normfft``);
- a projection is moved by the particle's offset so that it lands where the particle is:
  content shifted by ``-rlnOriginXAngst / apix`` pixels (RELION's
  ``shiftImageInFourierTransform(F, F, N, -xoff, -yoff)``), see :func:`origin_shifts_px`;
- the Nyquist row of an even ``N`` is ``ky = +N / 2`` (RELION's FFTW layout, as
  :mod:`cryoextract.ops.ctf`).

The slices are interpolated by a compiled loop (C, :mod:`cryoextract.ops.native`; numba,
:mod:`cryoextract.ops.slice_kernel`, where the C one was not built), which
also applies the shift phases and the CTF; spectra are complex64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cryoextract.errors import ParameterError
from cryoextract.ops import fft_threads
from cryoextract.ops.aberrations import magnified_axes
from cryoextract.options import DEFAULT_PADDING_FACTOR

__all__ = [
    "FourierVolume",
    "SliceGrid",
    "central_slices",
    "fourier_volume",
    "gridding_profile",
    "load_kernel",
    "origin_shifts_px",
    "padded_size",
    "project",
    "project_spectra",
    "shift_phases",
    "slice_grid",
]

#: z-planes transformed at once while building a :class:`FourierVolume`
_PLANES_PER_CHUNK = 16


@dataclass(frozen=True)
class FourierVolume:
    """The padded, gridding-corrected half Fourier transform of one or more maps.

    Attributes
    ----------
    data : np.ndarray
        ``(P + 2, P + 2, P // 2 + 2, C)`` complex64: the half transform (``kx >= 0``) of
        each of the ``C`` padded maps (channels, last axis, so that one gather reads all
        of them), phase origin at the map's centre voxel. Index ``(j, i, kx)`` holds the
        frequency ``(kz, ky, kx) = (j - P/2, i - P/2, kx)``; rows and planes ``P, P + 1``
        repeat ``0, 1`` (periodicity) and column ``P // 2 + 1`` is 0, so trilinear
        interpolation never needs a modulo or a bounds check.
    box_px : int
        Side ``N`` of the maps (and of the projections).
    padded_px : int
        Side ``P`` of the padded maps.
    """

    data: np.ndarray
    box_px: int
    padded_px: int

    @property
    def padding_factor(self) -> float:
        """``P / N``."""
        return self.padded_px / self.box_px

    @property
    def channels(self) -> int:
        """Number ``C`` of maps transformed together."""
        return int(self.data.shape[-1])

    @property
    def nbytes(self) -> int:
        """Memory held by :attr:`data`, bytes."""
        return int(self.data.nbytes)


@dataclass(frozen=True)
class SliceGrid:
    """The rfft points of an ``N``-pixel image inside RELION's Nyquist circle.

    Attributes
    ----------
    flat_index : np.ndarray
        ``(M,)`` int64 positions in the flattened ``(N, N // 2 + 1)`` rfft layout.
    rows, cols : np.ndarray
        ``(M,)`` int64 row and column of each point in that layout.
    kx, ky : np.ndarray
        ``(M,)`` float32 integer frequencies (cycles per box) of those points; ``ky`` of
        the Nyquist row is ``+N / 2``.
    """

    flat_index: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    kx: np.ndarray
    ky: np.ndarray


def padded_size(box_px: int, padding_factor: float) -> int:
    """Side of the padded map, RELION's ``padoridim``: ``round(pad * N)``, made even.

    Parameters
    ----------
    box_px : int
        Map side ``N`` in voxels.
    padding_factor : float
        Oversampling, at least 1.

    Returns
    -------
    int
        ``P >= N``, even.
    """
    if not padding_factor >= 1.0:
        raise ParameterError(f"padding factor must be >= 1, got {padding_factor}")
    size = int(np.floor(padding_factor * box_px + 0.5))
    return size + size % 2


def gridding_profile(box_px: int, padded_px: int) -> np.ndarray:
    """Per-axis Fourier transform of the trilinear kernel on the padded grid.

    Parameters
    ----------
    box_px, padded_px : int
        Map side ``N`` and padded side ``P``.

    Returns
    -------
    np.ndarray
        ``(N,)`` float64 ``sinc²((i - N // 2) / P)`` for voxel index ``i``; the 3D
        correction is the outer product over the three axes.
    """
    offsets = np.arange(box_px, dtype=np.float64) - box_px // 2
    return np.sinc(offsets / padded_px) ** 2


def fourier_volume(
    volume: ArrayLike,
    *,
    padding_factor: float = DEFAULT_PADDING_FACTOR,
    gridding: bool = True,
    workers: int = 1,
    overwrite_input: bool = False,
) -> FourierVolume:
    """Fourier-transform a map (or several maps of one size) once for many projections.

    Parameters
    ----------
    volume : array_like
        ``(N, N, N)`` real map, axes ``(z, y, x)``, ``N`` even, already multiplied by its
        mask where one applies; or ``(C, N, N, N)`` for ``C`` maps projected together
        (:func:`central_slices` then returns ``C`` projections per pose for little more
        than the cost of one).
    padding_factor : float
        Oversampling ``P / N`` of the transform (RELION's default 2).
    gridding : bool
        Divide the map by the trilinear kernel's transform first (see the module
        docstring); turn off only for tests.
    workers : int
        Threads for the FFTs (:mod:`cryoextract.ops.fft_threads`).
    overwrite_input : bool
        A float32 ``volume`` may be used as scratch space (its values are lost): one map
        fewer in memory while the transform runs (64 MiB for ``N = 256``).

    Returns
    -------
    FourierVolume
        Holds about ``C P² (P / 2 + 2)`` complex64 values (545 MiB per map for
        ``N = 256``, ``P = 512``); building it needs at most ``16 P²`` more.
    """
    vol = np.asarray(volume)
    stack = vol[None] if vol.ndim == 3 else vol
    if stack.ndim != 4 or len(set(stack.shape[1:])) != 1:
        raise ParameterError(f"map must be a cube (or a stack of cubes), got shape {vol.shape}")
    n = int(stack.shape[1])
    if n % 2:
        raise ParameterError(f"map side must be even, got {n}")
    p = padded_size(n, padding_factor)
    h = p // 2 + 1
    data = np.zeros((p + 2, p + 2, h + 1, len(stack)), dtype=np.complex64)
    for channel, single in enumerate(stack):
        modulated = _modulated(single, p, gridding, in_place=overwrite_input)
        _transform_into(data, channel, modulated, p, workers)
        del modulated
    data[p:] = data[:2]
    data[:, p:] = data[:, :2]
    return FourierVolume(data=data, box_px=n, padded_px=p)


def _modulated(volume: np.ndarray, p: int, gridding: bool, in_place: bool = False
               ) -> np.ndarray:
    """float32 map divided by the gridding kernel and multiplied by ``(-1)^(z + y)``.

    The sign puts the frequency 0 of the y and z axes at index ``P / 2`` of the
    transform (an ``fftshift`` done in real space).
    """
    n = volume.shape[0]
    writable = in_place and volume.dtype == np.float32 and volume.flags.writeable
    out = volume if writable else volume.astype(np.float32, copy=True)
    if gridding:
        profile = gridding_profile(n, p).astype(np.float32)
        out /= profile[:, None, None]
        out /= profile[None, :, None]
        out /= profile[None, None, :]
    sign = np.where((np.arange(n) - n // 2) % 2, -1.0, 1.0).astype(np.float32)
    out *= sign[:, None, None]
    out *= sign[None, :, None]
    return out


def _transform_into(data: np.ndarray, channel: int, volume: np.ndarray, p: int,
                    workers: int) -> None:
    """3D half transform of the padded ``volume`` into ``data[:P, :P, :P/2+1, channel]``.

    The map's voxel ``c`` goes to padded index ``(c - N/2) mod P`` (phase origin at the
    centre voxel). Per chunk of z-planes: x (only the map's rows, zero-padded), then y;
    then z in slabs of y. Only ``16`` planes of temporaries at a time.
    """
    n = volume.shape[0]
    h = p // 2 + 1
    src, dst = _padding_slices(n, p)
    for start in range(0, n, _PLANES_PER_CHUNK):
        stop = min(start + _PLANES_PER_CHUNK, n)
        rows = np.zeros((stop - start, n, p), dtype=np.float32)
        for a, b in zip(src, dst, strict=True):
            rows[:, :, b] = volume[start:stop, :, a]
        along_x = fft_threads.rfft(rows, axis=-1, workers=workers)
        planes = np.zeros((stop - start, p, h), dtype=np.complex64)
        for a, b in zip(src, dst, strict=True):
            planes[:, b] = along_x[:, a]
        planes = fft_threads.fft(planes, axis=1, workers=workers, overwrite_x=True)
        data[(np.arange(start, stop) - n // 2) % p, :p, :h, channel] = planes
    step = max(1, _PLANES_PER_CHUNK * p // h)
    for start in range(0, p, step):
        stop = min(start + step, p)
        slab = data[:p, start:stop, :h, channel]
        data[:p, start:stop, :h, channel] = fft_threads.fft(slab, axis=0, workers=workers)


def _padding_slices(n: int, p: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Source (map) and destination (padded) slices of ``c -> (c - N/2) mod P``."""
    half = n // 2
    return (slice(half, n), slice(0, half)), (slice(0, n - half), slice(p - half, p))


@lru_cache(maxsize=16)
def slice_grid(
    box_px: int, max_radius_px: float | None = None,
    magnification: tuple[float, float, float, float] | None = None,
) -> SliceGrid:
    """The rfft points of a ``box_px`` image with ``kx² + ky² <= r²``.

    Parameters
    ----------
    box_px : int
        Image side ``N`` (even).
    max_radius_px : float, optional
        ``r`` in cycles per box; default and at most ``N / 2`` (RELION's Nyquist circle).
    magnification : ``(M00, M01, M10, M11)``, optional
        Anisotropic magnification of the images: only points with ``|M k| <= N / 2`` are
        kept (RELION's ``r_max`` test in the map, which also keeps the slice inside the
        padded transform).

    Returns
    -------
    SliceGrid
        Cached; about ``0.4 N²`` points for the whole circle.
    """
    n = int(box_px)
    half = n // 2
    radius = half if max_radius_px is None else min(float(max_radius_px), half)
    ky = np.arange(n, dtype=np.float64)
    ky[ky > half] -= n
    kx = np.arange(half + 1, dtype=np.float64)
    inside = ky[:, None] ** 2 + kx[None, :] ** 2 <= radius * radius
    if magnification is not None:
        m00, m01, m10, m11 = magnification
        x = m00 * kx[None, :] + m01 * ky[:, None]
        y = m10 * kx[None, :] + m11 * ky[:, None]
        inside &= x * x + y * y <= half * half
    rows, cols = (np.asarray(i, dtype=np.int64) for i in np.nonzero(inside))
    return SliceGrid(flat_index=rows * (half + 1) + cols, rows=rows, cols=cols,
                     kx=kx[cols].astype(np.float32), ky=ky[rows].astype(np.float32))


def central_slices(
    fvol: FourierVolume, rotations: ArrayLike, *, max_radius_px: float | None = None
) -> np.ndarray:
    """Central slices of the maps' transform: Fourier transforms of their projections.

    Parameters
    ----------
    fvol : FourierVolume
        From :func:`fourier_volume`.
    rotations : array_like
        ``(B, 3, 3)`` RELION Euler matrices ``A`` (map to image coordinates).
    max_radius_px : float, optional
        Compute only frequencies up to this radius (cycles per box; default Nyquist,
        ``N / 2``); the others are 0. The cost is proportional to the points computed.

    Returns
    -------
    np.ndarray
        ``(B, N, N // 2 + 1)`` complex64 for a single map, ``(C, B, N, N // 2 + 1)`` for
        ``C`` maps, in ``scipy.fft.rfft2`` layout with the phase origin at pixel 0:
        ``irfft2`` gives the projection centred on pixel ``(0, 0)`` (wrapped); see
        :func:`project_spectra` for images centred on ``N // 2``. Zero beyond the Nyquist
        circle.
    """
    return _slices(fvol, rotations, None, None, max_radius_px)


def _slices(
    fvol: FourierVolume, rotations: ArrayLike, shifts_xy: np.ndarray | None,
    ctf: np.ndarray | None, max_radius_px: float | None,
    magnification: ArrayLike | None = None,
) -> np.ndarray:
    """Central slices, moved by ``shifts_xy`` and multiplied by ``ctf`` on the way out
    (:func:`cryoextract.ops.slice_kernel.fill_slices`)."""
    a = np.asarray(rotations, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != (3, 3):
        raise ParameterError(f"rotations must be (B, 3, 3), got shape {a.shape}")
    n, count = fvol.box_px, len(a)
    h = n // 2 + 1
    elements = None
    if magnification is not None:
        m = np.asarray(magnification, dtype=np.float64).reshape(2, 2)
        a = magnified_axes(a, m)
        elements = tuple(m.ravel().tolist())
    grid = slice_grid(n, max_radius_px, elements)
    if shifts_xy is None:
        phase_x = np.ones((count, h), dtype=np.complex64)
        phase_y = np.ones((count, n), dtype=np.complex64)
    else:
        phase_x, phase_y = shift_phases(shifts_xy, n)
    out = np.zeros((fvol.channels, count, n * h), dtype=np.complex64)
    data = fvol.data
    # the C loop, or numba's (1.4 s of CPU to load) where it was not built
    from cryoextract.ops.native import slice_filler

    slice_filler()(
        data.reshape(-1), fvol.channels, data.shape[1] * data.shape[2], data.shape[2],
        np.float32(fvol.padded_px // 2),
        np.ascontiguousarray(a[:, :2, :] * fvol.padding_factor, dtype=np.float32),
        grid.flat_index, grid.rows, grid.cols, grid.kx, grid.ky, phase_x, phase_y,
        _ctf_rows(ctf, count, n), out,
    )
    out = out.reshape(fvol.channels, count, n, h)
    return out[0] if fvol.channels == 1 else out


def _ctf_rows(ctf: np.ndarray | None, count: int, n: int) -> np.ndarray:
    """``(1 or B, N (N // 2 + 1))`` float32 CTFs for the kernel (ones for None)."""
    size = n * (n // 2 + 1)
    if ctf is None:
        return np.ones((1, size), dtype=np.float32)
    values = np.asarray(ctf, dtype=np.float32)
    values = values.reshape(-1, *values.shape[-2:]) if values.ndim >= 2 else values
    if values.ndim != 3 or values.shape[1:] != (n, n // 2 + 1) or len(values) not in (1, count):
        raise ParameterError(f"CTF of shape {np.shape(ctf)} does not fit {count} spectra of "
                             f"{n}x{n // 2 + 1}")
    return np.ascontiguousarray(values.reshape(len(values), size))


def shift_phases(shifts_xy: ArrayLike, box_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The separable phases that move the content of rfft2 spectra.

    Multiplying a spectrum by ``phase_y[b, row] * phase_x[b, col]`` moves a feature at
    ``x`` to ``x + dx`` (an integer shift is an exact circular shift).

    Parameters
    ----------
    shifts_xy : array_like
        ``(B, 2)`` shifts ``(dx, dy)`` in pixels.
    box_px : int
        Image side ``N`` (even).

    Returns
    -------
    phase_x : np.ndarray
        ``(B, N // 2 + 1)`` complex64 ``exp(-2 pi i dx kx / N)`` by rfft column.
    phase_y : np.ndarray
        ``(B, N)`` complex64 ``exp(-2 pi i dy ky / N)`` by row (``ky = +N / 2`` on the
        Nyquist row).
    """
    n = int(box_px)
    shifts = np.asarray(shifts_xy, dtype=np.float64).reshape(-1, 2)
    ky = np.arange(n, dtype=np.float64)
    ky[ky > n // 2] -= n
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    phase_x = np.exp(-2j * np.pi / n * shifts[:, 0, None] * kx[None, :]).astype(np.complex64)
    phase_y = np.exp(-2j * np.pi / n * shifts[:, 1, None] * ky[None, :]).astype(np.complex64)
    return phase_x, phase_y


def origin_shifts_px(
    origin_x_angstrom: ArrayLike, origin_y_angstrom: ArrayLike, pixel_size_angstrom: ArrayLike
) -> np.ndarray:
    """Shifts that put a centred projection where the particle is in its image.

    The particle lies at ``box centre - rlnOriginXAngst / apix`` (docs/conventions.md,
    "Origins"), so the projection moves by ``-origin / apix`` pixels.

    Parameters
    ----------
    origin_x_angstrom, origin_y_angstrom : array_like
        ``(B,)`` ``rlnOriginXAngst``, ``rlnOriginYAngst``.
    pixel_size_angstrom : array_like
        Pixel size of the images, scalar or ``(B,)``.

    Returns
    -------
    np.ndarray
        ``(B, 2)`` float64 ``(dx, dy)`` in pixels.
    """
    apix = np.asarray(pixel_size_angstrom, dtype=np.float64)
    ox = np.asarray(origin_x_angstrom, dtype=np.float64) / apix
    oy = np.asarray(origin_y_angstrom, dtype=np.float64) / apix
    return -np.stack(np.broadcast_arrays(ox, oy), axis=-1)


def project_spectra(
    fvol: FourierVolume,
    rotations: ArrayLike,
    shifts_xy: ArrayLike | None = None,
    ctf: np.ndarray | None = None,
    *,
    max_radius_px: float | None = None,
    magnification: ArrayLike | None = None,
) -> np.ndarray:
    """Spectra of projections centred on pixel ``N // 2``, shifted and CTF-modulated.

    Parameters
    ----------
    fvol : FourierVolume
        The map.
    rotations : array_like
        ``(B, 3, 3)`` RELION Euler matrices.
    shifts_xy : array_like, optional
        ``(B, 2)`` content shifts in pixels (:func:`origin_shifts_px`).
    ctf : np.ndarray, optional
        ``(B, N, N // 2 + 1)`` (or broadcastable) real CTF in rfft layout
        (:func:`cryoextract.ops.ctf.ctf_2d_batch`).
    max_radius_px : float, optional
        As :func:`central_slices`.
    magnification : array_like, optional
        ``(2, 2)`` anisotropic magnification ``M`` of the images: the slice is read at
        ``A.T @ (M k, 0)``, only where ``|M k| <= N / 2``
        (:func:`cryoextract.ops.aberrations.magnified_axes`).

    Returns
    -------
    np.ndarray
        ``(B, N, N // 2 + 1)`` complex64 (``(C, B, N, N // 2 + 1)`` for ``C`` maps):
        ``scipy.fft.irfft2`` of it is the projection image, comparable with ``rfft2`` of
        a particle image (same layout and origin).
    """
    count = len(np.asarray(rotations))
    centre = np.full((count, 2), fvol.box_px // 2, dtype=np.float64)
    if shifts_xy is not None:
        centre = centre + np.asarray(shifts_xy, dtype=np.float64).reshape(count, 2)
    return _slices(fvol, rotations, centre, ctf, max_radius_px, magnification)


@lru_cache(maxsize=1)
def load_kernel() -> None:
    """Load the interpolation loop now (the C library, or numba's compiled loop from its
    cache where the library was not built); once per process.

    Call before forking workers, so that they inherit it instead of each loading it.
    """
    fvol = fourier_volume(np.zeros((2, 2, 2), dtype=np.float32), padding_factor=1.0)
    project_spectra(fvol, np.eye(3)[None], ctf=np.ones((1, 2, 2), dtype=np.float32))


def project(
    fvol: FourierVolume,
    rotations: ArrayLike,
    shifts_xy: ArrayLike | None = None,
    ctf: np.ndarray | None = None,
    *,
    workers: int = 1,
) -> NDArray[np.float32]:
    """Projection images (as ``relion_project``), optionally shifted and CTF-modulated.

    Parameters
    ----------
    fvol, rotations, shifts_xy, ctf
        As :func:`project_spectra`.
    workers : int
        Threads for the FFTs (:mod:`cryoextract.ops.fft_threads`).

    Returns
    -------
    np.ndarray
        ``(B, N, N)`` (``(C, B, N, N)`` for ``C`` maps) float32, the map's centre
        projected onto pixel ``(N // 2, N // 2)`` (moved by ``shifts_xy``).
    """
    spectra = project_spectra(fvol, rotations, shifts_xy, ctf)
    n = fvol.box_px
    images = fft_threads.irfft2(spectra, s=(n, n), workers=workers, overwrite_x=True)
    return images.astype(np.float32, copy=False)
