"""The io layer: picks, micrograph lists (``cryoextract.io.coords``, ``io.micrographs``)
and atomic files; MRC files are in ``test_mrc.py``.

Expected values come from the files written here (with mrcfile or by hand) or from the
raw bytes of real files, never from running our readers.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryoextract.errors import InputError
from cryoextract.io.coords import coordinate_file_candidates, read_picks
from cryoextract.io.micrographs import read_micrograph_set
from cryoextract.io.star import read_star
from helpers import MICROGRAPHS_STAR31, STAR30_PICKS, mrc_written, refused, written
from shared_data import cryolo_box_files, require_real

# --------------------------------------------------------------------------- picks

STAR31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnImagePixelSize #5
_rlnImageSize #6
opticsGroup1 1 0.885 300.0 3.54 64


data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnMicrographName #4
_rlnOpticsGroup #5
_rlnOriginXAngst #6
_rlnOriginYAngst #7
1614.0 3000.5 000001@Extract/job007/Movies/a.mrcs MotionCorr/job002/Movies/a.mrc 1 -1.5 2.0
2000.25 1200.0 000002@Extract/job007/Movies/a.mrcs MotionCorr/job002/Movies/a.mrc 1 0.0 0.0
100.0 150.75 000001@Extract/job007/Movies/b.mrcs MotionCorr/job002/Movies/b.mrc 1 3.0 -3.0
"""


def test_read_picks_relion30_star(tmp_path: Path) -> None:
    path = written(tmp_path / "mic_autopick.star", STAR30_PICKS)
    picks = read_picks(path)
    assert len(picks) == 3
    np.testing.assert_allclose(picks["rlnCoordinateX"], [839.125024, 899.062526, 10.0])
    np.testing.assert_allclose(picks["rlnCoordinateY"], [19.979167, 199.791672, 300.5])
    assert picks["rlnCoordinateX"].dtype == np.float64
    np.testing.assert_allclose(picks["rlnAutopickFigureOfMerit"], [0.624705, 0.623809, 0.1])


def test_read_picks_relion31_particles_star(tmp_path: Path) -> None:
    path = written(tmp_path / "particles.star", STAR31)
    picks = read_picks(path)
    assert len(picks) == 3
    np.testing.assert_allclose(picks["rlnCoordinateX"], [1614.0, 2000.25, 100.0])
    np.testing.assert_allclose(picks["rlnCoordinateY"], [3000.5, 1200.0, 150.75])
    assert list(picks["rlnMicrographName"]) == ["MotionCorr/job002/Movies/a.mrc"] * 2 + [
        "MotionCorr/job002/Movies/b.mrc"
    ]
    np.testing.assert_allclose(picks["rlnOriginXAngst"], [-1.5, 0.0, 3.0])
    assert "rlnVoltage" not in picks.columns  # the optics block is not the picks


def test_read_picks_eman_box(tmp_path: Path) -> None:
    path = written(tmp_path / "mic.box", "100\t200\t64\t64\n  10 20 50 40 \n\n3.5 4.5 10 10 -3\n")
    picks = read_picks(path)
    np.testing.assert_allclose(picks["rlnCoordinateX"], [132.0, 35.0, 8.5])
    np.testing.assert_allclose(picks["rlnCoordinateY"], [232.0, 40.0, 9.5])


def test_read_picks_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "mic.txt"
    path.write_text(
        "x y score\n"
        "# a comment line\n"
        "10.5 20.25\n"
        "  30,40  # trailing comment\n"
        "\n"
        "50.0\t60.0\t0.9\n"
        "7e1, 8E1\n"
    )
    picks = read_picks(path)
    np.testing.assert_allclose(picks["rlnCoordinateX"], [10.5, 30.0, 50.0, 70.0])
    np.testing.assert_allclose(picks["rlnCoordinateY"], [20.25, 40.0, 60.0, 80.0])
    csv = written(tmp_path / "mic.csv", "x,y\n1,2\n3,4\n")
    picks = read_picks(csv)
    np.testing.assert_allclose(picks[["rlnCoordinateX", "rlnCoordinateY"]], [[1, 2], [3, 4]])


