"""Sub-particle geometry: aligning orientations to a vector, dropping overlapping copies.

Pure numpy, float64 (docs/conventions.md, "Sub-particles"). Orientations are RELION
Euler matrices ``A`` (:mod:`cryoextract.ops.rotations`), taking reference coordinates to
image coordinates; vectors are in the reference frame, in Å from its centre.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cryoextract.ops.rotations import euler_to_matrix


def vector_to_z(vectors_angstrom: ArrayLike) -> NDArray:
    """Rotations taking each vector's direction to +z (localrec's sub-particle matrix).

    Parameters
    ----------
    vectors_angstrom
        ``(..., 3)`` non-zero vectors.

    Returns
    -------
    numpy.ndarray
        ``(..., 3, 3)`` ``V = euler_to_matrix(rot, tilt, 0)`` with ``rot``, ``tilt`` the
        direction's azimuth ``atan2(y, x)`` and polar angle ``acos(z / |v|)``:
        ``V @ v == |v| * (0, 0, 1)``.
    """
    v = np.asarray(vectors_angstrom, dtype=np.float64)
    length = np.linalg.norm(v, axis=-1)
    if np.any(length == 0):
        raise ValueError("a zero vector has no direction")
    rot = np.degrees(np.arctan2(v[..., 1], v[..., 0]))
    tilt = np.degrees(np.arccos(np.clip(v[..., 2] / length, -1.0, 1.0)))
    return euler_to_matrix(rot, tilt, np.zeros_like(rot))


def aligned_orientations(matrices: ArrayLike, vectors_angstrom: ArrayLike) -> NDArray:
    """Orientations of sub-particles in a frame where their vector points along +z.

    Parameters
    ----------
    matrices
        ``(..., 3, 3)`` orientations ``A`` (symmetry copy included) of the sub-particles.
    vectors_angstrom
        ``(..., 3)`` their vectors in the reference frame (before the copy's symmetry).

    Returns
    -------
    numpy.ndarray
        ``(..., 3, 3)`` ``A @ V.T`` (:func:`vector_to_z`): the new frame is the reference
        rotated by ``V``, so the point ``|v| * z`` of that frame projects where ``v``
        projected with ``A``, and every sub-particle sees its region in one common frame.
    """
    rotation = vector_to_z(vectors_angstrom)
    return np.asarray(matrices, dtype=np.float64) @ np.swapaxes(rotation, -1, -2)


def separated(groups: ArrayLike, points: ArrayLike, min_distance: float) -> NDArray:
    """Keep-mask dropping points closer than ``min_distance`` to an earlier kept point
    of the same group (greedy, in the given order).

    Parameters
    ----------
    groups
        ``(n,)`` group labels (the source particle of each sub-particle).
    points
        ``(n, d)`` positions (the projected sub-particle centres, Å).
    min_distance
        In the units of ``points``.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` bool; the first point of each group is always kept.
    """
    labels = np.asarray(groups)
    xy = np.asarray(points, dtype=np.float64)
    keep = np.ones(len(labels), dtype=bool)
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    for members in np.split(order, starts[1:]):
        kept: list[int] = []
        for index in members:
            if kept:
                gaps = np.linalg.norm(xy[kept] - xy[index], axis=-1)
                if np.any(gaps < min_distance):
                    keep[index] = False
                    continue
            kept.append(int(index))
    return keep
