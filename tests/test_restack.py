"""``cryoextract restack`` / ``downsample`` on the real particle stacks in ``../shared/data``.

Oracles: images read here with mrcfile (restack must copy them bit for bit, in STAR
order), a naive ``np.fft`` Fourier crop written here (downsample), and RELION 3.1's
``relion_image_handler --rescale_angpix`` / ``relion_stack_create`` when installed.

Note: every real stack in ``../shared/data/real`` is MRC mode 2 (float32; the README's
float16 RELION 5 Extract job is not in the copy), so the float16 cases use mode-12
copies of the same real images, made here with mrcfile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import typer
from typer.testing import CliRunner

from conftest import cli_app
from cryoextract.cli.stacks import downsample_command, restack_command
from cryoextract.errors import InputError, ParameterError
from cryoextract.io.images import image_key, locate_images, parse_image_name, read_images
from cryoextract.io.particles import read_particles
from cryoextract.pipeline.frame import JobLock, JobLockedError
from cryoextract.pipeline.stacks.restack import downsample, restack
from relion_oracle import require_relion
from shared_data import REAL, require_paths

# name -> (particles STAR, the stack its rlnImageName points at), under REAL
DATASETS = {
    "relion31": ("cryodrgn_4.3.1_sdist/relion31.star", "cryodrgn_4.3.1_sdist/relion31.mrcs"),
    "sta_bin8_relion30": (
        "cryodrgn_4.3.1_sdist/sta_testing_bin8.star",
        "cryodrgn_4.3.1_sdist/ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs",
    ),
    "trpv1": ("cryojax_trpv1/trpv1_small_stack.star", "cryojax_trpv1/trpv1_small_stack.mrcs"),
    "aspire": (
        "aspire_python/tests/saved_test_data/sample_particles_relion31.star",
        "aspire_python/tests/saved_test_data/sample.mrcs",
    ),
    "empiar10076_relion30": (
        "cryodrgn_4.3.1_sdist/empiar_10076_7.star", "cryodrgn_4.3.1_sdist/empiar_10076_7.mrc",
    ),
}


def _stage(name: str, root: Path, *, float16: bool = False) -> Path:
    """Copy a dataset into ``root/name``: its STAR, and its stack where the STAR says."""
    star_rel, stack_rel = DATASETS[name]
    require_paths(REAL / star_rel, REAL / stack_rel)
    folder = root / name
    folder.mkdir(parents=True)
    star = folder / Path(star_rel).name
    shutil.copy(REAL / star_rel, star)
    names = _block(star)["rlnImageName"].astype(str)
    for path in {n.split("@")[-1].strip() for n in names}:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if float16:
            with mrcfile.new(target, overwrite=True) as handle:
                handle.set_data(_read_all(REAL / stack_rel).astype(np.float16))
        else:
            shutil.copy(REAL / stack_rel, target)
    return star


def _block(star: Path) -> pd.DataFrame:
    blocks = starfile.read(star, always_dict=True)
    return blocks.get("particles", next(iter(blocks.values())))


def _read_all(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.mmap(path, permissive=True) as handle:
            data = np.array(handle.data)
    return data if data.ndim == 3 else data[None]


def _mode(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True, header_only=True) as handle:
            return int(handle.header.mode)


def _images(folder: Path, names) -> np.ndarray:
    """The images named ``NNNNNN@path`` (paths relative to ``folder``), read here."""
    cache: dict[str, np.ndarray] = {}
    out = []
    for name in names:
        number, path = str(name).split("@") if "@" in str(name) else ("1", str(name))
        path = path.strip()
        if path not in cache:
            cache[path] = _read_all(folder / path)
        out.append(cache[path][int(number) - 1])
    return np.stack(out)


def _bits(images: np.ndarray) -> np.ndarray:
    return images.view(np.uint16 if images.dtype == np.float16 else np.uint32)


def _naive_crop(image: np.ndarray, m: int) -> np.ndarray:
    """Oracle: rfft2, keep rows 0..m/2 and n-m/2+1..n-1 and columns 0..m/2, scale (m/n)^2."""
    n = image.shape[-1]
    spectrum = np.fft.rfft2(np.asarray(image, dtype=np.float64))
    kept = np.concatenate([spectrum[: m // 2 + 1, : m // 2 + 1],
                           spectrum[n - m // 2 + 1 :, : m // 2 + 1]])
    return np.fft.irfft2(kept, s=(m, m)) * (m / n) ** 2


def _out_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    blocks = starfile.read(out / "particles.star", always_dict=True)
    return blocks["optics"], blocks["particles"]


# --------------------------------------------------------------------------- names
def test_parse_image_name_digits_and_bare_paths():
    assert parse_image_name("000012@Particles/a.mrcs") == (11, "Particles/a.mrcs")
    assert parse_image_name("00000012@a.mrcs") == (11, "a.mrcs")  # RELION >= 5.0.1
    assert parse_image_name("7@ a b.mrcs ") == (6, "a b.mrcs")
    assert parse_image_name("single.mrc") == (None, "single.mrc")
    for bad in ("", "0@a.mrcs", "x1@a.mrcs", "12@", "-1@a.mrcs"):
        with pytest.raises(ValueError):
            parse_image_name(bad)
    assert image_key("12@./a/b.mrcs") == image_key("000012@a/b.mrcs") == (11, "a/b.mrcs")


def test_read_images_batches_in_table_order_keep_dtype(tmp_path):
    star = _stage("trpv1", tmp_path, float16=True)
    names = _block(star)["rlnImageName"].astype(str)
    table = pd.DataFrame({"rlnImageName": [*names[::-1], names[2], "3@nothere.mrcs"]})
    locations = locate_images(table["rlnImageName"], [star.parent])
    assert locations.problem[-1] == "stack not found"
    batches = list(read_images(table, [star.parent], locations=locations,
                               max_batch_bytes=3 * 48 * 48 * 4))
    rows = np.concatenate([r for r, _ in batches])
    assert rows.tolist() == list(range(len(table) - 1))
    assert max(len(r) for r, _ in batches) == 3
    images = np.concatenate([b for _, b in batches])
    assert images.dtype == np.float16
    expected = _images(star.parent, table["rlnImageName"][:-1])
    assert np.array_equal(_bits(images), _bits(expected))


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("reverse", [False, True])
def test_read_images_in_any_order_and_byte_order(tmp_path, byte_order, reverse):
    """Batches of 7 images hold the requested images, in file order and reversed, from
    native and big-endian stacks."""
    pixels = np.arange(40 * 6 * 5, dtype=np.float32).reshape(40, 6, 5)
    with mrcfile.new(tmp_path / "s.mrcs") as mrc:
        mrc.set_data(pixels.astype(f"{byte_order}f4"))
    order = np.arange(40)[::-1] if reverse else np.arange(40)
    table = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@s.mrcs" for i in order]})
    seen = []
    for rows, images in read_images(table, [tmp_path], max_batch_bytes=7 * 6 * 5 * 4):
        assert len(rows) <= 7 and np.array_equal(images, pixels[order[rows]])
        seen.extend(rows)
    assert seen == list(range(40))


# --------------------------------------------------------------------------- restack
def _as_written_from(base: Path, star: Path, names) -> list[str]:
    """Image names of ``star`` (relative to its folder) as a STAR written from ``base``
    names them (RELION's way: relative to the working directory), index part kept."""
    out = []
    for name in names:
        number, at, path = str(name).partition("@")
        full = os.path.normpath(star.parent / path.strip())
        out.append(f"{number}{at}{Path(os.path.relpath(full, base)).as_posix()}")
    return out


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_restack_real_stacks_bit_exact(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a project directory: written names are relative to it
    star = _stage(name, tmp_path)
    (stack_rel,) = {DATASETS[name][1]}
    assert _mode(REAL / stack_rel) == 2  # the real stacks are float32
    out = tmp_path / "out"
    summary = restack(star, out, batch_size=4)
    source = _block(star)
    optics, particles = _out_tables(out)
    assert summary.particles_written == len(source) == len(particles)
    assert summary.particles_skipped == {}
    assert len(summary.stacks) == -(-len(source) // 4)
    assert all(_mode(Path(s)) == 2 for s in summary.stacks)
    ours = _images(tmp_path, particles["rlnImageName"])
    theirs = _images(star.parent, source["rlnImageName"])
    assert np.array_equal(_bits(ours), _bits(theirs))
    # every column kept, the old name recorded, names relative to the working directory
    old = "rlnImageOriginalName"
    if old in source.columns:
        assert list(particles[old]) == list(source[old])
    else:
        assert list(particles[old]) == _as_written_from(tmp_path, star, source["rlnImageName"])
    assert particles["rlnImageName"].iloc[4] == "000001@out/Particles/batch_000001.mrcs"
    for column in source.columns:
        if column in ("rlnImageName", "rlnMagnification", "rlnDetectorPixelSize"):
            continue  # RELION 3.0's pixel size becomes rlnImagePixelSize in data_optics
        if column not in particles.columns:  # RELION 3.0 optics columns moved to data_optics
            assert set(optics[column]) == set(source[column]), column
            continue
        assert list(particles[column].astype(str)) == list(source[column].astype(str)), column
    assert int(optics["rlnImageSize"].iloc[0]) == theirs.shape[-1]


def test_restack_float16_copies_bit_exact_and_mode_kept(tmp_path):
    star = _stage("sta_bin8_relion30", tmp_path, float16=True)
    source = _block(star)
    summary = restack(star, tmp_path / "out", batch_size=100)
    assert summary.float16 and [_mode(Path(s)) for s in summary.stacks] == [12, 12, 12]
    _, particles = _out_tables(tmp_path / "out")
    ours = _images(tmp_path / "out", particles["rlnImageName"])
    theirs = _images(star.parent, source["rlnImageName"])
    assert ours.dtype == theirs.dtype == np.float16
    assert np.array_equal(_bits(ours), _bits(theirs))
    # float16 -> float32 is exact too; float32 -> float16 only when asked
    restack(star, tmp_path / "f32", float16=False)
    _, particles = _out_tables(tmp_path / "f32")
    wide = _images(tmp_path / "f32", particles["rlnImageName"])
    assert wide.dtype == np.float32 and np.array_equal(wide, theirs.astype(np.float32))


def test_restack_float32_to_float16_on_request(tmp_path):
    star = _stage("trpv1", tmp_path)
    summary = restack(star, tmp_path / "out", float16=True)
    assert summary.float16 and _mode(Path(summary.stacks[0])) == 12
    _, particles = _out_tables(tmp_path / "out")
    ours = _images(tmp_path / "out", particles["rlnImageName"])
    theirs = _images(star.parent, _block(star)["rlnImageName"])
    assert np.array_equal(_bits(ours), _bits(theirs.astype(np.float16)))


def _merged(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """One STAR interleaving a float16 and a float32 real stack of 64 px images."""
    classes = REAL / "relion5_betagal_tutorial_sppractice/Class2D/job010/run_it025_classes.mrcs"
    ribo = REAL / DATASETS["sta_bin8_relion30"][1]
    require_paths(classes, ribo)
    folder = tmp_path / "merged"
    (folder / "Stacks").mkdir(parents=True)
    shutil.copy(classes, folder / "Stacks/classes.mrcs")
    with mrcfile.new(folder / "Stacks/ribo16.mrcs") as handle:
        handle.set_data(_read_all(ribo).astype(np.float16))
    rng = np.random.default_rng(1)
    a = [f"{i:06d}@Stacks/classes.mrcs" for i in rng.permutation(50)[:30] + 1]
    b = [f"{i:08d}@Stacks/ribo16.mrcs" for i in rng.permutation(220)[:30] + 1]
    names = [n for pair in zip(a, b, strict=True) for n in pair]
    particles = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1,
                              "rlnClassNumber": np.arange(60) % 7 + 1,
                              "rlnOriginXAngst": rng.normal(size=60)})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [3.54], "rlnImageSize": [64],
                           "rlnImageDimensionality": [2], "rlnVoltage": [200.0]})
    star = folder / "merged.star"
    starfile.write({"optics": optics, "particles": particles}, star)
    return star, particles


