"""The compiled inner loop of :func:`cryoextract.ops.projection.central_slices`.

Trilinear interpolation of central slices is a gather over a volume far larger than
the caches: the time goes on memory latency. The loop works per pose in two passes:
first every point's voxel index and weights (arithmetic only), then the gathers, with a
short body so that the processor keeps many independent loads in flight, and with the
four cache lines of the point :data:`PREFETCH_DISTANCE` ahead requested in advance
(software prefetch: about 30 % faster than without). The shift phases and the CTF are
applied on the way out, so a projection's spectrum is written once. Conventions are
those of :mod:`cryoextract.ops.projection`.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["PREFETCH_DISTANCE", "fill_slices"]

#: points between a prefetch and the use of its data
PREFETCH_DISTANCE = 8


@intrinsic
def _prefetch(typingctx, array, index):  # type: ignore[no-untyped-def]
    """Ask for the cache line of ``array[index]`` (1D array; a hint, never a fault)."""
    signature = types.void(array, index)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        array_type = sig.args[0]
        values = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, values, [args[1]],
                                           wraparound=False, boundscheck=False)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_pointer],
            fnty=ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]))
        # read, high temporal locality, data cache
        builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0),
                                ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return signature, codegen


@numba.njit(nogil=True, fastmath=True, cache=True, boundscheck=False)
def fill_slices(
    voxels: np.ndarray, channels: int, plane_stride: int, row_stride: int,
    half_padded: float, axes: np.ndarray, flat: np.ndarray, rows: np.ndarray,
    cols: np.ndarray, kx: np.ndarray, ky: np.ndarray, phase_x: np.ndarray,
    phase_y: np.ndarray, ctf: np.ndarray, out: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered through central_slices
    """Write ``out[c, b, flat[m]] = V_c(q) * ctf * phase_y * phase_x`` for every point.

    Parameters
    ----------
    voxels : np.ndarray
        ``(V * C,)`` complex64, the flattened ``FourierVolume.data`` (channels last).
    channels : int
        ``C``.
    plane_stride, row_stride : int
        Voxels per z-plane and per y-row of that array.
    half_padded : float
        ``P / 2``: index of frequency 0 along y and z.
    axes : np.ndarray
        ``(B, 2, 3)`` float32: rows 0 and 1 of each Euler matrix times the padding
        factor; point ``m`` of pose ``b`` lies at ``kx[m] axes[b, 0] + ky[m] axes[b, 1]``.
    flat, rows, cols : np.ndarray
        ``(M,)`` int64 position of each point in the flattened ``(N, N // 2 + 1)``
        spectrum, and its row and column.
    kx, ky : np.ndarray
        ``(M,)`` float32 frequencies of the points (cycles per box).
    phase_x, phase_y : np.ndarray
        ``(B, N // 2 + 1)`` and ``(B, N)`` complex64 shift phases by column and row.
    ctf : np.ndarray
        ``(1, N (N // 2 + 1))`` (one for all poses) or ``(B, N (N // 2 + 1))`` float32.
    out : np.ndarray
        ``(C, B, N (N // 2 + 1))`` complex64; only the points are written.
    """
    poses, points = axes.shape[0], flat.shape[0]
    ahead = PREFETCH_DISTANCE
    index = np.empty(points + ahead, np.int64)
    wx = np.empty(points, np.float32)
    wy = np.empty(points, np.float32)
    wz = np.empty(points, np.float32)
    mirror = np.empty(points, np.float32)
    factor = np.empty(points, np.complex64)
    one = np.float32(1.0)
    row_step, plane_step = row_stride * channels, plane_stride * channels
    for b in range(poses):
        ax, ay, az = axes[b, 0, 0], axes[b, 0, 1], axes[b, 0, 2]
        bx, by, bz = axes[b, 1, 0], axes[b, 1, 1], axes[b, 1, 2]
        ctf_row = b if ctf.shape[0] > 1 else 0
        for m in range(points):  # indices, weights and factors: no memory traffic
            x = kx[m] * ax + ky[m] * bx
            y = kx[m] * ay + ky[m] * by
            z = kx[m] * az + ky[m] * bz
            s = one if x >= 0 else -one  # x < 0: Friedel mate, conjugated
            x *= s
            y = y * s + half_padded
            z = z * s + half_padded
            x0, y0, z0 = np.int64(x), np.int64(y), np.int64(z)
            wx[m], wy[m], wz[m], mirror[m] = x - x0, y - y0, z - z0, s
            index[m] = (z0 * plane_stride + y0 * row_stride + x0) * channels
            factor[m] = ctf[ctf_row, flat[m]] * phase_y[b, rows[m]] * phase_x[b, cols[m]]
        index[points:] = index[points - 1] if points else 0
        for c in range(channels):  # the gathers, a short body: many loads in flight
            spectrum = out[c, b]
            for m in range(points):
                later = index[m + ahead] + c
                _prefetch(voxels, later)
                _prefetch(voxels, later + row_step)
                _prefetch(voxels, later + plane_step)
                _prefetch(voxels, later + plane_step + row_step)
                i = index[m] + c
                fx, fy, fz = wx[m], wy[m], wz[m]
                j, k = i + row_step, i + plane_step
                h = k + row_step
                v00 = voxels[i] + fx * (voxels[i + channels] - voxels[i])
                v01 = voxels[j] + fx * (voxels[j + channels] - voxels[j])
                v10 = voxels[k] + fx * (voxels[k + channels] - voxels[k])
                v11 = voxels[h] + fx * (voxels[h + channels] - voxels[h])
                v0 = v00 + fy * (v01 - v00)
                v1 = v10 + fy * (v11 - v10)
                v = v0 + fz * (v1 - v0)
                spectrum[flat[m]] = complex(v.real, mirror[m] * v.imag) * factor[m]
