"""Xmipp ``.pos`` picks (Xmipp 3 / Scipion): a STAR-like metadata file.

::

    # XMIPP_STAR_1 *
    data_header
    loop_
     _pickingMicrographState
    Manual
    data_particles            (manual/supervised picks; data_particles_auto: automatic)
    loop_
     _itemId
     _enabled
     _xcoor
     _ycoor
     _cost
     _micrographId
     000001   1   1030  1438  1   000003

``_xcoor/_ycoor`` are particle centres in micrograph pixels: Scipion copies them to its
coordinates unchanged (``xmipp3/convert.py``, ``readPosCoordinates``) and from there to
``rlnCoordinateX/Y``. As Scipion, both particle blocks are read and disabled rows
(``_enabled <= 0``, Xmipp's ``removeDisabled``) are dropped. Xmipp 2 ``.pos`` files
(plain ``x y`` rows) are read as plain text centres.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.pickformats.common import SCORE, X, Y, read_text
from cryoextract.io.pickformats.text import read_text_picks
from cryoextract.io.star import read_star

_BLOCKS = ("particles", "particles_auto")
_RENAMED = {"xcoor": X, "ycoor": Y, "cost": SCORE}


def read_pos(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an Xmipp ``.pos`` file.

    Returns
    -------
    pandas.DataFrame
        ``rlnCoordinateX/Y`` (= ``_xcoor/_ycoor``, px, centres),
        ``rlnAutopickFigureOfMerit`` (= ``_cost``) and the other columns by name
        (``itemId``, ``enabled``, ``micrographId``...); enabled picks only.
    """
    path = Path(path)
    if "data_" not in read_text(path):
        return read_text_picks(path)
    tables = read_star(path)
    blocks = [tables[name] for name in _BLOCKS if name in tables]
    if not blocks:
        blocks = [t for t in tables.values() if {"xcoor", "ycoor"} <= set(t.columns)]
    if not blocks or not all({"xcoor", "ycoor"} <= set(b.columns) for b in blocks):
        raise InputError("no data_particles block with _xcoor and _ycoor", path)
    picks = pd.concat(blocks, ignore_index=True)
    for column, renamed in _RENAMED.items():
        if column in picks.columns and renamed in picks.columns:
            raise InputError(f"both _{column} and _{renamed} given: which one holds the "
                             "picks?", path)
    picks = picks.rename(columns=_RENAMED)
    if "enabled" in picks.columns:
        enabled = pd.to_numeric(picks["enabled"], errors="coerce").fillna(1) > 0
        picks = picks[enabled.to_numpy()]
    return picks.reset_index(drop=True)
