"""The io layer's MRC files (``cryoextract.io.mrc``): micrographs read in every mode, with
extended headers, real FEI files, truncated or foreign files refused naming them; stacks
written whole or in chunks, never half-written.

Expected values come from the files written here (with mrcfile or by hand) or from the
raw bytes of real files, never from running our readers.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoextract.errors import MicrographError
from cryoextract.io.mrc import StackWriter, read_stack, write_stack
from cryoextract.io.mrc_micrograph import open_micrograph
from helpers import mrc_written, written
from shared_data import REAL, require_paths

FEI = REAL / "mrcfile_1.5.4_sdist" / "fei-extended.mrc"


# --------------------------------------------------------------------------- MRC reading
@pytest.mark.parametrize(
    ("dtype", "mode", "values"),
    [
        (np.int8, 0, [-128, -1, 0, 1, 127]),
        (np.int16, 1, [-32768, -300, 0, 300, 32767]),
        (np.float32, 2, [-1.5e6, -0.25, 0.0, 3.125, 7.0e5]),
        (np.uint16, 6, [0, 1, 32767, 40000, 65535]),
        (np.float16, 12, [-65504.0, -0.5, 0.0, 0.000122, 1024.5]),
    ],
)
def test_read_modes(tmp_path: Path, dtype: type, mode: int, values: list[float]) -> None:
    rng = np.random.default_rng(mode)
    data = rng.choice(np.array(values, dtype=dtype), size=(37, 53))
    data[0, :5] = np.array(values, dtype=dtype)  # every value at least once
    path = mrc_written(tmp_path / f"m{mode}.mrc", data, voxel=1.25)
    with mrcfile.open(path, header_only=True) as mrc:
        assert int(mrc.header.mode) == mode
    with open_micrograph(path) as (image, header):
        assert header.shape_yx == (37, 53)
        assert header.pixel_size_angstrom == pytest.approx(1.25)
        assert np.dtype(header.dtype) == np.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(image), data)
        if dtype is np.uint16:
            assert int(image.max()) == 65535
            assert int(image[0, 3]) == 40000
            assert float(image.astype(np.float64)[0, 3]) == 40000.0


def test_read_single_section_3d_file(tmp_path: Path) -> None:
    data = np.arange(6 * 8, dtype=np.float32).reshape(1, 6, 8)
    path = mrc_written(tmp_path / "one.mrc", data)
    with open_micrograph(path) as (image, header):
        assert header.shape_yx == (6, 8)
        np.testing.assert_array_equal(image, data[0])


def test_read_with_extended_header(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(20, 30)).astype(np.float32)
    ext = np.arange(100, dtype=np.int32)
    path = mrc_written(tmp_path / "ext.mrc", data, voxel=3.5, ext=ext)
    assert path.stat().st_size == 1024 + 400 + data.nbytes
    with open_micrograph(path) as (image, header):
        assert header.shape_yx == (20, 30)
        assert header.pixel_size_angstrom == pytest.approx(3.5)
        np.testing.assert_array_equal(image, data)


def _raw_mrc(path: Path) -> tuple[np.ndarray, float]:
    """Independent reader: header words from the raw bytes, data after the extended header."""
    raw = path.read_bytes()
    words = np.frombuffer(raw[:1024], dtype="<i4")
    floats = np.frombuffer(raw[:1024], dtype="<f4")
    nx, ny, nz, mode = (int(v) for v in words[:4])
    mx = int(words[7])
    cella_x = float(floats[10])
    nsymbt = int(words[23])
    assert mode == 6 and nz == 1
    data = np.frombuffer(raw, dtype="<u2", count=nx * ny, offset=1024 + nsymbt).reshape(ny, nx)
    return data, cella_x / mx


def test_read_real_fei_file() -> None:
    require_paths(FEI)
    raw, pixel_size = _raw_mrc(FEI)
    assert raw.shape == (3838, 3710)
    with open_micrograph(FEI) as (image, header):
        assert header.shape_yx == (3838, 3710)  # 3710 columns (x) by 3838 rows (y)
        assert np.dtype(header.dtype) == np.dtype(np.uint16)
        assert header.pixel_size_angstrom == pytest.approx(pixel_size, rel=1e-6)
        assert header.pixel_size_angstrom == pytest.approx(0.8538, abs=1e-4)
        np.testing.assert_array_equal(np.asarray(image), raw)
        assert int(image.max()) == int(raw.max())
        assert int(image.min()) >= 0
    if raw.max() > 32767:  # unsigned values read as such, not wrapped negative
        assert int(raw.max()) == int(np.asarray(image).astype(np.int64).max())


def test_truncated_file_raises_naming_it(tmp_path: Path) -> None:
    path = mrc_written(tmp_path / "cut.mrc", np.zeros((100, 100), dtype=np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MicrographError) as info:
        with open_micrograph(path):
            pass
    assert str(path) in str(info.value)
    assert info.value.path == str(path)


def test_header_only_file_raises(tmp_path: Path) -> None:
    path = mrc_written(tmp_path / "hdr.mrc", np.zeros((100, 100), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:1024])
    with pytest.raises(MicrographError, match=r"hdr\.mrc"):
        with open_micrograph(path):
            pass


@pytest.mark.parametrize("content", [b"", b"not an mrc file\n" * 200, bytes(2000)])
def test_non_mrc_file_raises_naming_it(tmp_path: Path, content: bytes) -> None:
    path = written(tmp_path / "junk.mrc", content)
    with pytest.raises(MicrographError) as info:
        with open_micrograph(path):
            pass
    assert str(path) in str(info.value)


def test_missing_and_stack_micrographs_raise(tmp_path: Path) -> None:
    with pytest.raises(MicrographError, match=r"nothere\.mrc"):
        with open_micrograph(tmp_path / "nothere.mrc"):
            pass
    stack = mrc_written(tmp_path / "stack.mrcs", np.zeros((3, 8, 8), dtype=np.float32))
    with pytest.raises(MicrographError, match=r"stack\.mrcs"):
        with open_micrograph(stack):
            pass
    with pytest.raises(MicrographError, match="adir"):
        (tmp_path / "adir.mrc").mkdir()
        with open_micrograph(tmp_path / "adir.mrc"):
            pass


# --------------------------------------------------------------------------- stack writing
def _validate(path: Path) -> bool:
    with contextlib.redirect_stdout(io.StringIO()):
        return bool(mrcfile.validate(str(path), print_file=io.StringIO()))


def test_big_endian_micrograph(tmp_path: Path) -> None:
    """mrcfile's byte order from the machine stamp: a big-endian file reads the same."""
    data = np.random.default_rng(4).normal(size=(9, 12)).astype(">f4")
    path = tmp_path / "big.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
    with mrcfile.open(path, header_only=True) as mrc:
        assert mrc.header.mode.dtype.byteorder == ">"
    with open_micrograph(path) as (image, header):
        assert header.shape_yx == (9, 12)
        np.testing.assert_array_equal(image, data.astype(np.float32))


