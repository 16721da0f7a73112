"""A fast reader for plain STAR text: no quotes, no escapes, comments only on lines of their own.

Most STAR files (pick files, particle tables, micrograph lists) are plain: every value a
bare token. For those this reader gives exactly the tables ``starfile`` gives (the same
pandas C parser on the loop rows, the same numeric columns), without ``starfile``'s
per-line ``linecache`` lookups, which cost about 10 ms for a 300-row pick file. Anything
else (a quote, a ``#`` after the loop header, a backslash, a layout ``starfile`` reads in
its own way) is left to the general reader: :func:`read_plain_star` returns ``None``.
"""

from __future__ import annotations

from io import StringIO

import pandas as pd

#: characters that make a text not plain (quoting, comments, shlex escapes)
_NOT_PLAIN = ('"', "'", "\\")


def read_plain_star(text: str) -> dict[str, pd.DataFrame | dict[str, object]] | None:
    """Blocks of a plain STAR text, as ``starfile.read(..., always_dict=True)`` has them.

    Loop blocks become tables, single-row blocks ``{label: value}`` dicts; ``None`` when
    the text is not plain or not laid out as this reader expects.
    """
    if any(char in text for char in _NOT_PLAIN):
        return None
    lines = [line.strip() for line in text.split("\n")]
    blocks: dict[str, pd.DataFrame | dict[str, object]] = {}
    i = 0
    while i < len(lines):
        if not lines[i].startswith("data_"):
            i += 1
            continue
        name = lines[i][5:]
        i += 1
        while i < len(lines) and not lines[i].startswith(("loop_", "_")):
            if lines[i].startswith("data_"):  # an empty block: starfile's own way
                return None
            i += 1
        if i == len(lines):
            break
        block, i = _loop(lines, i + 1) if lines[i].startswith("loop_") else _pairs(lines, i)
        if block is None:
            return None
        blocks[name] = block
    return blocks


def _loop(lines: list[str], i: int) -> tuple[pd.DataFrame | None, int]:
    """The loop whose header starts at line ``i``; the table and the next line's index."""
    labels = []
    while i < len(lines) and lines[i].startswith("_"):
        labels.append(lines[i].split()[0][1:])
        i += 1
    if len(set(labels)) != len(labels):  # refused by the caller, with starfile's table
        return None, i
    start = i
    while i < len(lines) and not lines[i].startswith("data_"):
        if lines[i].startswith(("_", "loop_")) or "#" in lines[i][1:]:
            return None, i
        i += 1
    # blank lines and whole-line comments (RELION's "# version 30001") are not rows
    rows = [line for line in lines[start:i] if line and not line.startswith("#")]
    if not rows:
        return pd.DataFrame({label: pd.Series(dtype=float) for label in labels}), i
    table = pd.read_csv(
        StringIO("\n".join(rows) + "\n"), sep=r"\s+", header=None, engine="c",
        keep_default_na=False, na_values=["nan", "NaN", "<NA>"],
    )
    if table.shape[1] != len(labels):
        return None, i
    last = table.iloc[:, -1]
    if not pd.api.types.is_numeric_dtype(last) and (last == "").any():  # a short row
        return None, i
    table.columns = labels
    for label in labels:
        if table[label].dtype == object:
            try:
                numbers = pd.to_numeric(table[label])
            except (ValueError, TypeError):
                continue
            if not numbers.isna().all():
                table[label] = numbers
    return table, i


def _pairs(lines: list[str], i: int) -> tuple[dict[str, object] | None, int]:
    """``_label value`` lines from line ``i`` to the next ``data`` line."""
    block: dict[str, object] = {}
    while i < len(lines) and not lines[i].startswith("data"):
        if lines[i].startswith("_"):
            tokens = lines[i].split()
            if len(tokens) != 2 or "#" in lines[i]:
                return None, i
            block[tokens[0][1:]] = number_or_text(tokens[1])
        i += 1
    return block, i


def number_or_text(text: str) -> object:
    """A single value as ``starfile`` gives it: int, else float, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
