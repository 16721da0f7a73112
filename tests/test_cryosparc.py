"""cryoSPARC ``.cs`` reading and writing (cryoextract.io.cryosparc).

Expected values come from raw ``np.load`` of the files, from their companion RELION STAR
(``empiar_10076_7``), from scipy's rotations, and from the real ``cryosparc-tools``
(``Dataset.load``), never from the module under test.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryoextract.errors import InputError
from cryoextract.io.cryosparc import (
    load_cs,
    read_cs_particles,
    read_cs_picks,
    write_cs,
)
from prereq import require_module
from shared_data import REAL, require_paths

DRGN = REAL / "cryodrgn_4.3.1_sdist"
EMPIAR_CS = DRGN / "empiar_10076_7.cs"
EMPIAR_STAR = DRGN / "empiar_10076_7.star"
P12_CS = DRGN / "cryosparc_P12_J24_001_particles.cs"
RELION31_STAR = DRGN / "relion31.star"

def _cryosparc_dataset():
    """``cryosparc.dataset`` of cryosparc-tools (a test dependency; the test fails without it)."""
    return require_module("cryosparc.dataset", "cryosparc-tools")


def _real_cs_files() -> list[Path]:
    return sorted(REAL.rglob("*.cs")) if REAL.is_dir() else []


def _relion_matrix(angles: np.ndarray) -> np.ndarray:
    """RELION's Euler matrix, independently: transpose of scipy's intrinsic ZYZ."""
    return np.swapaxes(Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix(), -1, -2)


def _tables(n: int = 40, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """RELION 3.1 optics + particles with everything a .cs can hold; two optics groups,
    three micrographs of different shapes."""
    rng = np.random.default_rng(seed)
    shapes = {"Mics/a.mrc": (4092, 5760), "Mics/b.mrc": (3710, 3838), "Mics/c.mrc": (512, 1024)}
    names = rng.choice(list(shapes), n)
    ny = np.array([shapes[m][0] for m in names])
    nx = np.array([shapes[m][1] for m in names])
    group = rng.integers(1, 3, n)
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"], "rlnOpticsGroup": [1, 2],
        "rlnVoltage": [300.0, 200.0], "rlnSphericalAberration": [2.7, 1.4],
        "rlnAmplitudeContrast": [0.1, 0.07], "rlnImagePixelSize": [1.06, 2.12],
        "rlnImageSize": [256, 128], "rlnImageDimensionality": [2, 2],
    })
    particles = pd.DataFrame({
        "rlnCoordinateX": rng.integers(0, nx).astype(float),
        "rlnCoordinateY": rng.integers(0, ny).astype(float),
        "rlnMicrographName": names,
        "rlnImageName": [f"{i + 1:06d}@Particles/{Path(m).stem}.mrcs"
                         for i, m in enumerate(names)],
        "rlnOpticsGroup": group,
        "rlnDefocusU": rng.uniform(5000, 30000, n), "rlnDefocusV": rng.uniform(5000, 30000, n),
        "rlnDefocusAngle": rng.uniform(-180, 180, n), "rlnPhaseShift": rng.uniform(0, 90, n),
        "rlnCtfBfactor": rng.uniform(0, 50, n), "rlnCtfScalefactor": rng.uniform(0.5, 1, n),
        "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(0, 180, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n),
        "rlnOriginXAngst": rng.uniform(-5, 5, n), "rlnOriginYAngst": rng.uniform(-5, 5, n),
        "rlnRandomSubset": rng.integers(1, 3, n), "rlnClassNumber": rng.integers(1, 5, n),
    })
    return optics, particles, shapes


# ------------------------------------------------------------------ real files


def test_real_cs_files_are_present():
    require_paths(EMPIAR_CS, P12_CS)
    assert len(_real_cs_files()) >= 2


@pytest.mark.parametrize("path", _real_cs_files() or [EMPIAR_CS, P12_CS], ids=lambda p: p.name)
def test_every_real_cs_parses_with_raw_values(path):
    require_paths(path)
    raw = np.load(path, allow_pickle=False)
    optics, particles = read_cs_particles(path)
    assert len(particles) == len(raw)
    idx = raw["blob/idx"].astype(int)
    paths = [p.decode() for p in raw["blob/path"]]
    assert list(particles["rlnImageName"]) == [f"{i + 1:06d}@{p}" for i, p in zip(idx, paths,
                                                                                  strict=True)]
    np.testing.assert_allclose(particles["rlnDefocusU"], raw["ctf/df1_A"], rtol=0, atol=1e-2)
    np.testing.assert_allclose(particles["rlnDefocusV"], raw["ctf/df2_A"], rtol=0, atol=1e-2)
    np.testing.assert_allclose(np.deg2rad(particles["rlnDefocusAngle"]), raw["ctf/df_angle_rad"],
                               atol=1e-6)
    group = particles["rlnOpticsGroup"].to_numpy()
    by_group = optics.set_index("rlnOpticsGroup")
    np.testing.assert_allclose(by_group.loc[group, "rlnImagePixelSize"], raw["blob/psize_A"])
    np.testing.assert_array_equal(by_group.loc[group, "rlnImageSize"], raw["blob/shape"][:, 0])
    np.testing.assert_allclose(by_group.loc[group, "rlnVoltage"], raw["ctf/accel_kv"])
    np.testing.assert_allclose(by_group.loc[group, "rlnSphericalAberration"], raw["ctf/cs_mm"])
    np.testing.assert_allclose(by_group.loc[group, "rlnAmplitudeContrast"],
                               raw["ctf/amp_contrast"])
    assert (optics["rlnImageDimensionality"] == 2).all()


def test_empiar_10076_cs_agrees_with_its_relion_star():
    require_paths(EMPIAR_CS, EMPIAR_STAR)
    star = starfile.read(EMPIAR_STAR)
    optics, particles = read_cs_particles(EMPIAR_CS)
    index = [int(s.split("@")[0]) for s in star["rlnImageName"]]
    ours = [int(s.split("@")[0]) for s in particles["rlnImageName"]]
    assert ours == index
    assert {s.split("@")[1] for s in particles["rlnImageName"]} == {"empiar_10076_7.mrc"}
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        np.testing.assert_allclose(particles[column], star[column], atol=1e-2)
    apix = star["rlnDetectorPixelSize"].iloc[0] * 1e4 / star["rlnMagnification"].iloc[0]
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(apix, abs=1e-5)
    for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        assert optics[column].iloc[0] == pytest.approx(star[column].iloc[0], abs=1e-5)


def test_real_refinement_poses_shifts_subsets_classes():
    require_paths(P12_CS)
    raw = np.load(P12_CS)
    _, particles = read_cs_particles(P12_CS)
    angles = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    expected = np.swapaxes(Rotation.from_rotvec(raw["alignments3D/pose"]).as_matrix(), 1, 2)
    np.testing.assert_allclose(_relion_matrix(angles), expected, atol=1e-5)
    shift_a = raw["alignments3D/shift"].astype(float) * raw["alignments3D/psize_A"][:, None]
    np.testing.assert_allclose(particles["rlnOriginXAngst"], shift_a[:, 0], atol=1e-4)
    np.testing.assert_allclose(particles["rlnOriginYAngst"], shift_a[:, 1], atol=1e-4)
    np.testing.assert_array_equal(particles["rlnRandomSubset"], raw["alignments3D/split"] + 1)
    np.testing.assert_array_equal(particles["rlnClassNumber"], raw["alignments3D/class"] + 1)
    assert set(particles["rlnRandomSubset"]) == {1, 2}


def test_csdat_format_read_through_cryosparc_tools(tmp_path):
    require_paths(P12_CS)
    dataset = _cryosparc_dataset()
    csdat = tmp_path / "p12_csdat.cs"
    dataset.Dataset.load(P12_CS).save(csdat, format=dataset.CSDAT_FORMAT)
    assert csdat.read_bytes()[:6] == b"\x95CSDAT"
    optics_np, particles_np = read_cs_particles(P12_CS)
    optics_cs, particles_cs = read_cs_particles(csdat)
    pd.testing.assert_frame_equal(optics_cs, optics_np)
    pd.testing.assert_frame_equal(particles_cs, particles_np)


def test_csdat_without_cryosparc_tools_is_a_clear_error(tmp_path, monkeypatch):
    require_paths(EMPIAR_CS)
    dataset = _cryosparc_dataset()
    csdat = tmp_path / "e.cs"
    dataset.Dataset.load(EMPIAR_CS).save(csdat, format=dataset.CSDAT_FORMAT)
    real_import = builtins.__import__

    def no_cryosparc(name, *args, **kwargs):
        if name.startswith("cryosparc"):
            raise ImportError("no cryosparc here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cryosparc)
    with pytest.raises(InputError, match="cryosparc-tools") as info:
        load_cs(csdat)
    assert info.value.path == str(csdat)


def test_real_relion31_star_round_trips_through_cs(tmp_path):
    require_paths(RELION31_STAR)
    star = starfile.read(RELION31_STAR)
    optics, particles = star["optics"], star["particles"]
    out = tmp_path / "relion31.cs"
    write_cs(out, optics, particles, micrograph_shapes=(3710, 3838), seed=0)
    back_optics, back = read_cs_particles(out)
    for column in ("rlnCoordinateX", "rlnCoordinateY"):
        np.testing.assert_allclose(back[column], particles[column], atol=1e-3)
    for column in ("rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(back[column], particles[column], atol=1e-4)
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    np.testing.assert_allclose(_relion_matrix(back[angles].to_numpy()),
                               _relion_matrix(particles[angles].to_numpy()), atol=1e-5)
    assert list(back["rlnImageName"]) == list(particles["rlnImageName"])
    assert back_optics["rlnImagePixelSize"].iloc[0] == pytest.approx(2.806, abs=1e-6)


# ------------------------------------------------------------------ round trip


def test_round_trip_star_tables_through_cs(tmp_path):
    optics, particles, shapes = _tables()
    out = tmp_path / "particles.cs"
    write_cs(out, optics, particles, micrograph_shapes=shapes, seed=3)
    back_optics, back = read_cs_particles(out)
    assert len(back) == len(particles)
    assert list(back["rlnImageName"]) == list(particles["rlnImageName"])
    assert list(back["rlnMicrographName"]) == list(particles["rlnMicrographName"])
    for column in ("rlnCoordinateX", "rlnCoordinateY"):
        np.testing.assert_allclose(back[column], particles[column], atol=1e-3)
    for column in ("rlnDefocusU", "rlnDefocusV"):
        np.testing.assert_allclose(back[column], particles[column], atol=1e-2)
    for column in ("rlnDefocusAngle", "rlnPhaseShift"):
        np.testing.assert_allclose(np.deg2rad(back[column]), np.deg2rad(particles[column]),
                                   atol=1e-4)
    for column in ("rlnCtfBfactor", "rlnCtfScalefactor"):
        np.testing.assert_allclose(back[column], particles[column], atol=1e-4)
    for column in ("rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(back[column], particles[column], atol=1e-4)
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    np.testing.assert_allclose(_relion_matrix(back[angles].to_numpy()),
                               _relion_matrix(particles[angles].to_numpy()), atol=1e-5)
    for column in ("rlnRandomSubset", "rlnClassNumber"):
        np.testing.assert_array_equal(back[column], particles[column])
    # optics: each particle keeps its group's values
    merged = back.merge(back_optics, on="rlnOpticsGroup")
    original = particles.merge(optics, on="rlnOpticsGroup")
    merged = merged.set_index("rlnImageName").loc[original["rlnImageName"]]
    for column in ("rlnImagePixelSize", "rlnImageSize", "rlnVoltage",
                   "rlnSphericalAberration", "rlnAmplitudeContrast"):
        np.testing.assert_allclose(merged[column], original[column], atol=1e-5)
    assert len(back_optics) == 2


def test_written_cs_loads_in_cryosparc_tools_with_right_values(tmp_path):
    optics, particles, shapes = _tables()
    out = tmp_path / "particles.cs"
    write_cs(out, optics, particles, micrograph_shapes=shapes, seed=3)
    ds = _cryosparc_dataset().Dataset.load(out)
    assert len(ds) == len(particles)
    assert len(np.unique(ds["uid"])) == len(particles)
    stacks = [s.split("@")[1] for s in particles["rlnImageName"]]
    index = [int(s.split("@")[0]) - 1 for s in particles["rlnImageName"]]
    assert list(ds["blob/path"]) == stacks
    np.testing.assert_array_equal(ds["blob/idx"], index)
    p = particles.merge(optics, on="rlnOpticsGroup", how="left")
    np.testing.assert_array_equal(ds["blob/shape"], np.column_stack([p["rlnImageSize"]] * 2))
    np.testing.assert_allclose(ds["blob/psize_A"], p["rlnImagePixelSize"], rtol=1e-6)
    np.testing.assert_array_equal(ds["blob/sign"], 1.0)
    ny = np.array([shapes[m][0] for m in particles["rlnMicrographName"]])
    nx = np.array([shapes[m][1] for m in particles["rlnMicrographName"]])
    assert list(ds["location/micrograph_path"]) == list(particles["rlnMicrographName"])
    np.testing.assert_array_equal(ds["location/micrograph_shape"], np.column_stack([ny, nx]))
    np.testing.assert_allclose(ds["location/center_x_frac"] * nx, particles["rlnCoordinateX"],
                               atol=1e-3)
    np.testing.assert_allclose(ds["location/center_y_frac"] * ny, particles["rlnCoordinateY"],
                               atol=1e-3)
    np.testing.assert_allclose(ds["ctf/df1_A"], particles["rlnDefocusU"], atol=1e-2)
    np.testing.assert_allclose(ds["ctf/df_angle_rad"], np.deg2rad(particles["rlnDefocusAngle"]),
                               atol=1e-6)
    np.testing.assert_allclose(ds["ctf/accel_kv"], p["rlnVoltage"])
    np.testing.assert_allclose(ds["ctf/cs_mm"], p["rlnSphericalAberration"], rtol=1e-6)
    np.testing.assert_allclose(ds["ctf/amp_contrast"], p["rlnAmplitudeContrast"], rtol=1e-6)
    np.testing.assert_array_equal(ds["ctf/exp_group_id"], p["rlnOpticsGroup"] - 1)
    origins = p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    shift = origins / p[["rlnImagePixelSize"]].to_numpy()
    np.testing.assert_allclose(ds["alignments3D/shift"], shift, atol=1e-5)
    angles = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    pose_matrix = Rotation.from_rotvec(ds["alignments3D/pose"].astype(float)).as_matrix()
    np.testing.assert_allclose(np.swapaxes(pose_matrix, 1, 2), _relion_matrix(angles), atol=1e-5)
    np.testing.assert_array_equal(ds["alignments3D/split"], particles["rlnRandomSubset"] - 1)
    np.testing.assert_array_equal(ds["alignments3D/class"], particles["rlnClassNumber"] - 1)


def test_written_file_matches_real_cs_field_types(tmp_path):
    require_paths(EMPIAR_CS)
    optics, particles, shapes = _tables(5)
    out = tmp_path / "p.cs"
    written = write_cs(out, optics, particles, micrograph_shapes=shapes)
    real = np.load(EMPIAR_CS).dtype
    for name in ("uid", "blob/idx", "blob/shape", "blob/psize_A", "blob/sign", "ctf/df1_A",
                 "ctf/exp_group_id", "ctf/anisomag", "ctf/bfactor"):
        assert written.dtype[name] == real[name], name
    assert written.dtype["blob/path"].kind == "S"
    assert out.read_bytes()[:6] == b"\x93NUMPY"
    assert [p.name for p in tmp_path.iterdir()] == ["p.cs"]  # no temporary left


def test_origins_without_poses_go_to_alignments2d(tmp_path):
    optics, particles, shapes = _tables(6)
    particles = particles.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                                        "rlnRandomSubset"])
    out = tmp_path / "p.cs"
    write_cs(out, optics, particles, micrograph_shapes=shapes)
    raw = np.load(out)
    assert "alignments3D/pose" not in raw.dtype.names
    np.testing.assert_array_equal(raw["alignments2D/pose"], 0.0)
    _, back = read_cs_particles(out)
    for column in ("rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(back[column], particles[column], atol=1e-4)
    np.testing.assert_array_equal(back["rlnAnglePsi"], 0.0)


def test_without_shapes_no_location_and_picks_need_a_shape(tmp_path):
    optics, particles, _ = _tables(4)
    out = tmp_path / "p.cs"
    write_cs(out, optics, particles)
    assert not any(n.startswith("location/") for n in np.load(out).dtype.names)
    with pytest.raises(InputError, match="location"):
        read_cs_picks(out)


def test_missing_micrograph_shape_is_an_error(tmp_path):
    optics, particles, shapes = _tables(4)
    del shapes["Mics/a.mrc"]
    particles["rlnMicrographName"] = "Mics/a.mrc"
    with pytest.raises(InputError, match=r"Mics/a\.mrc"):
        write_cs(tmp_path / "p.cs", optics, particles, micrograph_shapes=shapes)


def test_relion30_style_table_without_optics(tmp_path):
    require_paths(EMPIAR_STAR)
    star = starfile.read(EMPIAR_STAR)
    star["rlnImageSize"] = 320
    out = tmp_path / "e.cs"
    write_cs(out, None, star)
    optics, back = read_cs_particles(out)
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(5e4 / 38168, rel=1e-6)
    np.testing.assert_allclose(back["rlnDefocusU"], star["rlnDefocusU"], atol=1e-2)


# ------------------------------------------------------------------ picks and y


def test_picks_coordinates_from_fractions_and_shape(tmp_path):
    _, particles, shapes = _tables(10)
    optics = _tables(10)[0]
    out = tmp_path / "p.cs"
    write_cs(out, optics, particles, micrograph_shapes=shapes)
    raw = np.load(out)
    picks = read_cs_picks(out)
    ny, nx = raw["location/micrograph_shape"].T.astype(float)
    np.testing.assert_allclose(picks["rlnCoordinateX"], raw["location/center_x_frac"] * nx)
    np.testing.assert_allclose(picks["rlnCoordinateY"], raw["location/center_y_frac"] * ny)
    assert "rlnVoltage" in picks.columns and "rlnDefocusU" in picks.columns
    assert list(picks["rlnMicrographName"]) == list(particles["rlnMicrographName"])


def test_flip_y_mirrors_about_the_micrograph(tmp_path):
    optics, particles, shapes = _tables(10)
    out = tmp_path / "p.cs"
    write_cs(out, optics, particles, micrograph_shapes=shapes)
    plain = read_cs_picks(out)
    flipped = read_cs_picks(out, flip_y=True)
    ny = np.array([shapes[m][0] for m in particles["rlnMicrographName"]])
    np.testing.assert_allclose(flipped["rlnCoordinateY"], ny - plain["rlnCoordinateY"], atol=1e-3)
    np.testing.assert_allclose(flipped["rlnCoordinateX"], plain["rlnCoordinateX"])
    # written flipped, read flipped: the original coordinates
    write_cs(out, optics, particles, micrograph_shapes=shapes, flip_y=True)
    np.testing.assert_allclose(read_cs_picks(out, flip_y=True)["rlnCoordinateY"],
                               particles["rlnCoordinateY"], atol=1e-3)


def test_given_micrograph_shape_rescales_and_warns_on_other_aspect(tmp_path):
    optics, particles, _ = _tables(5)
    out = tmp_path / "p.cs"
    write_cs(out, optics, particles, micrograph_shapes=(4000, 6000))
    half = read_cs_picks(out, micrograph_shape=(2000, 3000))
    np.testing.assert_allclose(half["rlnCoordinateX"], particles["rlnCoordinateX"] / 2, atol=1e-3)
    with pytest.warns(UserWarning, match="swapped"):
        read_cs_picks(out, micrograph_shape=(6000, 4000))


# ------------------------------------------------------------------ errors


def test_missing_file_names_it(tmp_path):
    with pytest.raises(InputError) as info:
        read_cs_particles(tmp_path / "nope.cs")
    assert info.value.path == str(tmp_path / "nope.cs")


def test_text_file_is_not_cs(tmp_path):
    bad = tmp_path / "bad.cs"
    bad.write_text("data_\nloop_\n_rlnCoordinateX\n1\n")
    with pytest.raises(InputError, match=r"not a cryoSPARC \.cs file") as info:
        load_cs(bad)
    assert info.value.path == str(bad)


def test_plain_array_and_truncated_file_are_errors(tmp_path):
    plain = tmp_path / "plain.cs"
    with open(plain, "wb") as stream:
        np.save(stream, np.arange(5.0))
    with pytest.raises(InputError, match="named fields"):
        load_cs(plain)
    truncated = tmp_path / "trunc.cs"
    truncated.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(InputError, match="unreadable"):
        load_cs(truncated)


def test_non_particle_cs_for_particles_is_an_error(tmp_path):
    picks_only = tmp_path / "picks.cs"
    arr = np.zeros(3, dtype=[("uid", "<u8"), ("location/center_x_frac", "<f4"),
                             ("location/center_y_frac", "<f4"),
                             ("location/micrograph_path", "S8"),
                             ("location/micrograph_shape", "<u4", (2,))])
    arr["location/micrograph_shape"] = [100, 200]
    arr["location/center_x_frac"] = [0.1, 0.5, 0.9]
    arr["location/micrograph_path"] = b"m.mrc"
    with open(picks_only, "wb") as stream:
        np.save(stream, arr)
    with pytest.raises(InputError, match="blob/path"):
        read_cs_particles(picks_only)
    picks = read_cs_picks(picks_only)
    np.testing.assert_allclose(picks["rlnCoordinateX"], [20, 100, 180], atol=1e-4)
    assert list(picks["rlnMicrographName"]) == ["m.mrc"] * 3


_X = ("location/center_x_frac", "<f4")
_Y = ("location/center_y_frac", "<f4")
_SHAPE = ("location/micrograph_shape", "<u4", (2,))


@pytest.mark.parametrize(("fields", "values", "reason"), [
    ([_X, _SHAPE], {}, r"no particle locations \(location/center_y_frac\)"),
    ([_X, _Y, ("location/micrograph_shape", "<f4")], {},
     "location/micrograph_shape has 1 value per particle, expected 2"),
    ([("location/center_x_frac", "S4"), _Y, _SHAPE], {"location/center_x_frac": b"ab"},
     r"location/center_x_frac holds \|S4 values, not numbers"),
    ([("location/micrograph_path", "S4"), _X, _Y, _SHAPE],
     {"location/micrograph_path": b"\xff\xfe"}, "location/micrograph_path .* is not UTF-8"),
    ([("blob/path", "S4"), ("blob/idx", "<u4", (2,)), _X, _Y, _SHAPE], {},
     "blob/idx has 2 values per particle, expected 1"),
    ([("blob/path", "S4"), ("blob/idx", "<f4"), _X, _Y, _SHAPE], {"blob/idx": -1.5},
     "blob/idx must hold whole numbers >= 0"),
    ([_X, _Y, _SHAPE, ("ctf/df1_A", "<c8")], {}, "ctf/df1_A holds complex64 values"),
])
def test_malformed_fields_are_one_line_errors(tmp_path, fields, values, reason):
    arr = np.zeros(3, dtype=fields)
    for name, value in {"location/micrograph_shape": 64, **values}.items():
        arr[name] = value
    path = tmp_path / "odd.cs"
    with open(path, "wb") as stream:
        np.save(stream, arr)
    with pytest.raises(InputError, match=reason) as info:
        read_cs_picks(path)
    assert info.value.path == str(path) and "\n" not in str(info.value)


def test_broken_numpy_header_is_a_one_line_error(tmp_path):
    path = tmp_path / "header.cs"
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': [('a'\n")  # tokenize.TokenError
    with pytest.raises(InputError, match=r"unreadable \.cs file \(TokenError: ") as info:
        load_cs(path)
    assert info.value.path == str(path) and "\n" not in str(info.value)


def test_write_without_image_size_is_an_error(tmp_path):
    optics, particles, _ = _tables(3)
    with pytest.raises(InputError, match="rlnImageSize"):
        write_cs(tmp_path / "p.cs", optics.drop(columns="rlnImageSize"), particles)
    assert not (tmp_path / "p.cs").exists()


def test_empty_tables_round_trip(tmp_path):
    optics, particles, _ = _tables(3)
    out = tmp_path / "empty.cs"
    write_cs(out, optics.iloc[:0], particles.iloc[:0])
    assert len(_cryosparc_dataset().Dataset.load(out)) == 0
    back_optics, back = read_cs_particles(out)
    assert len(back) == 0 and len(back_optics) == 0
