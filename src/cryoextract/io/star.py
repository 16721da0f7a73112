"""STAR files (via starfile): read into named tables, write atomically."""

from __future__ import annotations

import csv
import os
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed text
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
    table.to_csv(stream, sep="\t", header=False, index=False, float_format="%.6f",
                 quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
    stream.write("\n")


def _quote(text: str) -> str:
    if text == "" or any(c.isspace() for c in text):
        return '"' + text.replace('"', "'") + '"'
    return text
