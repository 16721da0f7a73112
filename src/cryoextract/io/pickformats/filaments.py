"""Filament (helical segment) fields of pick formats, as RELION's helical columns.

- EMAN2 helix ``.box`` (e2helixboxer, crYOLO's ``EMAN_HELICON``): per filament a line
  ``#helix: (x1, y1),(x2, y2),width`` then its segments' centres ``x y``, one a line;
  :func:`read_helicon` gives ``rlnHelicalTubeID`` (1, 2, ...) and ``rlnAnglePsiPrior``
  from the filament's ends, as RELION's ``convertEmanHelicalSegmentCoordsToMetaDataTable``
  (track lengths, RELION's summed distances between consecutive segments, need the
  pixel size: the helical stage adds them).

- crYOLO filament ``.cbox``: ``filamentid`` (0-based, one per filament) is carried by
  :func:`cryoextract.io.pickformats.cbox.read_cbox`; the helical stage renumbers it
  into ``rlnHelicalTubeID`` (1, 2, ... in order of appearance).
- cryoSPARC ``.cs`` (Filament Tracer and everything downstream):
  ``filament/filament_uid`` -> ``rlnHelicalTubeID`` (1, 2, ... in order of appearance),
  ``filament/filament_pose`` (radians) -> ``rlnAnglePsiPrior = -degrees(pose)``,
  ``filament/arc_length_A`` (or ``filament/position_A``) less its smallest value in the
  filament -> ``rlnHelicalTrackLengthAngst``; written back the other way. The psi sign
  is that of pyem and helicon (cryoSPARC documents none): ``filament_pose`` is then the
  filament's direction ``atan2(dy, dx)`` in the micrograph's pixel frame
  (docs/conventions.md, "Helical segments"); with ``flip_y`` its sign turns.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.pickformats.common import BOX_ATTR, X, Y, is_number, read_text

TUBE_ID = "rlnHelicalTubeID"
PSI_PRIOR = "rlnAnglePsiPrior"
TILT_PRIOR = "rlnAngleTiltPrior"
TRACK_LENGTH = "rlnHelicalTrackLengthAngst"
CS_UID = "filament/filament_uid"
CS_POSE = "filament/filament_pose"
CS_POSITIONS = ("filament/arc_length_A", "filament/position_A")


def first_seen_numbers(labels: np.ndarray) -> np.ndarray:
    """``(n,)`` int: 1 for the first distinct label met, 2 for the next, ..."""
    if not len(labels):
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    return rank[inverse.ravel()]


def cs_filament_columns(data: np.ndarray, *, flip_y: bool = False) -> dict[str, np.ndarray]:
    """RELION helical columns from a ``.cs`` structured array's ``filament/*`` fields
    (empty when it has none)."""
    names = data.dtype.names or ()
    if CS_UID not in names:
        return {}
    uid = np.asarray(data[CS_UID])
    columns = {TUBE_ID: first_seen_numbers(uid)}
    if CS_POSE in names:
        sign = 1.0 if flip_y else -1.0
        columns[PSI_PRIOR] = sign * np.degrees(np.asarray(data[CS_POSE], dtype=np.float64))
        columns[TILT_PRIOR] = np.full(len(data), 90.0)
    position = next((f for f in CS_POSITIONS if f in names), None)
    if position is not None:
        values = pd.Series(np.asarray(data[position], dtype=np.float64))
        start = values.groupby(uid).transform("min")
        columns[TRACK_LENGTH] = (values - start).to_numpy()
    return columns


def cs_filament_fields(table: pd.DataFrame, *, flip_y: bool = False
                       ) -> list[tuple[str, np.ndarray]]:
    """``filament/*`` fields for a particles table with ``rlnHelicalTubeID`` (none
    without): a uid per (micrograph, tube), the pose from ``rlnAnglePsiPrior``, the
    track length as ``arc_length_A`` and ``position_A``."""
    if TUBE_ID not in table.columns:
        return []
    n = len(table)
    micrograph = table["rlnMicrographName"].astype(str) if "rlnMicrographName" in table.columns \
        else pd.Series([""] * n)
    keys = (micrograph + "\0" + table[TUBE_ID].astype(str)).to_numpy()
    fields = [(CS_UID, first_seen_numbers(keys).astype(np.uint64))]
    if PSI_PRIOR in table.columns:
        sign = 1.0 if flip_y else -1.0
        pose = sign * np.radians(table[PSI_PRIOR].to_numpy(np.float64))
        fields.append((CS_POSE, pose.astype(np.float32)))
    if TRACK_LENGTH in table.columns:
        track = table[TRACK_LENGTH].to_numpy(np.float32)
        fields += [(name, track) for name in CS_POSITIONS]
    return fields


_HELIX = re.compile(r"#helix:\s*\(([^,]+),([^)]+)\)\s*,\s*\(([^,]+),([^)]+)\)\s*,\s*(\S+)")


def read_helicon(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an EMAN2 helix ``.box`` (segments per ``#helix:`` line, module docstring).

    Returns
    -------
    pandas.DataFrame
        ``rlnCoordinateX/Y`` (segment centres, px), ``rlnHelicalTubeID``,
        ``rlnAnglePsiPrior`` (``-degrees(atan2(y2 - y1, x2 - x1))``), ``rlnAngleTiltPrior``
        (90); the box side (the width) in ``attrs["box_px"]`` when every filament has the
        same. A segment before any ``#helix:`` line, a malformed one, or a row that is
        not two numbers is an InputError naming the line.
    """
    path = Path(path)
    rows: list[tuple[float, float, int, float]] = []
    widths: set[float] = set()
    tube, psi = 0, math.nan
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        text = line.strip()
        if text.startswith("#helix"):
            match = _HELIX.match(text)
            ends = [v.strip() for v in match.groups()] if match else []
            if not ends or not all(is_number(v) for v in ends):
                raise InputError(f"expected '#helix: (x1, y1),(x2, y2),width', got {text!r}",
                                 path, number)
            x1, y1, x2, y2, width = (float(v) for v in ends)
            tube, psi = tube + 1, -math.degrees(math.atan2(y2 - y1, x2 - x1))
            widths.add(width)
            continue
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) != 2 or not all(is_number(v) for v in fields):
            raise InputError(f"expected a segment 'x y', got {text!r}", path, number)
        if tube == 0:
            raise InputError("a segment before any '#helix:' line", path, number)
        rows.append((float(fields[0]), float(fields[1]), tube, psi))
    table = np.array(rows, dtype=np.float64).reshape(-1, 4)
    picks = pd.DataFrame({X: table[:, 0], Y: table[:, 1], TUBE_ID: table[:, 2].astype(np.int64),
                          TILT_PRIOR: 90.0, PSI_PRIOR: table[:, 3]})
    if len(widths) == 1:
        picks.attrs[BOX_ATTR] = widths.pop()
    return picks