def test_restack_many_interleaved_stacks_with_selection(tmp_path, monkeypatch):
    star, particles = _merged(tmp_path)
    monkeypatch.chdir(star.parent)  # names relative to the working directory
    summary = restack(star.name, tmp_path / "all", batch_size=7)
    assert summary.particles_written == 60 and not summary.float16  # mixed -> float32
    _, out = _out_tables(tmp_path / "all")
    ours = _images(tmp_path / "all", out["rlnImageName"])
    theirs = _images(star.parent, particles["rlnImageName"])
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs.astype(np.float32))
    np.testing.assert_array_equal(out["rlnClassNumber"], particles["rlnClassNumber"])

    # --select: names written differently (fewer digits, ./) still match
    keep = [5, 6, 17, 40, 59]
    subset = particles.iloc[keep[::-1]].copy()
    subset["rlnImageName"] = [
        f"{int(n.split('@')[0])}@./{n.split('@')[1]}" for n in subset["rlnImageName"]
    ]
    starfile.write({"particles": subset}, tmp_path / "subset.star")
    summary = restack(star.name, tmp_path / "sel", select=tmp_path / "subset.star")
    _, out = _out_tables(tmp_path / "sel")
    assert summary.particles_selected == summary.particles_written == 5
    assert list(out["rlnImageOriginalName"]) == list(particles["rlnImageName"].iloc[keep])
    assert np.array_equal(_images(tmp_path / "sel", out["rlnImageName"]),
                          theirs[keep].astype(np.float32))

    # --indices: text with comments and commas, and .npy
    (tmp_path / "ind.txt").write_text("# keep these\n59, 0\n3 3\n")
    restack(star.name, tmp_path / "ind", indices=tmp_path / "ind.txt")
    _, out = _out_tables(tmp_path / "ind")
    assert list(out["rlnImageOriginalName"]) == list(particles["rlnImageName"].iloc[[0, 3, 59]])
    np.save(tmp_path / "ind.npy", np.array([2, 1]))
    restack(star.name, tmp_path / "npy", indices=tmp_path / "ind.npy")
    assert len(_out_tables(tmp_path / "npy")[1]) == 2
    (tmp_path / "bad.txt").write_text("60\n")
    with pytest.raises(InputError, match=r"bad\.txt"):
        restack(star.name, tmp_path / "bad", indices=tmp_path / "bad.txt")