def test_micrographs_share_the_threads_memory_and_never_each_others(tmp_path: Path) -> None:
    """One thread reads every micrograph into the same memory (no new pages per
    micrograph); one opened inside another's block gets its own; an error frees it."""
    rng = np.random.default_rng(5)
    small = rng.integers(0, 65535, (30, 40)).astype(np.uint16)
    large = rng.normal(size=(50, 60)).astype(np.float32)
    paths = [mrc_written(tmp_path / "s.mrc", small), mrc_written(tmp_path / "l.mrc", large)]
    with open_micrograph(paths[1]) as (image, _):
        where = image.__array_interface__["data"][0]
    with open_micrograph(paths[0]) as (image, _):
        assert image.__array_interface__["data"][0] == where  # the same memory again
        np.testing.assert_array_equal(image, small)
        assert not image.flags.writeable
        with open_micrograph(paths[1]) as (inner, _):
            assert inner.__array_interface__["data"][0] != where
            np.testing.assert_array_equal(inner, large)
        np.testing.assert_array_equal(image, small)  # untouched by the inner read
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(paths[1].read_bytes()[:1024 + 100])
    with pytest.raises(MicrographError, match=r"cut\.mrc.*Expected 12000 bytes in data "
                                              r"block but could only read 100"):
        with open_micrograph(cut):
            pass
    with open_micrograph(paths[1]) as (image, _):  # the memory is free again
        assert image.__array_interface__["data"][0] == where
        np.testing.assert_array_equal(image, large)


@pytest.mark.parametrize(("nx", "ny"), [(250_000, 200_000), (2**31 - 1, 2**31 - 1), (-1, 64),
                                      (0, 64)])
