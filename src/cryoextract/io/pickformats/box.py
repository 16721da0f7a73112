"""EMAN ``.box`` (also written by crYOLO and Topaz): ``x y w h [score]`` per particle.

``x, y`` is the box corner with the smallest coordinates ("lower left" in EMAN's
words), in the same pixel frame as RELION (no flip), so the centre is ``x + w/2``,
``y + h/2``. crYOLO writes ``x = centre - w/2`` (``cryolo/CoordsIO.py``,
``write_eman1_boxfile``: "box.x / box.y = Lower left corner"); Topaz writes
``x = centre - w//2`` (``topaz/utils/conversions.py``, ``coordinates_to_boxes``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cryoextract.errors import ParameterError
from cryoextract.io.atomic import write_text_atomic
from cryoextract.io.pickformats.common import (
    BOX_ATTR,
    SCORE,
    X,
    Y,
    centres,
    format_number,
    numeric_rows,
    ragged_table,
    scores,
    uniform_box,
)


def read_box(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an EMAN ``.box`` file.

    Returns
    -------
    pandas.DataFrame
        ``rlnCoordinateX/Y`` = corner + size/2 (px); column 5, when present, as
        ``rlnAutopickFigureOfMerit``; further columns as ``boxColumn6``, ... The box side
        is in ``attrs["box_px"]`` when every box is the same square.
    """
    path = Path(path)
    table = ragged_table((values for _, values in numeric_rows(path, 4)), 4)
    picks = pd.DataFrame({X: table[:, 0] + table[:, 2] / 2, Y: table[:, 1] + table[:, 3] / 2})
    if table.shape[1] > 4:
        picks[SCORE] = table[:, 4]
    for column in range(5, table.shape[1]):
        picks[f"boxColumn{column + 1}"] = table[:, column]
    box = uniform_box(table[:, 2], table[:, 3])
    if box is not None:
        picks.attrs[BOX_ATTR] = box
    return picks


def write_box(path: str | os.PathLike[str], picks: pd.DataFrame, box_px: float) -> None:
    """Write picks of one micrograph as EMAN ``.box`` (``x - box/2  y - box/2  box  box``).

    Parameters
    ----------
    path : path-like
        Output file (written atomically).
    picks : pandas.DataFrame
        Picks table; ``rlnAutopickFigureOfMerit``, when present, becomes column 5.
    box_px : float
        Box side in micrograph pixels (> 0).
    """
    if not box_px or box_px <= 0:
        raise ParameterError(".box output needs a box size > 0 (--box)")
    xy = centres(picks)
    corner = xy - box_px / 2
    score = scores(picks)
    size = format_number(box_px)
    lines = []
    for i, (x, y) in enumerate(corner):
        fields = [format_number(x), format_number(y), size, size]
        if score is not None:
            fields.append(format_number(score[i], 6))
        lines.append("\t".join(fields))
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def box_size_of(picks: pd.DataFrame) -> float | None:
    """The box side a ``.box``/``.cbox`` reader recorded, if any."""
    value = picks.attrs.get(BOX_ATTR)
    return None if value is None else float(value)

