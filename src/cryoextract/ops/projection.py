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

Everything is vectorised over a batch of poses with numpy; spectra are complex64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from numpy.typing import ArrayLike, NDArray

from cryoextract.errors import ParameterError

__all__ = [
    "FourierVolume",
    "SliceGrid",
    "central_slices",
    "fourier_volume",
    "gridding_profile",
    "origin_shifts_px",
    "padded_size",
    "project",
    "project_spectra",
    "shift_spectra",
    "slice_grid",
]

#: default oversampling of the 3D Fourier transform (RELION's ``--pad``)
DEFAULT_PADDING_FACTOR = 2.0
#: z-planes transformed at once while building a :class:`FourierVolume`
_PLANES_PER_CHUNK = 16


@dataclass(frozen=True)
class FourierVolume:
    """The padded, gridding-corrected half Fourier transform of a map.

    Attributes
    ----------
    data : np.ndarray
        ``(P, P, P // 2 + 1)`` complex64: ``scipy.fft.rfftn`` of the padded map with the
        map's centre voxel at index 0; axes ``(kz, ky, kx)``, ``kz`` and ``ky`` in FFT
        order.
    box_px : int
        Side ``N`` of the map (and of the projections).
    padded_px : int
        Side ``P`` of the padded map.
    """

    data: np.ndarray
    box_px: int
    padded_px: int

    @property
    def padding_factor(self) -> float:
        """``P / N``."""
        return self.padded_px / self.box_px

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
    kx, ky : np.ndarray
        ``(M,)`` float64 integer frequencies (cycles per box) of those points; ``ky`` of
        the Nyquist row is ``+N / 2``.
    """

    flat_index: np.ndarray
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
) -> FourierVolume:
    """Fourier-transform a map once for many projections.

    Parameters
    ----------
    volume : array_like
        ``(N, N, N)`` real map, axes ``(z, y, x)``, ``N`` even; already multiplied by its
        mask where one applies.
    padding_factor : float
        Oversampling ``P / N`` of the transform (RELION's default 2).
    gridding : bool
        Divide the map by the trilinear kernel's transform first (see the module
        docstring); turn off only for tests.
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    FourierVolume
        Holds ``P² (P / 2 + 1)`` complex64 values (540 MiB for ``N = 256``, ``P = 512``);
        building it needs a further ``16 P²`` complex64 values at most.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ParameterError(f"map must be a cube, got shape {vol.shape}")
    n = int(vol.shape[0])
    if n % 2:
        raise ParameterError(f"map side must be even, got {n}")
    p = padded_size(n, padding_factor)
    vol = vol.astype(np.float32, copy=True)
    if gridding:
        profile = gridding_profile(n, p).astype(np.float32)
        vol /= profile[:, None, None]
        vol /= profile[None, :, None]
        vol /= profile[None, None, :]
    position = (np.arange(n) - n // 2) % p  # padded index of each map index, origin at 0
    data = np.zeros((p, p, p // 2 + 1), dtype=np.complex64)
    rows, cols = np.ix_(position, position)
    for start in range(0, n, _PLANES_PER_CHUNK):
        stop = min(start + _PLANES_PER_CHUNK, n)
        planes = np.zeros((stop - start, p, p), dtype=np.float32)
        planes[:, rows, cols] = vol[start:stop]
        data[position[start:stop]] = scipy.fft.rfft2(planes, workers=workers)
    step = max(1, _PLANES_PER_CHUNK * p // (p // 2 + 1))
    for start in range(0, p, step):
        chunk = data[:, start : start + step]
        data[:, start : start + step] = scipy.fft.fft(chunk, axis=0, workers=workers)
    return FourierVolume(data=data, box_px=n, padded_px=p)


@lru_cache(maxsize=8)
def slice_grid(box_px: int) -> SliceGrid:
    """The rfft points of a ``box_px`` image with ``kx² + ky² <= (box_px / 2)²``.

    Parameters
    ----------
    box_px : int
        Image side ``N`` (even).

    Returns
    -------
    SliceGrid
        Cached; about ``0.4 N²`` points.
    """
    n = int(box_px)
    half = n // 2
    ky = np.arange(n, dtype=np.float64)
    ky[ky > half] -= n
    kx = np.arange(half + 1, dtype=np.float64)
    inside = ky[:, None] ** 2 + kx[None, :] ** 2 <= half * half
    rows, cols = np.nonzero(inside)
    flat = (rows * (half + 1) + cols).astype(np.int64)
    return SliceGrid(flat_index=flat, kx=kx[cols], ky=ky[rows])


def central_slices(fvol: FourierVolume, rotations: ArrayLike) -> np.ndarray:
    """Central slices of the map's transform: Fourier transforms of its projections.

    Parameters
    ----------
    fvol : FourierVolume
        From :func:`fourier_volume`.
    rotations : array_like
        ``(B, 3, 3)`` RELION Euler matrices ``A`` (map to image coordinates).

    Returns
    -------
    np.ndarray
        ``(B, N, N // 2 + 1)`` complex64 in ``scipy.fft.rfft2`` layout with the phase
        origin at pixel 0: ``irfft2`` gives the projection centred on pixel ``(0, 0)``
        (wrapped), see :func:`project_spectra` for images centred on ``N // 2``. Zero
        beyond the Nyquist circle.
    """
    a = np.asarray(rotations, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != (3, 3):
        raise ParameterError(f"rotations must be (B, 3, 3), got shape {a.shape}")
    n, p = fvol.box_px, fvol.padded_px
    grid = slice_grid(n)
    scale = fvol.padding_factor
    # 3D frequency (x, y, z) of each slice point: pad * A.T @ (kx, ky, 0) = rows 0, 1 of A.
    q = scale * (grid.kx[None, :, None] * a[:, None, 0, :]
                 + grid.ky[None, :, None] * a[:, None, 1, :])
    negative = q[..., 0] < 0
    q[negative] *= -1.0
    values = _trilinear(fvol.data, q, p)
    np.conjugate(values, out=values, where=negative)
    out = np.zeros((len(a), n * (n // 2 + 1)), dtype=np.complex64)
    out[:, grid.flat_index] = values
    return out.reshape(len(a), n, n // 2 + 1)


def _trilinear(data: np.ndarray, q: np.ndarray, p: int) -> np.ndarray:
    """Trilinear interpolation of the half transform at ``q`` ``(..., 3)`` (x >= 0).

    ``y`` and ``z`` wrap (FFT order); ``x`` lies in ``[0, P / 2]``. Returns complex64 of
    shape ``q.shape[:-1]``.
    """
    h = p // 2 + 1
    flat = data.reshape(-1)
    floor = np.floor(q)
    frac = (q - floor).astype(np.float32)
    corner = floor.astype(np.int64)
    x0 = corner[..., 0]
    x1 = np.minimum(x0 + 1, h - 1)
    fx = frac[..., 0]
    out = np.zeros(q.shape[:-1], dtype=np.complex64)
    for dz in (0, 1):
        z = (corner[..., 2] + dz) % p
        wz = frac[..., 2] if dz else 1.0 - frac[..., 2]
        for dy in (0, 1):
            y = (corner[..., 1] + dy) % p
            wy = frac[..., 1] if dy else 1.0 - frac[..., 1]
            row = (z * p + y) * h
            wzy = wz * wy
            out += (wzy * (1.0 - fx)) * flat.take(row + x0)
            out += (wzy * fx) * flat.take(row + x1)
    return out


def shift_spectra(spectra: np.ndarray, shifts_xy: ArrayLike) -> np.ndarray:
    """Move the content of images given as rfft spectra, in place.

    Parameters
    ----------
    spectra : np.ndarray
        ``(B, N, N // 2 + 1)`` complex (rfft2 layout), modified in place.
    shifts_xy : array_like
        ``(B, 2)`` shifts ``(dx, dy)`` in pixels: a feature at ``x`` moves to ``x + dx``
        (an integer shift is an exact circular shift). Phases use ``ky = +N / 2`` on the
        Nyquist row (RELION).

    Returns
    -------
    np.ndarray
        ``spectra``, for chaining.
    """
    n = spectra.shape[-2]
    shifts = np.asarray(shifts_xy, dtype=np.float64).reshape(-1, 2)
    ky = np.arange(n, dtype=np.float64)
    ky[ky > n // 2] -= n
    kx = np.arange(spectra.shape[-1], dtype=np.float64)
    ex = np.exp(-2j * np.pi / n * shifts[:, 0, None] * kx[None, :]).astype(np.complex64)
    ey = np.exp(-2j * np.pi / n * shifts[:, 1, None] * ky[None, :]).astype(np.complex64)
    spectra *= ey[:, :, None]
    spectra *= ex[:, None, :]
    return spectra


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

    Returns
    -------
    np.ndarray
        ``(B, N, N // 2 + 1)`` complex64: ``scipy.fft.irfft2`` of it is the projection
        image, comparable with ``rfft2`` of a particle image (same layout and origin).
    """
    spectra = central_slices(fvol, rotations)
    count = spectra.shape[0]
    centre = np.full((count, 2), fvol.box_px // 2, dtype=np.float64)
    if shifts_xy is not None:
        centre = centre + np.asarray(shifts_xy, dtype=np.float64).reshape(count, 2)
    shift_spectra(spectra, centre)
    if ctf is not None:
        spectra *= ctf
    return spectra


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
        Threads for scipy.fft.

    Returns
    -------
    np.ndarray
        ``(B, N, N)`` float32, the map's centre projected onto pixel ``(N // 2, N // 2)``
        (moved by ``shifts_xy``).
    """
    spectra = project_spectra(fvol, rotations, shifts_xy, ctf)
    n = fvol.box_px
    images = scipy.fft.irfft2(spectra, s=(n, n), workers=workers, overwrite_x=True)
    return images.astype(np.float32, copy=False)
