"""Pick formats (STAR, .box, .cbox, Topaz, Xmipp .pos, text) and CTFFIND results.

Expected values come from text written here or from the raw lines of the real files
under ``../shared/data/real`` (split by hand in this file), never from our readers;
RELION's own reading of the same CTFFIND files (``micrographs_ctf.star``) is the
reference for the CTF mapping.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.coords import guess_format, read_particles_star, read_picks
from cryoextract.io.ctffind import ctffind_for_micrographs, read_ctffind
from cryoextract.io.pickformats.star_picks import merge_optics
from cryoextract.io.pickformats.writers import OUTPUT_FORMATS, write_picks
from helpers import CBOX, POS, refused, write_picks_cs, written
from shared_data import REAL, real_files, real_ids, require_paths

XY = ["rlnCoordinateX", "rlnCoordinateY"]
HAS_CS_READER = importlib.util.find_spec("cryoextract.io.cryosparc") is not None


# --------------------------------------------------------------------------- raw parsers
def _raw_star_loops(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Loops of a STAR text: block name -> (labels without '_' / '#n', rows of tokens)."""
    loops: dict[str, tuple[list[str], list[list[str]]]] = {}
    block, labels, rows, in_loop = None, [], [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("data_"):
            block, in_loop = stripped[5:], False
            continue
        if stripped.startswith("loop_"):
            labels, rows, in_loop = [], [], True
            loops[block or ""] = (labels, rows)
            continue
        if not in_loop or not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("_"):
            labels.append(stripped.split()[0][1:])
        else:
            rows.append(stripped.split())
    return loops


def _raw_pick_loop(text: str) -> tuple[list[str], list[list[str]]] | None:
    loops = {k: v for k, v in _raw_star_loops(text).items() if k != "hot_pixels"}
    with_xy = {k: v for k, v in loops.items() if set(XY) <= set(v[0])}
    if not with_xy:
        return None
    return with_xy.get("particles", next(iter(with_xy.values())))


# --------------------------------------------------------------------------- crYOLO .cbox
def test_cbox_lower_left_corner_plus_half_width(tmp_path: Path) -> None:
    path = written(tmp_path / "mic.cbox", CBOX)
    picks = read_picks(path)
    np.testing.assert_allclose(picks["rlnCoordinateX"], [3700.25 + 110, 120.0])
    np.testing.assert_allclose(picks["rlnCoordinateY"], [3874.5 + 110, 130.0])
    np.testing.assert_allclose(picks["rlnAutopickFigureOfMerit"], [0.65, 0.13])
    np.testing.assert_allclose(picks["EstWidth"], [232.0, 220.0])
    # columns that are <NA> everywhere are dropped; box geometry goes to attrs
    assert not {"CoordinateZ", "rlnCoordinateZ", "NumBoxes", "Angle", "Width"} & set(picks)
    assert picks.attrs["box_px"] == 220.0


def test_cbox_without_cryolo_block_and_old_format(tmp_path: Path) -> None:
    bad = written(tmp_path / "bad.cbox",
                  "data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n")
    with pytest.raises(InputError, match=r"bad\.cbox: content looks like RELION STAR"):
        read_picks(bad)
    with pytest.raises(InputError, match=r"bad\.cbox: content looks like RELION STAR"):
        read_picks(bad, "cbox")  # forcing the format does not skip the content check
    bad.write_text("data_cryolo\nloop_\n_CoordinateX #1\n_CoordinateY #2\n1 2\n")
    with pytest.raises(InputError, match=r"bad\.cbox: no data_cryolo block with .*Width"):
        read_picks(bad)
    old = written(tmp_path / "old.cbox", "100 200 50 50 0.9 48 47\n10 20 50 50 0.5 49 51\n")
    picks = read_picks(old)
    np.testing.assert_allclose(picks[XY], [[125, 225], [35, 45]])
    np.testing.assert_allclose(picks["rlnAutopickFigureOfMerit"], [0.9, 0.5])
    np.testing.assert_allclose(picks["EstHeight"], [47, 51])


def test_cbox_missing_width_is_an_error(tmp_path: Path) -> None:
    path = written(tmp_path / "w.cbox", CBOX.replace("10.0 20.0 <NA> 220.0", "10.0 20.0 <NA> <NA>"))
    with pytest.raises(InputError, match=r"w\.cbox: row 2 of data_cryolo has no Width"):
        read_picks(path)


# --------------------------------------------------------------------------- Topaz
def test_topaz_table(tmp_path: Path) -> None:
    path = tmp_path / "picks.txt"
    path.write_text("image_name\tx_coord\ty_coord\tscore\n0001\t10\t20\t-1.5\n"
                    "mic_b\t30.5\t40.25\t2\n\n")
    assert guess_format(path) == "topaz"
    picks = read_picks(path)
    assert list(picks["rlnMicrographName"]) == ["0001", "mic_b"]  # names stay text
    np.testing.assert_allclose(picks[XY], [[10, 20], [30.5, 40.25]])
    np.testing.assert_allclose(picks["rlnAutopickFigureOfMerit"], [-1.5, 2])
    with pytest.raises(InputError, match=r"picks\.txt: content looks like Topaz"):
        read_picks(path, "txt")


def test_topaz_bad_rows_name_the_line(tmp_path: Path) -> None:
    path = written(tmp_path / "t.tsv", "image_name\tx_coord\ty_coord\na\t1\t2\nb\tone\t2\n")
    refused(lambda: read_picks(path), path, line=3, match="x_coord is not a number")
    path.write_text("image_name\tx_coord\ty_coord\na\t1\n")
    with pytest.raises(InputError, match=r"t\.tsv:2: expected 3 columns"):
        read_picks(path)
    header_only = written(tmp_path / "h.txt", "image_name\tx_coord\ty_coord\n")
    assert len(read_picks(header_only)) == 0


# --------------------------------------------------------------------------- Xmipp .pos
def test_xmipp_pos(tmp_path: Path) -> None:
    path = written(tmp_path / "mic.pos", POS)
    picks = read_picks(path)
    np.testing.assert_allclose(picks[XY], [[1030, 1438], [500, 600]])  # disabled row gone
    np.testing.assert_allclose(picks["rlnAutopickFigureOfMerit"], [1, 0.75])
    assert "micrographId" in picks.columns
    old = written(tmp_path / "old.pos", "# <X position> <Y position>\n 12 34\n56 78\n")
    np.testing.assert_allclose(read_picks(old)[XY], [[12, 34], [56, 78]])
    star = written(tmp_path / "pos_as.star", POS)
    with pytest.raises(InputError, match=r"looks like Xmipp \.pos.*--coords-format pos"):
        read_picks(star)


def test_xmipp_pos_with_relion_coordinates_too_is_an_error(tmp_path: Path) -> None:
    path = written(tmp_path / "both.pos", "data_particles\nloop_\n_xcoor\n_ycoor\n"
                   "_rlnCoordinateX\n1 2 3\n")
    refused(lambda: read_picks(path), path, match="both _xcoor and _rlnCoordinateX")


# --------------------------------------------------------------------------- EMAN .box
def test_box_score_column_and_box_size(tmp_path: Path) -> None:
    path = written(tmp_path / "mic.box", "2889\t3885\t180\t180\t0.66\n339 3861 180 180 0.83\n")
    picks = read_picks(path)
    np.testing.assert_allclose(picks[XY], [[2979, 3975], [429, 3951]])
    np.testing.assert_allclose(picks["rlnAutopickFigureOfMerit"], [0.66, 0.83])
    assert picks.attrs["box_px"] == 180
    short = written(tmp_path / "xyz.box", "1 2 3\n")
    with pytest.raises(InputError, match=r"xyz\.box:1: expected at least 4 columns"):
        read_picks(short)


# --------------------------------------------------------------------------- wrong files
def test_wrong_content_is_a_one_line_error(tmp_path: Path) -> None:
    ctf = tmp_path / "mic.txt"
    ctf.write_text("# Output from CTFFind version 4.1.14\n# Columns: #1 - micrograph number; "
                   "#2 - defocus 1 [Angstroms]\n1.0 2.0 3.0 4.0 0 0.1 5\n")
    with pytest.raises(InputError, match=r"mic\.txt: CTFFIND results, not picks"):
        read_picks(ctf)
    binary = written(tmp_path / "b.star", b"\x93NUMPY\x00\x01garbage")
    with pytest.raises(InputError, match=r"b\.star: a binary file"):
        read_picks(binary)
    motion = tmp_path / "motion.star"
    motion.write_text("data_general\n\n_rlnImageSizeX 10\n\ndata_hot_pixels\n\nloop_\n"
                      "_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n")
    with pytest.raises(InputError, match=r"motion-correction STAR"):
        read_picks(motion)
    listing = tmp_path / "autopick.star"
    listing.write_text("data_coordinate_files\nloop_\n_rlnMicrographName #1\n"
                       "_rlnMicrographCoordinates #2\na.mrc a_autopick.star\n")
    with pytest.raises(InputError, match=r"list of coordinate files"):
        read_picks(listing)
    for error in (InputError,):
        with pytest.raises(error) as info:
            read_picks(tmp_path / "picks.json")
        assert "\n" not in str(info.value)


def test_cs_picks_through_read_picks(tmp_path: Path) -> None:
    path = write_picks_cs(tmp_path / "p.cs", [0.25, 0.5], [0.5, 0.75], (400, 200))
    if not HAS_CS_READER:
        with pytest.raises(InputError, match=r"p\.cs: cryoSPARC \.cs not supported yet"):
            read_picks(path)
        return
    picks = read_picks(path)
    np.testing.assert_allclose(picks[XY], [[50, 200], [100, 300]])
    with pytest.raises(InputError, match=r"looks like a binary|binary file"):
        read_picks(path, "star")


# --------------------------------------------------------------------------- particles STAR
STAR31_OPTICS_LAST = """
data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnOpticsGroup #4
10.5 20.0 00000001@Extract/job007/a.mrcs 2
30.0 40.0 00000002@Extract/job007/a.mrcs 1

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
_rlnVoltage #4
opticsGroup1 1 1.5 300.0
opticsGroup2 2 2.0 200.0
"""


def test_read_particles_star_keeps_optics_apart(tmp_path: Path) -> None:
    path = written(tmp_path / "particles.star", STAR31_OPTICS_LAST)
    optics, particles = read_particles_star(path)
    assert optics is not None and list(optics["rlnOpticsGroup"]) == [1, 2]
    assert "rlnVoltage" not in particles.columns
    assert list(particles["rlnImageName"]) == ["00000001@Extract/job007/a.mrcs",
                                               "00000002@Extract/job007/a.mrcs"]
    merged = merge_optics(optics, particles, ("rlnImagePixelSize", "rlnVoltage"))
    np.testing.assert_allclose(merged["rlnImagePixelSize"], [2.0, 1.5])
    np.testing.assert_allclose(merged["rlnVoltage"], [200.0, 300.0])
    relion30 = tmp_path / "r30.star"
    relion30.write_text("data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
                        "_rlnImageName #3\n_rlnVoltage #4\n1 2 000001@s.mrcs 300\n")
    optics, particles = read_particles_star(relion30)
    assert optics is None and particles["rlnVoltage"].tolist() == [300]
    bad = written(tmp_path / "bad.star", STAR31_OPTICS_LAST.replace("a.mrcs 2", "a.mrcs 3"))
    with pytest.raises(InputError, match=r"optics groups \[3\]"):
        read_particles_star(bad)


# --------------------------------------------------------------------------- writers
def _random_picks(n: int, seed: int, names: list[str] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    picks = pd.DataFrame({"rlnCoordinateX": rng.uniform(0, 4096, n),
                          "rlnCoordinateY": rng.uniform(0, 3838, n),
                          "rlnAutopickFigureOfMerit": rng.normal(size=n)})
    if names:
        picks["rlnMicrographName"] = [names[i % len(names)] for i in range(n)]
    return picks


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_writers_round_trip(tmp_path: Path, fmt: str) -> None:
    picks = _random_picks(50, 1, ["Movies/mic_a.mrc"] if fmt == "topaz" else None)
    path = tmp_path / f"out.{'txt' if fmt == 'topaz' else fmt}"
    write_picks(path, picks, fmt, box_px=256)
    back = read_picks(path)
    np.testing.assert_allclose(back[XY], picks[XY], atol=1e-3)
    np.testing.assert_allclose(back["rlnAutopickFigureOfMerit"],
                               picks["rlnAutopickFigureOfMerit"], atol=1e-5)
    if fmt in ("box", "cbox"):
        assert back.attrs["box_px"] == 256
    if fmt == "topaz":
        assert set(back["rlnMicrographName"]) == {"mic_a"}  # Topaz names: file stems


def test_multi_micrograph_star_and_topaz_keep_names(tmp_path: Path) -> None:
    picks = _random_picks(30, 2, ["a.mrc", "b.mrc", "c.mrc"])
    write_picks(tmp_path / "all.star", picks, "star")
    back = read_picks(tmp_path / "all.star")
    assert list(back["rlnMicrographName"]) == list(picks["rlnMicrographName"])
    np.testing.assert_allclose(back[XY], picks[XY], atol=1e-5)
    assert "data_particles" in (tmp_path / "all.star").read_text()
    write_picks(tmp_path / "all.txt", picks, "topaz")
    back = read_picks(tmp_path / "all.txt")
    assert list(back["rlnMicrographName"]) == [n[0] for n in picks["rlnMicrographName"]]


def test_writers_refuse_missing_box_and_names(tmp_path: Path) -> None:
    picks = _random_picks(3, 3)
    for fmt in ("box", "cbox"):
        with pytest.raises(ParameterError, match="box"):
            write_picks(tmp_path / f"x.{fmt}", picks, fmt)
    with pytest.raises(ParameterError, match="micrograph names"):
        write_picks(tmp_path / "x.txt", picks, "topaz")


def test_star_writer_keeps_missing_values_aligned(tmp_path: Path) -> None:
    picks = _random_picks(3, 4)
    picks.loc[1, "rlnAutopickFigureOfMerit"] = np.nan
    write_picks(tmp_path / "n.star", picks, "star")
    labels, rows = _raw_star_loops((tmp_path / "n.star").read_text())[""]
    assert all(len(r) == len(labels) for r in rows) and rows[1][2] == "nan"


# --------------------------------------------------------------------------- CTFFIND
CTFFIND5 = """# Output from CTFFind version 5.0.2, run on 2024-01-01
# Input file: mic.mrc ; Number of micrographs: 1
# Pixel size: 0.830 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: 2.70 mm ; amplitude contrast: 0.07
# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 4.0 Angstroms
# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully; #8 - Estimated tilt axis angle; #9 - Estimated tilt angle ; #10 Estimated sample thickness (in Angstroms)
1.000000 12000.5 11000.25 45.5 1.570796 0.12 inf 10.0 2.0 350.0
"""  # noqa: E501


def test_ctffind_values_line(tmp_path: Path) -> None:
    path = written(tmp_path / "mic.txt", CTFFIND5)
    row = read_ctffind(path).iloc[0]
    assert row["rlnDefocusU"] == 12000.5 and row["rlnDefocusV"] == 11000.25
    assert row["rlnDefocusAngle"] == 45.5 and row["rlnCtfAstigmatism"] == 1000.25
    assert math.isclose(row["rlnPhaseShift"], 90.0, abs_tol=1e-4)  # radians -> degrees
    assert row["rlnCtfMaxResolution"] == 999.0  # inf, as RELION
    assert (row["rlnVoltage"], row["rlnSphericalAberration"]) == (300.0, 2.7)
    assert (row["rlnAmplitudeContrast"], row["ctffindPixelSize"]) == (0.07, 0.83)
    assert row["ctffindColumn10"] == 350.0
    path.write_text(CTFFIND5.replace(" 1.570796 0.12 inf 10.0 2.0 350.0", ""))
    with pytest.raises(InputError, match=r"mic\.txt:6: expected at least 7 values"):
        read_ctffind(path)
    path.write_text("1 2 3 4 5 6 7\n")
    with pytest.raises(InputError, match="not a CTFFIND4 results file"):
        read_ctffind(path)
    avrot = written(tmp_path / "mic_avrot.txt", CTFFIND5)
    with pytest.raises(InputError, match="_avrot"):
        read_ctffind(avrot)


def test_ctffind_for_micrographs_relion_layout(tmp_path: Path) -> None:
    (tmp_path / "CtfFind" / "job003" / "Movies").mkdir(parents=True)
    (tmp_path / "CtfFind" / "job003" / "Movies" / "m1.txt").write_text(CTFFIND5)
    (tmp_path / "CtfFind" / "job003" / "Movies" / "m2_avrot.txt").write_text(CTFFIND5)
    names = ["MotionCorr/job002/Movies/m1.mrc", "MotionCorr/job002/Movies/m2.mrc"]
    with pytest.raises(InputError, match=r"no CTFFIND results for .*m2\.mrc"):
        ctffind_for_micrographs(names, tmp_path / "CtfFind" / "job003")
    table = ctffind_for_micrographs(names, tmp_path / "CtfFind" / "job003", missing="skip")
    assert list(table["rlnMicrographName"]) == names[:1]
    assert table["rlnDefocusU"].tolist() == [12000.5]


def test_real_ctffind_matches_relion_import() -> None:
    """RELION's micrographs_ctf.star holds RELION's own reading of these CTFFIND files."""
    root = REAL / "relion5_betagal_tutorial_sppractice"
    require_paths(root / "CtfFind/job005/micrographs_ctf.star")
    loops = _raw_star_loops((root / "CtfFind/job005/micrographs_ctf.star").read_text())
    labels, rows = loops["micrographs"]
    expected = pd.DataFrame(rows, columns=labels)
    old = Path.cwd()
    try:
        os.chdir(root)
        table = ctffind_for_micrographs(expected["rlnMicrographName"], "CtfFind/job005")
    finally:
        os.chdir(old)
    assert len(table) == len(expected) == 24
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfFigureOfMerit",
                   "rlnCtfMaxResolution", "rlnCtfAstigmatism"):
        np.testing.assert_allclose(table[column], expected[column].astype(float), atol=2e-5)
    assert (table["rlnVoltage"] == 200.0).all() and (table["ctffindPixelSize"] == 1.4).all()


def _ctffind_files() -> list[Path]:
    return real_files("*.txt", lambda p: p.read_text().startswith("# Output from CTFFind"))


@pytest.mark.parametrize("path", _ctffind_files(), ids=real_ids(_ctffind_files()))
def test_every_real_ctffind_file(path: Path) -> None:
    require_paths(path)
    text = path.read_text()
    if path.name.endswith("_avrot.txt"):
        with pytest.raises(InputError):
            read_ctffind(path)
        return
    values = next(ln.split() for ln in text.splitlines() if ln.strip() and ln[0] != "#")
    header = re.search(r"acceleration voltage: ([\d.]+)", text)
    row = read_ctffind(path).iloc[0]
    assert row["rlnDefocusU"] == float(values[1]) and row["rlnDefocusV"] == float(values[2])
    assert row["rlnDefocusAngle"] == float(values[3])
    assert row["rlnCtfFigureOfMerit"] == float(values[5])
    assert math.isclose(row["rlnPhaseShift"], math.degrees(float(values[4])))
    assert header is not None and row["rlnVoltage"] == float(header.group(1))


# --------------------------------------------------------------------------- real picks
def _roundtrip(picks: pd.DataFrame, tmp_path: Path) -> None:
    """Through every writer and back: the same centres to 1e-3 px (first 1000 picks)."""
    picks = picks.head(1000)
    names = (picks["rlnMicrographName"] if "rlnMicrographName" in picks.columns
             else pd.Series(["mic"] * len(picks)))
    first = picks[names == names.iloc[0]] if len(picks) else picks
    for fmt in OUTPUT_FORMATS:
        table = picks if fmt in ("star", "topaz") else first.drop(
            columns=["rlnMicrographName"], errors="ignore")
        path = tmp_path / f"rt.{'txt' if fmt == 'topaz' else fmt}"
        write_picks(path, table, fmt, box_px=200, micrograph_name="mic")
        back = read_picks(path)
        np.testing.assert_allclose(back[XY], table[XY], atol=1e-3, err_msg=fmt)


@pytest.mark.parametrize("path", real_files("*.cbox"), ids=real_ids(real_files("*.cbox")))
def test_real_cbox(path: Path, tmp_path: Path) -> None:
    require_paths(path)
    labels, rows = _raw_star_loops(path.read_text())["cryolo"]
    ix, iy, iw, ih = (labels.index(c) for c in ("CoordinateX", "CoordinateY", "Width", "Height"))
    picks = read_picks(path)
    assert len(picks) == len(rows) > 0
    for i in (0, len(rows) // 2, len(rows) - 1):
        row = rows[i]
        assert picks["rlnCoordinateX"][i] == pytest.approx(float(row[ix]) + float(row[iw]) / 2)
        assert picks["rlnCoordinateY"][i] == pytest.approx(float(row[iy]) + float(row[ih]) / 2)
        conf = row[labels.index("Confidence")]
        if conf != "<NA>":
            assert picks["rlnAutopickFigureOfMerit"][i] == pytest.approx(float(conf))
    _roundtrip(picks, tmp_path)


@pytest.mark.parametrize("path", real_files("*.box"), ids=real_ids(real_files("*.box")))
def test_real_box(path: Path, tmp_path: Path) -> None:
    require_paths(path)
    table = np.loadtxt(path, ndmin=2)
    picks = read_picks(path)
    np.testing.assert_allclose(picks["rlnCoordinateX"], table[:, 0] + table[:, 2] / 2)
    np.testing.assert_allclose(picks["rlnCoordinateY"], table[:, 1] + table[:, 3] / 2)
    if table.shape[1] > 4:
        np.testing.assert_allclose(picks["rlnAutopickFigureOfMerit"], table[:, 4])
    if np.ptp(table[:, 2:4]) == 0:
        assert picks.attrs["box_px"] == table[0, 2]
    _roundtrip(picks, tmp_path)


def test_real_box_pickers_agree_on_corner_convention() -> None:
    """crYOLO and Topaz .box (corner + w/2) land on APPLE's STAR centres; corners don't."""
    mic = "Falcon_2012_06_12-14_33_35_0"
    boxes = [REAL / "repic_empiar10017" / p / f"{mic}.box" for p in ("crYOLO", "topaz")]
    apple = REAL / "aspire_python/scripts/apple_out/falcon_2012_06_12-14_33_35_0_applepick.star"
    require_paths(*boxes, apple)
    _, rows = _raw_star_loops(apple.read_text())["root"]
    centres_apple = np.array(rows, dtype=float)[:, :2]
    cryolo = np.loadtxt(boxes[0], ndmin=2)

    def matched(a: np.ndarray, b: np.ndarray, radius: float = 20.0) -> float:
        dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)
        return float((dist < radius).mean())

    cryolo_c = read_picks(boxes[0])[XY].to_numpy()
    topaz_c = read_picks(boxes[1])[XY].to_numpy()
    assert matched(cryolo_c, topaz_c) > 0.8
    assert matched(cryolo_c, centres_apple) > 0.3
    assert matched(cryolo[:, :2], centres_apple) < 0.1  # corners are not centres
    flipped = np.column_stack([cryolo_c[:, 0], 4095 - cryolo_c[:, 1]])
    assert matched(flipped, centres_apple) < 0.1  # and no y flip between them


def test_real_topaz_table_matches_relion_star(tmp_path: Path) -> None:
    root = REAL / "topaz_empiar10025"
    require_paths(root / "particles.txt", root / "particles.star")
    lines = (root / "particles.txt").read_text().splitlines()
    assert lines[0].split("\t") == ["image_name", "x_coord", "y_coord"]
    raw = [ln.split("\t") for ln in lines[1:] if ln.strip()]
    picks = read_picks(root / "particles.txt")
    assert len(picks) == len(raw) == 1500
    assert list(picks["rlnMicrographName"]) == [r[0] for r in raw]
    np.testing.assert_allclose(picks[XY], np.array([r[1:3] for r in raw], dtype=float))
    # the same picks in RELION's STAR: Topaz centres are rlnCoordinateX/Y, names are stems
    labels, rows = _raw_star_loops((root / "particles.star").read_text())["images"]
    star = {(Path(r[labels.index("rlnMicrographName")]).stem,
             float(r[labels.index("rlnCoordinateX")]), float(r[labels.index("rlnCoordinateY")]))
            for r in rows}
    assert star == set(zip(picks["rlnMicrographName"], picks["rlnCoordinateX"],
                           picks["rlnCoordinateY"], strict=True))
    _roundtrip(picks, tmp_path)


def test_real_plain_coordinates(tmp_path: Path) -> None:
    path = REAL / "aspire_python/tests/saved_test_data/sample.coord"
    require_paths(path)
    table = np.loadtxt(path, ndmin=2)
    picks = read_picks(path)
    np.testing.assert_allclose(picks[XY], table[:, :2])
    _roundtrip(picks, tmp_path)


def _star_files_with_coordinates() -> list[Path]:
    return real_files("*.star", lambda p: "_rlnCoordinateX" in p.read_text())


@pytest.mark.parametrize("path", _star_files_with_coordinates(),
                         ids=real_ids(_star_files_with_coordinates()))
def test_real_star(path: Path, tmp_path: Path) -> None:
    require_paths(path)
    text = path.read_text()
    loop = _raw_pick_loop(text)
    if "data_hot_pixels" in text or loop is None:
        refused(lambda: read_picks(path), path)
        return
    labels, rows = loop
    picks = read_picks(path)
    assert len(picks) == len(rows)
    ix, iy = labels.index("rlnCoordinateX"), labels.index("rlnCoordinateY")
    for i in {0, len(rows) // 2, len(rows) - 1}:
        assert picks["rlnCoordinateX"][i] == pytest.approx(float(rows[i][ix]))
        assert picks["rlnCoordinateY"][i] == pytest.approx(float(rows[i][iy]))
    assert set(labels) == set(picks.columns)  # every column carried
    if "rlnImageName" in labels:
        optics, particles = read_particles_star(path)
        assert (optics is not None) == ("data_optics" in text)
        assert list(particles["rlnImageName"][:3]) == [r[labels.index("rlnImageName")]
                                                      for r in rows[:3]]
    _roundtrip(picks, tmp_path)
