"""Fast text of STAR loop rows: columns formatted by Arrow's compute kernels, not per value.

pandas' ``to_csv(float_format=...)`` formats every float through Python, 10-25 s per
million particles; a live session rewrites ``particles.star`` after every batch. Here
each column becomes one Arrow string array in C++ and the rows are joined there too.

Floats are written as RELION writes them, fixed point with 6 decimals (``%.6f``), so
every reader sees a float column; missing values as ``nan``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cryoextract.io.star_text import NEEDS_QUOTES_RE2

DECIMALS = 6
_SCALE = 10**DECIMALS
# beyond this |value| * 10**6 no longer fits an int64 exactly: such columns go through
# Python's formatting instead
_FIXED_LIMIT = 2**53 / _SCALE
# rows per piece: bounded memory, and far below Arrow's 2 GiB per string array
CHUNK_ROWS = 100_000

Quote = Callable[[str], str]


def loop_rows(table: pd.DataFrame, quote: Quote) -> Iterator[memoryview]:
    """The rows of ``table`` as tab-separated text, one ``\\n``-ended line each, in pieces.

    String values that need quotes (:data:`~cryoextract.io.star_text.NEEDS_QUOTES_RE2`)
    and hold no ``"`` are put in ``"``; ``quote`` gives the token of the others that need
    quotes (:func:`cryoextract.io.star_text.star_token`). Missing values (``None``,
    NaN) are written ``nan``. Values are not checked here (``write_star`` does).
    """
    if len(table.columns) == 0:
        return
    for start in range(0, len(table), CHUNK_ROWS):
        part = table.iloc[start:start + CHUNK_ROWS]
        columns = [_column_text(part[name], quote) for name in part.columns]
        lines = pc.binary_join_element_wise(*columns, pa.scalar("\t"))
        lines = pc.binary_join_element_wise(lines, pa.scalar(""), pa.scalar("\n"))
        yield _concatenated(lines)


def _column_text(column: pd.Series, quote: Quote) -> pa.Array:
    if isinstance(column.dtype, pd.StringDtype):
        text = string_array(column)  # Arrow-backed already: no copy through Python
    else:
        values = column.to_numpy()
        if values.dtype.kind == "f":
            return _fixed_point(values.astype(np.float64))
        if values.dtype.kind in "iu":
            return pc.cast(pa.array(values), pa.string())
        if values.dtype.kind == "b":
            return pc.cast(pa.array(values.astype(np.int8)), pa.string())
        text = string_array(values)
    needs = pc.fill_null(pc.match_substring_regex(text, NEEDS_QUOTES_RE2), False)
    if pc.any(needs).as_py():
        # no '"' inside: '"' around, in Arrow; the others (rare) through ``quote``
        plain = pc.and_(needs, pc.invert(pc.match_substring(text, '"')))
        quoted = pc.binary_join_element_wise(pa.scalar('"'), text, pa.scalar('"'),
                                             pa.scalar(""))
        text = pc.if_else(plain, quoted, text)
        other = pc.and_(needs, pc.invert(plain)).to_numpy(zero_copy_only=False)
        if other.any():
            values = text.to_pylist()
            for row in np.flatnonzero(other):
                values[row] = quote(values[row])
            text = pa.array(values, type=pa.string())
    return pc.fill_null(text, "nan")


def string_array(values: np.ndarray | pd.Series) -> pa.Array:
    """The values of a non-numeric column as Arrow strings; missing values are null.

    A pandas string column (Arrow-backed, pandas' default for text) is taken as it is.
    """
    try:
        text = pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all strings: Python's str()
        text = pa.array([None if _missing(v) else str(v) for v in values], type=pa.string())
    return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _fixed_point(values: np.ndarray) -> pa.Array:
    """``%.6f`` of every value, from integer parts and zero-padded fractions."""
    finite = np.isfinite(values)
    if np.any(np.abs(values[finite]) >= _FIXED_LIMIT):
        return pa.array([f"{v:.{DECIMALS}f}" for v in values], type=pa.string())
    scaled = np.zeros(values.shape, dtype=np.int64)
    scaled[finite] = np.rint(np.abs(values[finite]) * _SCALE).astype(np.int64)
    whole = pc.cast(pa.array(scaled // _SCALE), pa.string())
    fraction = pc.utf8_lpad(pc.cast(pa.array(scaled % _SCALE), pa.string()), DECIMALS, "0")
    text = pc.binary_join_element_wise(whole, fraction, pa.scalar("."))
    negative = np.signbit(values) & finite
    if negative.any():
        text = pc.if_else(pa.array(negative),
                          pc.binary_join_element_wise(pa.scalar("-"), text, pa.scalar("")),
                          text)
    if not finite.all():
        special = np.where(np.isnan(values), "nan", np.where(values > 0, "inf", "-inf"))
        text = pc.if_else(pa.array(finite), text, pa.array(special.astype(object)))
    return text


def _concatenated(lines: pa.Array) -> memoryview:
    """The string array's characters, back to back (its lines end in ``\\n`` already)."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    _, offsets_buffer, data_buffer = lines.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return memoryview(data_buffer)[start:end]
