"""Write a picks table in any supported output format."""

from __future__ import annotations

import os

import pandas as pd

from cryoextract.errors import ParameterError
from cryoextract.io.pickformats.box import write_box
from cryoextract.io.pickformats.cbox import write_cbox
from cryoextract.io.pickformats.star_picks import write_star_picks
from cryoextract.io.pickformats.topaz import write_topaz

OUTPUT_FORMATS = ("star", "box", "cbox", "topaz")
"""Formats :func:`write_picks` writes."""
MULTI_MICROGRAPH_FORMATS = ("star", "topaz")
"""Formats whose one file may hold the picks of many micrographs."""
EXTENSIONS = {"star": ".star", "box": ".box", "cbox": ".cbox", "topaz": ".txt"}


def write_picks(
    path: str | os.PathLike[str],
    picks: pd.DataFrame,
    fmt: str,
    *,
    box_px: float | None = None,
    micrograph_name: str | None = None,
) -> None:
    """Write ``picks`` to ``path`` as ``fmt`` (one of :data:`OUTPUT_FORMATS`).

    Parameters
    ----------
    path : path-like
        Output file, written atomically.
    picks : pandas.DataFrame
        Picks table (``rlnCoordinateX/Y`` centres in px). ``box``/``cbox`` take the
        picks of one micrograph.
    fmt : str
        ``star``, ``box``, ``cbox`` or ``topaz``.
    box_px : float, optional
        Box side in micrograph pixels; required for ``box`` and ``cbox``.
    micrograph_name : str, optional
        Topaz ``image_name`` for picks without ``rlnMicrographName``.
    """
    if fmt == "star":
        write_star_picks(path, picks)
    elif fmt == "box":
        write_box(path, picks, _box(box_px, fmt))
    elif fmt == "cbox":
        write_cbox(path, picks, _box(box_px, fmt))
    elif fmt == "topaz":
        write_topaz(path, picks, micrograph_name)
    else:
        raise ParameterError(f"unknown output format {fmt!r} (one of {', '.join(OUTPUT_FORMATS)})")


def _box(box_px: float | None, fmt: str) -> float:
    if box_px is None or box_px <= 0:
        raise ParameterError(f".{fmt} output needs a box size (--box PX)")
    return float(box_px)
