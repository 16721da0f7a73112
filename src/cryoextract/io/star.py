"""STAR files (via starfile): read into named tables, write atomically."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

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
    """Write blocks to a STAR file atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        starfile.write(blocks, tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
