"""Filament (helical segment) fields of pick formats, as RELION's helical columns.

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

import numpy as np
import pandas as pd

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
