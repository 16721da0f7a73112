"""Property-based fuzzing of the text readers (STAR, picks, CTFFIND, micrograph lists): any
input parses or raises ``CryoExtractError`` (``.cs`` and MRC in ``test_fuzz_binary.py``;
the harness in ``fuzzing.py``).

Inputs are random bytes, random text made of each format's own tokens, and valid files
mutated byte by byte (flips, deletions, insertions, duplicated and cut lines, truncation);
for ``.cs`` files also valid numpy tables with random fields, dtypes and shapes, and for
MRC files valid headers with random field values. A reader may accept an input or refuse
it with the project's error type, whose message is one line (the CLI prints it as is);
any other exception is a bug. Example counts are bounded so the module runs in well under
a minute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cryoextract.io.coords import read_picks
from cryoextract.io.ctffind import read_ctffind
from cryoextract.io.micrographs import read_micrograph_set
from cryoextract.io.star import read_star
from fuzzing import (
    FUZZ,
    TOKENS,
    mutated,
    parses_or_refuses,
    with_examples,
    write,
)
from helpers import CBOX, MICROGRAPHS_STAR31, POS, STAR30_PICKS

# --------------------------------------------------------------------------- valid seeds
PARTICLES_STAR = """
data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographPixelSize #3
_rlnVoltage #4
opticsGroup1	1	1.500000	300.0

data_particles

loop_
_rlnMicrographName #1
_rlnCoordinateX #2
_rlnCoordinateY #3
_rlnOpticsGroup #4
_rlnImageName #5
Micrographs/mic_001.mrc	100.0	200.0	1	000001@Particles/mic_001.mrcs
"Micro graphs/mic 002.mrc"	300.5	40.25	1	000001@Particles/mic_002.mrcs
"""
MICROGRAPHS_STAR_30 = """
data_

loop_
_rlnMicrographName #1
_rlnDetectorPixelSize #2
_rlnMagnification #3
_rlnVoltage #4
mic_001.mrc	5.0	10000	300
mic_002.mrc	5.0	10000	300
"""
BOX = "10\t20\t64\t64\t0.5\n30 40 64 64\n-5 7.5 64 64 0.1 9\n"
CBOX_OLD = "10 20 64 64 0.9 60 62\n30 40 64 64 0.8\n"
TOPAZ = "image_name\tx_coord\ty_coord\tscore\nmic_001\t100\t200\t0.5\nmic_002\t30\t40\t-1.2\n"
TXT = "# x y\n100 200\n300,400\n\n5.5 6.25 extra\n"
CTFFIND = (
    "# Output from CTFFind version 4.1.14, run on 2020-01-01\n"
    "# Input file: mic.mrc ; Number of micrographs: 1\n"
    "# Pixel size: 1.400 Angstroms ; acceleration voltage: 300.0 keV ; spherical "
    "aberration: 2.70 mm ; amplitude contrast: 0.10\n"
    "# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms\n"
    "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
    "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross "
    "correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully\n"
    "1.000000 12345.678711 12001.123047 45.500000 0.000000 0.123456 4.567890\n"
)
PICK_SEEDS = {"star": STAR30_PICKS + PARTICLES_STAR, "box": BOX, "cbox": CBOX + CBOX_OLD,
              "topaz": TOPAZ, "pos": POS, "txt": TXT}
EXTENSIONS = {"star": ".star", "box": ".box", "cbox": ".cbox", "topaz": ".txt", "pos": ".pos",
              "txt": ".txt"}

line_text = st.lists(st.sampled_from(TOKENS), max_size=8).map(
    lambda tokens: " ".join(tokens))
token_text = st.lists(line_text, max_size=30).map(lambda lines: "\n".join(lines))



VALUES = st.sampled_from([
    "1", "0", "-1", "2", "3", "2.5", "64", "-64", "1e400", "-1e400", "nan", "inf", "-inf",
    "<NA>", "abc", "mic_001.mrc", "Micrographs/mic_001.mrc", "000001@s.mrcs", "@s.mrcs",
    "x@y@z", '"a b"', '""', "é", "9" * 30, "1,5", "0x10", "True", "-0", "1e-320",
])
STAR_COLUMNS = [
    "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnOpticsGroup",
    "rlnOpticsGroupName", "rlnMicrographPixelSize", "rlnImagePixelSize",
    "rlnDetectorPixelSize", "rlnMagnification", "rlnVoltage", "rlnImageName",
    "rlnAutopickFigureOfMerit", "rlnDefocusU", "rlnMicrographCoordinates", "rlnOriginXAngst",
    "CoordinateX", "CoordinateY", "CoordinateZ", "Width", "Height", "Confidence", "xcoor",
    "ycoor", "enabled", "cost", "cbox_format_version",
]
BLOCKS = ["", "optics", "micrographs", "particles", "cryolo", "particles_auto", "header",
          "global", "hot_pixels", "images"]


@st.composite
def star_documents(draw: st.DrawFn) -> bytes:
    """Well-formed-looking STAR files: blocks of known columns, rows of odd values."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        block = draw(st.sampled_from(BLOCKS))
        columns = draw(st.lists(st.sampled_from(STAR_COLUMNS), min_size=1, max_size=6))
        if draw(st.integers(0, 4)):
            lines = [f"data_{block}", "", "loop_"]
            lines += [f"_{c} #{i}" for i, c in enumerate(columns, start=1)]
            for _ in range(draw(st.integers(0, 5))):
                width = max(0, len(columns) + draw(st.sampled_from([0, 0, 0, 0, 0, -1, 1])))
                row = draw(st.lists(VALUES, min_size=width, max_size=width))
                lines.append(draw(st.sampled_from(["\t", " "])).join(row))
        else:  # a single-row (key value) block
            lines = [f"data_{block}", ""] + [f"_{c} {draw(VALUES)}" for c in columns]
        parts.append("\n".join(lines))
    return ("\n\n".join(parts) + "\n").encode("utf-8")


