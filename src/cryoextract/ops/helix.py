"""Helical segments: placement along tubes, priors from segment geometry, the tube mask.

Conventions (docs/conventions.md, "Helical segments"): coordinates are micrograph pixels
``(x, y)``; a tube's direction angle is ``theta = atan2(y2 - y1, x2 - x1)`` and RELION's
psi prior is ``-theta`` in degrees; track lengths are measured from a tube's first
segment. Placement follows ``relion_preprocess --helical_tubes
--helical_cut_into_segments`` (RELION 3.1 ``helix.cpp``,
``convertHelicalTubeCoordsToMetaDataTable``) operation for operation, so that the
double-precision positions agree to the last bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from cryoextract.ops.normalize import NormMode, normalise

# RELION's tilt prior of every 2D helical segment (degrees)
TILT_PRIOR_DEG = 90.0


@dataclass(frozen=True)
class Segments:
    """Segments cut from tubes.

    ``xy`` is ``(n, 2)`` positions in micrograph pixels; ``tube`` ``(n,)`` the 0-based
    index of the tube each comes from; ``psi_prior_deg`` ``(n,)`` RELION's
    ``rlnAnglePsiPrior``; ``track_length_px`` ``(n,)`` distance from the tube's first
    segment along the tube, pixels.
    """

    xy: np.ndarray
    tube: np.ndarray
    psi_prior_deg: np.ndarray
    track_length_px: np.ndarray


#: most segments one tube is cut into (a step far below a pixel: the user's mistake)
MAX_SEGMENTS_PER_TUBE = 1_000_000


def segment_tube(
    start_xy: tuple[float, float], end_xy: tuple[float, float], step_px: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Segments of one straight tube, as RELION places them.

    The first segment is ``0.01 * step_px`` past the start; then one every ``step_px``
    along ``theta = atan2(dy, dx)`` until a position leaves the bounding box of the two
    end points. Positions accumulate by repeated addition as RELION does (so that
    results agree bit for bit).

    Raises
    ------
    ValueError
        More than :data:`MAX_SEGMENTS_PER_TUBE` segments (or a step that is no positive
        number).

    Returns
    -------
    xy : np.ndarray
        ``(k, 2)`` positions, pixels.
    track_length_px : np.ndarray
        ``(k,)`` ``0, step, 2*step, ...`` (accumulated the same way).
    psi_prior_deg : float
        ``-degrees(theta)``.
    """
    x1, y1 = float(start_xy[0]), float(start_xy[1])
    x2, y2 = float(end_xy[0]), float(end_xy[1])
    finite = math.isfinite(step_px) and step_px > 0
    most = math.hypot(x2 - x1, y2 - y1) / step_px + 2 if finite else math.inf
    if not most <= MAX_SEGMENTS_PER_TUBE:  # an infinite or NaN step too: never ends
        raise ValueError(f"a step of {step_px:g} px cuts a tube of "
                         f"{math.hypot(x2 - x1, y2 - y1):g} px into more than "
                         f"{MAX_SEGMENTS_PER_TUBE} segments")
    theta = math.atan2(y2 - y1, x2 - x1)
    dx = step_px * math.cos(theta)
    dy = step_px * math.sin(theta)
    xp = x1 - dx * 0.99
    yp = y1 - dy * 0.99
    length = -step_px
    points: list[tuple[float, float]] = []
    lengths: list[float] = []
    while len(points) <= most:  # a step lost in rounding (xp + dx == xp) ends too
        xp += dx
        yp += dy
        length += step_px
        if (xp > x1 and xp > x2) or (xp < x1 and xp < x2) \
                or (yp > y1 and yp > y2) or (yp < y1 and yp < y2):
            break
        points.append((xp, yp))
        lengths.append(length)
    return (np.array(points, dtype=np.float64).reshape(-1, 2),
            np.array(lengths, dtype=np.float64), -math.degrees(theta))


def segment_tubes(starts_xy: np.ndarray, ends_xy: np.ndarray, step_px: float) -> Segments:
    """Segments of every tube (``(m, 2)`` start and end points), tube by tube."""
    parts = [segment_tube(start, end, step_px)
             for start, end in zip(starts_xy.tolist(), ends_xy.tolist(), strict=True)]
    counts = [len(xy) for xy, _, _ in parts]
    return Segments(
        xy=np.concatenate([xy for xy, _, _ in parts]) if parts else np.zeros((0, 2)),
        tube=np.repeat(np.arange(len(parts)), counts),
        psi_prior_deg=np.repeat([psi for _, _, psi in parts], counts).astype(np.float64),
        track_length_px=np.concatenate([t for _, t, _ in parts]) if parts else np.zeros(0),
    )


