"""Extraction's side of issue 14: nothing redone wrongly, nothing started that cannot work.

- ``--resume`` redoes a micrograph whose picks, micrograph or CTF changed after the run
  it continues; the oracle is a fresh extraction of the changed inputs.
- Parameters that can never work are refused in one line (exit 2) before the output
  folder exists; so are a non-numeric CTF value, an optics group listed twice and
  ``boxsize`` values that are infinite or denormal.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cryoextract.cli.app import app
from cryoextract.io.star import read_star, write_star
from cryoextract.pipeline.extraction.extract import extract
from cryoextract.pipeline.extraction.params import ExtractParams
from cryoextract.sim.simulate import simulate_dataset
from helpers import one_line_error

BOX = 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guards")
    simulate_dataset(root, n_micrographs=3, shape_yx=(256, 256), particles_per_micrograph=12,
                     pixel_size_angstrom=2.0, seed=5)
    return root


def _extract(root: Path, out: str, **options: object):
    params = ExtractParams(box_px=BOX, descriptors=False)
    return extract(str(root / "micrographs.star"), root / out, params,
                   coords_dir=root / "Picks", coords_suffix="_autopick.star", workers=1,
                   **options)  # type: ignore[arg-type]


def _outputs(out: Path) -> dict[str, bytes]:
    """particles.star and the stacks, the output folder's name taken out of the STAR."""
    files = {"particles.star": (out / "particles.star").read_bytes().replace(
        f"{out.name}/".encode(), b"OUT/")}
    files.update({p.name: p.read_bytes() for p in sorted((out / "Particles").iterdir())})
    return files


def test_resume_redoes_a_micrograph_whose_inputs_changed(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    monkeypatch.chdir(root)
    first = _extract(root, "out")
    assert first.micrographs_done == 3
    # after the run: one picks file loses rows, one micrograph's defocus changes in the
    # STAR (its CTF), one micrograph is rewritten with other pixels
    picks_path = root / "Picks" / "mic_001_autopick.star"
    picks = read_star(picks_path)
    block = next(iter(picks))
    picks[block] = picks[block].iloc[:5]
    write_star(picks_path, picks)
    star = read_star(root / "micrographs.star")
    star["micrographs"].loc[1, "rlnDefocusU"] = 12345.0
    write_star(root / "micrographs.star", star)
    import mrcfile

    mic = root / "Micrographs" / "mic_003.mrc"
    with mrcfile.open(mic, "r+") as handle:
        handle.data[:] = np.flipud(handle.data)
    resumed = _extract(root, "out", resume=True)
    assert resumed.micrographs_resumed == 0  # every micrograph changed: none kept
    fresh = _extract(root, "fresh")
    assert _outputs(root / "out") == _outputs(root / "fresh")
    particles = read_star(root / "out" / "particles.star")["particles"]
    names = particles["rlnMicrographName"].astype(str)
    assert (names == "Micrographs/mic_001.mrc").sum() <= 5
    assert set(particles["rlnDefocusU"][names == "Micrographs/mic_002.mrc"]) == {12345.0}
    assert fresh.particles_kept == resumed.particles_kept
    # unchanged inputs: everything is kept, even after a copy that keeps the contents
    os.utime(picks_path)  # touched, same content: a small file is known by its content
    again = _extract(root, "out", resume=True)
    assert again.micrographs_resumed == 3


@pytest.mark.parametrize(("option", "value"), [
    ("--seed", "-1"), ("--bin-factor", "inf"), ("--patch", "1"), ("--ctf-box", "100000"),
    ("--coords-pixel-size", "inf"), ("--min-score", "nan"), ("--workers", "0"),
    ("--white-dust", "inf"), ("--min-distance-angstrom", "inf"),
    ("--particle-diameter", "inf"), ("--particle-diameter", "-1"),
    ("--pixel-size-out", "inf"), ("--max-per-micrograph", "0"), ("--patch", "600"),
    ("--dask-scheduler", "foo"),
])
def test_parameters_that_cannot_work_are_refused_before_anything_is_written(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str,
        value: str) -> None:
    monkeypatch.chdir(dataset)
    out = tmp_path / "out"
    done = CliRunner().invoke(app, [
        "extract", "--micrographs", "micrographs.star", "--coords-dir", "Picks",
        "--coords-suffix", "_autopick.star", "--box", str(BOX), "--out", str(out),
        "--workers", "1", "--quiet", "--no-report", option, value])
    line = one_line_error(done.exit_code, done.stdout, done.stderr)
    assert option in line or "CTF box" in line, line
    assert not out.exists()


def _star_variant(dataset: Path, tmp_path: Path, edit) -> Path:
    text = (dataset / "micrographs.star").read_text()
    path = tmp_path / "mics.star"
    path.write_text(edit(text))
    return path


@pytest.mark.parametrize(("edit", "words"), [
    (lambda text: re.sub(r"^(Micrographs/mic_002\.mrc\s+1\s+)\S+", r"\1abc", text,
                         flags=re.M), "rlnDefocusU"),
    (lambda text: text.replace("opticsGroup1", "opticsGroup1\t1\t2.0\t300\t2.7\t0.1\t2.0\n"
                               "opticsGroup1", 1), "optics group 1"),
], ids=["defocus-not-a-number", "optics-group-twice"])
def test_bad_micrograph_metadata_is_one_line(dataset: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, edit,
                                            words: str) -> None:
    monkeypatch.chdir(dataset)
    star = _star_variant(dataset, tmp_path, edit)
    out = tmp_path / "out"
    done = CliRunner().invoke(app, [
        "extract", "--micrographs", str(star), "--coords-dir", "Picks", "--coords-suffix",
        "_autopick.star", "--box", str(BOX), "--out", str(out), "--workers", "1",
        "--quiet", "--no-report", "--ctf-correct", "flip"])
    line = one_line_error(done.exit_code, done.stdout, done.stderr)
    assert words in line and str(star) in line, line
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [
    ("--pixel-size", "inf"), ("--pixel-size", "1e-320"), ("--defocus-um", "inf"),
    ("--diameter-angstrom", "inf"), ("--resolution-angstrom", "5e-324"),
    ("--voltage-kv", "1e-300"), ("--crop-resolution-angstrom", "5e-324"),
])
def test_boxsize_refuses_infinite_and_denormal_values(option: str, value: str) -> None:
    values = {"--diameter-angstrom": "150", "--pixel-size": "1.0", "--defocus-um": "2",
              "--resolution-angstrom": "3", option: value}
    done = CliRunner().invoke(app, ["boxsize", *[w for kv in values.items() for w in kv]])
    line = one_line_error(done.exit_code, done.stdout, done.stderr)
    assert line.startswith("error:"), line


