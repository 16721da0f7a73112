"""Particle picks: RELION coordinate/particles STAR, EMAN ``.box`` and plain text ``x y``.

Every reader returns a table with ``rlnCoordinateX``/``rlnCoordinateY`` (0-based pixel
coordinates of the particle centre, docs/conventions.md) plus every other column of the
input, which the extraction carries to its output.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.star import find_block, read_star

_JOB_DIR = re.compile(r"job\d{3}")
COORDINATE_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY")
FORMATS = ("star", "box", "txt")
_EXTENSIONS = {".star": "star", ".box": "box", ".txt": "txt", ".coord": "txt", ".csv": "txt",
               ".tsv": "txt", ".xy": "txt"}


def guess_format(path: str | os.PathLike[str]) -> str:
    """Coordinate format from the file extension; InputError if unknown."""
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(
            "unknown coordinate format (expected .star, .box, .txt/.coord/.csv; "
            "or give --coords-format)", path,
        )
    return fmt


def read_picks(path: str | os.PathLike[str], fmt: str = "auto") -> pd.DataFrame:
    """Read one coordinate file into a picks table (see module docstring)."""
    fmt = guess_format(path) if fmt == "auto" else fmt
    if _is_blank(Path(path)):
        return pd.DataFrame({"rlnCoordinateX": [], "rlnCoordinateY": []}, dtype=np.float64)
    if fmt == "star":
        picks = find_block(read_star(path), path, COORDINATE_COLUMNS, preferred=("particles",))
        picks = picks.copy()
    elif fmt == "box":
        picks = _read_box(Path(path))
    elif fmt == "txt":
        picks = _read_text(Path(path))
    else:
        raise InputError(f"unknown coordinate format {fmt!r} (one of {', '.join(FORMATS)})", path)
    for column in COORDINATE_COLUMNS:
        picks[column] = pd.to_numeric(picks[column], errors="coerce").astype(np.float64)
    return picks.reset_index(drop=True)


def _is_blank(path: Path) -> bool:
    """An existing file with nothing but whitespace: zero picks, not an error."""
    try:
        return path.stat().st_size < 4096 and not path.read_bytes().strip()
    except OSError:
        return False


def _numeric_rows(path: Path, min_columns: int) -> Iterable[tuple[int, list[float]]]:
    """Yield ``(line_number, values)`` of a whitespace/comma separated numeric file."""
    if not path.is_file():
        raise InputError("coordinate file not found", path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read coordinate file ({exc})", path) from exc
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].replace(",", " ").strip()
        if not stripped:
            continue
        fields = stripped.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            if number == 1 and not any(_is_number(v) for v in fields):
                continue  # a header line
            raise InputError(f"not a number in {line.strip()!r}", path, number) from None
        if len(values) < min_columns:
            raise InputError(
                f"expected at least {min_columns} columns, got {len(values)}", path, number
            )
        yield number, values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_box(path: Path) -> pd.DataFrame:
    """EMAN ``.box``: ``x y w h`` of the lower-left corner; the centre is ``x + w/2``."""
    rows = [values[:4] for _, values in _numeric_rows(path, 4)]
    table = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return pd.DataFrame({
        "rlnCoordinateX": table[:, 0] + table[:, 2] / 2,
        "rlnCoordinateY": table[:, 1] + table[:, 3] / 2,
    })


def _read_text(path: Path) -> pd.DataFrame:
    """Plain text ``x y`` per line (extra columns ignored)."""
    rows = [values[:2] for _, values in _numeric_rows(path, 2)]
    table = np.array(rows, dtype=np.float64).reshape(-1, 2)
    return pd.DataFrame({"rlnCoordinateX": table[:, 0], "rlnCoordinateY": table[:, 1]})


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
    picks: pd.DataFrame, path: str | os.PathLike[str]
) -> dict[str, pd.DataFrame]:
    """Split a particles table on ``rlnMicrographName``."""
    if "rlnMicrographName" not in picks.columns:
        raise InputError("picks for many micrographs need a rlnMicrographName column", path)
    return {str(name): group.reset_index(drop=True)
            for name, group in picks.groupby("rlnMicrographName", sort=False)}
