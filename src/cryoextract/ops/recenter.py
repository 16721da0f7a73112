"""Re-centring: the one rule for moving a box onto a particle's refined centre.

Used by extraction (``pipeline/extraction/positions.place_particles``),
``downsample --recenter`` and ``subtract --recenter-*`` (docs/conventions.md,
"Re-extraction and re-centring"). As
``relion_preprocess --reextract_data_star --recenter`` (``src/preprocessing.cpp``): the
offset of the particle from the box centre, ``o = origin_px - (A c)[:2]`` (``c`` an
optional 3D point, ``A`` the particle's pose), is split into an integer shift
``s = ROUND(o)`` and a residual ``o - s``; the box moves by ``-s`` and the residual stays
in the origin. RELION's ``ROUND`` (``src/macros.h``) rounds halves away from zero, and it
rounds the *offset*, not the position: for an integer coordinate ``x`` and ``o = 2.5``
the new centre is ``x - 3`` whatever the parity of ``x``.

Everything is ``(n, 2)`` in ``(x, y)`` order; pixels are those of the frame the offsets
are given in (micrograph pixels for extraction, image pixels for stacks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from cryoextract.ops.rotations import euler_to_matrix

__all__ = ["Recentring", "project_point", "recentre", "relion_round"]

#: particles rotated at once (bounds the ``(n, 3, 3)`` matrices)
_CHUNK = 100_000
#: shifts are held to this (absurd offsets stay castable; such boxes fall off anyway)
_LARGEST = 2.0**40


def relion_round(values: ArrayLike) -> np.ndarray:
    """RELION's ``ROUND``: nearest integer, halves away from zero (float64, any shape).

    Non-finite values stay non-finite (callers decide what an unknown shift is).
    """
    values = np.asarray(values, dtype=np.float64)
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def project_point(rotations_deg: np.ndarray, point: ArrayLike) -> np.ndarray:
    """``(n, 2)`` image-plane offset of a reference-frame point, per particle pose.

    RELION's ``A = Euler_angles2matrix(rot, tilt, psi)`` applied to ``point``; the first
    two components are the offset of its projection from the box centre, in the point's
    unit (pixels or Å).

    Parameters
    ----------
    rotations_deg : np.ndarray
        ``(n, 3)`` ``rlnAngleRot/Tilt/Psi`` in degrees.
    point : array-like
        ``(3,)`` ``(x, y, z)`` from the reference's centre.
    """
    rotations_deg = np.asarray(rotations_deg, dtype=np.float64).reshape(-1, 3)
    point = np.asarray(point, dtype=np.float64)
    out = np.empty((len(rotations_deg), 2), dtype=np.float64)
    for start in range(0, len(rotations_deg), _CHUNK):
        part = slice(start, start + _CHUNK)
        matrices = euler_to_matrix(*rotations_deg[part].T)  # (k, 3, 3)
        out[part] = (matrices @ point)[:, :2]
    return out


@dataclass(frozen=True)
class Recentring:
    """How each particle moves.

    Attributes
    ----------
    shifts_px : np.ndarray
        ``(n, 2)`` int64 ``s``: the box centre moves by ``-s`` (an image's content moves
        by ``+s``, ``np.roll`` order ``(dy, dx)``). Zero where the offset is unknown.
    residual_px : np.ndarray
        ``(n, 2)`` float64 ``o - s``, each component in ``[-0.5, 0.5]``: the new origin.
    """

    shifts_px: np.ndarray
    residual_px: np.ndarray

    @property
    def moved(self) -> np.ndarray:
        """``(n,)`` bool: the particles whose box moves."""
        return np.any(self.shifts_px != 0, axis=1)


def recentre(
    origins_px: np.ndarray,
    rotations_deg: np.ndarray | None = None,
    point_px: ArrayLike | None = None,
) -> Recentring:
    """Split each particle's offset from its box centre into a shift and a residual.

    Parameters
    ----------
    origins_px : np.ndarray
        ``(n, 2)`` ``rlnOriginX/YAngst`` over the pixel size (pixels of the frame moved).
    rotations_deg : np.ndarray, optional
        ``(n, 3)`` poses; needed with ``point_px``.
    point_px : array-like, optional
        ``(3,)`` a reference point (pixels of the same frame, from the reference's
        centre) to centre instead of the particle's centre.

    Returns
    -------
    Recentring
        Non-finite offsets (unknown pixel size) give shift 0 and residual ``o``.
    """
    offsets = np.asarray(origins_px, dtype=np.float64).reshape(-1, 2)
    if point_px is not None:
        if rotations_deg is None:
            raise ValueError("re-centring on a point needs the poses")
        offsets = offsets - project_point(rotations_deg, point_px)
    rounded = relion_round(offsets)
    known = np.isfinite(rounded)
    shifts = np.clip(np.where(known, rounded, 0.0), -_LARGEST, _LARGEST).astype(np.int64)
    return Recentring(shifts, offsets - shifts)
