"""``cryoextract restack`` on the real particle stacks in ``../shared/data`` (staged by
``stack_data.py``; ``downsample`` in ``test_downsample.py``), and reading images by name.

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
from stack_data import (
    DATASETS,
    bits_of,
    mrc_mode,
    out_tables,
    read_stack,
    stage,
    staged_images,
    star_block,
)


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
    star = stage("trpv1", tmp_path, float16=True)
    names = star_block(star)["rlnImageName"].astype(str)
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
    expected = staged_images(star.parent, table["rlnImageName"][:-1])
    assert np.array_equal(bits_of(images), bits_of(expected))


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
    star = stage(name, tmp_path)
    (stack_rel,) = {DATASETS[name][1]}
    assert mrc_mode(REAL / stack_rel) == 2  # the real stacks are float32
    out = tmp_path / "out"
    summary = restack(star, out, batch_size=4)
    source = star_block(star)
    optics, particles = out_tables(out)
    assert summary.particles_written == len(source) == len(particles)
    assert summary.particles_skipped == {}
    assert len(summary.stacks) == -(-len(source) // 4)
    assert all(mrc_mode(Path(s)) == 2 for s in summary.stacks)
    ours = staged_images(tmp_path, particles["rlnImageName"])
    theirs = staged_images(star.parent, source["rlnImageName"])
    assert np.array_equal(bits_of(ours), bits_of(theirs))
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
    star = stage("sta_bin8_relion30", tmp_path, float16=True)
    source = star_block(star)
    summary = restack(star, tmp_path / "out", batch_size=100)
    assert summary.float16 and [mrc_mode(Path(s)) for s in summary.stacks] == [12, 12, 12]
    _, particles = out_tables(tmp_path / "out")
    ours = staged_images(tmp_path / "out", particles["rlnImageName"])
    theirs = staged_images(star.parent, source["rlnImageName"])
    assert ours.dtype == theirs.dtype == np.float16
    assert np.array_equal(bits_of(ours), bits_of(theirs))
    # float16 -> float32 is exact too; float32 -> float16 only when asked
    restack(star, tmp_path / "f32", float16=False)
    _, particles = out_tables(tmp_path / "f32")
    wide = staged_images(tmp_path / "f32", particles["rlnImageName"])
    assert wide.dtype == np.float32 and np.array_equal(wide, theirs.astype(np.float32))


def test_restack_float32_to_float16_on_request(tmp_path):
    star = stage("trpv1", tmp_path)
    summary = restack(star, tmp_path / "out", float16=True)
    assert summary.float16 and mrc_mode(Path(summary.stacks[0])) == 12
    _, particles = out_tables(tmp_path / "out")
    ours = staged_images(tmp_path / "out", particles["rlnImageName"])
    theirs = staged_images(star.parent, star_block(star)["rlnImageName"])
    assert np.array_equal(bits_of(ours), bits_of(theirs.astype(np.float16)))


def _merged(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """One STAR interleaving a float16 and a float32 real stack of 64 px images."""
    classes = REAL / "relion5_betagal_tutorial_sppractice/Class2D/job010/run_it025_classes.mrcs"
    ribo = REAL / DATASETS["sta_bin8_relion30"][1]
    require_paths(classes, ribo)
    folder = tmp_path / "merged"
    (folder / "Stacks").mkdir(parents=True)
    shutil.copy(classes, folder / "Stacks/classes.mrcs")
    with mrcfile.new(folder / "Stacks/ribo16.mrcs") as handle:
        handle.set_data(read_stack(ribo).astype(np.float16))
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
    _, out = out_tables(tmp_path / "all")
    ours = staged_images(tmp_path / "all", out["rlnImageName"])
    theirs = staged_images(star.parent, particles["rlnImageName"])
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
    _, out = out_tables(tmp_path / "sel")
    assert summary.particles_selected == summary.particles_written == 5
    assert list(out["rlnImageOriginalName"]) == list(particles["rlnImageName"].iloc[keep])
    assert np.array_equal(staged_images(tmp_path / "sel", out["rlnImageName"]),
                          theirs[keep].astype(np.float32))

    # --indices: text with comments and commas, and .npy
    (tmp_path / "ind.txt").write_text("# keep these\n59, 0\n3 3\n")
    restack(star.name, tmp_path / "ind", indices=tmp_path / "ind.txt")
    _, out = out_tables(tmp_path / "ind")
    assert list(out["rlnImageOriginalName"]) == list(particles["rlnImageName"].iloc[[0, 3, 59]])
    np.save(tmp_path / "ind.npy", np.array([2, 1]))
    restack(star.name, tmp_path / "npy", indices=tmp_path / "ind.npy")
    assert len(out_tables(tmp_path / "npy")[1]) == 2
    (tmp_path / "bad.txt").write_text("60\n")
    with pytest.raises(InputError, match=r"bad\.txt"):
        restack(star.name, tmp_path / "bad", indices=tmp_path / "bad.txt")


def test_restack_skips_and_reports_bad_particles(tmp_path):
    star = stage("trpv1", tmp_path)
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
    _, out = out_tables(tmp_path / "out")
    assert np.array_equal(staged_images(tmp_path / "out", out["rlnImageName"]),
                          read_stack(folder / "batch_0_restacked.mrc"))


def test_restack_errors_name_the_file(tmp_path):
    star = stage("trpv1", tmp_path)
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
    star = stage("trpv1", tmp_path)
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
    star = stage("trpv1", tmp_path)
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
    star = stage("empiar10076_relion30", tmp_path)
    shutil.copy(REAL / "cryodrgn_4.3.1_sdist/empiar_10076_7.cs", star.parent)
    summary = restack(star.parent / "empiar_10076_7.cs", tmp_path / "out")
    _, out = out_tables(tmp_path / "out")
    assert summary.particles_written == 7
    assert np.array_equal(staged_images(tmp_path / "out", out["rlnImageName"]),
                          read_stack(star.parent / "empiar_10076_7.mrc"))


def test_relion30_star_converted_like_relion31(tmp_path):
    star = stage("empiar10076_relion30", tmp_path)
    source = starfile.read(star, always_dict=True)[""]
    source["rlnOriginX"] = np.arange(7) * 0.5  # pixels in RELION 3.0
    starfile.write({"": source}, star, overwrite=True)
    table = read_particles(star)
    assert table.optics["rlnImagePixelSize"].tolist() == pytest.approx([1e4 * 5 / 38168])
    assert "rlnMagnification" not in table.particles.columns
    restack(star, tmp_path / "out")
    optics, particles = out_tables(tmp_path / "out")
    assert optics["rlnOpticsGroupName"].tolist() == ["opticsGroup1"]
    assert optics["rlnImageSize"].tolist() == [320]
    assert optics["rlnVoltage"].tolist() == [300.0]
    np.testing.assert_allclose(particles["rlnOriginXAngst"], np.arange(7) * 0.5 * 5e4 / 38168,
                               atol=1e-6)


def test_relion_reads_our_stacks_identically(tmp_path):
    require_relion("relion_stack_create")
    star = stage("trpv1", tmp_path)
    restack(star, tmp_path / "out", batch_size=4)
    result = subprocess.run(
        ["relion_stack_create", "--i", "particles.star", "--o", str(tmp_path / "relion")],
        cwd=tmp_path / "out", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read_stack(tmp_path / "relion.mrcs"),
                          read_stack(star.parent / "batch_0_restacked.mrc"))


# --------------------------------------------------------------------------- command line
def _app() -> typer.Typer:
    return cli_app({"restack": restack_command, "downsample": downsample_command})


def test_cli_restack_and_downsample(tmp_path):
    star = stage("trpv1", tmp_path)
    runner = CliRunner()
    result = runner.invoke(_app(), ["restack", "--particles", str(star), "--out",
                                    str(tmp_path / "r"), "--batch-size", "3", "--float16"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "r/Particles").glob("*.mrcs"))) == 4
    result = runner.invoke(_app(), ["downsample", "--particles", str(star), "--out",
                                    str(tmp_path / "d"), "--bin-to", "24", "--recenter"])
    assert result.exit_code == 0, result.output
    assert out_tables(tmp_path / "d")[0]["rlnImageSize"].tolist() == [24]
    result = runner.invoke(_app(), ["downsample", "--particles", str(star), "--out",
                                    str(tmp_path / "e"), "--box", "23"])
    assert result.exit_code == 2
    assert "error:" in result.output and "even" in result.output
    result = runner.invoke(_app(), ["restack", "--particles", str(tmp_path / "no.star"),
                                    "--out", str(tmp_path / "f")])
    assert result.exit_code == 2 and "no.star" in result.output
    assert len(result.output.strip().splitlines()) == 1