def test_a_corrupt_header_is_refused_before_any_memory_is_taken(
    tmp_path: Path, nx: int, ny: int
) -> None:
    """A header claiming a data block larger than the file (or no pixels at all) is one
    MicrographError naming the file, also in a thread that has read micrographs before."""
    good = mrc_written(tmp_path / "good.mrc", np.ones((64, 64), np.float32))
    with open_micrograph(good):
        pass
    raw = bytearray(good.read_bytes())
    raw[0:4] = np.int32(nx).tobytes()
    raw[4:8] = np.int32(ny).tobytes()
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(bytes(raw))
    with pytest.raises(MicrographError, match=r"bad\.mrc"):
        with open_micrograph(bad):
            pass


def test_threads_read_micrographs_at_once(tmp_path: Path) -> None:
    """Each thread has its own memory: micrographs read in parallel stay apart."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(6)
    arrays = [rng.normal(size=(64, 64)).astype(np.float32) for _ in range(8)]
    paths = [mrc_written(tmp_path / f"t{i}.mrc", a) for i, a in enumerate(arrays)]

    def total(i: int) -> float:
        with open_micrograph(paths[i]) as (image, _):
            copy = np.array(image)
        return float(np.abs(copy - arrays[i]).max())

    with ThreadPoolExecutor(4) as pool:
        assert max(pool.map(total, list(range(8)) * 4)) == 0.0


@pytest.mark.parametrize("float16", [False, True])
def test_write_stack_round_trip(tmp_path: Path, float16: bool) -> None:
    rng = np.random.default_rng(7)
    images = rng.normal(3.0, 2.0, size=(5, 24, 24)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    write_stack(path, images, 1.75, float16=float16)
    stored = images.astype(np.float16) if float16 else images
    assert _validate(path)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == (12 if float16 else 2)
        assert mrc.is_image_stack()
        assert mrc.data.shape == (5, 24, 24)
        np.testing.assert_array_equal(mrc.data, stored)
        assert float(mrc.voxel_size.x) == pytest.approx(1.75)
        assert float(mrc.voxel_size.y) == pytest.approx(1.75)
        values = stored.astype(np.float64)
        assert float(mrc.header.dmin) == pytest.approx(values.min(), rel=1e-6)
        assert float(mrc.header.dmax) == pytest.approx(values.max(), rel=1e-6)
        assert float(mrc.header.dmean) == pytest.approx(values.mean(), rel=1e-5)
        assert float(mrc.header.rms) == pytest.approx(values.std(), rel=1e-4)
    np.testing.assert_array_equal(read_stack(path), stored)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mrcs"]


def test_stack_writer_in_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    images = rng.normal(size=(7, 16, 16)).astype(np.float32)
    path = tmp_path / "chunks.mrcs"
    with StackWriter(path, 7, (16, 16), 2.0) as writer:
        assert not path.exists()  # published only on close
        for start in range(0, 7, 3):
            writer.write(images[start : start + 3])
    assert _validate(path)
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert float(mrc.header.dmin) == pytest.approx(float(images.min()))
        assert float(mrc.header.dmax) == pytest.approx(float(images.max()))
        assert float(mrc.header.dmean) == pytest.approx(
            float(images.mean(dtype=np.float64)), abs=1e-6
        )


def test_aborted_stack_writer_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "aborted.mrcs"
    with pytest.raises(RuntimeError, match="boom"):
        with StackWriter(path, 4, (8, 8), 1.0) as writer:
            writer.write(np.zeros((2, 8, 8), dtype=np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # too few images written: close refuses and cleans up
    with pytest.raises(ValueError):
        with StackWriter(path, 4, (8, 8), 1.0) as writer:
            writer.write(np.zeros((3, 8, 8), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
    # too many images or wrong shape: refused
    with pytest.raises(ValueError):
        with StackWriter(path, 1, (8, 8), 1.0) as writer:
            writer.write(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError):
        with StackWriter(path, 1, (8, 8), 1.0) as writer:
            writer.write(np.zeros((1, 8, 6), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def test_aborted_writer_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.mrcs"
    old = np.ones((2, 8, 8), dtype=np.float32)
    write_stack(path, old, 1.0)
    with pytest.raises(RuntimeError):
        with StackWriter(path, 2, (8, 8), 1.0) as writer:
            writer.write(np.zeros((1, 8, 8), dtype=np.float32))
            raise RuntimeError
    np.testing.assert_array_equal(read_stack(path), old)
