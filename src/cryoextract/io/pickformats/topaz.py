"""Topaz picks table: one tab-separated file for many micrographs.

Header ``image_name  x_coord  y_coord  [score]``; ``x_coord, y_coord`` are particle
centres in pixels of the micrograph Topaz was given (of the *downsampled* micrograph
unless ``topaz extract`` was run with ``--up-scale``), in RELION's frame: Topaz's own
STAR conversion copies them unchanged to ``rlnCoordinateX/Y`` and ``score`` to
``rlnAutopickFigureOfMerit`` (``topaz/utils/conversions.py``, ``coordinates_to_star``).
``image_name`` is the micrograph file name without directory and extension.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.atomic import write_text_atomic
from cryoextract.io.pickformats.common import (
    MICROGRAPH,
    SCORE,
    X,
    Y,
    centres,
    format_number,
    numeric_or_text,
    read_text,
    scores,
)

_RENAMED = {"image_name": MICROGRAPH, "x_coord": X, "y_coord": Y, "score": SCORE}


def read_topaz(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a Topaz picks table (``.txt``/``.tsv``).

    Returns
    -------
    pandas.DataFrame
        ``rlnMicrographName`` (= ``image_name``, text), ``rlnCoordinateX/Y`` (px,
        centres), ``rlnAutopickFigureOfMerit`` (= ``score``) and any other column.
    """
    path = Path(path)
    lines = [(n, ln) for n, ln in enumerate(read_text(path).splitlines(), start=1)
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return pd.DataFrame({X: [], Y: []}, dtype=np.float64)
    header_line, header_text = lines[0]
    separator = "\t" if "\t" in header_text else None
    header = [h.strip() for h in header_text.split(separator)]
    if "x_coord" not in header or "y_coord" not in header:
        raise InputError(
            f"a Topaz table needs a header with x_coord and y_coord, got {header_text.strip()!r}",
            path, header_line,
        )
    columns: list[list[str]] = [[] for _ in header]
    for number, line in lines[1:]:
        fields = [f.strip() for f in line.split(separator)]
        if len(fields) != len(header):
            raise InputError(f"expected {len(header)} columns, got {len(fields)}", path, number)
        for i, field in enumerate(fields):
            columns[i].append(field)
        for name in ("x_coord", "y_coord"):
            value = fields[header.index(name)]
            try:
                float(value)
            except ValueError:
                raise InputError(f"{name} is not a number: {value!r}", path, number) from None
    picks = pd.DataFrame({_RENAMED.get(name, name): _column(name, values)
                          for name, values in zip(header, columns, strict=True)})
    return picks


def _column(name: str, values: list[str]) -> pd.Series:
    if name == "image_name":
        return pd.Series(values, dtype=object)
    return numeric_or_text(values)


def topaz_image_name(micrograph_name: str) -> str:
    """Topaz's ``image_name`` of a micrograph: the file name without directory/extension."""
    return PurePosixPath(str(micrograph_name).replace("\\", "/")).stem


def write_topaz(
    path: str | os.PathLike[str], picks: pd.DataFrame, micrograph_name: str | None = None
) -> None:
    """Write picks (of one or many micrographs) as a Topaz table.

    Parameters
    ----------
    path : path-like
        Output file (written atomically).
    picks : pandas.DataFrame
        Picks table with ``rlnMicrographName`` (or give ``micrograph_name``);
        ``rlnAutopickFigureOfMerit`` becomes ``score``.
    micrograph_name : str, optional
        Name for picks without ``rlnMicrographName``.
    """
    if MICROGRAPH in picks.columns:
        names = [topaz_image_name(n) for n in picks[MICROGRAPH]]
    elif micrograph_name is not None:
        names = [topaz_image_name(micrograph_name)] * len(picks)
    else:
        raise ParameterError("Topaz output needs micrograph names (rlnMicrographName)")
    xy = centres(picks)
    score = scores(picks)
    header = ["image_name", "x_coord", "y_coord"] + (["score"] if score is not None else [])
    lines = ["\t".join(header)]
    for i, name in enumerate(names):
        fields = [name, format_number(xy[i, 0]), format_number(xy[i, 1])]
        if score is not None:
            fields.append(format_number(score[i], 6))
        lines.append("\t".join(fields))
    write_text_atomic(path, "\n".join(lines) + "\n")
