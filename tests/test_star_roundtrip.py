"""What write_star writes, our reader, starfile and RELION 3.1 read back exactly.

Random tables (strings with spaces, both quotes, ``#``, ``;``, ``_``, ``data_``, Unicode,
numbers) go through :func:`write_star` and come back from :func:`read_star` unchanged,
and from ``starfile.read`` where starfile can read them at all (starfile 0.5 turns every
``'`` into ``"`` before parsing: no value with ``'``, nor a quoted value with ``"``, comes
back from it; docs/conventions.md, "Paths"). RELION 3.1.3 opens stacks whose names hold
spaces and quotes, and rewrites our quoted values as it read them. Values that no STAR
line holds are refused, in one line naming the row and column, before the file is opened.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cryoextract.errors import ParameterError
from cryoextract.io.star import StarWarning, read_star, write_star
from cryoextract.io.star_rows import loop_rows
from cryoextract.io.star_text import (
    NA_TOKENS,
    needs_quotes,
    split_row,
    star_token,
    value_problem,
)
from prereq import require_programs

ALPHABET = "ab Z09._-/@#;\"'$[]µüé中\xa0+"
SPECIAL = ["", " ", "#", "#x", "_x", ";x", "$x", "[x]", "data_x", "x data_y", "loop_", "save_a",
           "'", '"', "it's", 'q"x', 'say "hi" now', "x' y", "ends\"", "a  b", " lead", "trail ",
           "-1", "1e5", "µ ü", "0x10", "a#b", "1@a b.mrcs", "中文 名"]
texts = st.one_of(st.text(ALPHABET, max_size=12), st.sampled_from(SPECIAL))


def _numeric(values: list[str]) -> bool:
    """True when a column of these strings reads back as numbers (type by content)."""
    return bool(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").notna().all())


@st.composite
def tables(draw: st.DrawFn) -> pd.DataFrame:
    rows = draw(st.integers(1, 6))
    column = st.lists(texts, min_size=rows, max_size=rows)
    names, labels = draw(column), draw(column)
    for values in (names, labels):
        assume(all(value_problem(v) is None for v in values))
        assume(not any(v in NA_TOKENS for v in values) and not _numeric(values))
    return pd.DataFrame({
        "rlnImageName": names,
        "rlnOpticsGroup": draw(st.lists(st.integers(-10**6, 10**6), min_size=rows,
                                        max_size=rows)),
        "ceLabel": labels,
        "rlnDefocusU": np.round(draw(st.lists(
            st.floats(-1e6, 1e6, allow_nan=False), min_size=rows, max_size=rows)), 6),
    })


def _starfile_can_read(*columns: list[str]) -> bool:
    """starfile keeps a column as text only where pandas cannot make it numbers (else
    ``""`` becomes NaN), and reads no ``'`` nor a quoted ``"``."""
    for values in columns:
        try:
            pd.to_numeric(pd.Series(values, dtype=object))
            return False
        except (ValueError, TypeError):
            pass
        if any("'" in v or ('"' in v and needs_quotes(v)) for v in values):
            return False
    return True


def _same(back: pd.DataFrame, table: pd.DataFrame) -> None:
    assert list(back.columns) == list(table.columns)
    for column in ("rlnImageName", "ceLabel"):
        assert [str(v) for v in back[column]] == list(table[column]), column
    assert list(back["rlnOpticsGroup"]) == list(table["rlnOpticsGroup"])
    np.testing.assert_allclose(back["rlnDefocusU"], table["rlnDefocusU"], atol=1e-6)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(table=tables())
def test_random_tables_read_back_identical(tmp_path: Path, table: pd.DataFrame) -> None:
    path = tmp_path / "t.star"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StarWarning)  # runs of spaces: RELION's caveat
        write_star(path, {"optics": pd.DataFrame({"rlnOpticsGroup": [1]}), "particles": table})
    _same(read_star(path)["particles"], table)
    if _starfile_can_read(list(table["rlnImageName"]), list(table["ceLabel"])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            back = starfile.read(path, always_dict=True)["particles"]
        _same(back, table)


@given(value=texts)
def test_every_writable_value_is_one_token(value: str) -> None:
    """The token we write is split back into exactly the value (RELION's grammar)."""
    assume(value_problem(value) is None)
    assert split_row(f"1\t{star_token(value)}\t2") == ["1", value, "2"]


@given(values=st.lists(st.one_of(texts, st.text(max_size=8)), min_size=1, max_size=20))
def test_vectorised_quoting_is_star_token(values: list[str]) -> None:
    """The writer quotes in Arrow (RE2); it gives the tokens :func:`star_token` gives."""
    values = [v for v in values if value_problem(v) is None]
    assume(values)
    for column in (pd.Series(values, dtype=object), pd.Series(values, dtype="str")):
        text = b"".join(bytes(p) for p in loop_rows(column.to_frame("x"), star_token))
        assert text.decode().split("\n")[:-1] == [star_token(v) for v in values]


@pytest.mark.parametrize(("value", "shown"), [
    ("a\nb.mrc", r"\n"), ("a\rb", r"\r"), ("tab\there", r"\t"), ("nul\x00", "NUL"),
    ("line\u2028sep", "U+2028"), ("a\" b' c", "no STAR quote"),
])
def test_values_no_star_holds_are_refused_before_writing(tmp_path: Path, value: str,
                                                         shown: str) -> None:
    path = tmp_path / "p.star"
    path.write_text("previous\n")
    table = pd.DataFrame({"rlnImageName": ["000001@ok.mrcs", f"000002@{value}"],
                          "rlnOpticsGroup": [1, 1]})
    with pytest.raises(ParameterError) as info:
        write_star(path, {"optics": pd.DataFrame({"rlnOpticsGroup": [1]}),
                          "particles": table})
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "data_particles, row 2, column rlnImageName" in message and shown in message
    assert path.read_text() == "previous\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.star"]  # no temporary left


