"""Rotations: RELION's ZYZ Euler angles and cryoSPARC's axis-angle (Rodrigues) vectors.

Everything is batched: any leading shape ``(...)`` is kept, a rotation matrix is the last
two axes ``(..., 3, 3)``. Pure numpy, float64. The conventions (with the evidence) are in
docs/conventions.md, section "cryoSPARC and rotations"; in short:

- :func:`euler_to_matrix` is RELION's ``Euler_angles2matrix`` (``src/euler.cpp``):
  ``A = R_z(psi) @ R_y(tilt) @ R_z(rot)`` with ``R_z(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]``
  and ``R_y(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]`` (each a *clockwise* rotation by the
  angle, i.e. the passive/transposed form). ``A`` takes map (reference) coordinates to
  image coordinates: a particle image is the projection along z of the map sampled at
  ``A.T @ (x, y, z)``.
- :func:`matrix_to_euler` is RELION's ``Euler_matrix2angles``, including its branch for
  tilt 0 or 180 degrees (rot set to 0, everything put into psi).
- :func:`rodrigues_to_matrix` is the usual right-handed axis-angle map
  ``R = I + sin(t) K + (1 - cos(t)) K @ K`` (``K`` the cross-product matrix of the unit
  axis, ``t`` the vector's length in radians), as ``scipy``'s ``Rotation.from_rotvec``.
- cryoSPARC's ``alignments3D/pose`` ``p`` and RELION's Euler matrix are transposes of each
  other: ``euler_to_matrix(*angles) == rodrigues_to_matrix(p).T`` (pyem's ``expmap``
  builds the transposed matrix directly). :func:`pose_to_euler` and :func:`euler_to_pose`
  do the two conversions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Below this ``sqrt(A02^2 + A12^2)`` RELION treats tilt as 0 or 180 (``16 * FLT_EPSILON``).
_GIMBAL_EPS = 16 * float(np.finfo(np.float32).eps)


def euler_to_matrix(rot_deg: ArrayLike, tilt_deg: ArrayLike, psi_deg: ArrayLike) -> NDArray:
    """RELION's Euler angles to rotation matrices (``Euler_angles2matrix``).

    Parameters
    ----------
    rot_deg, tilt_deg, psi_deg
        ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees; scalars or arrays
        of any shapes that broadcast together to ``(...)``.

    Returns
    -------
    numpy.ndarray
        ``(..., 3, 3)`` float64 matrices ``A = R_z(psi) R_y(tilt) R_z(rot)`` (module
        docstring), mapping map coordinates to image coordinates.
    """
    alpha, beta, gamma = np.broadcast_arrays(
        *(np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (rot_deg, tilt_deg, psi_deg))
    )
    ca, sa = np.cos(alpha), np.sin(alpha)
    cb, sb = np.cos(beta), np.sin(beta)
    cg, sg = np.cos(gamma), np.sin(gamma)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    out = np.empty((*alpha.shape, 3, 3), dtype=np.float64)
    out[..., 0, 0] = cg * cc - sg * sa
    out[..., 0, 1] = cg * cs + sg * ca
    out[..., 0, 2] = -cg * sb
    out[..., 1, 0] = -sg * cc - cg * sa
    out[..., 1, 1] = -sg * cs + cg * ca
    out[..., 1, 2] = sg * sb
    out[..., 2, 0] = sc
    out[..., 2, 1] = ss
    out[..., 2, 2] = cb
    return out


def matrix_to_euler(matrix: ArrayLike) -> NDArray:
    """Rotation matrices to RELION's Euler angles (``Euler_matrix2angles``).

    Parameters
    ----------
    matrix
        ``(..., 3, 3)`` rotation matrices in RELION's convention (:func:`euler_to_matrix`).

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` float64 ``(rot, tilt, psi)`` in degrees; rot and psi in
        ``[-180, 180]``, tilt in ``[0, 180]``. Where tilt is 0 or 180 (within RELION's
        ``16 * FLT_EPSILON``) rot is 0 and the in-plane angle is all in psi, as RELION.
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) matrices, got shape {a.shape}")
    abs_sb = np.hypot(a[..., 0, 2], a[..., 1, 2])
    regular = abs_sb > _GIMBAL_EPS
    gamma = np.arctan2(a[..., 1, 2], -a[..., 0, 2])
    alpha = np.arctan2(a[..., 2, 1], a[..., 2, 0])
    sin_g = np.sin(gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        sign_sb = np.where(
            np.abs(sin_g) < np.finfo(np.float32).eps,
            _sgn(-a[..., 0, 2] / np.cos(gamma)),
            np.where(sin_g > 0, _sgn(a[..., 1, 2]), -_sgn(a[..., 1, 2])),
        )
    beta = np.arctan2(sign_sb * abs_sb, a[..., 2, 2])
    # Gimbal lock: tilt 0 (SGN(A22) > 0) or 180; rot := 0 and the in-plane angle goes to psi.
    upright = a[..., 2, 2] >= 0
    gamma_lock = np.where(
        upright, np.arctan2(-a[..., 1, 0], a[..., 0, 0]), np.arctan2(a[..., 1, 0], -a[..., 0, 0])
    )
    alpha = np.where(regular, alpha, 0.0)
    beta = np.where(regular, beta, np.where(upright, 0.0, np.pi))
    gamma = np.where(regular, gamma, gamma_lock)
    return np.rad2deg(np.stack([alpha, beta, gamma], axis=-1))


def rodrigues_to_matrix(rotvec: ArrayLike) -> NDArray:
    """Axis-angle vectors to rotation matrices (right-handed, as ``Rotation.from_rotvec``).

    Parameters
    ----------
    rotvec
        ``(..., 3)`` vectors: unit axis times angle in radians.

    Returns
    -------
    numpy.ndarray
        ``(..., 3, 3)`` float64 matrices ``R = I + sin(t) K + (1 - cos(t)) K @ K``.
    """
    v = np.asarray(rotvec, dtype=np.float64)
    if v.shape[-1:] != (3,):
        raise ValueError(f"expected (..., 3) vectors, got shape {v.shape}")
    theta = np.linalg.norm(v, axis=-1)
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    # sin(t)/t and (1 - cos(t))/t^2 with their Taylor series near 0
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    k = _cross_matrix(v)
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_rodrigues(matrix: ArrayLike) -> NDArray:
    """Rotation matrices to axis-angle vectors (inverse of :func:`rodrigues_to_matrix`).

    Parameters
    ----------
    matrix
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` float64 vectors with angle (length) in ``[0, pi]`` radians; accurate
        for every angle, 180 degrees included (via a unit quaternion).
    """
    q = _matrix_to_quaternion(np.asarray(matrix, dtype=np.float64))
    w, xyz = q[..., 0], q[..., 1:]
    norm = np.linalg.norm(xyz, axis=-1)
    angle = 2.0 * np.arctan2(norm, w)
    small = norm < 1e-12
    scale = np.where(small, 2.0 / np.where(w == 0, 1.0, w), angle / np.where(small, 1.0, norm))
    return xyz * scale[..., None]


def pose_to_euler(pose: ArrayLike) -> NDArray:
    """cryoSPARC ``alignments3D/pose`` (axis-angle) to RELION ``(rot, tilt, psi)`` degrees.

    Parameters
    ----------
    pose
        ``(..., 3)`` axis-angle vectors in radians.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` Euler angles in degrees with ``euler_to_matrix(*angles) ==
        rodrigues_to_matrix(pose).T``.
    """
    return matrix_to_euler(np.swapaxes(rodrigues_to_matrix(pose), -1, -2))


def euler_to_pose(rot_deg: ArrayLike, tilt_deg: ArrayLike, psi_deg: ArrayLike) -> NDArray:
    """RELION Euler angles (degrees) to a cryoSPARC ``alignments3D/pose`` ``(..., 3)``."""
    return matrix_to_rodrigues(np.swapaxes(euler_to_matrix(rot_deg, tilt_deg, psi_deg), -1, -2))


def viewing_direction_order(rotations_deg: ArrayLike, bin_degrees: float = 10.0) -> NDArray:
    """Positions sorted so that particles with close viewing directions are neighbours
    (their central slices read the same parts of a Fourier volume).

    Parameters
    ----------
    rotations_deg : np.ndarray
        ``(n, 3)`` ``rlnAngleRot/Tilt/Psi`` in degrees.
    bin_degrees : float
        Size of the direction bins.

    Returns
    -------
    np.ndarray
        ``(n,)`` permutation. The direction is row 2 of RELION's matrix (``v`` and ``-v``
        give the same central plane); bins of polar angle, then of azimuth.
    """
    if not len(rotations_deg):
        return np.zeros(0, dtype=np.int64)
    direction = euler_to_matrix(*np.asarray(rotations_deg, dtype=np.float64).T)[:, 2, :]
    direction *= np.where(direction[:, 2:3] < 0, -1.0, 1.0)
    polar = np.degrees(np.arccos(np.clip(direction[:, 2], -1.0, 1.0)))
    azimuth = np.degrees(np.arctan2(direction[:, 1], direction[:, 0]))
    return np.lexsort((np.floor(azimuth / bin_degrees), np.floor(polar / bin_degrees)))


def _sgn(x: NDArray) -> NDArray:
    """RELION's ``SGN`` macro: ``1`` for ``x >= 0`` (zero included), else ``-1``."""
    return np.where(x >= 0, 1.0, -1.0)


def _cross_matrix(v: NDArray) -> NDArray:
    """``(..., 3)`` -> ``(..., 3, 3)`` matrices ``K`` with ``K @ u == cross(v, u)``."""
    k = np.zeros((*v.shape[:-1], 3, 3), dtype=np.float64)
    k[..., 0, 1], k[..., 0, 2] = -v[..., 2], v[..., 1]
    k[..., 1, 0], k[..., 1, 2] = v[..., 2], -v[..., 0]
    k[..., 2, 0], k[..., 2, 1] = -v[..., 1], v[..., 0]
    return k


def _matrix_to_quaternion(m: NDArray) -> NDArray:
    """``(..., 3, 3)`` rotation matrices -> ``(..., 4)`` unit quaternions ``(w, x, y, z)``.

    Shepperd's method: the largest of ``w^2, x^2, y^2, z^2`` (read off the trace and the
    diagonal) is taken as the pivot, so no division by a small number. ``w >= 0``.
    """
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) matrices, got shape {m.shape}")
    d0, d1, d2 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four times the squares of w, x, y, z
    squares = np.stack([1 + d0 + d1 + d2, 1 + d0 - d1 - d2, 1 - d0 + d1 - d2, 1 - d0 - d1 + d2],
                       axis=-1)
    pivot = np.argmax(squares, axis=-1)
    # the other three components times 4 * pivot, for each possible pivot
    s_x = m[..., 2, 1] - m[..., 1, 2]
    s_y = m[..., 0, 2] - m[..., 2, 0]
    s_z = m[..., 1, 0] - m[..., 0, 1]
    p_xy = m[..., 0, 1] + m[..., 1, 0]
    p_xz = m[..., 0, 2] + m[..., 2, 0]
    p_yz = m[..., 1, 2] + m[..., 2, 1]
    candidates = np.stack([
        np.stack([squares[..., 0], s_x, s_y, s_z], axis=-1),
        np.stack([s_x, squares[..., 1], p_xy, p_xz], axis=-1),
        np.stack([s_y, p_xy, squares[..., 2], p_yz], axis=-1),
        np.stack([s_z, p_xz, p_yz, squares[..., 3]], axis=-1),
    ], axis=-2)
    q = np.take_along_axis(candidates, pivot[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)
