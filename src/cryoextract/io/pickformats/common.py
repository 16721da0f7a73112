"""Helpers shared by the pick-format readers and writers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, first_line

X, Y, Z = "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"
SCORE = "rlnAutopickFigureOfMerit"
MICROGRAPH = "rlnMicrographName"
BOX_ATTR = "box_px"
"""``picks.attrs[BOX_ATTR]``: the square box side (px) a ``.box``/``.cbox`` file gave."""


def read_text(path: Path, what: str = "coordinate file") -> str:
    """The whole text of ``path``; InputError (naming the file) if absent or unreadable."""
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} ({first_line(exc)})", path) from exc


def is_number(text: str) -> bool:
    """Whether ``float(text)`` succeeds."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def numeric_rows(path: Path, min_columns: int) -> Iterator[tuple[int, list[float]]]:
    """Yield ``(line_number, values)`` of a whitespace/comma separated numeric file.

    ``#`` starts a comment; a first line without any number is a header and skipped.
    A non-number or a row with fewer than ``min_columns`` values is an InputError
    naming the file and the 1-based line.
    """
    text = read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].replace(",", " ").strip()
        if not stripped:
            continue
        fields = stripped.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            if number == 1 and not any(is_number(v) for v in fields):
                continue  # a header line
            raise InputError(f"not a number in {line.strip()!r}", path, number) from None
        if len(values) < min_columns:
            raise InputError(
                f"expected at least {min_columns} columns, got {len(values)}", path, number
            )
        yield number, values


def ragged_table(rows: Iterable[list[float]], min_columns: int) -> np.ndarray:
    """``(n, m)`` float64 array of rows of unequal length, NaN-padded to the longest."""
    rows = list(rows)
    width = max([min_columns, *(len(r) for r in rows)])
    table = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table


def uniform_box(widths: np.ndarray, heights: np.ndarray) -> float | None:
    """The common square box side if every ``(w, h)`` is the same square, else None."""
    sizes = np.concatenate([np.asarray(widths, float), np.asarray(heights, float)])
    if len(sizes) == 0 or not np.all(np.isfinite(sizes)) or np.ptp(sizes) != 0:
        return None
    return float(sizes[0])


def drop_empty_columns(table: pd.DataFrame, keep: Iterable[str] = (X, Y)) -> pd.DataFrame:
    """Drop columns that hold no value at all (crYOLO writes ``<NA>`` in unused fields)."""
    keep = set(keep)
    empty = [c for c in table.columns if c not in keep and table[c].isna().all()]
    return table.drop(columns=empty)


def numeric_or_text(values: list[str]) -> pd.Series:
    """A column of strings as float64 when every value is a number, else as text."""
    try:
        return pd.Series([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return pd.Series(values, dtype=object)


def format_number(value: float, decimals: int = 4) -> str:
    """``123`` for integral values, else up to ``decimals`` decimals; ``nan`` for NaN."""
    value = float(value)
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if abs(value - round(value)) < 1e-9:
        return str(round(value))
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def centres(picks: pd.DataFrame) -> np.ndarray:
    """``(n, 2)`` float64 ``(x, y)`` pick centres of a picks table."""
    return picks[[X, Y]].to_numpy(dtype=np.float64).reshape(-1, 2)


def scores(picks: pd.DataFrame) -> np.ndarray | None:
    """The figure-of-merit column as float64, or None when absent or all NaN."""
    if SCORE not in picks.columns:
        return None
    values = pd.to_numeric(picks[SCORE], errors="coerce").to_numpy(dtype=np.float64)
    return None if np.all(np.isnan(values)) else values
