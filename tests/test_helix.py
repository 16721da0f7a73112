"""Helical extraction (``--helix``) against RELION 3.1.3 ``relion_preprocess --helix``.

Generated micrographs with tubes at many angles (start/end pairs with integer
coordinates, some running off the micrograph or near its edges, one vertical, one
horizontal); RELION and we extract the same picks in the same dataset folder. Segments
are matched by order (RELION writes them tube by tube, as we do), and the positions,
priors, track lengths and pixels compared. docs/conventions.md, "Helical segments".
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoextract.pipeline.extract import extract
from cryoextract.pipeline.params import ExtractParams, HelixParams
from helpers import cli_env, one_line_error
from relion_oracle import (
    SRC_DIR,
    Dataset,
    Particles,
    coordinate_file,
    load_particles,
    make_dataset,
    pearson,
    require_relion,
    run_relion_preprocess,
)

BOX = 96
APIX = 1.5
BG_RADIUS = 30
NR_ASU, RISE = 3, 4.75  # step 9.5 px
DIAMETER = 100.0  # A: 66.7 px of the 96 px box
EMAN_WIDTH = 40  # box side written in the EMAN helix .box files


def _tubes(seed: int = 1) -> pd.DataFrame:
    """Start/end rows of 9 tubes at random angles (some leaving the micrograph) plus a
    vertical and a horizontal one near the left and top edges; integer coordinates."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int]] = []
    for _ in range(9):
        angle = math.radians(rng.uniform(-180, 180))
        cx, cy, half = rng.integers(60, 700), rng.integers(60, 580), rng.uniform(80, 200)
        rows += [(int(cx - half * math.cos(angle)), int(cy - half * math.sin(angle))),
                 (int(cx + half * math.cos(angle)), int(cy + half * math.sin(angle)))]
    rows += [(50, 300), (50, 520), (200, 49), (600, 49)]
    return pd.DataFrame(rows, columns=["rlnCoordinateX", "rlnCoordinateY"]).astype(float)


def _eman_box(tubes: pd.DataFrame) -> str:
    """EMAN helix ``.box``: ``corner_x corner_y w h tag``, tags -1 (start) and -2 (end)."""
    lines = []
    for k, (x, y) in enumerate(tubes.to_numpy()):
        lines.append(f"{int(x) - EMAN_WIDTH // 2}\t{int(y) - EMAN_WIDTH // 2}\t"
                     f"{EMAN_WIDTH}\t{EMAN_WIDTH}\t{-1 - k % 2}")
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    ds: Dataset
    relion: Particles
    ours: Particles
    dropped: dict[str, int]