def test_restack_skips_and_reports_bad_particles(tmp_path):
    star = _stage("trpv1", tmp_path)
    folder = star.parent
    raw = (folder / "batch_0_restacked.mrc").read_bytes()
    (folder / "truncated.mrcs").write_bytes(raw[:-1000])
    with mrcfile.new(folder / "big.mrcs") as handle:
        handle.set_data(np.zeros((2, 64, 64), np.float32))
    optics, particles = (starfile.read(star, always_dict=True)[k] for k in ("optics", "particles"))
    extra = particles.iloc[[0] * 5].copy()
    extra["rlnImageName"] = ["000011@./batch_0_restacked.mrc", "000001@missing.mrcs",
                             "abc@batch_0_restacked.mrc", "000001@truncated.mrcs",
                             "000002@big.mrcs"]
    table = pd.concat([particles.iloc[:3], extra, particles.iloc[3:]], ignore_index=True)
    starfile.write({"optics": optics, "particles": table}, folder / "bad.star")
    summary = restack(folder / "bad.star", tmp_path / "out")
    assert summary.particles_written == 10
    assert summary.particles_skipped == {
        "bad image name": 1, "image size differs from its optics group": 1,
        "index out of range": 1, "stack not found": 1, "unreadable stack": 1,
    }
    rejected = pd.read_csv(tmp_path / "out/rejected_particles.tsv", sep="\t")
    assert rejected["row"].tolist() == [3, 4, 5, 6, 7]
    _, out = _out_tables(tmp_path / "out")
    assert np.array_equal(_images(tmp_path / "out", out["rlnImageName"]),
                          _read_all(folder / "batch_0_restacked.mrc"))


