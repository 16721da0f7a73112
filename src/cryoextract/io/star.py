"""STAR files: read into named tables (starfile, or RELION's grammar), write atomically."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cryoextract.errors import InputError, ParameterError, first_line
from cryoextract.io.atomic import atomic_file
from cryoextract.io.star_plain import number_or_text, read_plain_star
from cryoextract.io.star_rows import loop_rows, string_array
from cryoextract.io.star_text import (
    NA_TOKENS,
    REFUSED_RE2,
    label_problem,
    split_row,
    star_token,
    value_problem,
)


def read_star(path: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Read every block of a STAR file.

    Files that ``starfile`` would read otherwise than RELION (a ``'``, ``""``, a ``"`` or
    ``#`` inside a value) are read by :func:`parse_star_text` (RELION's grammar,
    :mod:`cryoextract.io.star_text`); plain ones by :func:`read_plain_star` (the same
    tables as ``starfile``, faster); others by ``starfile`` (pandas' C parser), falling
    back to :func:`parse_star_text` where it fails. Columns
    whose values are all numbers (or ``nan``) are numeric, as ``starfile`` makes them.

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
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read STAR file ({exc})", path) from exc
    if "'" in text or _ODD_DOUBLE_QUOTE.search(text) or _INNER_HASH.search(text):
        blocks: dict[str, pd.DataFrame | dict[str, object]] = dict(
            parse_star_text(text, path))
    else:
        check_loop_rows(path, text)
        try:
            plain = read_plain_star(text)
            if plain is not None:
                blocks = plain
            else:  # starfile (pandas) fills a short row with empty values: refuse it here
                import starfile  # 20 ms to import: only for files the plain reader leaves

                check_loop_rows(path, text, every_row=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    blocks = starfile.read(path, always_dict=True)
        except Exception as exc:  # starfile raises many types on malformed text
            try:
                blocks = dict(parse_star_text(text, path))
            except InputError as own:
                raise InputError(f"not a readable STAR file ({own.reason})", path,
                                 own.line) from exc
            if not blocks:
                raise InputError(f"not a readable STAR file ({first_line(exc)})",
                                 path) from exc
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


# What starfile (pandas) reads otherwise than RELION: any ' (starfile makes it "), ""
# (pandas makes it NaN in a numeric column), a " or # inside a value ('"a"b c"', 'a#b':
# pandas ends the quote there, or takes '#' for a comment). Each pattern starts with its
# literal character, which the regex engine finds fast (100 MB in 0.1 s).
_ODD_DOUBLE_QUOTE = re.compile(r'''"(?:"|(?<=[^ \t\n]")[^ \t\r\n])''')
_INNER_HASH = re.compile(r"#(?<=[^ \t\n]#)")


def _lines(text: str) -> list[str]:
    """Lines as RELION's ``getline`` gives them (``\\n`` only; a ``\\r`` before it dropped)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def check_loop_rows(path: Path, text: str | None = None, *, every_row: bool = False) -> None:
    """Raise InputError naming the line when a loop's last row (a file cut off), or with
    ``every_row`` any row, has another number of values than the loop has columns."""
    if text is None:
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise InputError(f"cannot read STAR file ({exc})", path) from exc
    columns = 0
    last: tuple[int, str] | None = None
    in_header = False

    def check() -> None:
        if columns and last is not None:
            number, line = last
            values = split_row(line)
            count = len(line.split()) if values is None else len(values)
            if count != columns:
                raise InputError(f"{count} values for {columns} columns (file cut short?)",
                                 path, number)

    for number, line in enumerate(_lines(text), start=1):
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
            if every_row:
                check()
    check()


def parse_star_text(text: str, path: Path) -> dict[str, pd.DataFrame | dict[str, object]]:
    """Every block of a STAR file's text, values split as RELION splits them.

    Loops become tables (a column is numeric when all its values are numbers or
    :data:`~cryoextract.io.star_text.NA_TOKENS`, as ``starfile`` makes it), other blocks
    dicts of ``_label value`` pairs. Lines before the first ``data_`` are ignored.

    Raises
    ------
    InputError
        Naming the line: a quote without its end, a row with too few or too many values,
        a column given twice, a label without a value, a loop without labels.
    """
    blocks: dict[str, pd.DataFrame | dict[str, object]] = {}
    name: str | None = None
    state = ""  # "" (after data_), "header", "rows", "pairs"
    columns: list[str] = []
    rows: list[list[str]] = []
    pairs: dict[str, object] = {}

    def flush() -> None:
        if name is None:
            return
        if state in ("header", "rows") and columns:
            blocks[name] = _typed_table(columns, rows)
        elif state == "pairs":
            blocks[name] = pairs

    for number, line in enumerate(_lines(text), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("data_"):
            flush()
            name, state, columns, rows, pairs = stripped[5:], "", [], [], {}
        elif name is None:
            continue
        elif stripped.startswith("loop_") and state in ("", "pairs"):
            flush()
            state, columns, rows = "header", [], []
        elif stripped.startswith("_") and state in ("header", "", "pairs"):
            values = split_row(stripped)
            if values is None:
                raise InputError("a quote is not closed", path, number)
            label = values[0][1:]
            if state == "header":
                if label in columns:
                    raise InputError(f"column _{label} appears twice in block data_{name}",
                                     path, number)
                columns.append(label)
            elif len(values) != 2:
                raise InputError(f"_{label}: {len(values) - 1} values, expected 1", path,
                                 number)
            else:
                state = "pairs"
                pairs[label] = number_or_text(values[1])
        elif state in ("header", "rows") and columns:
            values = split_row(stripped)
            if values is None:
                raise InputError("a quote is not closed", path, number)
            if len(values) != len(columns):
                raise InputError(f"{len(values)} values for {len(columns)} columns", path,
                                 number)
            state = "rows"
            rows.append(values)
        elif state == "header":
            raise InputError("loop_ without column labels", path, number)
    flush()
    return blocks


def _typed_table(columns: list[str], rows: list[list[str]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=np.float64) for c in columns})
    data = {}
    for i, column in enumerate(columns):
        values = pd.Series([None if r[i] in NA_TOKENS else r[i] for r in rows], dtype=object)
        try:
            numbers = pd.to_numeric(values)
        except (ValueError, TypeError):
            numbers = None
        # numbers only when no text became NaN on the way ("" and "NA" do in pandas)
        exact = numbers is not None and bool((numbers.notna() | values.isna()).all())
        data[column] = numbers if exact else values
    return pd.DataFrame(data)


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