@st.composite
def table_documents(draw: st.DrawFn) -> bytes:
    """Whitespace/comma tables (box, txt, topaz, old cbox) with an optional header."""
    header = draw(st.sampled_from([
        None, "x y", "# x y", "image_name\tx_coord\ty_coord\tscore", "x_coord y_coord",
        "image_name x_coord y_coord", "# XMIPP_STAR_1 *", "# <X position> <Y position>",
    ]))
    sep = draw(st.sampled_from(["\t", " ", ",", "  ", ", "]))
    rows = draw(st.lists(st.lists(VALUES, max_size=7), max_size=8))
    lines = ([] if header is None else [header]) + [sep.join(row) for row in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def text_inputs(*seeds: str) -> st.SearchStrategy[bytes]:
    """Random bytes and token text, structured STAR files and tables, mutated ``seeds``."""
    options = [st.binary(max_size=600), token_text.map(lambda t: t.encode("utf-8")),
               star_documents(), table_documents()]
    options += [mutated(seed.encode("utf-8")) for seed in seeds]
    return st.one_of(*options)


# --------------------------------------------------------------------------- found bugs
# Inputs that broke a reader once (shrunk by hypothesis): always tried, whatever the seed.
STAR_FOUND = [
    b"data_\nloop_\n\x00\n\x00\t\x00",  # pandas' message: two lines
    b"data_\nloop_\n\n_\t1\ndata_\nloop_\n_\n_\n_\n_\nM\t1\t1\t1",  # duplicate names
]
MICROGRAPH_SET_FOUND = [
    # text where RELION 3.0 pixel-size columns need numbers
    b"data_\nloop_\n_rlnMicrographName\n_rlnDetectorPixelSize\n_rlnMagnification\n"
    b"m\tx\t3\n",
    # data_optics without rlnOpticsGroup
    b"data_optics\n_rlnMicrographPixelSize 1.0\ndata_\nloop_\n_rlnMicrographName\n"
    b"_rlnOpticsGroup\nm.mrc 1\n",
    # a RELION 3.0 row cut short: no pixel size for its optics group
    b"data_\nloop_\n_rlnMicrographName\n_rlnDetectorPixelSize\n_rlnMagnification\n_\n"
    b"m\t1\t3\t5\n5",
]



@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_picks(picks: object) -> None:
    if picks is None:
        return
    assert isinstance(picks, pd.DataFrame)
    for column in ("rlnCoordinateX", "rlnCoordinateY"):
        assert picks[column].dtype == np.float64


# --------------------------------------------------------------------------- text readers
@FUZZ
@given(content=text_inputs(STAR30_PICKS, PARTICLES_STAR, MICROGRAPHS_STAR31, CBOX, POS))
@with_examples(STAR_FOUND)
def test_read_star(fuzz_dir: Path, content: bytes) -> None:
    tables = parses_or_refuses(lambda: read_star(write(fuzz_dir, content, ".star")))
    if tables is not None:
        assert isinstance(tables, dict) and tables
        assert all(isinstance(t, pd.DataFrame) for t in tables.values())


@pytest.mark.parametrize("fmt", ["star", "box", "cbox", "topaz", "pos", "txt"])
def test_read_picks(fuzz_dir: Path, fmt: str) -> None:
    seed = PICK_SEEDS[fmt]

    @FUZZ
    @given(content=text_inputs(seed, *(s for s in PICK_SEEDS.values() if s != seed)),
           auto=st.booleans())
    @example(content=STAR_FOUND[0], auto=False)
    def fuzz(content: bytes, auto: bool) -> None:
        path = write(fuzz_dir, content, EXTENSIONS[fmt])
        check_picks(parses_or_refuses(lambda: read_picks(path, "auto" if auto else fmt)))

    fuzz()


@FUZZ
@given(content=text_inputs(CTFFIND))
def test_read_ctffind(fuzz_dir: Path, content: bytes) -> None:
    table = parses_or_refuses(lambda: read_ctffind(write(fuzz_dir, content, ".txt")))
    if table is not None:
        assert isinstance(table, pd.DataFrame) and len(table)


@FUZZ
@given(content=text_inputs(MICROGRAPHS_STAR31, MICROGRAPHS_STAR_30, PARTICLES_STAR),
       pixel_size=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
@example(content=MICROGRAPH_SET_FOUND[0], pixel_size=None)
@example(content=MICROGRAPH_SET_FOUND[1], pixel_size=None)
@example(content=MICROGRAPH_SET_FOUND[2], pixel_size=None)
@example(content=STAR_FOUND[1], pixel_size=None)
@example(content=MICROGRAPHS_STAR31.encode(), pixel_size=float("nan"))
def test_read_micrograph_set(fuzz_dir: Path, content: bytes, pixel_size: float | None) -> None:
    path = write(fuzz_dir, content, ".star")
    result = parses_or_refuses(lambda: read_micrograph_set(
        str(path), pixel_size_angstrom=pixel_size, base_dir=fuzz_dir))
    if result is not None:
        optics = result.optics
        sizes = pd.to_numeric(optics["rlnMicrographPixelSize"], errors="coerce")
        # a set that parses is usable: every pixel size a finite number > 0
        assert np.all(np.isfinite(sizes)) and np.all(sizes > 0), optics
        assert {"rlnMicrographName", "path", "rlnOpticsGroup"} <= set(result.micrographs)
