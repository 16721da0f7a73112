"""Write a picks table in any supported output format."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cryoextract.errors import ParameterError
from cryoextract.io.pickformats.registry import pick_format, writable

OUTPUT_FORMATS = writable()
"""Formats :func:`write_picks` writes (io/pickformats/registry.py lists them)."""


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
        Picks table (``rlnCoordinateX/Y`` centres in px). Formats of one micrograph a
        file (``box``, ``cbox``) take the picks of one micrograph.
    fmt : str
        A format written (:func:`cryoextract.io.pickformats.registry.writable`).
    box_px : float, optional
        Box side in micrograph pixels; required by formats that record it (``box``,
        ``cbox``).
    micrograph_name : str, optional
        The micrograph's name for picks without ``rlnMicrographName`` (Topaz's
        ``image_name``).
    """
    if fmt not in writable():
        raise ParameterError(f"unknown output format {fmt!r} (one of {', '.join(writable())})")
    record = pick_format(fmt)
    if record.needs_box and (box_px is None or not box_px > 0):
        raise ParameterError(f"{record.description} output needs a box size (--box PX)")
    record.write(Path(path), picks, box_px=None if box_px is None else float(box_px),
                 micrograph_name=micrograph_name)
