"""Where each particle is, and where its box goes (docs/conventions.md, "Box centre",
"Origins" and "Re-extraction and re-centring").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.ops.coordinates import transform_picks
from cryoextract.ops.recenter import project_point, recentre
from cryoextract.pipeline.extraction.params import ExtractParams, SubpixelMode

ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


@dataclass(frozen=True)
class Placement:
    """Boxes and the metadata that locates each particle in them.

    All arrays are ``(n, 2)`` in ``(x, y)`` order. ``centres`` are the integer box
    centres (micrograph pixels), ``coordinates`` and ``origins_angstrom`` what the STAR
    gets, ``shifts_px`` the sub-pixel Fourier shift of the box content (``None``: none).
    """

    centres: np.ndarray
    coordinates: np.ndarray
    origins_angstrom: np.ndarray
    shifts_px: np.ndarray | None
    recentred: bool


def pick_coordinates(
    picks: pd.DataFrame, params: ExtractParams, pixel_size_angstrom: float,
    shape_yx: tuple[int, int],
) -> np.ndarray:
    """``(n, 2)`` pick coordinates mapped into the micrograph's pixel frame."""
    xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    transform = params.picks
    scale = 1.0
    if transform.pixel_size_angstrom is not None:
        scale = transform.pixel_size_angstrom / pixel_size_angstrom
    return transform_picks(xy, shape_yx, scale=scale, swap_xy=transform.swap_xy,
                           flip_x=transform.flip_x, flip_y=transform.flip_y)


def wants_recentring(picks: pd.DataFrame, params: ExtractParams) -> bool:
    """Re-centre when asked, or by default when the picks carry refined origins."""
    if params.recenter is not None:
        return params.recenter or params.recenter_xyz_angstrom is not None
    return params.recenter_xyz_angstrom is not None or all(
        c in picks.columns for c in ORIGIN_COLUMNS
    )


def place_particles(
    picks: pd.DataFrame, xy: np.ndarray, params: ExtractParams, pixel_size_angstrom: float,
    source: str,
) -> Placement:
    """Box centres and output coordinates/origins for picks at ``xy`` (micrograph px).

    Without re-centring the box is centred on ``floor(xy)`` (RELION's truncation) and
    origins already in the picks are kept, corrected by the residual. With re-centring
    (:func:`cryoextract.ops.recenter.recentre`), the offset ``origin / apix`` (less the
    projection of ``recenter_xyz_angstrom``) is rounded as RELION does (halves away from
    zero), the box goes to ``floor(xy - rounded offset)`` and only the remainder stays in
    the origins.
    """
    n = len(xy)
    old_origins = _origins_angstrom(picks)
    recentred = wants_recentring(picks, params)
    if recentred:
        offsets = old_origins / pixel_size_angstrom
        if params.recenter_xyz_angstrom is not None:
            offsets = offsets - projected_point_angstrom(picks, params.recenter_xyz_angstrom,
                                                         source) / pixel_size_angstrom
        moves = recentre(offsets)  # RELION: the new coordinate is xy - ROUND(offset)
        position = xy - offsets
        centres = np.floor(_bounded(xy - moves.shifts_px)).astype(np.int64)
        carried = np.zeros((n, 2))
    else:
        position = xy
        centres = np.floor(_bounded(position)).astype(np.int64)
        carried = old_origins
    residual = _bounded(position) - centres
    mode = params.subpixel
    if mode is SubpixelMode.ORIGIN:
        return Placement(centres, centres.astype(np.float64),
                         carried - residual * pixel_size_angstrom, None, recentred)
    if mode is SubpixelMode.SHIFT:
        return Placement(centres, position, carried, -residual, recentred)
    coordinates = centres.astype(np.float64) if recentred else xy
    return Placement(centres, coordinates, carried, None, recentred)


def _bounded(values: np.ndarray) -> np.ndarray:
    """Finite and castable to int64 (absurd picks are dropped later as outside)."""
    return np.clip(np.nan_to_num(values), -(2.0**40), 2.0**40)


def _origins_angstrom(picks: pd.DataFrame) -> np.ndarray:
    if all(c in picks.columns for c in ORIGIN_COLUMNS):
        return np.nan_to_num(picks[list(ORIGIN_COLUMNS)].to_numpy(np.float64))
    return np.zeros((len(picks), 2))


def projected_point_angstrom(
    picks: pd.DataFrame, xyz_angstrom: tuple[float, float, float], source: str
) -> np.ndarray:
    """``(n, 2)`` image-plane offset of a reference-frame point, per particle pose.

    RELION's ``A = Euler_angles2matrix(rot, tilt, psi)`` applied to the point; the first
    two components are the offset of its projection from the box centre.
    """
    missing = [c for c in ANGLE_COLUMNS if c not in picks.columns]
    if missing:
        raise InputError(f"--recenter-xyz needs poses; missing {', '.join(missing)}", source)
    return project_point(picks[list(ANGLE_COLUMNS)].to_numpy(np.float64), xyz_angstrom)
