"""Fast STAR row text: every value as Python's own formatting would write it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryoextract.io import star_rows
from cryoextract.io.star import _quote, read_star, write_star


def python_rows(table: pd.DataFrame) -> str:
    """The oracle: ``%.6f`` for floats, ``str`` for the rest, STAR quoting, one row a line."""
    def token(value: object) -> str:
        if isinstance(value, float | np.floating):
            return "nan" if np.isnan(value) else f"{float(value):.6f}"
        if value is None or value is pd.NA:
            return "nan"
        return _quote(str(value))
    return "".join("\t".join(token(v) for v in row) + "\n"
                   for row in table.itertuples(index=False))


def text(table: pd.DataFrame) -> str:
    return b"".join(bytes(piece) for piece in star_rows.loop_rows(table, _quote)).decode()


def test_floats_are_written_as_percent_6f():
    rng = np.random.default_rng(1)
    values = np.concatenate([
        rng.normal(0, 1, 2000), rng.normal(0, 1e4, 2000), rng.uniform(-1e-6, 1e-6, 500),
        [0.0, -0.0, 0.5e-6, -0.5e-6, 1.0, -1.0, 123456.9999995, np.nan, np.inf, -np.inf],
    ])
    table = pd.DataFrame({"rlnX": values, "rlnY32": values.astype(np.float32)})
    mine = text(table).splitlines()
    oracle = python_rows(table).splitlines()
    differ = [(a, b) for a, b in zip(mine, oracle, strict=True) if a != b]
    # the scaled integer and Python's correctly rounded decimal can differ only in the
    # last digit of a value that lies within an ulp of a rounding tie
    assert len(differ) <= 3, differ[:5]
    for a, b in differ:
        assert np.allclose(np.array(a.split("\t"), float), np.array(b.split("\t"), float),
                           atol=1.01e-6)


def test_huge_floats_fall_back_to_python_formatting():
    table = pd.DataFrame({"rlnX": [1e300, -3e15, 2.5]})
    assert text(table) == python_rows(table)


def test_strings_ints_booleans_and_missing_values():
    table = pd.DataFrame({
        "rlnImageName": ["000001@Particles/a.mrcs", "with space", "", None],
        "rlnOpticsGroup": np.array([1, 2, 3, -4], dtype=np.int64),
        "rlnFlag": [True, False, True, False],
        "rlnMixed": [1, "b", 2.5, None],
    })
    lines = text(table).splitlines()
    assert lines[0] == "000001@Particles/a.mrcs\t1\t1\t1"
    assert lines[1] == '"with space"\t2\t0\tb'
    assert lines[2] == '""\t3\t1\t2.5'
    assert lines[3] == "nan\t-4\t0\tnan"


@pytest.mark.parametrize("rows", [0, 1, star_rows.CHUNK_ROWS + 7])
def test_write_star_round_trips_across_chunks(tmp_path, rows):
    rng = np.random.default_rng(rows)
    table = pd.DataFrame({
        "rlnCoordinateX": rng.uniform(0, 4000, rows),
        "rlnImageName": [f"{i + 1:06d}@Particles/m.mrcs" for i in range(rows)],
        "rlnOpticsGroup": np.ones(rows, dtype=np.int64),
    })
    write_star(tmp_path / "p.star", {"particles": table})
    if rows == 0:
        assert "_rlnImageName #2" in (tmp_path / "p.star").read_text()
        return
    back = read_star(tmp_path / "p.star")["particles"]
    assert len(back) == rows
    assert list(back["rlnImageName"]) == list(table["rlnImageName"])
    np.testing.assert_allclose(back["rlnCoordinateX"], table["rlnCoordinateX"], atol=5e-7)
    assert (back["rlnOpticsGroup"] == 1).all()
