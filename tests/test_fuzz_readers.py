"""Property-based fuzzing of every reader: any input parses or raises ``CryoExtractError``.

Inputs are random bytes, random text made of each format's own tokens, and valid files
mutated byte by byte (flips, deletions, insertions, duplicated and cut lines, truncation);
for ``.cs`` files also valid numpy tables with random fields, dtypes and shapes, and for
MRC files valid headers with random field values. A reader may accept an input or refuse
it with the project's error type, whose message is one line (the CLI prints it as is);
any other exception is a bug. Example counts are bounded so the module runs in well under
a minute.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryoextract.errors import CryoExtractError
from cryoextract.io.coords import read_picks
from cryoextract.io.cryosparc import load_cs, read_cs_particles, read_cs_picks
from cryoextract.io.ctffind import read_ctffind
from cryoextract.io.micrographs import read_micrograph_set
from cryoextract.io.mrc import open_micrograph
from cryoextract.io.star import read_star
from helpers import CBOX, MICROGRAPHS_STAR31, POS, STAR30_PICKS

# Deterministic (the same examples on every run, so CI does not flake); for a longer hunt
# with fresh examples: CRYOEXTRACT_FUZZ_EXAMPLES=2000 CRYOEXTRACT_FUZZ_RANDOM=1 pytest ...
EXAMPLES = int(os.environ.get("CRYOEXTRACT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("CRYOEXTRACT_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

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

# tokens of the text formats, to build random files that get past the first checks
TOKENS = [
    "data_", "data_optics", "data_micrographs", "data_particles", "data_cryolo", "data_global",
    "data_header", "loop_", "_rlnMicrographName", "_rlnOpticsGroup", "_rlnOpticsGroupName",
    "_rlnMicrographPixelSize", "_rlnImagePixelSize", "_rlnCoordinateX", "_rlnCoordinateY",
    "_rlnImageName", "_rlnDefocusU", "_rlnMicrographCoordinates", "_CoordinateX",
    "_CoordinateY", "_Width", "_Height", "_xcoor", "_ycoor", "_enabled", "_itemId",
    "# XMIPP_STAR_1 *", "image_name", "x_coord", "y_coord", "score", "#", "#1", "#2",
    "# Columns: #1 - micrograph number; #2 - defocus 1", "# Pixel size: 1.0 Angstroms ;",
    "acceleration voltage: 300 keV ;", "spherical aberration: 2.7 mm ;",
    "amplitude contrast: 0.1", "1", "0", "-1", "2", "7", "1.5", "-3.25", "1e5", "1e400",
    "-1e400", "nan", "NaN", "inf", "-inf", "<NA>", "None", "abc", "mic_001.mrc",
    "Micrographs/mic_001.mrc", "000001@s.mrcs", "@", '"a b"', "'c d'", '"', "'", ";", ",",
    "\\", "\t", " ", "é", "日本", "\x00", "\r", "\x0c", "data_data_", "_", "__", "0x1F",
    "1_000", "+", "-", ".", "..", "9" * 30,
]
line_text = st.lists(st.sampled_from(TOKENS), max_size=8).map(
    lambda tokens: " ".join(tokens))
token_text = st.lists(line_text, max_size=30).map(lambda lines: "\n".join(lines))


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few random edits: flips, deletions, insertions, line edits, cuts."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "token", "line", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[at: at + draw(st.integers(1, 40))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS)).encode("utf-8")
        elif op == "line":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            action = draw(st.sampled_from(["duplicate", "drop", "cut", "swap"]))
            if action == "duplicate":
                lines.insert(i, lines[i])
            elif action == "drop":
                del lines[i]
            elif action == "cut":
                lines[i] = lines[i][: len(lines[i]) // 2]
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        else:
            del data[at:]
    return bytes(data)


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


def _npy(fields: list[tuple], fill: dict[str, object]) -> bytes:
    array = np.zeros(2, dtype=fields)
    for name, value in fill.items():
        array[name] = value
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


_XY = [("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4")]
_SHAPE = ("location/micrograph_shape", "<u4", (2,))
CS_FOUND = [
    b"\x93NUMPY\x01\x00\x10\x00{'descr': [('a'\n",  # numpy raises tokenize.TokenError
    _npy([_XY[0], _SHAPE], {_SHAPE[0]: 256}),  # no location/center_y_frac
    _npy([*_XY, ("location/micrograph_shape", "<f4")], {}),  # shape not (ny, nx)
    _npy([("location/center_x_frac", "S4"), _XY[1], _SHAPE], {  # text fractions
        "location/center_x_frac": b"ab", _SHAPE[0]: 256}),
    _npy([("location/micrograph_path", "S4"), *_XY, _SHAPE], {  # not UTF-8
        "location/micrograph_path": b"\xff\xfe", _SHAPE[0]: 256}),
    _npy([("blob/path", "S4"), ("blob/idx", "<u4", (2,)), *_XY, _SHAPE], {  # idx pairs
        _SHAPE[0]: 256}),
]


def with_examples(found: list[bytes]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``@example(content=...)`` for each input of ``found``."""
    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        for content in reversed(found):
            test = example(content=content)(test)
        return test
    return decorate


