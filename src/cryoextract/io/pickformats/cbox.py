"""crYOLO ``.cbox``: a STAR file with a ``data_cryolo`` loop (crYOLO >= 1.8).

Columns ``CoordinateX CoordinateY CoordinateZ Width Height Depth EstWidth EstHeight
Confidence NumBoxes Angle`` (and ``filamentid`` in filament mode); unused fields are
``<NA>``. ``CoordinateX/Y`` is the box corner with the smallest coordinates, so the
centre is ``CoordinateX + Width/2`` (crYOLO ``CoordsIO.write_cbox_file`` stores
``box.x``, the "lower left corner"; napari-boxmanager ``io/cbox.py`` reads
``_CoordinateX + _Width/2`` and writes ``x - boxsize/2``). ``CoordinateZ`` (tomograms)
is the centre slice. Older crYOLO wrote plain rows ``x y w h confidence [estw esth]``,
read here too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.atomic import write_text_atomic
from cryoextract.io.pickformats.common import (
    BOX_ATTR,
    SCORE,
    X,
    Y,
    Z,
    centres,
    drop_empty_columns,
    format_number,
    numeric_rows,
    ragged_table,
    read_text,
    uniform_box,
)
from cryoextract.io.star import read_star

CBOX_COLUMNS = (
    "CoordinateX", "CoordinateY", "CoordinateZ", "Width", "Height", "Depth", "EstWidth",
    "EstHeight", "Confidence", "NumBoxes", "Angle",
)
_RENAMED = {"CoordinateZ": Z, "Confidence": SCORE}
_CONSUMED = ("CoordinateX", "CoordinateY", "Width", "Height", "Depth")
_OLD_COLUMNS = ("x", "y", "w", "h", "Confidence", "EstWidth", "EstHeight")


def read_cbox(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a crYOLO ``.cbox`` file.

    Returns
    -------
    pandas.DataFrame
        ``rlnCoordinateX/Y`` = ``CoordinateX/Y + Width/Height / 2`` (px),
        ``rlnCoordinateZ`` = ``CoordinateZ``, ``rlnAutopickFigureOfMerit`` =
        ``Confidence``; ``EstWidth``, ``EstHeight``, ``NumBoxes``, ``Angle``,
        ``filamentid`` and any other column carried by name; columns that are ``<NA>``
        on every row are dropped. The box side is in ``attrs["box_px"]`` when every box
        is the same square.
    """
    path = Path(path)
    if "data_" not in read_text(path):
        return _read_old_cbox(path)
    tables = read_star(path)
    block = tables.get("cryolo")
    needed = ("CoordinateX", "CoordinateY", "Width", "Height")
    if block is None or not all(c in block.columns for c in needed):
        raise InputError(f"no data_cryolo block with {', '.join(needed)}", path)
    block = block.reset_index(drop=True)
    numeric = {c: pd.to_numeric(block[c], errors="coerce").to_numpy(np.float64)
               for c in CBOX_COLUMNS if c in block.columns}
    width, height = numeric["Width"], numeric["Height"]
    missing = np.flatnonzero(~np.isfinite(width) | ~np.isfinite(height))
    if len(missing):
        raise InputError(f"row {missing[0] + 1} of data_cryolo has no Width/Height", path)
    picks = pd.DataFrame({X: numeric["CoordinateX"] + width / 2,
                          Y: numeric["CoordinateY"] + height / 2})
    for column in block.columns:
        if column in _CONSUMED:
            continue
        values = numeric.get(column, block[column].to_numpy())
        picks[_RENAMED.get(column, column)] = values
    picks = drop_empty_columns(picks)
    box = uniform_box(width, height)
    if box is not None:
        picks.attrs[BOX_ATTR] = box
    return picks


def _read_old_cbox(path: Path) -> pd.DataFrame:
    """crYOLO < 1.8 ``.cbox``: rows ``x y w h confidence [est_w est_h]`` (corner)."""
    table = ragged_table((values for _, values in numeric_rows(path, 5)), 5)
    picks = pd.DataFrame({X: table[:, 0] + table[:, 2] / 2, Y: table[:, 1] + table[:, 3] / 2,
                          SCORE: table[:, 4]})
    for column in range(5, min(table.shape[1], len(_OLD_COLUMNS))):
        picks[_OLD_COLUMNS[column]] = table[:, column]
    picks = drop_empty_columns(picks)
    box = uniform_box(table[:, 2], table[:, 3])
    if box is not None:
        picks.attrs[BOX_ATTR] = box
    return picks


def write_cbox(path: str | os.PathLike[str], picks: pd.DataFrame, box_px: float) -> None:
    """Write picks of one micrograph as a crYOLO ``.cbox`` (format version 1.0).

    Parameters
    ----------
    path : path-like
        Output file (written atomically).
    picks : pandas.DataFrame
        Picks table. ``rlnAutopickFigureOfMerit`` -> ``Confidence``, ``rlnCoordinateZ``
        -> ``CoordinateZ``; ``EstWidth``, ``EstHeight``, ``NumBoxes``, ``Angle`` and
        ``filamentid`` are written when present, else ``<NA>`` (``filamentid`` also as
        ``rlnHelicalTubeID - 1``).
    box_px : float
        Box side (``Width = Height``) in micrograph pixels (> 0).
    """
    if not box_px or box_px <= 0:
        raise ParameterError(".cbox output needs a box size > 0 (--box)")
    columns = _cbox_columns(picks, float(box_px))
    body = ["", "data_global", "", "_cbox_format_version 1.0", "", "data_cryolo", "", "loop_"]
    body += [f"_{name} #{i}" for i, name in enumerate(columns, start=1)]
    table = np.column_stack(list(columns.values())) if len(picks) else np.empty((0, 1))
    body += [" ".join(_cbox_value(v) for v in row) for row in table]
    slices = columns["CoordinateZ"]
    body += ["", "data_cryolo_include", "", "loop_", "_slice_index #1"]
    body += [_cbox_value(v) for v in np.unique(slices[np.isfinite(slices)])]
    write_text_atomic(path, "\n".join(body) + "\n")


def _cbox_columns(picks: pd.DataFrame, box_px: float) -> dict[str, np.ndarray]:
    n = len(picks)
    xy = centres(picks)

    def column(name: str) -> np.ndarray:
        if name not in picks.columns:
            return np.full(n, np.nan)
        return pd.to_numeric(picks[name], errors="coerce").to_numpy(np.float64)

    z = column(Z)
    columns = {
        "CoordinateX": xy[:, 0] - box_px / 2, "CoordinateY": xy[:, 1] - box_px / 2,
        "CoordinateZ": z, "Width": np.full(n, box_px), "Height": np.full(n, box_px),
        "Depth": np.where(np.isfinite(z), box_px, np.nan), "EstWidth": column("EstWidth"),
        "EstHeight": column("EstHeight"), "Confidence": column(SCORE),
        "NumBoxes": column("NumBoxes"), "Angle": column("Angle"),
    }
    if "filamentid" in picks.columns:
        columns["filamentid"] = column("filamentid")
    elif "rlnHelicalTubeID" in picks.columns:  # crYOLO counts filaments from 0
        columns["filamentid"] = column("rlnHelicalTubeID") - 1
    return columns


def _cbox_value(value: float) -> str:
    return "<NA>" if np.isnan(value) else format_number(value, 6)