def trim_tube_ends(
    starts_xy: np.ndarray, ends_xy: np.ndarray, trim_px: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move both ends of each tube inward by ``trim_px`` ``(m,)`` along the tube.

    RELION does this to EMAN helix ``.box`` tubes (the ends are box centres, and a box's
    half width past them is no filament).
    """
    delta = ends_xy - starts_xy
    theta = np.arctan2(delta[:, 1], delta[:, 0])
    along = np.stack([np.cos(theta), np.sin(theta)], axis=1) * trim_px[:, None]
    return starts_xy + along, ends_xy - along


def transform_psi_prior(
    psi_deg: np.ndarray, *, swap_xy: bool = False, flip_x: bool = False, flip_y: bool = False
) -> np.ndarray:
    """Psi priors of segments whose coordinates get the axis corrections of
    :func:`cryoextract.ops.coordinates.transform_picks` (swap, then flip x, then flip y).

    With ``theta = -psi`` the tube's direction: a swap makes it ``90 - theta``, a flip in
    x ``180 - theta``, a flip in y ``-theta``. Returns ``(n,)`` degrees in [-180, 180).
    """
    theta = -np.asarray(psi_deg, dtype=np.float64)
    if swap_xy:
        theta = 90.0 - theta
    if flip_x:
        theta = 180.0 - theta
    if flip_y:
        theta = -theta
    return (-theta + 180.0) % 360.0 - 180.0


def inside_like_relion(xy: np.ndarray, box_px: int, shape_yx: tuple[int, int]) -> np.ndarray:
    """``(n,)`` True where RELION keeps a helical segment: ``box/2 <= x <= nx - box/2``
    (and the same in y), on the unrounded position."""
    half = box_px / 2
    ny, nx = shape_yx
    return ((xy[:, 0] >= half) & (xy[:, 0] <= nx - half)
            & (xy[:, 1] >= half) & (xy[:, 1] <= ny - half))


def priors_from_positions(xy: np.ndarray, tube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Psi priors and track lengths of pre-segmented picks from their order in each tube.

    Parameters
    ----------
    xy : np.ndarray
        ``(n, 2)`` segment positions, pixels, in the order along each tube.
    tube : np.ndarray
        ``(n,)`` tube label of each segment (any hashable values; a tube's segments need
        not be contiguous, their order is kept).

    Returns
    -------
    psi_prior_deg : np.ndarray
        ``(n,)`` ``-degrees(atan2)`` of the local tube direction: from the previous to
        the next segment (one-sided at the ends). ``nan`` for a tube of one segment.
    track_length_px : np.ndarray
        ``(n,)`` distance along the polyline of the tube's segments from its first one.
    """
    psi = np.full(len(xy), np.nan)
    track = np.zeros(len(xy))
    _, labels = np.unique(tube, return_inverse=True)
    for label in range(labels.max() + 1 if len(labels) else 0):
        rows = np.flatnonzero(labels == label)
        points = xy[rows]
        steps = np.hypot(*np.diff(points, axis=0).T)
        track[rows] = np.concatenate([[0.0], np.cumsum(steps)])
        if len(rows) < 2:
            continue
        ahead = points[np.minimum(np.arange(len(rows)) + 1, len(rows) - 1)]
        behind = points[np.maximum(np.arange(len(rows)) - 1, 0)]
        direction = ahead - behind
        psi[rows] = -np.degrees(np.arctan2(direction[:, 1], direction[:, 0]))
    return psi, track


@lru_cache(maxsize=16)
def tube_background_mask(box_px: int, radius_px: float, psi_deg: float) -> np.ndarray:
    """``(box, box)`` bool: the pixels farther than ``radius_px`` from a segment's axis.

    The axis passes through the box centre (index ``box // 2``) at RELION's psi prior:
    the distance of pixel ``(i, j)`` (row, column from the centre) is
    ``|sin(psi) * j + cos(psi) * i|``, RELION's ``|YY(A^T (j, i, 0))|`` with
    ``A = Euler(0, 0, psi)`` (``image.cpp``, ``calculateBackgroundAvgStddev``), in double
    precision as RELION. Cached and read-only.
    """
    offsets = np.arange(box_px, dtype=np.float64) - box_px // 2
    psi = math.radians(psi_deg)
    distance = np.abs(math.sin(psi) * offsets[None, :] + math.cos(psi) * offsets[:, None])
    mask = distance > radius_px
    mask.setflags(write=False)
    return mask


def normalise_segments(
    images: np.ndarray, mode: NormMode, psi_deg: np.ndarray, tube_radius_px: float,
    **options: Any,
) -> np.ndarray:
    """:func:`cryoextract.ops.normalize.normalise` of helical segments, in place, each on
    the background outside its tube (:func:`tube_background_mask`).

    ``images`` is ``(n, m, m)``, ``psi_deg`` ``(n,)`` the psi priors, ``tube_radius_px``
    in these images' pixels; ``options`` go to ``normalise``. Segments of one psi (a
    tube's) are normalised together. Returns ``(n,)`` pixels replaced as dust.
    """
    dust = np.zeros(len(images), dtype=np.int64)
    angles, group = np.unique(np.asarray(psi_deg, dtype=np.float64), return_inverse=True)
    for k, angle in enumerate(angles.tolist()):
        rows = np.flatnonzero(group == k)
        part = images if len(rows) == len(images) else images[rows]
        dust[rows], _ = normalise(
            part, mode, background=tube_background_mask(images.shape[-1], tube_radius_px, angle),
            **options)
        if part is not images:
            images[rows] = part
    return dust