def test_star_caveats_reach_the_summaries(dataset: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A value RELION 3.1 reads differently (a run of spaces in a file name) is in the
    job's summary and summary.json, not only a Python warning; the same for convert."""
    import json
    import warnings

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    monkeypatch.chdir(root)
    (root / "Micrographs/mic_001.mrc").rename(root / "Micrographs/mic  001.mrc")
    (root / "Picks/mic_001_autopick.star").rename(root / "Picks/mic  001_autopick.star")
    star = read_star(root / "micrographs.star")
    star["micrographs"].loc[0, "rlnMicrographName"] = "Micrographs/mic  001.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_star(root / "micrographs.star", star)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        summary = _extract(root, "out")
    caveats = [w for w in summary.warnings if "run of spaces" in w]
    assert len(caveats) == 1 and "particles.star" in caveats[0], summary.warnings
    written = json.loads((root / "out" / "summary.json").read_text())
    assert caveats[0] in written["warnings"]
    assert not [w for w in shown if "run of spaces" in str(w.message)]  # said once
    from cryoextract.pipeline.convert import ConvertOptions, convert_picks

    topaz = root / "picks.txt"
    topaz.write_text("image_name\tx_coord\ty_coord\nmic  001\t10\t20\n")
    result = convert_picks([topaz], ConvertOptions(to="star", out=root / "picks.star"))
    assert any("run of spaces" in w for w in result.warnings), result.warnings


def test_a_picks_file_that_is_a_directory_is_named_so(dataset: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    monkeypatch.chdir(root)
    (root / "Picks/mic_002_autopick.star").unlink()
    (root / "Picks/mic_002_autopick.star").mkdir()
    summary = _extract(root, "out")
    reason = summary.micrographs_skipped["Micrographs/mic_002.mrc"]
    assert "a directory, not a coordinate file" in reason, reason
    done = CliRunner().invoke(app, [
        "extract", "--micrographs", "Micrographs/mic_002.mrc", "--pixel-size", "2",
        "--coords", "Picks/mic_002_autopick.star", "--box", str(BOX), "--out",
        str(tmp_path / "one"), "--workers", "1", "--quiet", "--no-report"])
    line = one_line_error(done.exit_code, done.stdout, done.stderr)
    assert "mic_002_autopick.star: a directory" in line, line


def test_a_failed_stack_write_names_the_stack(dataset: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while writing a stack names the stack, not the micrograph read."""
    import builtins
    import errno

    import cryoextract.io.mrc as mrc
    from cryoextract.errors import CryoExtractError

    class FullDisk:
        """A file that takes the header, then finds the disk full."""

        def __init__(self, path: str, mode: str) -> None:
            self.file = builtins.open(path, mode)

        def write(self, data: bytes) -> int:
            if len(data) > mrc.HEADER_BYTES:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self.file, name)

    monkeypatch.setattr(mrc, "open", FullDisk, raising=False)
    monkeypatch.chdir(dataset)
    with pytest.raises(CryoExtractError) as info:
        _extract(dataset, str(tmp_path / "out"))
    message = str(info.value)
    assert "Particles/mic_00" in message and ".mrcs" in message, message
    assert "no space left" in message, message


@pytest.mark.parametrize("mode", ["--overwrite", "--resume"])
def test_an_input_among_the_outputs_is_never_written_over(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Re-extracting from OUT/particles.star into OUT would replace the picks it reads."""
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    monkeypatch.chdir(root)
    _extract(root, "out")
    star = root / "out" / "particles.star"
    before = star.read_bytes()
    done = CliRunner().invoke(app, [
        "extract", "--micrographs", "micrographs.star", "--coords", "out/particles.star",
        "--box", str(BOX), "--out", "out", "--workers", "1", "--quiet", "--no-report",
        mode])
    line = one_line_error(done.exit_code, done.stdout, done.stderr)
    assert "out/particles.star" in line, line
    assert star.read_bytes() == before


def _two_optics_groups(dataset: Path, tmp_path: Path, first_apix: float,
                       group_of: dict[str, int], second_apix: float) -> Path:
    """The dataset's micrographs STAR with a second optics group (``second_apix``);
    ``group_of`` puts micrographs in it; the first group gets ``first_apix``."""
    star = read_star(dataset / "micrographs.star")
    optics = star["optics"]
    second = optics.copy()
    second["rlnOpticsGroup"], second["rlnOpticsGroupName"] = 2, "opticsGroup2"
    second["rlnMicrographPixelSize"] = second["rlnMicrographOriginalPixelSize"] = second_apix
    optics["rlnMicrographPixelSize"] = optics["rlnMicrographOriginalPixelSize"] = first_apix
    star["optics"] = pd.concat([optics, second], ignore_index=True)
    mics = star["micrographs"]
    mics["rlnOpticsGroup"] = [group_of.get(str(n), 1) for n in mics["rlnMicrographName"]]
    path = tmp_path / "two_groups.star"
    write_star(path, star)
    return path


def _extract_cli(star: Path, out: Path, *options: str):
    return CliRunner().invoke(app, [
        "extract", "--micrographs", str(star), "--coords-dir", "Picks", "--coords-suffix",
        "_autopick.star", "--box", str(BOX), "--out", str(out), "--workers", "1",
        "--quiet", "--no-report", "--no-descriptors", *options])


def test_pixel_size_out_with_optics_groups_of_different_pixel_sizes_is_refused(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2.0 A and 3.0 A micrographs binned to 4.0 A would need boxes of 24 and 36 px; a
    job writes one box (RELION too): one line naming both groups, nothing written. The
    box was once worked out from the first optics group alone."""
    monkeypatch.chdir(dataset)
    star = _two_optics_groups(dataset, tmp_path, 2.0, {"Micrographs/mic_002.mrc": 2}, 3.0)
    out = tmp_path / "out"
    done = _extract_cli(star, out, "--pixel-size-out", "4")
    line = one_line_error(done.exit_code, done.stdout, done.stderr)
    assert "--pixel-size-out" in line and str(star) in line, line
    assert "opticsGroup1 2 A -> 24 px" in line and "opticsGroup2 3 A -> 36 px" in line, line
    assert not out.exists()


def test_pixel_size_out_is_worked_out_from_the_group_of_the_micrographs(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every micrograph in optics group 2 (2.0 A); group 1 (1.0 A), listed first, has
    none: --pixel-size-out 4 is a 48 -> 24 px crop, exactly 4 A, as --bin-to 24."""
    monkeypatch.chdir(dataset)
    names = ("Micrographs/mic_001.mrc", "Micrographs/mic_002.mrc", "Micrographs/mic_003.mrc")
    star = _two_optics_groups(dataset, tmp_path, 1.0, dict.fromkeys(names, 2), 2.0)
    done = _extract_cli(star, tmp_path / "out", "--pixel-size-out", "4")
    assert done.exit_code == 0, done.output
    optics = read_star(tmp_path / "out" / "particles.star")["optics"]
    assert list(optics["rlnImageSize"]) == [24]
    assert list(optics["rlnImagePixelSize"]) == [4.0]
    assert _extract_cli(star, tmp_path / "bin", "--bin-to", "24").exit_code == 0
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "bin")
