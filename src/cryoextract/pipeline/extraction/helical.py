"""Helical extraction in the job: picks -> segments with RELION's helical columns.

``--helix`` with ``--helical-tubes``: picks are start/end pairs (RELION coordinate STAR,
plain text, EMAN helix ``.box`` with ``-1``/``-2`` tags) cut into segments as
``relion_preprocess --helical_tubes --helical_cut_into_segments`` does. Without it the
picks are segments already (``rlnHelicalTubeID``, crYOLO ``filamentid``, cryoSPARC
``filament/*``, EMAN2 ``#helix:`` boxes); priors and track lengths missing from them
are computed from the segments' order and positions. docs/conventions.md, "Helical
segments".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.coords import guess_format
from cryoextract.io.micrographs import MicrographSet
from cryoextract.io.pickformats.filaments import (
    PSI_PRIOR,
    TILT_PRIOR,
    TRACK_LENGTH,
    TUBE_ID,
    first_seen_numbers,
)
from cryoextract.ops.boxes import REASON_EDGE, EdgeMode
from cryoextract.ops.helix import (
    TILT_PRIOR_DEG,
    inside_like_relion,
    priors_from_positions,
    segment_tubes,
    transform_psi_prior,
    trim_tube_ends,
)
from cryoextract.pipeline.extraction.params import ExtractParams, HelixParams
from cryoextract.pipeline.extraction.positions import pick_coordinates, wants_recentring

FLIP_RATIO = "rlnAnglePsiFlipRatio"
PITCH = "rlnHelicalTubePitch"
# crYOLO's filament id (read_cbox carries it by name)
CRYOLO_FILAMENT = "filamentid"
REASON_NO_DIRECTION = "filament of one segment: no direction"
# EMAN helix .box tags of a tube's start and end rows (RELION's reader)
EMAN_START, EMAN_END = -1, -2


@dataclass(frozen=True)
class HelicalPicks:
    """Segments of one micrograph.

    ``picks`` has ``rlnCoordinateX/Y`` in micrograph pixels (pick transforms applied)
    and the helical columns; ``xy`` is ``(n, 2)`` the same coordinates; ``reasons``
    ``(n,)`` why a segment is dropped before boxing (``""``: kept).
    """

    picks: pd.DataFrame
    xy: np.ndarray
    reasons: np.ndarray


def located_picks(
    picks: pd.DataFrame, params: ExtractParams, pixel_size_angstrom: float,
    shape_yx: tuple[int, int], source: str, coords_path: str | None = None,
    coords_format: str = "auto",
) -> HelicalPicks:
    """The picks in micrograph pixels: segments under ``--helix``, else as given."""
    if params.helix is None:
        xy = pick_coordinates(picks, params, pixel_size_angstrom, shape_yx)
        return HelicalPicks(picks, xy, np.full(len(picks), "", dtype=object))
    return helical_picks(picks, params, pixel_size_angstrom, shape_yx, source, coords_path,
                         coords_format)


def helical_picks(
    picks: pd.DataFrame, params: ExtractParams, pixel_size_angstrom: float,
    shape_yx: tuple[int, int], source: str, coords_path: str | None = None,
    coords_format: str = "auto",
) -> HelicalPicks:
    """Segments with RELION's helical columns from one micrograph's picks.

    ``coords_path``/``coords_format`` say where the picks were read (``box``: EMAN helix
    tubes, ends trimmed inward by half a box as RELION does). Segments RELION would
    drop for lying within half a box of the edge (on the unrounded position) get
    ``box leaves micrograph`` under ``--edge drop``; segments re-centred by their origins
    are dropped when their box leaves the micrograph, as particles.
    """
    helix = params.helix or HelixParams()
    fmt = coords_format
    if fmt == "auto":
        fmt = guess_format(coords_path) if coords_path is not None \
            else "box" if _looks_like_eman_tubes(picks) else "star"
    if helix.tubes:
        def to_micrograph(xy: np.ndarray) -> np.ndarray:
            return pick_coordinates(_xy_table(xy), params, pixel_size_angstrom, shape_yx)

        table = _tube_segments(picks, helix, pixel_size_angstrom, source, fmt, to_micrograph)
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
        reasons = np.full(len(table), "", dtype=object)
    else:
        xy = pick_coordinates(picks, params, pixel_size_angstrom, shape_yx)
        moved = params.picks.swap_xy or params.picks.flip_x or params.picks.flip_y
        if moved and PSI_PRIOR in picks.columns:  # given priors turn with the axes
            picks = picks.copy()
            picks[PSI_PRIOR] = transform_psi_prior(
                picks[PSI_PRIOR].to_numpy(np.float64), swap_xy=params.picks.swap_xy,
                flip_x=params.picks.flip_x, flip_y=params.picks.flip_y)
        table, reasons = _segment_priors(picks, xy, helix, pixel_size_angstrom, source)
        table["rlnCoordinateX"], table["rlnCoordinateY"] = xy[:, 0], xy[:, 1]
    if params.edge is EdgeMode.DROP and not wants_recentring(table, params):
        outside = ~inside_like_relion(xy, params.box_px, shape_yx) & np.isfinite(xy).all(axis=1)
        reasons = np.where((reasons == "") & outside, REASON_EDGE, reasons)
    return HelicalPicks(table.reset_index(drop=True), xy, reasons)


def helical_columns(
    picks: pd.DataFrame, helix: HelixParams, pixel_size_angstrom: float, source: str,
    fmt: str = "star",
) -> tuple[pd.DataFrame, list[str]]:
    """Picks with RELION's helical columns, coordinates as they are (``convert --helix``):
    tubes cut into segments, or segments given the priors and track lengths they lack
    (a filament of one segment is left out, with a warning)."""
    if helix.tubes:
        return _tube_segments(picks, helix, pixel_size_angstrom, source, fmt), []
    xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    table, reasons = _segment_priors(picks, xy, helix, pixel_size_angstrom, source)
    lone = int((reasons != "").sum())
    warnings = [f"{source}: {lone} segment(s) left out: {REASON_NO_DIRECTION}"] if lone else []
    return table[reasons == ""].reset_index(drop=True), warnings


def _tube_segments(
    picks: pd.DataFrame, helix: HelixParams, pixel_size: float, source: str, fmt: str,
    to_micrograph: Callable[[np.ndarray], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Start/end pairs (rows 1-2, 3-4, ...) cut into segments; ``to_micrograph`` maps the
    ends (``(m, 2)`` pick pixels) into the micrograph's pixels."""
    n = len(picks)
    if n % 2:
        raise InputError(f"row {n}: a tube start without an end (--helical-tubes reads "
                         f"start/end pairs; {n} rows)", source)
    starts = picks.iloc[0::2].reset_index(drop=True)
    ends = picks.iloc[1::2].reset_index(drop=True)
    start_xy = starts[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    end_xy = ends[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    if fmt == "box":
        start_xy, end_xy = _eman_tube_ends(picks, start_xy, end_xy, source)
    if to_micrograph is not None:
        start_xy, end_xy = to_micrograph(start_xy), to_micrograph(end_xy)
    bad = ~np.isfinite(start_xy).all(axis=1) | ~np.isfinite(end_xy).all(axis=1)
    same = (start_xy == end_xy).all(axis=1)
    for what, rows in (("coordinate not a finite number", bad), ("tube of zero length", same)):
        if rows.any():
            k = int(np.flatnonzero(rows)[0])
            raise InputError(f"rows {2 * k + 1}-{2 * k + 2}: {what}", source)
    try:
        segments = segment_tubes(start_xy, end_xy, helix.step_px(pixel_size))
    except ValueError as exc:  # a rise far below a pixel
        raise InputError(f"{exc} (--helical-rise-angstrom {helix.rise_angstrom:g} x "
                         f"--helical-nr-asu {helix.nr_asu} at {pixel_size:g} A/px)",
                         source) from exc
    ids = starts[TUBE_ID].to_numpy() if TUBE_ID in starts.columns \
        else np.arange(1, len(starts) + 1)
    table = pd.DataFrame({
        "rlnCoordinateX": segments.xy[:, 0], "rlnCoordinateY": segments.xy[:, 1],
        TUBE_ID: ids[segments.tube], TILT_PRIOR: TILT_PRIOR_DEG,
        PSI_PRIOR: segments.psi_prior_deg,
        TRACK_LENGTH: pixel_size * segments.track_length_px,
        FLIP_RATIO: 0.5 if helix.bimodal_psi else 0.0,
    })
    if PITCH in starts.columns:
        table[PITCH] = starts[PITCH].to_numpy()[segments.tube]
    return table


def _xy_table(xy: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]})


