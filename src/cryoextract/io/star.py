"""STAR files (via starfile): read into named tables, write atomically."""

from __future__ import annotations

import csv
import os
import shlex
import warnings
from pathlib import Path
from typing import TextIO

import pandas as pd
import starfile

from cryoextract.errors import InputError


def read_star(path: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Read every loop block of a STAR file.

    Returns
    -------
    dict
        Block name (``""`` for RELION 3.0's bare ``data_``) to table. Single-row
        (non-loop) blocks are returned as one-row tables.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("STAR file not found", path)
    check_loop_rows(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed text
        # starfile does not read quoted values holding spaces; RELION does
        blocks = _read_quoted_loops(path)
        if not blocks:
            raise InputError(f"not a readable STAR file ({exc})", path) from exc
    tables: dict[str, pd.DataFrame] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            tables[name] = block
        elif isinstance(block, dict):
            tables[name] = pd.DataFrame([block])
    if not tables:
        raise InputError("no data blocks found", path)
    return tables


def check_loop_rows(path: Path) -> None:
    """Raise InputError naming the line when a loop's last row is short (file cut off)."""
    try:
        with open(path, errors="replace") as stream:
            lines = stream.read().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read STAR file ({exc})", path) from exc
    columns = 0
    last: tuple[int, str] | None = None
    in_header = False

    def check() -> None:
        if columns and last is not None:
            number, text = last
            values = len(shlex_split(text))
            if values != columns:
                raise InputError(f"{values} values for {columns} columns (file cut short?)",
                                 path, number)

    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("data_") or stripped == "loop_":
            check()
            columns, last, in_header = 0, None, stripped == "loop_"
        elif stripped.startswith("_"):
            if in_header:
                columns += 1
        elif in_header or columns:
            in_header = False
            last = (number, stripped)
    check()


def _read_quoted_loops(path: Path) -> dict[str, pd.DataFrame]:
    """Loop blocks of a STAR file whose values may be quoted (fallback reader)."""
    blocks: dict[str, pd.DataFrame] = {}
    name, columns, rows, in_loop = "", [], [], False

    def flush() -> None:
        if columns:
            table = pd.DataFrame(rows, columns=columns) if rows else \
                pd.DataFrame({c: [] for c in columns})
            for column in table.columns:
                numbers = pd.to_numeric(table[column], errors="coerce")
                if numbers.notna().all() and len(table):
                    table[column] = numbers
            blocks[name] = table

    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("data_"):
            flush()
            name, columns, rows, in_loop = stripped[5:], [], [], False
        elif stripped == "loop_":
            in_loop = True
        elif stripped.startswith("_") and in_loop and not rows:
            columns.append(stripped.split()[0][1:])
        elif in_loop and columns:
            values = shlex_split(stripped)
            if len(values) != len(columns):
                return {}
            rows.append(values)
    flush()
    return blocks


def shlex_split(text: str) -> list[str]:
    """STAR values of one row: whitespace separated, quotes group."""
    try:
        return shlex.split(text, posix=True)
    except ValueError:
        return text.split()


def find_block(
    tables: dict[str, pd.DataFrame], path: str | os.PathLike[str], required: tuple[str, ...],
    preferred: tuple[str, ...] = (),
) -> pd.DataFrame:
    """The first block holding every ``required`` column (blocks named in ``preferred`` first)."""
    names = [n for n in preferred if n in tables] + [n for n in tables if n not in preferred]
    for name in names:
        if all(column in tables[name].columns for column in required):
            return tables[name]
    raise InputError(f"no data block with columns {', '.join(required)}", path)


def write_star(path: str | os.PathLike[str], blocks: dict[str, pd.DataFrame]) -> None:
    """Write blocks as STAR loops, atomically (temporary name, then rename).

    Floats are written with 6 decimals (as RELION); strings holding whitespace are quoted.
    A plain writer, so a million-row table takes seconds, not minutes.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="\n") as stream:
            stream.write("\n# version 30001 (written by cryoextract)\n")
            for name, table in blocks.items():
                _write_loop(stream, name, table)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_loop(stream: TextIO, name: str, table: pd.DataFrame) -> None:
    stream.write(f"\ndata_{name}\n\nloop_\n")
    for number, column in enumerate(table.columns, start=1):
        stream.write(f"_{column} #{number}\n")
    table = table.copy()
    for column in table.columns:
        if table[column].dtype == object or pd.api.types.is_string_dtype(table[column]):
            text = table[column].astype(str)
            needs_quotes = text.str.contains(r"\s", regex=True) | (text == "")
            if needs_quotes.any():
                text[needs_quotes] = [_quote(v) for v in text[needs_quotes]]
            table[column] = text
    # our own quotes must pass through untouched: a quote character that never occurs;
    # a missing value is written as nan (an empty field would shift the columns)
    table.to_csv(stream, sep="\t", header=False, index=False, float_format="%.6f",
                 quoting=csv.QUOTE_NONE, quotechar="\x1f", escapechar="\\",
                 lineterminator="\n", na_rep="nan")
    stream.write("\n")


def _quote(text: str) -> str:
    if text == "" or any(c.isspace() for c in text):
        return '"' + text.replace('"', "'") + '"'
    return text