def test_restack_errors_name_the_file(tmp_path):
    star = _stage("trpv1", tmp_path)
    garbage = tmp_path / "garbage.star"
    garbage.write_text("data_\nloop_\n_rlnImageName #1\n")
    with pytest.raises(InputError, match=r"garbage\.star"):
        restack(garbage, tmp_path / "o1")
    with pytest.raises(InputError, match=r"missing\.star"):
        restack(tmp_path / "missing.star", tmp_path / "o1")
    optics, particles = (starfile.read(star, always_dict=True)[k] for k in ("optics", "particles"))
    particles["rlnImageName"] = "000001@elsewhere.mrcs"
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "none.star")
    with pytest.raises(InputError, match=r"none.star.*elsewhere.mrcs.*stack not found"):
        restack(tmp_path / "none.star", tmp_path / "o2")
    restack(star, tmp_path / "o3")
    with pytest.raises(ParameterError, match="not empty"):
        restack(star, tmp_path / "o3")
    # restacking a previous output into itself would destroy its input stacks
    with pytest.raises(ParameterError, match="choose another"):
        restack(tmp_path / "o3/particles.star", tmp_path / "o3", overwrite=True)
    # ... into another directory works, names resolved beside the STAR
    summary = restack(tmp_path / "o3/particles.star", tmp_path / "o4", batch_size=3)
    assert summary.particles_written == 10
    with pytest.raises(InputError, match=r"x\.cs"):  # a .cs input that is not there
        restack(tmp_path / "x.cs", tmp_path / "o5")


