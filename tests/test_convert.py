"""``cryoextract convert`` through a small typer app (CliRunner), on hand-written and real
pick files. Expected values are computed here from the inputs, never with our readers'
help except to read the outputs back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cryoextract.cli.convert import convert_command
from cryoextract.io.coords import read_picks
from helpers import write_picks_cs
from shared_data import cryolo_box_files, cryolo_cbox_files

XY = ["rlnCoordinateX", "rlnCoordinateY"]
HAS_CS_READER = importlib.util.find_spec("cryoextract.io.cryosparc") is not None

app = typer.Typer()
app.command("convert")(convert_command)


@app.callback()
def _root() -> None:
    """Test app."""


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["convert", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def write_box(path: Path, centres: np.ndarray, box: int, scores: np.ndarray | None = None
              ) -> Path:
    rows = np.column_stack([centres - box / 2, np.full((len(centres), 2), box)])
    if scores is not None:
        rows = np.column_stack([rows, scores])
    np.savetxt(path, rows, fmt="%.3f", delimiter="\t")
    return path


def write_mrc(path: Path, shape_yx: tuple[int, int]) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros(shape_yx, dtype=np.float32))
    return path


CENTRES = np.array([[100.0, 200.0], [150.5, 20.25], [10.0, 90.0]])


# --------------------------------------------------------------------------- formats
def test_box_to_cbox_keeps_box_size_and_back(tmp_path: Path) -> None:
    for name, shift in (("mic_a", 0.0), ("mic_b", 7.0)):
        write_box(tmp_path / f"{name}.box", CENTRES + shift, 180, np.array([0.1, 0.2, 0.3]))
    code, out, err = run(tmp_path / "mic_a.box", tmp_path / "mic_b.box", "--to", "cbox",
                         "--out", tmp_path / "cb")
    assert code == 0, err
    assert "6 picks of 2 micrographs" in out
    cbox = read_picks(tmp_path / "cb" / "mic_b.cbox")
    np.testing.assert_allclose(cbox[XY], CENTRES + 7.0, atol=1e-3)
    np.testing.assert_allclose(cbox["rlnAutopickFigureOfMerit"], [0.1, 0.2, 0.3])
    assert cbox.attrs["box_px"] == 180
    code, _, err = run(tmp_path / "cb" / "mic_a.cbox", "--to", "box", "--box", "64",
                       "--out", tmp_path / "one.box")
    assert code == 0, err
    table = np.loadtxt(tmp_path / "one.box", ndmin=2)
    np.testing.assert_allclose(table[:, :2], CENTRES - 32, atol=1e-3)
    assert (table[:, 2:4] == 64).all()


def test_topaz_to_star_single_file_and_per_micrograph(tmp_path: Path) -> None:
    topaz = tmp_path / "picks.txt"
    topaz.write_text("image_name\tx_coord\ty_coord\tscore\nm1\t10\t20\t0.5\nm2\t30\t40\t0.7\n"
                     "m1\t50\t60\t0.9\n")
    code, _, err = run(topaz, "--to", "star", "--out", tmp_path / "all.star")
    assert code == 0, err
    picks = read_picks(tmp_path / "all.star")
    assert sorted(zip(picks["rlnMicrographName"], picks["rlnCoordinateX"], strict=True)) == [
        ("m1", 10.0), ("m1", 50.0), ("m2", 30.0)]
    code, _, err = run(topaz, "--to", "star", "--out", tmp_path / "each",
                       "--suffix", "_autopick.star")
    assert code == 0, err
    m1 = read_picks(tmp_path / "each" / "m1_autopick.star")
    assert "rlnMicrographName" not in m1.columns  # a RELION per-micrograph coordinate file
    np.testing.assert_allclose(m1[XY], [[10, 20], [50, 60]])
    np.testing.assert_allclose(m1["rlnAutopickFigureOfMerit"], [0.5, 0.9])


def test_per_micrograph_star_to_topaz_named_by_micrographs(tmp_path: Path) -> None:
    for name in ("mic_a", "mic_b"):
        write_mrc(tmp_path / f"{name}.mrc", (256, 256))
        (tmp_path / f"{name}_autopick.star").write_text(
            "data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n12.5 30\n40 50.75\n")
    code, _, err = run(tmp_path / "mic_a_autopick.star", tmp_path / "mic_b_autopick.star",
                       "--to", "topaz", "--out", tmp_path / "t.txt",
                       "--micrographs", str(tmp_path / "*.mrc"))
    assert code == 0, err
    lines = (tmp_path / "t.txt").read_text().splitlines()
    assert lines[0] == "image_name\tx_coord\ty_coord"
    assert lines[1:] == ["mic_a\t12.5\t30", "mic_a\t40\t50.75", "mic_b\t12.5\t30",
                         "mic_b\t40\t50.75"]
    code, _, _ = run(tmp_path / "mic_a_autopick.star", "--to", "topaz", "--out",
                     tmp_path / "t1.txt")
    assert code == 0  # without micrographs, the file stem names the micrograph
    assert (tmp_path / "t1.txt").read_text().splitlines()[1].startswith("mic_a_autopick\t")


def test_cs_input(tmp_path: Path) -> None:
    path = write_picks_cs(tmp_path / "picks.cs", [0.25, 0.5], [0.5, 0.75], (400, 200))
    code, _, err = run(path, "--to", "star", "--out", tmp_path / "cs.star")
    if not HAS_CS_READER:
        assert code == 2 and "cryoSPARC .cs not supported yet" in err
        return
    assert code == 0, err
    picks = read_picks(tmp_path / "cs.star")
    np.testing.assert_allclose(picks[XY], [[50, 200], [100, 300]])
    assert set(picks["rlnMicrographName"]) == {"J1/imported/mic_a.mrc"}


# --------------------------------------------------------------------------- geometry
def test_rescale_binned_picks_and_box(tmp_path: Path) -> None:
    write_box(tmp_path / "mic.box", CENTRES, 90)
    code, _, err = run(tmp_path / "mic.box", "--to", "box", "--out", tmp_path / "big.box",
                       "--coords-pixel-size", "3.54", "--pixel-size", "1.77")
    assert code == 0, err
    table = np.loadtxt(tmp_path / "big.box", ndmin=2)
    assert (table[:, 2:4] == 180).all()  # the input box scaled with the picks
    np.testing.assert_allclose(table[:, :2] + 90, CENTRES * 2, atol=1e-3)


def test_swap_and_flips(tmp_path: Path) -> None:
    write_box(tmp_path / "mic.box", CENTRES, 32)
    code, _, err = run(tmp_path / "mic.box", "--to", "star", "--out", tmp_path / "s.star",
                       "--swap-xy")
    assert code == 0, err
    np.testing.assert_allclose(read_picks(tmp_path / "s.star")[XY], CENTRES[:, ::-1],
                               atol=1e-3)
    code, _, err = run(tmp_path / "mic.box", "--to", "star", "--out", tmp_path / "f.star",
                       "--flip-y", "--flip-x", "--micrograph-shape", "300", "200")
    assert code == 0, err
    expected = np.column_stack([199 - CENTRES[:, 0], 299 - CENTRES[:, 1]])
    np.testing.assert_allclose(read_picks(tmp_path / "f.star")[XY], expected, atol=1e-3)


def test_flip_needs_a_shape_and_other_errors(tmp_path: Path) -> None:
    write_box(tmp_path / "mic.box", CENTRES, 32)
    code, out, err = run(tmp_path / "mic.box", "--to", "star", "--out", tmp_path / "x.star",
                         "--flip-y")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "--micrograph-shape" in err
    assert err.count("\n") == 1
    code, _, err = run(tmp_path / "mic.box", "--to", "box", "--out", tmp_path / "x.box",
                       "--pixel-size", "1.0")
    assert code == 2 and "--coords-pixel-size" in err
    code, _, err = run(tmp_path / "gone.box", "--to", "star", "--out", tmp_path / "x.star")
    assert code == 2 and "gone.box: coordinate file not found" in err
    (tmp_path / "p.txt").write_text("image_name\tx_coord\ty_coord\nm\t1\t2\n")
    code, _, err = run(tmp_path / "p.txt", "--coords-format", "txt", "--to", "star",
                       "--out", tmp_path / "x.star")
    assert code == 2 and "looks like Topaz" in err
    code, _, err = run(tmp_path / "p.txt", "--to", "box", "--out", tmp_path / "x.box")
    assert code == 2 and "--box" in err


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    write_box(tmp_path / "mic.box", CENTRES, 32)
    args = [tmp_path / "mic.box", "--to", "star", "--out", tmp_path / "o.star"]
    assert run(*args)[0] == 0
    code, _, err = run(*args)
    assert code == 2 and "output exists (give --overwrite)" in err
    assert run(*args, "--overwrite")[0] == 0


def test_off_micrograph_warning_names_the_fix(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = np.column_stack([rng.uniform(0, 60, 40), rng.uniform(0, 120, 40)])
    write_box(tmp_path / "mic.box", centres, 16)
    write_mrc(tmp_path / "mic.mrc", (64, 128))  # ny = 64, nx = 128: x and y swapped
    code, _, err = run(tmp_path / "mic.box", "--to", "star", "--out", tmp_path / "o.star",
                       "--micrographs", str(tmp_path / "mic.mrc"))
    assert code == 0
    assert "warning:" in err and "--swap-xy" in err
    assert "fall off the micrograph of 128 x 64 px (x by y)" in err
    code, _, err = run(tmp_path / "mic.box", "--to", "star", "--out", tmp_path / "s.star",
                       "--micrographs", str(tmp_path / "mic.mrc"), "--swap-xy")
    assert code == 0 and "warning" not in err
    code, _, err = run(tmp_path / "mic.box", "--to", "star", "--out", tmp_path / "y.star",
                       "--micrographs", str(tmp_path / "mic.mrc"), "--swap-xy", "--flip-y")
    assert code == 0, err  # the flip takes the shape from the MRC header
    np.testing.assert_allclose(read_picks(tmp_path / "y.star")[XY],
                               np.column_stack([centres[:, 1], 63 - centres[:, 0]]),
                               atol=1e-3)


# --------------------------------------------------------------------------- real files
def test_real_box_files_through_star_and_back(tmp_path: Path) -> None:
    files = cryolo_box_files()
    code, out, err = run(*files, "--to", "star", "--out", tmp_path / "all.star")
    assert code == 0, err
    assert f"of {len(files)} micrographs" in out
    code, _, err = run(tmp_path / "all.star", "--to", "box", "--box", "180",
                       "--out", tmp_path / "boxes")
    assert code == 0, err
    for path in files:
        original = np.loadtxt(path, ndmin=2)
        back = np.loadtxt(tmp_path / "boxes" / path.name, ndmin=2)
        np.testing.assert_allclose(back, original, atol=1e-5)


def test_real_cbox_to_topaz(tmp_path: Path) -> None:
    files = cryolo_cbox_files()
    code, _, err = run(*files, "--to", "topaz", "--out", tmp_path / "t.txt")
    assert code == 0, err
    rows = [ln.split("\t") for ln in (tmp_path / "t.txt").read_text().splitlines()[1:]]
    first = [r for r in rows if r[0] == files[0].stem]
    raw = [ln.split() for ln in files[0].read_text().splitlines()
           if ln[:1].isdigit() and len(ln.split()) == 11]
    assert len(first) == len(raw) > 0
    for got, line in zip(first, raw, strict=True):
        assert float(got[1]) == pytest.approx(float(line[0]) + float(line[3]) / 2, abs=1e-3)
        assert float(got[2]) == pytest.approx(float(line[1]) + float(line[4]) / 2, abs=1e-3)
        assert float(got[3]) == pytest.approx(float(line[8]), abs=1e-6)


def test_per_micrograph_files_get_safe_distinct_names(tmp_path: Path) -> None:
    """Micrograph names that clash by stem, or that no file should be called, give one
    safe, distinct file each inside OUT (the picks of each kept apart)."""
    names = ["a/mic.mrc", "b/mic.mrc", "-rf.mrc", "../../up.mrc"]
    topaz = tmp_path / "picks.txt"
    topaz.write_text("image_name\tx_coord\ty_coord\tscore\n" + "".join(
        f"{n}\t{10 * (i + 1)}\t20\t0.5\n" for i, n in enumerate(names)))
    out = tmp_path / "deep" / "each"
    code, _, err = run(topaz, "--to", "star", "--out", out, "--suffix", "_autopick.star")
    assert code == 0, err
    # besides the picks: the job's summary and its lock's folder
    files = sorted(p for p in out.iterdir() if p.name not in ("summary.json", ".cryoextract"))
    assert len(files) == len(names) == len({f.name for f in files})
    assert not [p for p in tmp_path.rglob("*.star") if out not in p.parents]
    assert all(not f.name.startswith(("-", ".")) for f in files)
    xs = sorted(float(read_picks(f)["rlnCoordinateX"].iloc[0]) for f in files)
    assert xs == [10.0, 20.0, 30.0, 40.0]
