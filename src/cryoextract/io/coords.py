"""Particle picks of every supported picker: read one coordinate file into a picks table.

Formats (one record each in :mod:`cryoextract.io.pickformats.registry`): RELION STAR (any
version, Scipion and cryoSPARC exports), EMAN ``.box`` (crYOLO, Topaz), crYOLO ``.cbox``,
Topaz tables, Xmipp ``.pos``, plain text ``x y`` and cryoSPARC ``.cs``. Every reader returns a
table with ``rlnCoordinateX``/``rlnCoordinateY`` (0-based pixel coordinates of the
particle centre, docs/conventions.md) plus every other column of the input, under its
RELION name where there is one; the extraction carries them to its output. The format
comes from the extension and is checked against the content (docs/conventions.md,
"Pick and CTF formats").
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.pickformats.registry import (
    description,
    extension_list,
    format_for_extension,
    pick_format,
    readable,
    sniff_format,
)
from cryoextract.io.pickformats.star_picks import merge_optics, read_particles_star

__all__ = [
    "COORDINATE_COLUMNS", "FORMATS", "coordinate_file_candidates", "guess_format",
    "merge_optics", "read_particles_star", "read_picks", "split_by_micrograph",
]

_JOB_DIR = re.compile(r"job\d{3}")
COORDINATE_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY")
#: the formats read (io/pickformats/registry.py lists them)
FORMATS = readable()


def guess_format(path: str | os.PathLike[str]) -> str:
    """Coordinate format from the file extension, checked against the content where
    formats share an extension (a ``.txt`` whose header names ``x_coord`` is Topaz's,
    other ``.txt`` files are plain ``x y``); InputError if no format has the extension.
    """
    fmt = format_for_extension(Path(path), readable())
    if fmt is None:
        raise InputError(f"unknown coordinate format (expected {extension_list(readable())}; "
                         "or give --coords-format)", path)
    return fmt


def read_picks(path: str | os.PathLike[str], fmt: str = "auto") -> pd.DataFrame:
    """Read one coordinate file into a picks table (see module docstring).

    Parameters
    ----------
    path : path-like
        The coordinate file.
    fmt : str
        ``auto`` (from the extension, see :func:`guess_format`) or one of
        :data:`FORMATS`, which overrides the extension.

    Returns
    -------
    pandas.DataFrame
        ``rlnCoordinateX/Y`` as float64 (px, particle centres) and the other columns.
        Readers of formats with a box size put it in ``attrs["box_px"]``.

    Raises
    ------
    InputError
        Missing or unreadable file, unknown format, or content that is not ``fmt``
        (one line naming the file, and the line where it applies).
    """
    path = Path(path)
    if fmt != "auto" and fmt not in readable():
        raise InputError(f"unknown coordinate format {fmt!r} (one of {', '.join(readable())})",
                         path)
    if path.is_dir():
        raise InputError("a directory, not a coordinate file", path)
    if not path.is_file():
        raise InputError("coordinate file not found", path)
    fmt = guess_format(path) if fmt == "auto" else fmt
    if _is_blank(path):
        return pd.DataFrame({"rlnCoordinateX": [], "rlnCoordinateY": []}, dtype=np.float64)
    _check_content(path, fmt)
    picks = pick_format(fmt).read(path)
    twice = picks.columns[picks.columns.duplicated()]
    if len(twice):
        raise InputError(f"more than one column gives {twice[0]}", path)
    attrs = dict(picks.attrs)
    for column in COORDINATE_COLUMNS:
        picks[column] = pd.to_numeric(picks[column], errors="coerce").astype(np.float64)
    picks = picks.reset_index(drop=True)
    picks.attrs.update(attrs)
    return picks


def _check_content(path: Path, fmt: str) -> None:
    """InputError when the first bytes show another format than ``fmt``."""
    found = sniff_format(path)
    if found is None or found == fmt or (found == "binary" and pick_format(fmt).binary):
        return
    if found == "ctffind":
        raise InputError("CTFFIND results, not picks", path)
    if found == "binary":
        raise InputError(f"a binary file, not a {description(fmt)} coordinate file", path)
    raise InputError(
        f"content looks like {description(found)}, not {description(fmt)} "
        f"(give --coords-format {found})", path,
    )


def _is_blank(path: Path) -> bool:
    """An existing file with nothing but whitespace: zero picks, not an error."""
    try:
        return path.stat().st_size < 4096 and not path.read_bytes().strip()
    except OSError:
        return False


def coordinate_file_candidates(micrograph_name: str, coords_dir: Path, suffix: str) -> list[Path]:
    """Where RELION-style ``--coord_dir``/``--coord_suffix`` may put a micrograph's picks.

    In order: the micrograph path without its job prefix (everything up to a ``jobNNN``
    directory after the first component, as RELION's ``decomposePipelineFileName``), the full
    relative path, and the bare file name, each with the extension replaced by
    ``suffix`` under ``coords_dir``.
    """
    parts = PurePosixPath(micrograph_name.replace(os.sep, "/")).parts
    if parts and parts[0] == "/":
        parts = parts[1:]
    stem_parts = [*parts[:-1], PurePosixPath(parts[-1]).stem + suffix]
    options = []
    job = next((i for i, part in enumerate(stem_parts[1:-1], start=1)
                if _JOB_DIR.match(part)), None)
    if job is not None:
        options.append(stem_parts[job + 1 :])
    options += [stem_parts, stem_parts[-1:]]
    seen: list[Path] = []
    for option in options:
        candidate = coords_dir.joinpath(*option)
        if candidate not in seen:
            seen.append(candidate)
    return seen


def split_by_micrograph(
    picks: pd.DataFrame, path: str | os.PathLike[str], *, keep_name: bool = True
) -> dict[str, pd.DataFrame]:
    """Split a particles table on ``rlnMicrographName`` (dropped from the parts unless
    ``keep_name``)."""
    if "rlnMicrographName" not in picks.columns:
        raise InputError("picks for many micrographs need a rlnMicrographName column", path)
    names = picks["rlnMicrographName"].to_numpy()
    # dropping the column once, not per part, keeps millions of picks linear and fast
    rest = picks if keep_name else picks.drop(columns=["rlnMicrographName"])
    return {str(name): group.reset_index(drop=True)
            for name, group in rest.groupby(names, sort=False)}