def test_a_run_on_an_out_in_use_is_refused_and_changes_nothing(tmp_path):
    """A second run on the same --out, even with --overwrite, is refused while the first
    holds the folder (it used to delete the first run's stacks)."""
    star = _stage("trpv1", tmp_path)
    out = tmp_path / "out"
    restack(star, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with JobLock(out):  # the run in progress
        with pytest.raises(JobLockedError, match="in use"):
            restack(star, out, overwrite=True)
        with pytest.raises(JobLockedError, match="in use"):
            downsample(star, out, box_px=16, overwrite=True)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_an_optics_group_listed_twice_or_not_a_number_is_one_line(tmp_path):
    star = _stage("trpv1", tmp_path)
    optics, particles = (starfile.read(star, always_dict=True)[k] for k in ("optics", "particles"))
    starfile.write({"optics": pd.concat([optics, optics]), "particles": particles},
                   tmp_path / "twice.star")
    with pytest.raises(InputError, match=r"twice\.star: data_optics lists optics group \d+ twice"):
        restack(tmp_path / "twice.star", tmp_path / "o1")
    particles["rlnOpticsGroup"] = particles["rlnOpticsGroup"].astype(object)
    particles.loc[2, "rlnOpticsGroup"] = "one"
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "word.star")
    with pytest.raises(InputError, match=r"word\.star: particle 3: rlnOpticsGroup 'one'"):
        restack(tmp_path / "word.star", tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_cs_input(tmp_path):
    star = _stage("empiar10076_relion30", tmp_path)
    shutil.copy(REAL / "cryodrgn_4.3.1_sdist/empiar_10076_7.cs", star.parent)
    summary = restack(star.parent / "empiar_10076_7.cs", tmp_path / "out")
    _, out = _out_tables(tmp_path / "out")
    assert summary.particles_written == 7
    assert np.array_equal(_images(tmp_path / "out", out["rlnImageName"]),
                          _read_all(star.parent / "empiar_10076_7.mrc"))


def test_relion30_star_converted_like_relion31(tmp_path):
    star = _stage("empiar10076_relion30", tmp_path)
    source = starfile.read(star, always_dict=True)[""]
    source["rlnOriginX"] = np.arange(7) * 0.5  # pixels in RELION 3.0
    starfile.write({"": source}, star, overwrite=True)
    table = read_particles(star)
    assert table.optics["rlnImagePixelSize"].tolist() == pytest.approx([1e4 * 5 / 38168])
    assert "rlnMagnification" not in table.particles.columns
    restack(star, tmp_path / "out")
    optics, particles = _out_tables(tmp_path / "out")
    assert optics["rlnOpticsGroupName"].tolist() == ["opticsGroup1"]
    assert optics["rlnImageSize"].tolist() == [320]
    assert optics["rlnVoltage"].tolist() == [300.0]
    np.testing.assert_allclose(particles["rlnOriginXAngst"], np.arange(7) * 0.5 * 5e4 / 38168,
                               atol=1e-6)


def test_relion_reads_our_stacks_identically(tmp_path):
    require_relion("relion_stack_create")
    star = _stage("trpv1", tmp_path)
    restack(star, tmp_path / "out", batch_size=4)
    result = subprocess.run(
        ["relion_stack_create", "--i", "particles.star", "--o", str(tmp_path / "relion")],
        cwd=tmp_path / "out", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert np.array_equal(_read_all(tmp_path / "relion.mrcs"),
                          _read_all(star.parent / "batch_0_restacked.mrc"))


# --------------------------------------------------------------------------- downsample
@pytest.mark.parametrize(("name", "float16"), [
    ("relion31", False), ("trpv1", False), ("aspire", False), ("sta_bin8_relion30", True),
])
def test_downsample_equals_naive_fourier_crop(tmp_path, name, float16):
    star = _stage(name, tmp_path, float16=float16)
    source = _block(star)
    theirs = _images(star.parent, source["rlnImageName"])
    n = theirs.shape[-1]
    m = n // 2 + 2 - (n // 2 + 2) % 2
    summary = downsample(star, tmp_path / "out", box_px=m, float16=False, batch_size=6)
    optics, particles = _out_tables(tmp_path / "out")
    ours = _images(tmp_path / "out", particles["rlnImageName"])
    assert ours.shape == (len(source), m, m) and ours.dtype == np.float32
    for image, original in zip(ours, theirs, strict=True):
        oracle = _naive_crop(original, m)
        np.testing.assert_allclose(image, oracle, rtol=0, atol=1e-5 * np.abs(oracle).max())
    # pixel sizes updated exactly per optics group, origins (Angstrom) unchanged
    before = read_particles(star).optics.set_index("rlnOpticsGroup")["rlnImagePixelSize"]
    for row in optics.itertuples():
        assert row.rlnImageSize == m
        assert row.rlnImagePixelSize == pytest.approx(before[row.rlnOpticsGroup] * n / m,
                                                      abs=1e-6)
        group = summary.pixel_size_angstrom[row.rlnOpticsGroupName]
        assert group[1] == before[row.rlnOpticsGroup] * n / m  # exact in the summary
    if "rlnOriginXAngst" in source.columns:
        np.testing.assert_allclose(particles["rlnOriginXAngst"], source["rlnOriginXAngst"],
                                   atol=1e-6)


def test_downsample_keeps_float16_and_targets_pixel_size(tmp_path):
    star = _stage("sta_bin8_relion30", tmp_path, float16=True)
    # 64 px at 1.96 A to about 3.0 A: 64 * 1.96 / 3 = 41.8 -> 42 px, exactly 2.986667 A
    summary = downsample(star, tmp_path / "out", pixel_size_angstrom=3.0)
    assert summary.float16 and _mode(Path(summary.stacks[0])) == 12
    assert summary.box_px == {"opticsGroup1": [64, 42]}
    assert summary.pixel_size_angstrom["opticsGroup1"][1] == 1.96 * 64 / 42
    optics, particles = _out_tables(tmp_path / "out")
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(1.96 * 64 / 42, abs=1e-6)
    ours = _images(tmp_path / "out", particles["rlnImageName"]).astype(np.float32)
    theirs = _images(star.parent, _block(star)["rlnImageName"])
    oracle = np.stack([_naive_crop(t, 42) for t in theirs])
    np.testing.assert_allclose(ours, oracle, rtol=2e-3, atol=2e-3 * np.abs(oracle).max())
    with pytest.raises(ParameterError, match="only downsamples"):
        downsample(star, tmp_path / "up", pixel_size_angstrom=1.0)
    with pytest.raises(ParameterError, match="exactly one"):
        downsample(star, tmp_path / "up", box_px=32, pixel_size_angstrom=3.0)


def test_downsample_recenter_moves_by_rounded_shift(tmp_path):
    n, apix, mic_apix = 64, 2.0, 1.0
    offsets_px = np.array([[7.3, -4.5], [-2.5, 0.2], [0.0, 11.7]])  # (x, y), input pixels
    yy, xx = np.mgrid[0:n, 0:n]
    rng = np.random.default_rng(0)
    images = []
    for ox, oy in offsets_px:  # the particle lies at N/2 - origin (docs: "Origins")
        blob = np.exp(-((xx - (n / 2 - ox)) ** 2 + (yy - (n / 2 - oy)) ** 2) / (2 * 2.5**2))
        images.append((blob + 0.01 * rng.normal(size=(n, n))).astype(np.float32))
    with mrcfile.new(tmp_path / "p.mrcs") as handle:
        handle.set_data(np.stack(images))
    particles = pd.DataFrame({
        "rlnImageName": [f"{k + 1:06d}@p.mrcs" for k in range(3)],
        "rlnCoordinateX": [1000.0] * 3, "rlnCoordinateY": [500.0] * 3,
        "rlnOriginXAngst": offsets_px[:, 0] * apix, "rlnOriginYAngst": offsets_px[:, 1] * apix,
        "rlnOpticsGroup": 1,
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"],
                           "rlnImagePixelSize": [apix], "rlnImageSize": [n],
                           "rlnMicrographOriginalPixelSize": [mic_apix]})
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "p.star")
    summary = downsample(tmp_path / "p.star", tmp_path / "out", box_px=32, recenter=True)
    assert summary.recentered == 3
    _, out = _out_tables(tmp_path / "out")
    steps = np.array([[7, -5], [-3, 0], [0, 12]])  # RELION ROUND: halves away from zero
    residual = offsets_px - steps
    np.testing.assert_allclose(out["rlnOriginXAngst"], residual[:, 0] * apix, atol=1e-6)
    np.testing.assert_allclose(out["rlnOriginYAngst"], residual[:, 1] * apix, atol=1e-6)
    np.testing.assert_allclose(out["rlnCoordinateX"], 1000 - steps[:, 0] * apix / mic_apix)
    # the particle's micrograph position x - origin / mic_apix is unchanged
    np.testing.assert_allclose(out["rlnCoordinateY"] - out["rlnOriginYAngst"] / mic_apix,
                               500 - offsets_px[:, 1] * apix / mic_apix, atol=1e-5)
    ours = _images(tmp_path / "out", out["rlnImageName"])
    for image, original, (sx, sy) in zip(ours, images, steps, strict=True):
        oracle = _naive_crop(np.roll(original, (sy, sx), axis=(0, 1)), 32)
        np.testing.assert_allclose(image, oracle, atol=1e-5 * np.abs(oracle).max())
    # without cropping the blob now sits at N/2 - residual
    downsample(tmp_path / "p.star", tmp_path / "same", box_px=n, recenter=True)
    _, out = _out_tables(tmp_path / "same")
    for image, (rx, ry) in zip(_images(tmp_path / "same", out["rlnImageName"]), residual,
                               strict=True):
        weight = np.where(image > 0.2, image, 0.0)
        centre = (np.sum(yy * weight) / weight.sum(), np.sum(xx * weight) / weight.sum())
        np.testing.assert_allclose(centre, (n / 2 - ry, n / 2 - rx), atol=0.05)


def test_downsample_matches_relion_image_handler_rescale(tmp_path):
    require_relion("relion_image_handler")
    star = _stage("trpv1", tmp_path)
    stack = star.parent / "trpv1.mrcs"
    shutil.copy(star.parent / "batch_0_restacked.mrc", stack)  # .mrcs: RELION reads a stack
    result = subprocess.run(
        ["relion_image_handler", "--i", str(stack), "--o", str(tmp_path / "relion.mrcs"),
         "--angpix", "4.88", "--rescale_angpix", "6.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    relion = _read_all(tmp_path / "relion.mrcs")
    summary = downsample(star, tmp_path / "out", pixel_size_angstrom=6.1)
    assert summary.box_px["opticsGroup7"] == [48, relion.shape[-1]] == [48, 38]
    with mrcfile.open(tmp_path / "relion.mrcs") as handle:
        relion_apix = float(handle.voxel_size.x)
    assert summary.pixel_size_angstrom["opticsGroup7"][1] == pytest.approx(relion_apix, 1e-5)
    _, out = _out_tables(tmp_path / "out")
    ours = _images(tmp_path / "out", out["rlnImageName"])
    np.testing.assert_allclose(ours, relion, rtol=0, atol=1e-5 * np.abs(relion).max())


# --------------------------------------------------------------------------- command line
def _app() -> typer.Typer:
    return cli_app({"restack": restack_command, "downsample": downsample_command})


def test_cli_restack_and_downsample(tmp_path):
    star = _stage("trpv1", tmp_path)
    runner = CliRunner()
    result = runner.invoke(_app(), ["restack", "--particles", str(star), "--out",
                                    str(tmp_path / "r"), "--batch-size", "3", "--float16"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "r/Particles").glob("*.mrcs"))) == 4
    result = runner.invoke(_app(), ["downsample", "--particles", str(star), "--out",
                                    str(tmp_path / "d"), "--bin-to", "24", "--recenter"])
    assert result.exit_code == 0, result.output
    assert _out_tables(tmp_path / "d")[0]["rlnImageSize"].tolist() == [24]
    result = runner.invoke(_app(), ["downsample", "--particles", str(star), "--out",
                                    str(tmp_path / "e"), "--box", "23"])
    assert result.exit_code == 2
    assert "error:" in result.output and "even" in result.output
    result = runner.invoke(_app(), ["restack", "--particles", str(tmp_path / "no.star"),
                                    "--out", str(tmp_path / "f")])
    assert result.exit_code == 2 and "no.star" in result.output
    assert len(result.output.strip().splitlines()) == 1