@pytest.mark.parametrize("label", ["rln Bad", "rln#1", "rln\nX", ""])
def test_labels_that_cannot_be_written_are_refused(tmp_path: Path, label: str) -> None:
    with pytest.raises(ParameterError, match="column label"):
        write_star(tmp_path / "p.star", {"particles": pd.DataFrame({label: [1]})})
    assert not (tmp_path / "p.star").exists()


def test_relion_caveats_are_warnings(tmp_path: Path) -> None:
    table = pd.DataFrame({"rlnImageName": ["000001@a#b.mrcs"], "ceNote": ["two  spaces"]})
    with pytest.warns(StarWarning) as caught:
        returned = write_star(tmp_path / "p.star", {"particles": table})
    assert len(returned) == len(caught) == 2
    assert "rlnImageName" in returned[0] and "'#'" in returned[0]
    assert "ceNote" in returned[1] and "run of spaces" in returned[1]
    assert list(read_star(tmp_path / "p.star")["particles"]["ceNote"]) == ["two  spaces"]


# --------------------------------------------------------------------------- RELION 3.1

OPTICS = pd.DataFrame({
    "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["optics group 1"],
    "rlnImagePixelSize": [2.0], "rlnImageSize": [16], "rlnImageDimensionality": [2],
    "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
})
#: stack names RELION 3.1 opens once quoted as we quote them
STACKS = ["a b.mrcs", "it's.mrcs", 'q"x.mrcs', 'say "hi" now.mrcs', "x' y.mrcs",
          "µ ü.mrcs", "data_x y.mrcs", "$[d].mrcs"]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def _stacks(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        with mrcfile.new(root / name, overwrite=True) as mrc:
            mrc.set_data(np.full((2, 16, 16), i + 0.5, dtype=np.float32))
            mrc.data[1] += 100
            mrc.voxel_size = 2.0


def test_relion_opens_stacks_whose_quoted_names_hold_spaces_and_quotes(tmp_path: Path) -> None:
    require_programs("relion_stack_create")
    _stacks(tmp_path, STACKS)
    names = [f"{k:06d}@{name}" for name in STACKS for k in (2, 1)]
    write_star(tmp_path / "p.star", {"optics": OPTICS, "particles": pd.DataFrame(
        {"rlnImageName": names, "rlnOpticsGroup": np.ones(len(names), dtype=int)})})
    proc = _run(["relion_stack_create", "--i", "p.star", "--o", "all"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with mrcfile.open(tmp_path / "all.mrcs", permissive=True) as mrc:
        firsts = mrc.data[:, 0, 0].tolist()
    assert firsts == [v for i in range(len(STACKS)) for v in (i + 100.5, i + 0.5)]


def test_relion_reads_our_quoted_values_as_written(tmp_path: Path) -> None:
    """relion_star_handler reads a STAR (an unknown label keeps strings as read) and
    writes it again; every value comes back as we wrote it."""
    require_programs("relion_star_handler")
    values = ["a b", "it's", 'q"x', "h#a", "µ ü", "x data_y", "_u", ";s", "loop_y", "$d",
              "[b]", "", "x' y"]
    table = pd.DataFrame({"rlnClassNumber": np.arange(1, len(values) + 1),
                          "rlnOpticsGroup": 1, "cryoextractNote": values})
    write_star(tmp_path / "x.star", {"optics": OPTICS, "particles": table})
    proc = _run(["relion_star_handler", "--i", "x.star", "--o", "y.star"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    back = read_star(tmp_path / "y.star")["particles"]
    assert list(back["rlnClassNumber"]) == list(table["rlnClassNumber"])
    assert [str(v) for v in back["cryoextractNote"]] == values


def test_relion_cannot_open_a_stack_name_with_a_hash(tmp_path: Path) -> None:
    """Why write_star warns about '#' in file name columns (docs/conventions.md)."""
    require_programs("relion_stack_create")
    _stacks(tmp_path, ["h#a.mrcs"])
    with pytest.warns(StarWarning, match="cannot open"):
        write_star(tmp_path / "p.star", {"optics": OPTICS, "particles": pd.DataFrame(
            {"rlnImageName": ["000001@h#a.mrcs"], "rlnOpticsGroup": [1]})})
    proc = _run(["relion_stack_create", "--i", "p.star", "--o", "all"], tmp_path)
    assert proc.returncode != 0