def test_read_picks_bad_text_line_names_file_and_line(tmp_path: Path) -> None:
    path = written(tmp_path / "bad.txt", "# header comment\n1 2\n3 4\n5 five\n7 8\n")
    refused(lambda: read_picks(path), path, line=4)
    short = written(tmp_path / "short.txt", "1 2\n3\n")
    refused(lambda: read_picks(short), short, line=2)
    box = written(tmp_path / "short.box", "1 2 3 4\n1 2 3\n")
    with pytest.raises(InputError, match=r"short\.box:2"):
        read_picks(box)


def test_read_picks_unknown_extension_and_missing(tmp_path: Path) -> None:
    path = written(tmp_path / "picks.dat", "1 2\n")
    with pytest.raises(InputError, match=r"picks\.dat"):
        read_picks(path)
    # the format can be forced
    picks = read_picks(path, "txt")
    assert picks["rlnCoordinateX"].tolist() == [1.0]
    with pytest.raises(InputError, match=r"gone\.txt"):
        read_picks(tmp_path / "gone.txt")
    with pytest.raises(InputError, match=r"gone\.star"):
        read_picks(tmp_path / "gone.star")


def test_read_picks_star_without_coordinates(tmp_path: Path) -> None:
    path = written(tmp_path / "nocoords.star",
                   "data_\n\nloop_\n_rlnMicrographName #1\n_rlnDefocusU #2\na.mrc 1000\n")
    with pytest.raises(InputError, match=r"nocoords\.star"):
        read_picks(path)


def test_coordinate_file_candidates_relion_mapping() -> None:
    got = coordinate_file_candidates(
        "MotionCorr/job002/Micrographs/mic_001.mrc", Path("Picks"), "_pick.star"
    )
    assert got[0] == Path("Picks/Micrographs/mic_001_pick.star")
    assert Path("Picks/MotionCorr/job002/Micrographs/mic_001_pick.star") in got
    assert Path("Picks/mic_001_pick.star") in got
    assert len(got) == len(set(got))
    flat = coordinate_file_candidates("mic_002.tiff.mrc", Path("/data/c"), ".box")
    assert flat[0] == Path("/data/c/mic_002.tiff.box")


