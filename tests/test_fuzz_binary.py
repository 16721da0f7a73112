"""Property-based fuzzing of the binary readers: cryoSPARC ``.cs`` files (random bytes,
mutated valid tables, valid numpy tables with random fields, dtypes and shapes) and MRC
micrographs (valid headers with random field values). Any input parses or raises
``CryoExtractError`` with a one-line message (``fuzzing.py``).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryoextract.io.cryosparc import load_cs, read_cs_particles, read_cs_picks
from cryoextract.io.mrc_micrograph import open_micrograph
from fuzzing import (
    EXAMPLES,
    FUZZ,
    file_numbers,
    mutated,
    parses_or_refuses,
    with_examples,
    write,
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


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
    path = directory / f"seed{next(file_numbers):06d}.npy"
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
    path = directory / f"seed{next(file_numbers):06d}.mrc"
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
