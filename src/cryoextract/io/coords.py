"""Particle picks of every supported picker: read one coordinate file into a picks table.

Formats: RELION STAR (any version, Scipion and cryoSPARC exports), EMAN ``.box``
(crYOLO, Topaz), crYOLO ``.cbox``, Topaz tables, Xmipp ``.pos``, plain text ``x y`` and,
when ``cryoextract.io.cryosparc`` provides it, cryoSPARC ``.cs``. Every reader returns a
table with ``rlnCoordinateX``/``rlnCoordinateY`` (0-based pixel coordinates of the
particle centre, docs/conventions.md) plus every other column of the input, under its
RELION name where there is one; the extraction carries them to its output. The format
comes from the extension and is checked against the content (docs/conventions.md,
"Pick and CTF formats").
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.pickformats.box import read_box
from cryoextract.io.pickformats.cbox import read_cbox
from cryoextract.io.pickformats.common import DESCRIPTIONS, sniff_format
from cryoextract.io.pickformats.star_picks import (
    merge_optics,
    read_particles_star,
    read_star_picks,
)
from cryoextract.io.pickformats.text import read_text_picks
from cryoextract.io.pickformats.topaz import read_topaz
from cryoextract.io.pickformats.xmipp_pos import read_pos

__all__ = [
    "COORDINATE_COLUMNS", "FORMATS", "coordinate_file_candidates", "guess_format",
    "merge_optics", "read_particles_star", "read_picks", "split_by_micrograph",
]

_JOB_DIR = re.compile(r"job\d{3}")
COORDINATE_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY")
FORMATS = ("star", "box", "txt", "cbox", "topaz", "pos", "cs")
_EXTENSIONS = {".star": "star", ".box": "box", ".cbox": "cbox", ".pos": "pos", ".cs": "cs",
               ".txt": "txt", ".tsv": "txt", ".coord": "txt", ".csv": "txt", ".xy": "txt"}
_TOPAZ_EXTENSIONS = (".txt", ".tsv")


def guess_format(path: str | os.PathLike[str]) -> str:
    """Coordinate format from the file extension; InputError if unknown.

    ``.txt``/``.tsv`` files whose header names ``x_coord`` (Topaz writes ``image_name
    x_coord y_coord [score]``) are ``topaz``; other ``.txt`` files are plain ``x y``.
    """
    suffix = Path(path).suffix.lower()
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        raise InputError(
            "unknown coordinate format (expected .star, .box, .cbox, .pos, .cs, "
            ".txt/.tsv/.coord/.csv; or give --coords-format)", path,
        )
    if suffix in _TOPAZ_EXTENSIONS and sniff_format(Path(path)) == "topaz":
        return "topaz"
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
    fmt = guess_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise InputError(f"unknown coordinate format {fmt!r} (one of {', '.join(FORMATS)})", path)
    if not path.is_file():
        raise InputError("coordinate file not found", path)
    if _is_blank(path):
        return pd.DataFrame({"rlnCoordinateX": [], "rlnCoordinateY": []}, dtype=np.float64)
    _check_content(path, fmt)
    picks = _READERS[fmt](path)
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
    if found is None or found == fmt or (fmt == "cs" and found == "binary"):
        return
    if found == "ctffind":
        raise InputError("CTFFIND results, not picks", path)
    if found == "binary":
        raise InputError(f"a binary file, not a {DESCRIPTIONS[fmt]} coordinate file", path)
    raise InputError(
        f"content looks like {DESCRIPTIONS[found]}, not {DESCRIPTIONS[fmt]} "
        f"(give --coords-format {found})", path,
    )


def _is_blank(path: Path) -> bool:
    """An existing file with nothing but whitespace: zero picks, not an error."""
    try:
        return path.stat().st_size < 4096 and not path.read_bytes().strip()
    except OSError:
        return False


def _read_cs(path: Path) -> pd.DataFrame:
    """cryoSPARC ``.cs`` picks through ``cryoextract.io.cryosparc.read_cs_picks``."""
    reader = None
    if importlib.util.find_spec("cryoextract.io.cryosparc") is not None:
        module = importlib.import_module("cryoextract.io.cryosparc")
        reader = getattr(module, "read_cs_picks", None)
    if reader is None:
        raise InputError("cryoSPARC .cs not supported yet", path)
    return reader(path)


_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "star": read_star_picks, "box": read_box, "txt": read_text_picks, "cbox": read_cbox,
    "topaz": read_topaz, "pos": read_pos, "cs": _read_cs,
}


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