# --------------------------------------------------------------------------- micrograph sets
def _touch_mrcs(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        mrc_written(root / name, np.zeros((8, 8), dtype=np.float32))


def test_micrograph_set_relion31(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    star = project / "micrographs_ctf.star"
    star.write_text(MICROGRAPHS_STAR31)
    names = [f"MotionCorr/job002/Movies/{c}.mrc" for c in "abc"]
    _touch_mrcs(project, names)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    mics = read_micrograph_set(str(star), base_dir=elsewhere)
    table = mics.micrographs
    assert list(table["rlnMicrographName"]) == names
    assert list(table["rlnOpticsGroup"]) == [1, 2, 1]
    np.testing.assert_allclose(table["rlnDefocusU"], [10000, 12000, 14000])
    # not in base_dir: found beside the STAR
    assert [Path(p) for p in table["path"]] == [project / n for n in names]
    optics = mics.optics.set_index("rlnOpticsGroup")
    assert optics.loc[1, "rlnMicrographPixelSize"] == pytest.approx(0.885)
    assert optics.loc[2, "rlnMicrographPixelSize"] == pytest.approx(1.0)
    assert optics.loc[2, "rlnOpticsGroupName"] == "opticsGroup2"
    # found in base_dir first when there
    mics = read_micrograph_set(str(star), base_dir=project)
    assert [Path(p) for p in mics.micrographs["path"]] == [project / n for n in names]
    # --pixel-size overrides the STAR
    mics = read_micrograph_set(str(star), pixel_size_angstrom=2.0, base_dir=project)
    np.testing.assert_allclose(mics.optics["rlnMicrographPixelSize"], [2.0, 2.0])


def test_micrograph_set_relion30_pixel_size_column(tmp_path: Path) -> None:
    star = tmp_path / "mics.star"
    star.write_text(
        "data_\n\nloop_\n_rlnMicrographName #1\n_rlnMicrographPixelSize #2\n_rlnVoltage #3\n"
        "m1.mrc 1.06 300\nm2.mrc 1.06 300\nm3.mrc 0.53 300\n"
    )
    mics = read_micrograph_set(str(star), base_dir=tmp_path)
    table, optics = mics.micrographs, mics.optics
    assert len(table) == 3
    sizes = optics.set_index("rlnOpticsGroup")["rlnMicrographPixelSize"]
    per_mic = [sizes[g] for g in table["rlnOpticsGroup"]]
    np.testing.assert_allclose(per_mic, [1.06, 1.06, 0.53])
    assert len(optics) == 2
    assert table["rlnOpticsGroup"].iloc[0] == table["rlnOpticsGroup"].iloc[1]
    assert [Path(p) for p in table["path"]] == [tmp_path / f"m{i}.mrc" for i in (1, 2, 3)]


def test_micrograph_set_relion30_detector_pixel_size(tmp_path: Path) -> None:
    star = tmp_path / "mics.star"
    star.write_text(
        "data_\n\nloop_\n_rlnMicrographName #1\n_rlnDetectorPixelSize #2\n"
        "_rlnMagnification #3\n_rlnDefocusU #4\n"
        "m1.mrc 5.0 50000 9000\nm2.mrc 14.0 100000 9500\n"
    )
    mics = read_micrograph_set(str(star), base_dir=tmp_path)
    sizes = mics.optics.set_index("rlnOpticsGroup")["rlnMicrographPixelSize"]
    per_mic = [sizes[g] for g in mics.micrographs["rlnOpticsGroup"]]
    np.testing.assert_allclose(per_mic, [1.0, 1.4])  # 1e4 * 5 / 50000, 1e4 * 14 / 100000
    np.testing.assert_allclose(mics.micrographs["rlnDefocusU"], [9000, 9500])


def test_micrograph_set_glob(tmp_path: Path) -> None:
    names = ["mic_003.mrc", "mic_001.mrc", "mic_002.mrc"]
    _touch_mrcs(tmp_path, names)
    (tmp_path / "notes.txt").write_text("x")
    mics = read_micrograph_set(str(tmp_path / "mic_*.mrc"), pixel_size_angstrom=1.34)
    assert [Path(p).name for p in mics.micrographs["path"]] == sorted(names)
    np.testing.assert_allclose(mics.optics["rlnMicrographPixelSize"], [1.34])
    assert set(mics.micrographs["rlnOpticsGroup"]) == {1}
    with pytest.raises(InputError, match="pixel"):
        read_micrograph_set(str(tmp_path / "mic_*.mrc"))
    with pytest.raises(InputError, match="nomatch"):
        read_micrograph_set(str(tmp_path / "nomatch_*.mrc"), pixel_size_angstrom=1.0)


def test_micrograph_set_errors(tmp_path: Path) -> None:
    no_px = written(tmp_path / "nopx.star",
                    "data_\n\nloop_\n_rlnMicrographName #1\n_rlnDefocusU #2\nm1.mrc 1\n")
    with pytest.raises(InputError, match=r"nopx\.star"):
        read_micrograph_set(str(no_px), base_dir=tmp_path)
    # ...unless given on the command line
    mics = read_micrograph_set(str(no_px), pixel_size_angstrom=1.5, base_dir=tmp_path)
    np.testing.assert_allclose(mics.optics["rlnMicrographPixelSize"], [1.5])
    no_name = written(tmp_path / "noname.star",
                      "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n")
    with pytest.raises(InputError, match=r"noname\.star"):
        read_micrograph_set(str(no_name), pixel_size_angstrom=1.0)
    with pytest.raises(InputError, match=r"missing\.star"):
        read_micrograph_set(str(tmp_path / "missing.star"), pixel_size_angstrom=1.0)
    bad_group = written(tmp_path / "badgroup.star",
                        MICROGRAPHS_STAR31.replace("MotionCorr/job002/Movies/b.mrc 2", "x.mrc 3"))
    with pytest.raises(InputError, match=r"badgroup\.star"):
        read_micrograph_set(str(bad_group))
    garbage = written(tmp_path / "garbage.star", b"\x00\xff\x00 not a star file\n")
    with pytest.raises(InputError, match=r"garbage\.star"):
        read_micrograph_set(str(garbage), pixel_size_angstrom=1.0)


RELION30_MICS = "data_\nloop_\n_rlnMicrographName\n_rlnDetectorPixelSize\n_rlnMagnification\n"


@pytest.mark.parametrize(("text", "line", "reason"), [
    (RELION30_MICS + "m1.mrc\tx\t10000\n", None, "rlnDetectorPixelSize must be a number, got 'x'"),
    (RELION30_MICS + "m1.mrc 5 10000\nm2.mrc 5 abc\n", None, "rlnMagnification must be a number"),
    # a row short of a value: RELION refuses it ("fewer columns than the number of
    # labels"); it was read with an empty value
    (RELION30_MICS + "m1.mrc 5 10000\nm2.mrc 5\nm3.mrc 5 10000\n", 7,
     "2 values for 3 columns"),
    ("data_optics\n_rlnMicrographPixelSize 1.0\ndata_\nloop_\n_rlnMicrographName\n"
     "_rlnOpticsGroup\nm.mrc 1\n", None, "data_optics has no rlnOpticsGroup column"),
    ("data_\nloop_\n_rlnMicrographName\n_rlnMicrographPixelSize\n_rlnMicrographPixelSize\n",
     None, "column _rlnMicrographPixelSize appears twice in block data_"),
    ('data_\nloop_\n_rlnMicrographName\n_rlnVoltage\n_rlnVoltage\n"a b.mrc" 300 300\n', None,
     "column _rlnVoltage appears twice"),
    # starfile fails on the first block; the fallback reader names the line
    ("data_\nloop_\n\n_\t1\ndata_\nloop_\n_\n_\n_\n_\nM\t1\t1\t1", 8,
     "column _ appears twice in block data_"),
])
def test_micrograph_set_malformed_star(tmp_path: Path, text: str, line: int | None,
                                       reason: str) -> None:
    """RELION refuses these too; ours say why in one line naming the file."""
    star = written(tmp_path / "mics.star", text)
    refused(lambda: read_micrograph_set(str(star), base_dir=tmp_path), star, line, reason)


def test_star_tokenizer_error_is_one_line(tmp_path: Path) -> None:
    star = written(tmp_path / "bad.star", b"data_\nloop_\n\x00\n\x00\t\x00")
    refused(lambda: read_star(star), star, match="not a readable STAR file")


def test_micrograph_set_real_relion_project(tmp_path: Path) -> None:
    """A real RELION 5 micrographs STAR (optics + micrographs with CTF)."""
    source = require_real("relion5_betagal_tutorial_sppractice", "CtfFind", "job005",
                          "micrographs_ctf.star")
    star = tmp_path / "micrographs_ctf.star"
    shutil.copy(source, star)
    mics = read_micrograph_set(str(star), base_dir=tmp_path)
    text = star.read_text()
    assert "data_optics" in text
    expected = pd.Series(
        [
            line.split()[0]
            for line in text.split("data_micrographs")[1].splitlines()
            if line.strip() and not line.startswith(("_", "loop_", "#"))
        ]
    )
    assert list(mics.micrographs["rlnMicrographName"]) == list(expected)
    assert (mics.optics["rlnMicrographPixelSize"] > 0).all()


def test_read_picks_real_cryolo_box() -> None:
    """Real crYOLO EMAN .box picks: lower-left corner + w/2 is the centre."""
    files = cryolo_box_files()
    table = np.loadtxt(files[0], ndmin=2)
    picks = read_picks(files[0])
    assert len(picks) == len(table) > 100
    np.testing.assert_allclose(picks["rlnCoordinateX"], table[:, 0] + table[:, 2] / 2)
    np.testing.assert_allclose(picks["rlnCoordinateY"], table[:, 1] + table[:, 3] / 2)


def test_atomic_file_publishes_only_complete_files(tmp_path):
    from cryoextract.io.atomic import TEMPORARY_GLOB, atomic_file, temporary_path

    target = tmp_path / "particles.star"
    target.write_bytes(b"old")
    assert temporary_path(target).match(TEMPORARY_GLOB)
    with pytest.raises(RuntimeError), atomic_file(target) as stream:
        stream.write(b"half")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_file(target) as stream:
        stream.write(b"new")
        assert target.read_bytes() == b"old"  # not published before the block ends
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]