# --------------------------------------------------------------------------- harness
_names = itertools.count()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(directory: Path, content: bytes, suffix: str) -> Path:
    """A fresh file per example (hypothesis reruns examples; names never repeat)."""
    path = directory / f"f{next(_names):06d}{suffix}"
    path.write_bytes(content)
    return path


def parses_or_refuses(read: Callable[[], object]) -> object:
    """Call a reader: it returns, or raises CryoExtractError with a one-line message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read()
    except CryoExtractError as exc:
        message = str(exc)
        assert message.strip(), "empty error message"
        assert "\n" not in message.strip(), f"multi-line error message: {message!r}"
        return None


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


# --------------------------------------------------------------------------- cryoSPARC .cs
def valid_cs() -> np.ndarray:
    n = 3
    data = np.zeros(n, dtype=[
        ("uid", "<u8"), ("blob/path", "S32"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"), ("location/micrograph_path", "S32"),
        ("location/micrograph_shape", "<u4", (2,)), ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
        ("ctf/accel_kv", "<f4"), ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/shift", "<f4", (2,)), ("alignments3D/psize_A", "<f4"),
        ("alignments3D/class", "<u4"), ("alignments3D/split", "<u4"),
    ])
    data["uid"] = np.arange(n) + 10**18
    data["blob/path"] = b"J1/imported/stack.mrcs"
    data["blob/idx"] = np.arange(n)
    data["blob/shape"] = 64
    data["blob/psize_A"] = 1.5
    data["location/micrograph_path"] = b"J1/imported/mic.mrc"
    data["location/micrograph_shape"] = (256, 256)
    data["location/center_x_frac"] = [0.1, 0.5, 0.9]
    data["location/center_y_frac"] = [0.2, 0.4, 0.6]
    data["ctf/df1_A"] = 15000
    data["ctf/df2_A"] = 14000
    data["ctf/accel_kv"] = 300
    data["alignments3D/pose"] = 0.1
    data["alignments3D/psize_A"] = 1.5
    return data


def _npy_bytes(array: np.ndarray, directory: Path) -> bytes:
    path = directory / f"seed{next(_names):06d}.npy"
    np.save(path, array, allow_pickle=False)
    return path.read_bytes()


CS_FIELDS = ["uid", "blob/path", "blob/idx", "blob/shape", "blob/psize_A",
             "location/micrograph_path", "location/micrograph_shape",
             "location/center_x_frac", "location/center_y_frac", "ctf/df1_A", "ctf/df2_A",
             "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast",
             "alignments3D/pose", "alignments3D/shift", "alignments3D/psize_A",
             "alignments3D/class", "alignments3D/split", "alignments2D/pose",
             "alignments2D/shift", "ctf/exp_group_id"]
CS_DTYPES = ["<f4", ">f8", "<u4", "<i8", "u1", "S8", "U4", "?", "<c8", "<f2"]


@st.composite
def random_tables(draw: st.DrawFn) -> np.ndarray:
    """Structured arrays with random .cs field names, dtypes, sub-shapes and lengths."""
    names = draw(st.lists(st.sampled_from(CS_FIELDS), min_size=1, max_size=10, unique=True))
    fields = []
    for name in names:
        dtype = draw(st.sampled_from(CS_DTYPES))
        shape = draw(st.sampled_from([(), (), (2,), (3,), (1,), (2, 2)]))
        fields.append((name, dtype, shape))
    n = draw(st.integers(0, 4))
    shape = draw(st.sampled_from([(n,), (n,), (n, 2), ()]))
    array = np.zeros(shape, dtype=fields)
    raw = array.view(np.uint8) if array.ndim else array.reshape(1).view(np.uint8)
    fill = draw(st.binary(min_size=raw.size, max_size=raw.size))
    raw[...] = np.frombuffer(fill, dtype=np.uint8).reshape(raw.shape)
    return array


@pytest.fixture(scope="module")
def cs_seed(fuzz_dir: Path) -> bytes:
    return _npy_bytes(valid_cs(), fuzz_dir)


@pytest.mark.parametrize("reader", ["load_cs", "read_cs_picks", "read_cs_particles"])
def test_cs_readers(fuzz_dir: Path, cs_seed: bytes, reader: str) -> None:
    read = {"load_cs": load_cs, "read_cs_picks": read_cs_picks,
            "read_cs_particles": read_cs_particles}[reader]
    assert parses_or_refuses(lambda: read(write(fuzz_dir, cs_seed, ".cs"))) is not None

    @FUZZ
    @given(content=st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=400).map(lambda b: b"\x93NUMPY" + b),
        st.binary(max_size=400).map(lambda b: b"\x95CSDAT" + b),
        mutated(cs_seed),
        random_tables().map(lambda a: _npy_bytes(a, fuzz_dir)),
    ))
    @with_examples(CS_FOUND)
    def fuzz(content: bytes) -> None:
        parses_or_refuses(lambda: read(write(fuzz_dir, content, ".cs")))

    fuzz()


# --------------------------------------------------------------------------- MRC
HEADER_FIELDS = {  # name: (offset, struct format) of the MRC2014 header
    "nx": (0, "<i"), "ny": (4, "<i"), "nz": (8, "<i"), "mode": (12, "<i"),
    "nxstart": (16, "<i"), "mx": (28, "<i"), "my": (32, "<i"), "mz": (36, "<i"),
    "cella_x": (40, "<f"), "cellb_alpha": (52, "<f"), "mapc": (64, "<i"), "mapr": (68, "<i"),
    "maps": (72, "<i"), "dmin": (76, "<f"), "dmax": (80, "<f"), "dmean": (84, "<f"),
    "ispg": (88, "<i"), "nsymbt": (92, "<i"), "exttyp": (104, "4s"), "nversion": (108, "<i"),
    "origin_x": (196, "<f"), "map": (208, "4s"), "machst": (212, "4s"), "rms": (216, "<f"),
    "nlabl": (220, "<i"),
}
INTERESTING_INTS = [0, 1, -1, 2, 3, 4, 6, 12, 16, 99, 101, 1024, 2**31 - 1, -(2**31), 401, 64]
INTERESTING_FLOATS = [0.0, -1.0, 1.5, float("nan"), float("inf"), -float("inf"), 1e38]
INTERESTING_BYTES = [b"MAP ", b"MAP\x00", b"XXXX", b"\x44\x44\x00\x00", b"\x11\x11\x00\x00",
                     b"\x44\x41\x00\x00", b"FEI1", b"CCP4", b"\x00\x00\x00\x00"]


def valid_mrc_bytes(directory: Path, dtype: str) -> bytes:
    path = directory / f"seed{next(_names):06d}.mrc"
    data = (np.arange(16 * 12).reshape(12, 16) % 7).astype(dtype)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 1.5
    return path.read_bytes()


@st.composite
def header_edits(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(sorted(HEADER_FIELDS)))
        offset, fmt = HEADER_FIELDS[name]
        if fmt == "4s":
            value = draw(st.one_of(st.sampled_from(INTERESTING_BYTES),
                                   st.binary(min_size=4, max_size=4)))
        elif fmt == "<f":
            value = draw(st.one_of(st.sampled_from(INTERESTING_FLOATS),
                                   st.floats(width=32)))
        else:
            value = draw(st.one_of(st.sampled_from(INTERESTING_INTS),
                                   st.integers(-(2**31), 2**31 - 1)))
        struct.pack_into(fmt, data, offset, value)
    size = draw(st.sampled_from(["keep", "keep", "cut", "grow"]))
    if size == "cut":
        del data[draw(st.integers(0, len(data))):]
    elif size == "grow":
        data += bytes(draw(st.integers(1, 2048)))
    return bytes(data)


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint16", "float16", "int8"])
def test_open_micrograph(fuzz_dir: Path, dtype: str) -> None:
    seed = valid_mrc_bytes(fuzz_dir, dtype)

    def read(path: Path) -> object:
        with open_micrograph(path) as (data, header):
            assert data.shape == header.shape_yx
            return float(np.asarray(data, dtype=np.float64).sum())

    assert parses_or_refuses(lambda: read(write(fuzz_dir, seed, ".mrc"))) is not None

    @settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
    @given(content=st.one_of(header_edits(seed), mutated(seed), st.binary(max_size=1100)))
    def fuzz(content: bytes) -> None:
        parses_or_refuses(lambda: read(write(fuzz_dir, content, ".mrc")))

    fuzz()