def _dataset(root: Path, suffix: str) -> Dataset:
    ds = make_dataset(root, kinds=("float32",), shape=(640, 768), n_picks=1, n_edge=0,
                      box=BOX, apix=APIX, dust=0, coords_suffix=suffix)
    path = coordinate_file(ds, ds.micrographs[0].name)
    if suffix.endswith(".box"):
        path.write_text(_eman_box(_tubes()))
    else:  # tube IDs of the user's and a pitch per tube, on the start rows (RELION's)
        tubes = _tubes()
        tubes["rlnHelicalTubeID"] = 10 * (np.arange(len(tubes)) // 2) + 7
        tubes["rlnHelicalTubePitch"] = 300.0 + np.arange(len(tubes)) // 2
        starfile.write(tubes, path, overwrite=True)
    return ds


def _ours(ds: Dataset, out: str, helix: HelixParams, picks: str | None = None,
          **params: object) -> tuple[Particles, dict[str, int]]:
    """Our extraction in the dataset folder (names relative to it, as RELION's), from the
    RELION coordinate files or from one ``picks`` file."""
    where = {"coords": picks} if picks else {"coords_dir": ds.coords_dir,
                                              "coords_suffix": ds.coords_suffix}
    cwd = os.getcwd()
    os.chdir(ds.root)
    try:
        summary = extract(ds.micrographs_star, out,
                          ExtractParams(**{"box_px": BOX, "invert": False, "descriptors": False,
                                           "helix": helix, **params}),  # type: ignore[arg-type]
                          workers=1, **where)  # type: ignore[arg-type]
    finally:
        os.chdir(cwd)
    return load_particles(ds.root / out / "particles.star", ds.root), summary.particles_dropped


def _relion_args(bimodal: bool) -> list[str]:
    return ["--helix", "--helical_tubes", "--helical_cut_into_segments", "--helical_nr_asu",
            str(NR_ASU), "--helical_rise", str(RISE), "--helical_outer_diameter", str(DIAMETER),
            *(["--helical_bimodal_angular_priors"] if bimodal else [])]


@pytest.fixture(scope="module", params=[("_tubes.star", False), ("_tubes.star", True),
                                        (".box", False)], ids=["star", "star-bimodal", "box"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    require_relion()
    suffix, bimodal = request.param
    ds = _dataset(tmp_path_factory.mktemp("helix"), suffix)
    run_relion_preprocess(ds, "Relion/", box=BOX, norm=True, bg_radius=BG_RADIUS,
                          extra=_relion_args(bimodal))
    relion = load_particles(ds.root / "Relion" / "particles.star", ds.root)
    ours, dropped = _ours(ds, "Ours", HelixParams(True, NR_ASU, RISE, DIAMETER, bimodal),
                          bg_radius_px=BG_RADIUS)
    return Run(ds, relion, ours, dropped)


def _positions(parts: pd.DataFrame) -> np.ndarray:
    """Where each segment is: coordinates less origins (docs/conventions.md, "Origins")."""
    xy = parts[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    if "rlnOriginXAngst" in parts.columns:
        xy = xy - parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64) / APIX
    return xy


def test_segments_as_relion_places_them(run: Run) -> None:
    ref, ours = run.relion.particles, run.ours.particles
    assert len(ref) > 150  # the tubes give many segments; some were dropped at the edges
    assert len(ours) == len(ref)
    assert (ours["rlnHelicalTubeID"].to_numpy() == ref["rlnHelicalTubeID"].to_numpy()).all()
    if "rlnHelicalTubePitch" in ref.columns:
        assert (ours["rlnHelicalTubePitch"] == ref["rlnHelicalTubePitch"]).all()
        assert (ref["rlnHelicalTubeID"] % 10 == 7).all()
    assert np.abs(_positions(ours) - _positions(ref)).max() < 0.01
    for column, tolerance in (("rlnAnglePsiPrior", 0.01), ("rlnHelicalTrackLengthAngst", 1e-3),
                              ("rlnAngleTiltPrior", 0.0), ("rlnAnglePsiFlipRatio", 0.0)):
        difference = ours[column].to_numpy(np.float64) - ref[column].to_numpy(np.float64)
        assert np.abs(difference).max() <= tolerance, column
    assert sum(run.dropped.values()) > 0  # segments near the edges, reported


def test_tube_normalisation_as_relion(run: Run) -> None:
    correlations = [pearson(a, b) for a, b in zip(run.relion.images, run.ours.images,
                                                  strict=True)]
    assert min(correlations) >= 0.9999
    background = run.relion.images[:, :4, :].std()  # corner rows: normalised background
    assert 0.5 < background < 2.0


def _angle_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((np.asarray(a, np.float64) - np.asarray(b, np.float64) + 180) % 360 - 180)


def test_segments_without_priors_get_them_from_their_order(run: Run) -> None:
    """RELION's segments with only coordinates and tube IDs (as Topaz or crYOLO give
    them): psi priors from the segments' direction, track lengths from their spacing
    (RELION's ``k * step`` from the tube's first segment), pixels as RELION's."""
    ref = run.relion.particles
    segments = ref[["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY",
                    "rlnHelicalTubeID"]]
    starfile.write(segments, run.ds.root / "segments.star", overwrite=True)
    ours, dropped = _ours(run.ds, "Segments", HelixParams(outer_diameter_angstrom=DIAMETER),
                          picks="segments.star", bg_radius_px=BG_RADIUS)
    counts = ref["rlnHelicalTubeID"].value_counts()
    lone = ref["rlnHelicalTubeID"].isin(counts.index[counts == 1]).to_numpy()
    assert dropped == ({"filament of one segment: no direction": int(lone.sum())}
                       if lone.any() else {})
    ref, images = ref[~lone].reset_index(drop=True), run.relion.images[~lone]
    parts = ours.particles
    assert (parts["rlnHelicalTubeID"].to_numpy() == ref["rlnHelicalTubeID"].to_numpy()).all()
    assert _angle_difference(parts["rlnAnglePsiPrior"], ref["rlnAnglePsiPrior"]).max() < 0.01
    assert (parts["rlnAngleTiltPrior"] == 90).all()
    assert (parts["rlnAnglePsiFlipRatio"] == 0).all()
    for tube, rows in ref.groupby("rlnHelicalTubeID"):
        expected = rows["rlnHelicalTrackLengthAngst"].to_numpy()
        got = parts.loc[parts["rlnHelicalTubeID"] == tube, "rlnHelicalTrackLengthAngst"]
        assert np.abs(got.to_numpy() - (expected - expected[0])).max() < 1e-3, tube
    assert min(pearson(a, b) for a, b in zip(images, ours.images, strict=True)) >= 0.9999


def test_reextraction_keeps_tubes_and_moves_by_origins(run: Run) -> None:
    """Our segments re-extracted with refined origins: tube IDs, priors and track lengths
    carried, each segment boxed where ``coordinate - origin / apix`` says."""
    first = starfile.read(run.ds.root / "Ours" / "particles.star", always_dict=True)
    parts = first["particles"]
    rng = np.random.default_rng(5)
    parts["rlnOriginXAngst"] += rng.uniform(-6, 6, len(parts)).round(3)
    parts["rlnOriginYAngst"] += rng.uniform(-6, 6, len(parts)).round(3)
    starfile.write(first, run.ds.root / "refined.star", overwrite=True)
    again, _ = _ours(run.ds, "Again", HelixParams(outer_diameter_angstrom=DIAMETER),
                     picks="refined.star", recenter=True)
    # matched by tube and track length; dropped: the ones whose box, at the nearest pixel
    # to where they moved, leaves the micrograph
    key = ["rlnHelicalTubeID", "rlnHelicalTrackLengthAngst"]
    merged = parts.merge(again.particles, on=key, suffixes=("_in", ""))
    assert len(merged) == len(again.particles)
    moved = np.round(_positions(parts))
    ny, nx = run.ds.micrographs[0].shape
    fits = ((moved >= BOX / 2) & (moved <= np.array([nx, ny]) - BOX / 2)).all(axis=1)
    assert len(merged) == fits.sum() > 250
    for column in ("rlnAnglePsiPrior", "rlnAngleTiltPrior", "rlnAnglePsiFlipRatio"):
        assert (merged[column + "_in"] == merged[column]).all(), column
    wanted = merged[["rlnCoordinateX_in", "rlnCoordinateY_in"]].to_numpy() - merged[
        ["rlnOriginXAngst_in", "rlnOriginYAngst_in"]].to_numpy() / APIX
    assert np.abs(_positions(merged) - wanted).max() < 1e-3
    assert np.abs(merged[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).max() <= APIX / 2


def _tube_normalised(image: np.ndarray, radius_px: float, psi_deg: float) -> np.ndarray:
    """RELION's helical normalisation written out: background farther than the radius
    from the axis at psi through the centre; plane fit, then mean 0 and std 1 there."""
    n = image.shape[0]
    i, j = np.mgrid[0:n, 0:n] - n // 2
    psi = math.radians(psi_deg)
    background = np.abs(math.sin(psi) * j + math.cos(psi) * i) > radius_px
    design = np.stack([j[background], i[background], np.ones(background.sum())], axis=1)
    plane, *_ = np.linalg.lstsq(design, image[background].astype(np.float64), rcond=None)
    flat = image - (plane[0] * j + plane[1] * i + plane[2])
    return (flat - flat[background].mean()) / flat[background].std()


def test_binned_tube_radius_scales(run: Run) -> None:
    """Binned segments: the tube radius is D/2 in output pixels (not RELION's integer
    division, which makes it 0): our unbinned raw segments, Fourier-cropped and then
    tube-normalised here, are our binned ones."""
    from cryoextract.ops.fourier import fourier_crop_2d
    from cryoextract.options import NormMode

    helix = HelixParams(True, NR_ASU, RISE, DIAMETER)
    binned, _ = _ours(run.ds, "Binned", helix, out_box_px=BOX // 2, bg_radius_px=BG_RADIUS // 2)
    raw, _ = _ours(run.ds, "Raw", helix, norm=NormMode.NONE)
    cropped = fourier_crop_2d(raw.images, BOX // 2)
    radius = DIAMETER / 2 / (APIX * 2)
    psi = raw.particles["rlnAnglePsiPrior"].to_numpy()
    expected = [_tube_normalised(image, radius, p) for image, p in zip(cropped, psi, strict=True)]
    assert min(pearson(a, b) for a, b in zip(expected, binned.images, strict=True)) >= 0.9999
    relion_bug = [_tube_normalised(image, 0.0, p) for image, p in zip(cropped[:20], psi[:20],
                                                                      strict=True)]
    assert min(pearson(a, b) for a, b in zip(relion_bug, binned.images[:20],
                                             strict=True)) < 0.999


# --------------------------------------------------------------------------- pre-segmented
# straight filaments (start x, start y, direction in degrees, segments), 20 px apart
FILAMENTS = ((120.0, 100.0, 30.0, 12), (600.0, 500.0, -150.0, 10), (400.0, 120.0, 90.0, 14))
SPACING_PX = 20.0


def _filament_segments() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 2)`` positions, ``(n,)`` 0-based filament number and direction (degrees)."""
    xy, filament, direction = [], [], []
    for k, (x, y, angle, count) in enumerate(FILAMENTS):
        step = SPACING_PX * np.array([math.cos(math.radians(angle)),
                                      math.sin(math.radians(angle))])
        xy += [np.array([x, y]) + i * step for i in range(count)]
        filament += [k] * count
        direction += [angle] * count
    return np.array(xy), np.array(filament), np.array(direction)


def _check_filament_columns(parts: pd.DataFrame) -> None:
    """Tube IDs 1, 2, 3, psi prior -direction, track length i * spacing * apix."""
    _, filament, direction = _filament_segments()
    index = np.concatenate([np.arange(count) for *_, count in FILAMENTS])
    assert (parts["rlnHelicalTubeID"].to_numpy() == filament + 1).all()
    assert _angle_difference(parts["rlnAnglePsiPrior"], -direction).max() < 0.01
    assert np.abs(parts["rlnHelicalTrackLengthAngst"] - index * SPACING_PX * APIX).max() < 0.01
    assert (parts["rlnAngleTiltPrior"] == 90).all()


def _cryolo_filament_cbox(xy: np.ndarray, filament: np.ndarray) -> str:
    """crYOLO 1.8 filament ``.cbox`` as crYOLO writes it (corner = centre - 50, box 100,
    Depth 1.0, ``<NA>`` where unset, 0-based float ``filamentid`` last)."""
    head = ["", "data_global", "", "_cbox_format_version 1.0", "", "data_cryolo", "", "loop_"]
    names = ["CoordinateX", "CoordinateY", "CoordinateZ", "Width", "Height", "Depth",
             "EstWidth", "EstHeight", "Confidence", "NumBoxes", "Angle", "filamentid"]
    head += [f"_{name} #{i}" for i, name in enumerate(names, start=1)]
    rows = [f"{float(x) - 50!r} {float(y) - 50!r} <NA> 100.0 100.0 1.0 <NA> <NA> 1.0 <NA> "
            f"<NA> {float(f)}" for (x, y), f in zip(xy, filament, strict=True)]
    return "\n".join(head + rows) + "\n"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A micrograph and its STAR; no picks used."""
    return make_dataset(tmp_path_factory.mktemp("filaments"), kinds=("float32",),
                        shape=(640, 768), n_picks=1, n_edge=0, box=BOX, apix=APIX, dust=0)


def test_cryolo_filament_cbox(plain: Dataset) -> None:
    xy, filament, _ = _filament_segments()
    path = plain.root / "filaments.cbox"
    path.write_text(_cryolo_filament_cbox(xy, filament))
    parts, dropped = _ours(plain, "Cbox", HelixParams(outer_diameter_angstrom=DIAMETER),
                           picks="filaments.cbox")
    assert dropped == {}
    assert np.abs(_positions(parts.particles) - xy).max() < 0.01
    _check_filament_columns(parts.particles)
    assert "filamentid" not in parts.particles.columns


def test_cryosparc_filament_fields_in_and_out(plain: Dataset) -> None:
    """A Filament Tracer ``.cs`` (uids, poses in radians, arc lengths from an offset) gives
    the same helical columns as the geometry; ``--write-cs`` writes them back."""
    xy, filament, direction = _filament_segments()
    ny, nx = plain.micrographs[0].shape
    dtype = [("uid", "<u8"), ("location/micrograph_path", "S64"),
             ("location/micrograph_shape", "<u4", (2,)), ("location/center_x_frac", "<f4"),
             ("location/center_y_frac", "<f4"), ("filament/filament_uid", "<u8"),
             ("filament/filament_pose", "<f4"), ("filament/arc_length_A", "<f4")]
    data = np.zeros(len(xy), dtype=dtype)
    data["uid"] = np.arange(len(xy)) + 7
    data["location/micrograph_path"] = plain.micrographs[0].name.encode()
    data["location/micrograph_shape"] = (ny, nx)
    data["location/center_x_frac"], data["location/center_y_frac"] = xy[:, 0] / nx, xy[:, 1] / ny
    data["filament/filament_uid"] = np.array([9_000_000_000_000_000_001, 17, 123456789],
                                             dtype=np.uint64)[filament]
    data["filament/filament_pose"] = np.radians(direction)
    index = np.concatenate([np.arange(count) for *_, count in FILAMENTS])
    data["filament/arc_length_A"] = 500.0 + index * SPACING_PX * APIX
    with open(plain.root / "filaments.cs", "wb") as stream:
        np.save(stream, data)
    cwd = os.getcwd()
    os.chdir(plain.root)
    try:
        extract(plain.micrographs_star, "Cs", ExtractParams(
            box_px=BOX, descriptors=False, helix=HelixParams(bimodal_psi=True)),
            coords="filaments.cs", workers=1, write_cs=True)
    finally:
        os.chdir(cwd)
    parts = load_particles(plain.root / "Cs" / "particles.star", plain.root).particles
    assert np.abs(_positions(parts) - xy).max() < 0.02  # float32 fractions of 768 px
    _check_filament_columns(parts)
    assert (parts["rlnAnglePsiFlipRatio"] == 0.5).all()
    written = np.load(plain.root / "Cs" / "particles.cs")
    uid = written["filament/filament_uid"]
    assert [len(set(uid[filament == k])) for k in range(3)] == [1, 1, 1]
    assert len(set(uid)) == 3
    pose = np.degrees(written["filament/filament_pose"].astype(np.float64))
    assert _angle_difference(pose, direction).max() < 0.01
    for field in ("filament/arc_length_A", "filament/position_A"):
        assert np.abs(written[field] - index * SPACING_PX * APIX).max() < 0.01


# --------------------------------------------------------------------------- bad input
def _cli(ds: Dataset, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC_DIR), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "cryoextract", "extract", "--micrographs",
                           ds.micrographs_star, "--box", str(BOX), "--out", "Bad", "--overwrite",
                           "--no-report", "--helix", *args], cwd=ds.root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


TUBE_ROWS = "data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n"


BAD_FILES = [
    ("odd_tubes.star", TUBE_ROWS + "100 100\n300 100\n200 200\n",
     "row 3: a tube start without an end"),
    ("flat_tubes.star", TUBE_ROWS + "100 100\n300 100\n200 200\n200 200\n",
     "rows 3-4: tube of zero length"),
    ("tags.box", "80 80 40 40 -1\n280 80 40 40 -1\n", "row 2: EMAN helix tubes"),
]


def _bad_file(ds: Dataset, name: str, content: str) -> tuple[str, str]:
    """A bad tube file as the micrograph's coordinates: (suffix, its name as given)."""
    (ds.root / "Bad_picks").mkdir(exist_ok=True)
    stem = Path(ds.micrographs[0].name).stem
    (ds.root / "Bad_picks" / f"{stem}_{name}").write_text(content)
    return f"_{name}", f"Bad_picks/{stem}_{name}"


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES)
def test_bad_tube_files_named_with_their_row(plain: Dataset, name: str, content: str,
                                             expected: str) -> None:
    from cryoextract.errors import CryoExtractError

    suffix, where = _bad_file(plain, name, content)
    cwd = os.getcwd()
    os.chdir(plain.root)
    try:
        with pytest.raises(CryoExtractError) as info:
            extract(plain.micrographs_star, "Bad", ExtractParams(
                box_px=BOX, helix=HelixParams(True, rise_angstrom=RISE)), workers=1,
                coords_dir="Bad_picks", coords_suffix=suffix, overwrite=True)
    finally:
        os.chdir(cwd)
    assert where in str(info.value) and expected in str(info.value), str(info.value)
    assert not (plain.root / "Bad" / "particles.star").exists()


@pytest.mark.parametrize(("params", "expected"), [
    ({"tubes": True, "rise_angstrom": 0.0}, "--helical-rise-angstrom must be > 0"),
    ({"tubes": True}, "--helical-tubes needs --helical-rise-angstrom"),
    ({"nr_asu": 0}, "--helical-nr-asu must be an integer >= 1"),
    ({"outer_diameter_angstrom": -5.0}, "--helical-outer-diameter must be > 0"),
])
def test_bad_helical_parameters(params: dict[str, object], expected: str) -> None:
    from cryoextract.errors import ParameterError

    with pytest.raises(ParameterError, match=expected):
        HelixParams(**params)  # type: ignore[arg-type]


def test_bad_input_is_one_line_and_exit_2(plain: Dataset) -> None:
    """Through the command: a bad tube file and a tube wider than the box."""
    suffix, where = _bad_file(plain, *BAD_FILES[0][:2])
    done = _cli(plain, "--helical-tubes", "--helical-rise-angstrom", "4.75", "--coords-dir",
                "Bad_picks", "--coords-suffix", suffix)
    line = one_line_error(done.returncode, done.stdout, done.stderr)
    assert where in line and BAD_FILES[0][2] in line, line
    done = _cli(plain, "--helical-outer-diameter", "150", "--coords-dir", "Picks",
                "--coords-suffix", "_pick.star")
    assert "wider than the 96 px box" in one_line_error(done.returncode, done.stdout,
                                                         done.stderr)
    assert not (plain.root / "Bad" / "particles.star").exists()


def test_eman_tubes_given_as_one_file(tmp_path: Path) -> None:
    """An EMAN helix .box given with --coords (no file name reaches the worker) is still
    read as EMAN tubes (ends trimmed): the segments are those RELION places from the
    same file (the "box" case above), here read through --coords-dir."""
    ds = _dataset(tmp_path, ".box")
    helix = HelixParams(True, NR_ASU, RISE)
    by_dir, _ = _ours(ds, "ByDir", helix)
    one, _ = _ours(ds, "One", helix, picks=str(coordinate_file(ds, ds.micrographs[0].name)))
    assert len(one.particles) == len(by_dir.particles) > 100
    assert np.abs(_positions(one.particles) - _positions(by_dir.particles)).max() == 0


# --------------------------------------------------------------------------- convert
def test_convert_tubes_to_relion_segments(run: Run) -> None:
    """``convert --helix --helical-tubes``: the tubes become RELION's segments (those
    RELION keeps, at its unrounded coordinates, with its columns) plus the edge ones."""
    from cryoextract.pipeline.convert import ConvertOptions, convert_picks

    coords = coordinate_file(run.ds, run.ds.micrographs[0].name)
    out = run.ds.root / "converted.star"
    convert_picks([coords], ConvertOptions(
        to="star", out=out, pixel_size_angstrom=APIX, overwrite=True,
        helix=HelixParams(True, NR_ASU, RISE, bimodal_psi=bool(
            (run.relion.particles["rlnAnglePsiFlipRatio"] == 0.5).all()))))
    segments = starfile.read(out)
    ref = run.relion.particles
    key = ["rlnHelicalTubeID", "rlnHelicalTrackLengthAngst"]
    merged = ref.merge(segments.round({key[1]: 3}), on=[key[0]], suffixes=("", "_c"))
    merged = merged[np.abs(merged[key[1]] - merged[key[1] + "_c"]) < 1e-3]
    assert len(merged) == len(ref) < len(segments)
    for column in ("rlnCoordinateX", "rlnCoordinateY", "rlnAnglePsiPrior"):
        assert np.abs(merged[column] - merged[column + "_c"]).max() < 1e-5, column


def test_convert_cryolo_filaments_for_relion(plain: Dataset) -> None:
    """crYOLO filament segments (no priors) converted with ``--helix`` to a coordinate
    STAR that ``relion_preprocess --helix`` (pre-segmented) accepts: it keeps our tube
    IDs, priors and track lengths, which are the filaments' geometry."""
    from cryoextract.pipeline.convert import ConvertOptions, convert_picks

    require_relion()
    xy, filament, _ = _filament_segments()
    cbox = plain.root / "cryolo" / f"{Path(plain.micrographs[0].name).stem}.cbox"
    cbox.parent.mkdir(exist_ok=True)
    cbox.write_text(_cryolo_filament_cbox(xy, filament))
    star = coordinate_file(plain, plain.micrographs[0].name).with_name(
        f"{cbox.stem}_segments.star")
    convert_picks([cbox], ConvertOptions(to="star", out=star, pixel_size_angstrom=APIX,
                                         overwrite=True, helix=HelixParams()))
    ds = Dataset(plain.root, plain.micrographs_star, plain.coords_dir, "_segments.star",
                 APIX, plain.micrographs)
    run_relion_preprocess(ds, "RelionSegments/", box=BOX, norm=True, bg_radius=BG_RADIUS,
                          extra=["--helix", "--helical_outer_diameter", str(DIAMETER)])
    relion = load_particles(plain.root / "RelionSegments" / "particles.star", plain.root)
    assert np.abs(_positions(relion.particles) - xy).max() < 1e-4
    _check_filament_columns(relion.particles)


def test_report_joins_the_segments_of_each_tube(run: Run, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    from cryoextract.report.page import write_report

    monkeypatch.chdir(run.ds.root)
    text = write_report(run.ds.root / "Ours", n_random=2, n_worst=0, max_micrographs=1
                        ).read_text()
    drawn = re.search(r'<path class="tubes" d="([^"]+)"', text).group(1)
    lines = [np.array(re.findall(r"([-\d.]+) ([-\d.]+)", line), float)
             for line in drawn.split("M")[1:]]
    parts = run.ours.particles
    tubes = [group[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
             for _, group in parts.groupby("rlnHelicalTubeID", sort=False) if len(group) > 1]
    assert len(lines) == len(tubes) > 5
    assert 'class="boxes"' not in text  # overlapping boxes would hide the tubes
    for line, tube in zip(lines, tubes, strict=True):
        assert line.shape == tube.shape and np.abs(line - tube).max() <= 0.05


def _helicon_box(tubes: pd.DataFrame, step_px: float) -> str:
    """EMAN2 helix .box: per tube its ends and width, then segment centres every step."""
    lines = []
    for (x1, y1), (x2, y2) in zip(tubes.to_numpy()[0::2], tubes.to_numpy()[1::2], strict=True):
        lines.append(f"#helix: ({x1:g}, {y1:g}),({x2:g}, {y2:g}),{EMAN_WIDTH}")
        length = math.hypot(x2 - x1, y2 - y1)
        for t in np.arange(0, length, step_px) / length:
            lines.append(f"{x1 + t * (x2 - x1):.6f}\t{y1 + t * (y2 - y1):.6f}")
    return "\n".join(lines) + "\n"


def test_eman2_helix_segments_as_relion(tmp_path: Path) -> None:
    """EMAN2 helix ``.box`` segments (``#helix:`` lines, crYOLO's EMAN_HELICON) through
    ``relion_preprocess --helix`` (pre-segmented) and ours: same segments, priors, track
    lengths (distances summed along the segments, edge ones included) and pixels."""
    require_relion()
    ds = make_dataset(tmp_path, kinds=("float32",), shape=(640, 768), n_picks=1, n_edge=0,
                      box=BOX, apix=APIX, dust=0, coords_suffix=".box")
    coordinate_file(ds, ds.micrographs[0].name).write_text(_helicon_box(_tubes(), 11.3))
    run_relion_preprocess(ds, "Relion/", box=BOX, norm=True, bg_radius=BG_RADIUS,
                          extra=["--helix", "--helical_outer_diameter", str(DIAMETER)])
    relion = load_particles(ds.root / "Relion" / "particles.star", ds.root)
    ours, dropped = _ours(ds, "Ours", HelixParams(outer_diameter_angstrom=DIAMETER),
                          bg_radius_px=BG_RADIUS)
    ref, parts = relion.particles, ours.particles
    assert len(parts) == len(ref) > 100 and sum(dropped.values()) > 0
    assert (parts["rlnHelicalTubeID"].to_numpy() == ref["rlnHelicalTubeID"].to_numpy()).all()
    assert np.abs(_positions(parts) - _positions(ref)).max() < 0.01
    assert _angle_difference(parts["rlnAnglePsiPrior"], ref["rlnAnglePsiPrior"]).max() < 0.01
    difference = parts["rlnHelicalTrackLengthAngst"] - ref["rlnHelicalTrackLengthAngst"]
    assert np.abs(difference).max() < 1e-3
    assert min(pearson(a, b) for a, b in zip(relion.images, ours.images, strict=True)) >= 0.9999



def test_dust_on_the_tube_background(tmp_path: Path) -> None:
    """Dust (``--white-dust/--black-dust``) is judged by each segment's tube background, as
    RELION's ``normalise``: our replaced-pixel counts are those the rule gives on the raw
    segments, and the result is RELION's apart from the random replacements."""
    from cryoextract.options import NormMode

    require_relion()
    ds = make_dataset(tmp_path, kinds=("float32",), shape=(640, 768), n_picks=1, n_edge=0,
                      box=BOX, apix=APIX, dust=200, coords_suffix="_tubes.star")
    starfile.write(_tubes(), coordinate_file(ds, ds.micrographs[0].name), overwrite=True)
    run_relion_preprocess(ds, "Relion/", box=BOX, norm=True, bg_radius=BG_RADIUS,
                          white_dust=2.5, black_dust=2.5, extra=_relion_args(False))
    relion = load_particles(ds.root / "Relion" / "particles.star", ds.root)
    helix = HelixParams(True, NR_ASU, RISE, DIAMETER)
    ours, _ = _ours(ds, "Ours", helix, bg_radius_px=BG_RADIUS, white_dust_sigma=2.5,
                    black_dust_sigma=2.5, descriptors=True)
    raw, _ = _ours(ds, "Raw", helix, norm=NormMode.NONE)
    i, j = np.mgrid[0:BOX, 0:BOX] - BOX // 2
    expected, circular, correlations = [], [], []
    for image, psi, theirs, mine in zip(raw.images.astype(np.float64),
                                        raw.particles["rlnAnglePsiPrior"], relion.images,
                                        ours.images, strict=True):
        angle = math.radians(psi)
        tube = np.abs(math.sin(angle) * j + math.cos(angle) * i) > DIAMETER / 2 / APIX
        dust = {}
        for name, background in (("tube", tube), ("circle", i**2 + j**2 > BG_RADIUS**2)):
            mean, std = image[background].mean(), image[background].std()
            dust[name] = np.abs(image - mean) > 2.5 * std
        expected.append(int(dust["tube"].sum()))
        circular.append(int(dust["circle"].sum()))
        # RELION's result but for the random values given to the replaced pixels
        correlations.append(pearson(theirs[~dust["tube"]], mine[~dust["tube"]]))
    counts = ours.particles["ceDustPixels"].to_numpy()
    assert (counts == expected).all() and counts.sum() > 20
    assert (counts != circular).sum() > 10  # the tube background, not the circle
    assert min(correlations) > 0.999


def test_edge_segments_kept_with_edge_replicate(run: Run) -> None:
    """``--edge replicate`` keeps the segments RELION drops near the edges (their centres
    on the micrograph), filled by replication; the others are unchanged."""
    from cryoextract.ops.boxes import EdgeMode

    bimodal = bool((run.relion.particles["rlnAnglePsiFlipRatio"] == 0.5).all())
    kept, dropped = _ours(run.ds, "Replicate", HelixParams(True, NR_ASU, RISE, DIAMETER, bimodal),
                          bg_radius_px=BG_RADIUS, edge=EdgeMode.REPLICATE)
    assert list(dropped) == ["centre outside micrograph"]
    assert len(kept.particles) == len(run.ours.particles) + run.dropped["box leaves micrograph"]
    both = _positions(kept.particles)[:, None, :] - _positions(run.ours.particles)[None]
    match = np.flatnonzero((np.abs(both).max(axis=2) < 1e-6).any(axis=1))
    assert len(match) == len(run.ours.particles)
    assert np.array_equal(kept.images[match], run.ours.images)


def test_tubes_from_plain_text(run: Run) -> None:
    """Start/end pairs as plain text ``x y`` rows: RELION's segments of the same tubes
    (from its STAR; its EMAN .box tubes, trimmed by half a box, have fewer)."""
    (run.ds.root / "tubes.txt").write_text(
        "".join(f"{x:g} {y:g}\n" for x, y in _tubes().to_numpy()))
    bimodal = bool((run.relion.particles["rlnAnglePsiFlipRatio"] == 0.5).all())
    ours, _ = _ours(run.ds, "Text", HelixParams(True, NR_ASU, RISE, DIAMETER, bimodal),
                    picks="tubes.txt", bg_radius_px=BG_RADIUS)
    ref = run.relion.particles
    if "rlnHelicalTubePitch" not in ref.columns:  # the EMAN .box run
        assert len(ours.particles) > len(ref)
        return
    assert len(ours.particles) == len(ref)
    assert np.abs(_positions(ours.particles) - _positions(ref)).max() < 0.01
    assert (ours.particles["rlnHelicalTubeID"] == (ref["rlnHelicalTubeID"] - 7) // 10 + 1).all()
    assert min(pearson(a, b) for a, b in zip(run.relion.images, ours.images,
                                             strict=True)) >= 0.9999


def test_helical_options_need_helix() -> None:
    from cryoextract.cli.helix_options import helix_params
    from cryoextract.errors import ParameterError

    assert helix_params(False, False, 1, None, None, False) is None
    assert helix_params(True, True, 3, 4.75, 100.0, True) == HelixParams(True, 3, 4.75, 100.0,
                                                                        True)
    for given in ((True, 1, None, None, False), (False, 2, None, None, False),
                  (False, 1, 4.75, None, False), (False, 1, None, 90.0, False),
                  (False, 1, None, None, True)):
        with pytest.raises(ParameterError, match="need --helix"):
            helix_params(False, *given)