def write_star(path: str | os.PathLike[str], blocks: dict[str, pd.DataFrame]) -> list[str]:
    """Write blocks as STAR loops, atomically (temporary name, then rename).

    Floats are written with 6 decimals (as RELION); strings are quoted where the STAR
    grammar needs it (:mod:`cryoextract.io.star_text`), so that RELION and
    :func:`read_star` read back what was written (``starfile`` too, but for values
    holding ``'``: docs/conventions.md, "Paths"). Every value is checked before the
    file is opened. Rows are formatted by :mod:`cryoextract.io.star_rows`: a million
    rows take about two seconds.

    Returns
    -------
    list of str
        Warnings (also issued as :class:`StarWarning`), at most one per column: values
        RELION 3.1 would read differently (a run of spaces, which its reader makes one
        space) or cannot use (``#`` in a file name column: RELION cannot open it).

    Raises
    ------
    ParameterError
        One line naming the file, block, row and column: a value no STAR file can
        hold (:func:`~cryoextract.io.star_text.value_problem`), or a block name or
        column label that cannot be written.
    """
    caveats = [w for name, table in blocks.items() for w in _check_block(path, name, table)]
    with atomic_file(path) as stream:
        stream.write(b"\n# version 30001 (written by cryoextract)\n")
        for name, table in blocks.items():
            _write_loop(stream, name, table)
    for caveat in caveats:
        warnings.warn(caveat, StarWarning, stacklevel=2)
    return caveats


class StarWarning(UserWarning):
    """A value written to a STAR file that RELION 3.1 will read differently."""


@contextmanager
def star_warnings_into(messages: list[str]) -> Iterator[None]:
    """The :class:`StarWarning` s of STAR files written in the block, appended to
    ``messages`` (a command's summary) instead of shown; other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StarWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, StarWarning):
            if str(warning.message) not in messages:
                messages.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno, source=warning.source)


#: columns that name files RELION opens ("#" in them fails there)
_FILE_COLUMN = re.compile(r"^rln\w*(Name|Image|File|FileName|Metadata)$")


def _check_block(path: str | os.PathLike[str], name: str, table: pd.DataFrame) -> list[str]:
    """Refuse what cannot be written (ParameterError); the caveats of what can."""
    where = f"cannot write {path}: block data_{name}"
    if value_problem(str(name)) or str(name) != str(name).strip():
        raise ParameterError(f"{where}: not a block name")
    for label in table.columns:
        problem = label_problem(str(label))
        if problem is not None:
            raise ParameterError(f"{where}: column label {str(label)!r} {problem}")
    caveats = []
    for label in table.columns:
        column = table[label]
        if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biuf":
            continue
        text = string_array(column if isinstance(column.dtype, pd.StringDtype)
                            else column.to_numpy())
        file_column = _FILE_COLUMN.match(str(label)) is not None
        if not _any(text, _SUSPECT_FILE if file_column else _SUSPECT):
            continue  # the common case: one pass over the column
        bad = _first(text, _PROBLEM)
        if bad is not None:
            value = text[bad].as_py()
            raise ParameterError(f"{where}, row {bad + 1}, column {label}: value "
                                 f"{_shown(value)} {value_problem(value)}")
        for piece, caveat in _CAVEATS[: 2 if file_column else 1]:
            row = _first(text, re.escape(piece))
            if row is not None:
                caveats.append(f"{path}: data_{name}, row {row + 1}, column {label}: "
                               f"{_shown(text[row].as_py())} {caveat}")
                break
    return caveats


#: RE2: a value no STAR holds (control character; both '" ' and "' ")
_PROBLEM = f"{REFUSED_RE2}|\" .*' |' .*\" "
_CAVEATS = (("  ", "holds a run of spaces, which RELION 3.1 reads as one space"),
            ("#", "holds '#', which RELION 3.1 cannot open in a file name"))
_SUSPECT = f"{_PROBLEM}|  "
_SUSPECT_FILE = f"{_SUSPECT}|#"


def _any(text: pa.Array, pattern: str) -> bool:
    return bool(pc.any(pc.fill_null(pc.match_substring_regex(text, pattern), False)).as_py())


def _first(text: pa.Array, pattern: str) -> int | None:
    """The first row of ``text`` matching the RE2 ``pattern``, or None."""
    found = pc.fill_null(pc.match_substring_regex(text, pattern), False)
    rows = np.flatnonzero(found.to_numpy(zero_copy_only=False))
    return int(rows[0]) if len(rows) else None


def _shown(value: str, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _write_loop(stream: BinaryIO, name: str, table: pd.DataFrame) -> None:
    header = [f"\ndata_{name}\n\nloop_\n"]
    header += [f"_{column} #{number}\n" for number, column in enumerate(table.columns, 1)]
    stream.write("".join(header).encode())
    for piece in loop_rows(table, _quote):
        stream.write(piece)
    stream.write(b"\n")


def _quote(text: str) -> str:
    return star_token(text)
