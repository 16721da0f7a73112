"""STAR files (via starfile): read into named tables, write atomically."""

from __future__ import annotations

import os
import shlex
import warnings
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import starfile

from cryoextract.errors import InputError, first_line
from cryoextract.io.atomic import atomic_file
from cryoextract.io.star_rows import loop_rows


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
            raise InputError(f"not a readable STAR file ({first_line(exc)})", path) from exc
    tables: dict[str, pd.DataFrame] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            tables[name] = block
        elif isinstance(block, dict):
            tables[name] = pd.DataFrame([block])
        else:
            continue
        twice = tables[name].columns[tables[name].columns.duplicated()]
        if len(twice):  # starfile keeps them in a loop without rows; RELION refuses them
            raise InputError(f"column _{twice[0]} appears twice in block data_{name}", path)
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
    """Loop blocks of a STAR file whose values may be quoted (fallback reader).

    Returns ``{}`` when the file is not made of such loops; raises InputError (naming the
    line) for a loop that gives a column twice, which RELION refuses as well.
    """
    blocks: dict[str, pd.DataFrame] = {}
    name, in_loop = "", False
    columns: list[str] = []
    rows: list[list[str]] = []

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
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("data_"):
            flush()
            name, columns, rows, in_loop = stripped[5:], [], [], False
        elif stripped == "loop_":
            in_loop = True
        elif stripped.startswith("_") and in_loop and not rows:
            label = stripped.split()[0][1:]
            if label in columns:
                raise InputError(f"column _{label} appears twice in block data_{name}",
                                 path, number)
            columns.append(label)
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
    Rows are formatted by :mod:`cryoextract.io.star_rows`: a million rows take about
    two seconds.
    """
    with atomic_file(path) as stream:
        stream.write(b"\n# version 30001 (written by cryoextract)\n")
        for name, table in blocks.items():
            _write_loop(stream, name, table)


def _write_loop(stream: BinaryIO, name: str, table: pd.DataFrame) -> None:
    header = [f"\ndata_{name}\n\nloop_\n"]
    header += [f"_{column} #{number}\n" for number, column in enumerate(table.columns, 1)]
    stream.write("".join(header).encode())
    for piece in loop_rows(table, _quote):
        stream.write(piece)
    stream.write(b"\n")


def _quote(text: str) -> str:
    if text == "" or any(c.isspace() for c in text):
        return '"' + text.replace('"', "'") + '"'
    return text
