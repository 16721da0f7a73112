"""Helical picks in other formats: crYOLO filament ``.cbox``, cryoSPARC ``filament/*``,
EMAN2 ``#helix:`` boxes, EMAN helix tubes given with ``--coords``, ``convert --helix``; bad
helical input. RELION 3.1.3 ``relion_preprocess --helix`` is the oracle where it reads the
format; elsewhere the filaments' known geometry. docs/conventions.md, "Helical segments".
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryoextract.pipeline.extraction.extract import extract
from cryoextract.pipeline.extraction.params import ExtractParams, HelixParams
from helix_oracle import (
    APIX,
    BG_RADIUS,
    BOX,
    DIAMETER,
    EMAN_WIDTH,
    NR_ASU,
    RISE,
    angle_difference,
    extract_ours,
    positions,
    tube_ends,
    tubes_dataset,
)
from helpers import cli_env, one_line_error
from relion_oracle import (
    SRC_DIR,
    Dataset,
    coordinate_file,
    load_particles,
    make_dataset,
    pearson,
    require_relion,
    run_relion_preprocess,
)

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
    assert angle_difference(parts["rlnAnglePsiPrior"], -direction).max() < 0.01
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
    parts, dropped = extract_ours(plain, "Cbox", HelixParams(outer_diameter_angstrom=DIAMETER),
                                  picks="filaments.cbox")
    assert dropped == {}
    assert np.abs(positions(parts.particles) - xy).max() < 0.01
    _check_filament_columns(parts.particles)
    assert "filamentid" not in parts.particles.columns


def _filament_cs(path: Path, ds: Dataset, *, pose: bool = True) -> None:
    """A Filament Tracer-like ``.cs`` of :data:`FILAMENTS`: uids, poses in radians (or
    none), arc lengths from an offset."""
    xy, filament, direction = _filament_segments()
    ny, nx = ds.micrographs[0].shape
    dtype = [("uid", "<u8"), ("location/micrograph_path", "S64"),
             ("location/micrograph_shape", "<u4", (2,)), ("location/center_x_frac", "<f4"),
             ("location/center_y_frac", "<f4"), ("filament/filament_uid", "<u8"),
             ("filament/arc_length_A", "<f4")] + [("filament/filament_pose", "<f4")] * pose
    data = np.zeros(len(xy), dtype=dtype)
    data["uid"] = np.arange(len(xy)) + 7
    data["location/micrograph_path"] = ds.micrographs[0].name.encode()
    data["location/micrograph_shape"] = (ny, nx)
    data["location/center_x_frac"], data["location/center_y_frac"] = xy[:, 0] / nx, xy[:, 1] / ny
    data["filament/filament_uid"] = np.array([9_000_000_000_000_000_001, 17, 123456789],
                                             dtype=np.uint64)[filament]
    if pose:
        data["filament/filament_pose"] = np.radians(direction)
    index = np.concatenate([np.arange(count) for *_, count in FILAMENTS])
    data["filament/arc_length_A"] = 500.0 + index * SPACING_PX * APIX
    with open(path, "wb") as stream:
        np.save(stream, data)


def _extract_cs(ds: Dataset, out: str, cs: str, **params: object) -> pd.DataFrame:
    cwd = os.getcwd()
    os.chdir(ds.root)
    try:
        extract(ds.micrographs_star, out, ExtractParams(
            box_px=BOX, descriptors=False, **params),  # type: ignore[arg-type]
            coords=cs, workers=1, write_cs=True)
    finally:
        os.chdir(cwd)
    return load_particles(ds.root / out / "particles.star", ds.root).particles


def test_cryosparc_filament_fields_in_and_out(plain: Dataset) -> None:
    """A Filament Tracer ``.cs`` gives the same helical columns as the geometry;
    ``--write-cs`` writes them back."""
    xy, filament, direction = _filament_segments()
    index = np.concatenate([np.arange(count) for *_, count in FILAMENTS])
    _filament_cs(plain.root / "filaments.cs", plain)
    parts = _extract_cs(plain, "Cs", "filaments.cs", helix=HelixParams(bimodal_psi=True))
    assert np.abs(positions(parts) - xy).max() < 0.02  # float32 fractions of 768 px
    _check_filament_columns(parts)
    assert (parts["rlnAnglePsiFlipRatio"] == 0.5).all()
    written = np.load(plain.root / "Cs" / "particles.cs")
    uid = written["filament/filament_uid"]
    assert [len(set(uid[filament == k])) for k in range(3)] == [1, 1, 1]
    assert len(set(uid)) == 3
    pose = np.degrees(written["filament/filament_pose"].astype(np.float64))
    assert angle_difference(pose, direction).max() < 0.01
    for field in ("filament/arc_length_A", "filament/position_A"):
        assert np.abs(written[field] - index * SPACING_PX * APIX).max() < 0.01


def test_given_priors_turn_with_axis_fixes(plain: Dataset) -> None:
    """Segments with psi priors (a .cs with poses) given --swap-xy --flip-x --flip-y: their
    priors are those the moved segments' own order gives (the same .cs without poses)."""
    from cryoextract.pipeline.extraction.params import PickTransform

    _filament_cs(plain.root / "posed.cs", plain)
    _filament_cs(plain.root / "unposed.cs", plain, pose=False)
    moved = PickTransform(swap_xy=True, flip_x=True, flip_y=True)
    posed = _extract_cs(plain, "Posed", "posed.cs", helix=HelixParams(), picks=moved)
    unposed = _extract_cs(plain, "Unposed", "unposed.cs", helix=HelixParams(), picks=moved)
    assert len(posed) == len(unposed) > 30
    assert np.abs(positions(posed) - positions(unposed)).max() == 0
    difference = angle_difference(posed["rlnAnglePsiPrior"], unposed["rlnAnglePsiPrior"])
    assert difference.max() < 0.01
    given = set(np.round(-_filament_segments()[2]) % 360)  # the priors as in the file
    assert not given & set(np.round(posed["rlnAnglePsiPrior"].to_numpy()) % 360)


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
    ds = tubes_dataset(tmp_path, ".box")
    helix = HelixParams(True, NR_ASU, RISE)
    by_dir, _ = extract_ours(ds, "ByDir", helix)
    one, _ = extract_ours(ds, "One", helix,
                          picks=str(coordinate_file(ds, ds.micrographs[0].name)))
    assert len(one.particles) == len(by_dir.particles) > 100
    assert np.abs(positions(one.particles) - positions(by_dir.particles)).max() == 0


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
    assert np.abs(positions(relion.particles) - xy).max() < 1e-4
    _check_filament_columns(relion.particles)


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
    coordinate_file(ds, ds.micrographs[0].name).write_text(_helicon_box(tube_ends(), 11.3))
    run_relion_preprocess(ds, "Relion/", box=BOX, norm=True, bg_radius=BG_RADIUS,
                          extra=["--helix", "--helical_outer_diameter", str(DIAMETER)])
    relion = load_particles(ds.root / "Relion" / "particles.star", ds.root)
    ours, dropped = extract_ours(ds, "Ours", HelixParams(outer_diameter_angstrom=DIAMETER),
                                 bg_radius_px=BG_RADIUS)
    ref, parts = relion.particles, ours.particles
    assert len(parts) == len(ref) > 100 and sum(dropped.values()) > 0
    assert (parts["rlnHelicalTubeID"].to_numpy() == ref["rlnHelicalTubeID"].to_numpy()).all()
    assert np.abs(positions(parts) - positions(ref)).max() < 0.01
    assert angle_difference(parts["rlnAnglePsiPrior"], ref["rlnAnglePsiPrior"]).max() < 0.01
    difference = parts["rlnHelicalTrackLengthAngst"] - ref["rlnHelicalTrackLengthAngst"]
    assert np.abs(difference).max() < 1e-3
    assert min(pearson(a, b) for a, b in zip(relion.images, ours.images, strict=True)) >= 0.9999


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