def _looks_like_eman_tubes(picks: pd.DataFrame) -> bool:
    """Picks read from a file we know nothing more of (``--coords``) that are EMAN helix
    tubes: one box size, column 5 alternating -1, -2."""
    tags = picks.get("rlnAutopickFigureOfMerit")
    return "box_px" in picks.attrs and tags is not None and len(picks) % 2 == 0 \
        and bool((tags.to_numpy() == np.tile([EMAN_START, EMAN_END], len(picks) // 2)).all())


def _eman_tube_ends(
    picks: pd.DataFrame, start_xy: np.ndarray, end_xy: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """EMAN helix ``.box``: tags ``-1`` (start) and ``-2`` (end) checked; both ends moved
    inward by half the box (RELION's ``convertEmanHelicalTubeCoordsToMetaDataTable``)."""
    tags = picks["rlnAutopickFigureOfMerit"].to_numpy() \
        if "rlnAutopickFigureOfMerit" in picks.columns else np.zeros(len(picks))
    expected = np.tile([EMAN_START, EMAN_END], len(picks) // 2)
    wrong = np.flatnonzero(tags != expected)
    if len(wrong):
        row = int(wrong[0]) + 1
        raise InputError(f"row {row}: EMAN helix tubes are start/end rows tagged -1/-2 in "
                         f"column 5, got {tags[wrong[0]]:g}", source, row)
    width = picks.attrs.get("box_px")
    if width is None:
        raise InputError("EMAN helix tubes need one square box size for every row", source)
    trim = np.full(len(start_xy), float(width) / 2)
    return trim_tube_ends(start_xy, end_xy, trim)


def _segment_priors(
    picks: pd.DataFrame, xy: np.ndarray, helix: HelixParams, pixel_size: float, source: str,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Pre-segmented picks: tube IDs kept (crYOLO's ``filamentid`` renumbered from 1),
    missing priors and track lengths computed from the segments."""
    table = picks.copy()
    reasons = np.full(len(table), "", dtype=object)
    if TUBE_ID not in table.columns:
        if CRYOLO_FILAMENT not in table.columns:
            raise InputError(
                f"no tube IDs ({TUBE_ID}, crYOLO filamentid or cryoSPARC "
                "filament/filament_uid): give --helical-tubes for start/end pairs", source)
        table[TUBE_ID] = first_seen_numbers(table.pop(CRYOLO_FILAMENT).to_numpy())
    tubes = table[TUBE_ID].to_numpy()
    missing = [c for c in (PSI_PRIOR, TRACK_LENGTH) if c not in table.columns]
    if missing:
        psi, track_px = priors_from_positions(xy, tubes)
        if PSI_PRIOR in missing:
            table[PSI_PRIOR] = psi
            reasons[np.isnan(psi)] = REASON_NO_DIRECTION
        if TRACK_LENGTH in missing:
            table[TRACK_LENGTH] = track_px * pixel_size
    if TILT_PRIOR not in table.columns:
        table[TILT_PRIOR] = TILT_PRIOR_DEG
    if helix.bimodal_psi or FLIP_RATIO not in table.columns:
        table[FLIP_RATIO] = 0.5 if helix.bimodal_psi else 0.0
    return table, reasons


def tube_psi(kept: pd.DataFrame, params: ExtractParams) -> np.ndarray | None:
    """``(n,)`` psi priors of the kept segments for tube normalisation, or ``None``."""
    if params.helix is None or params.helix.outer_diameter_angstrom is None:
        return None
    return kept[PSI_PRIOR].to_numpy(np.float64)


def tube_radius_px(params: ExtractParams, pixel_size_angstrom: float) -> float | None:
    """Half the outer diameter in micrograph pixels (``None``: circular background)."""
    if params.helix is None or params.helix.outer_diameter_angstrom is None:
        return None
    return params.helix.outer_diameter_angstrom / 2 / pixel_size_angstrom


def check_helix(mic_set: MicrographSet, params: ExtractParams) -> None:
    """The tube must leave background in every output box (RELION: ``2 * (r + 1) <= box``,
    ``r`` the tube radius in output pixels)."""
    if params.helix is None or params.helix.outer_diameter_angstrom is None:
        return
    for pixel_size in mic_set.optics["rlnMicrographPixelSize"].astype(float):
        for output in params.outputs:
            radius = tube_radius_px(params, pixel_size) * output.box_px / params.box_px
            if 2 * (radius + 1) > output.box_px:
                raise ParameterError(
                    f"--helical-outer-diameter {params.helix.outer_diameter_angstrom:g}"
                    f" is {2 * radius:.1f} px at {pixel_size:g} A/px: wider than the "
                    f"{output.box_px} px box less 2 px (no background left)")
