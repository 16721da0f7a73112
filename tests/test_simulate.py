"""Tests of the data simulator cryoextract.sim.simulate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import ndimage

from cryoextract.errors import ParameterError
from cryoextract.ops.ctf import CtfParams, ctf_2d, frequency_grid_angstrom
from cryoextract.sim.simulate import SimulatedDataset, simulate_dataset, suggested_box_px

SHAPE_YX = (384, 512)
PIXEL = 1.5
DIAMETER = 150.0


def _simulate(out_dir: Path, **overrides: object) -> SimulatedDataset:
    kwargs: dict[str, object] = {
        "n_micrographs": 2,
        "shape_yx": SHAPE_YX,
        "pixel_size_angstrom": PIXEL,
        "particles_per_micrograph": 12,
        "particle_diameter_angstrom": DIAMETER,
        "seed": 3,
    }
    kwargs.update(overrides)
    return simulate_dataset(out_dir, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SimulatedDataset:
    return _simulate(tmp_path_factory.mktemp("sim"))


def test_files_exist(dataset: SimulatedDataset) -> None:
    root = dataset.out_dir
    assert dataset.micrographs_star == root / "micrographs.star"
    assert dataset.truth_csv == root / "truth.csv"
    assert dataset.micrograph_names == ("Micrographs/mic_001.mrc", "Micrographs/mic_002.mrc")
    assert dataset.pick_paths == (
        root / "Picks" / "mic_001_autopick.star",
        root / "Picks" / "mic_002_autopick.star",
    )
    for path in (
        dataset.micrographs_star,
        dataset.truth_csv,
        *dataset.micrograph_paths,
        *dataset.pick_paths,
    ):
        assert path.is_file()


def test_micrographs_star_reads_back(dataset: SimulatedDataset) -> None:
    blocks = starfile.read(dataset.micrographs_star, always_dict=True)
    assert list(blocks) == ["optics", "micrographs"]
    optics, mics = blocks["optics"], blocks["micrographs"]
    assert len(optics) == 1
    row = optics.iloc[0]
    assert row["rlnOpticsGroupName"] == "opticsGroup1" and row["rlnOpticsGroup"] == 1
    assert row["rlnMicrographPixelSize"] == pytest.approx(PIXEL)
    assert row["rlnVoltage"] == pytest.approx(300.0)
    assert row["rlnSphericalAberration"] == pytest.approx(2.7)
    assert row["rlnAmplitudeContrast"] == pytest.approx(0.1)
    expected = {
        "rlnMicrographName",
        "rlnOpticsGroup",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnCtfBfactor",
        "rlnCtfScalefactor",
        "rlnPhaseShift",
    }
    assert expected <= set(mics.columns)
    assert list(mics["rlnMicrographName"]) == list(dataset.micrograph_names)
    assert (mics["rlnOpticsGroup"] == 1).all()
    for (_, mic), ctf in zip(mics.iterrows(), dataset.ctf_params, strict=True):
        assert (dataset.out_dir / mic["rlnMicrographName"]).is_file()
        merged = {**row.to_dict(), **mic.to_dict()}
        assert CtfParams.from_star_row(merged) == ctf
        assert 8000 <= (ctf.defocus_u_angstrom + ctf.defocus_v_angstrom) / 2 <= 25000
        assert ctf.bfactor_angstrom2 == 0 and ctf.scale == 1 and ctf.phase_shift_degrees == 0


def test_micrograph_dtype_shape_pixel_size(dataset: SimulatedDataset) -> None:
    for path in dataset.micrograph_paths:
        with mrcfile.open(path, permissive=False) as mrc:
            assert mrc.data.dtype == np.float32
            assert mrc.header.mode == 2
            assert mrc.data.shape == SHAPE_YX
            assert mrc.voxel_size.x == pytest.approx(PIXEL)
            assert mrc.voxel_size.y == pytest.approx(PIXEL)
            assert np.isfinite(mrc.data).all()
            assert 80 < float(mrc.data.mean()) < 100  # ~90 counts per pixel


def test_picks_match_truth(dataset: SimulatedDataset) -> None:
    truth = pd.read_csv(dataset.truth_csv)
    assert list(truth.columns) == ["micrograph_name", "x_px", "y_px", "near_edge"]
    ny, nx = SHAPE_YX
    half_box = dataset.box_px / 2
    assert dataset.box_px == suggested_box_px(DIAMETER, PIXEL) == 150
    for name, path, xy, edge in zip(
        dataset.micrograph_names,
        dataset.pick_paths,
        dataset.positions_xy,
        dataset.near_edge,
        strict=True,
    ):
        picks = starfile.read(path)
        assert list(picks.columns) == [
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnAutopickFigureOfMerit",
            "rlnClassNumber",
        ]
        assert xy.shape == (12, 2)
        np.testing.assert_array_equal(picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), xy)
        rows = truth[truth["micrograph_name"] == name]
        np.testing.assert_array_equal(rows[["x_px", "y_px"]].to_numpy(), xy)
        np.testing.assert_array_equal(rows["near_edge"].to_numpy(), edge)
        # inside the micrograph, with fractional parts
        assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= nx - 1).all()
        assert (xy[:, 1] >= 0).all() and (xy[:, 1] <= ny - 1).all()
        assert np.any(np.abs(xy - np.round(xy)) > 0.01)
        # edge picks: about 15%, at least one; their boxes leave the micrograph
        distance = np.min([xy[:, 0], xy[:, 1], nx - 1 - xy[:, 0], ny - 1 - xy[:, 1]], axis=0)
        np.testing.assert_array_equal(edge, distance < half_box)
        assert 1 <= edge.sum() <= 4
        assert (distance[~edge] >= half_box + 1).all()
        fom = picks["rlnAutopickFigureOfMerit"].to_numpy()
        assert ((fom > 0) & (fom <= 1)).all()


def test_no_edge_picks(tmp_path: Path) -> None:
    data = _simulate(tmp_path, n_micrographs=1, edge_picks=False)
    assert not data.near_edge[0].any()


def test_particles_are_darker_than_background(dataset: SimulatedDataset) -> None:
    radius_px = DIAMETER / PIXEL / 4
    for path, xy in zip(dataset.micrograph_paths, dataset.positions_xy, strict=True):
        image = ndimage.gaussian_filter(mrcfile.read(path).astype(np.float64), 3.0)
        yy, xx = np.mgrid[: SHAPE_YX[0], : SHAPE_YX[1]]
        disc_means = [image[(yy - y) ** 2 + (xx - x) ** 2 <= radius_px**2].mean() for x, y in xy]
        assert np.mean(disc_means) < image.mean() - 0.5 * image.std()


def test_thon_rings_match_star_ctf(tmp_path: Path) -> None:
    """The power spectrum follows the STAR file's CTF², including the astigmatism angle."""
    data = _simulate(
        tmp_path,
        n_micrographs=1,
        shape_yx=(512, 512),
        astigmatism_range_angstrom=(4000, 4000),
        ice_fraction=1.0,
    )
    image = mrcfile.read(data.micrograph_paths[0]).astype(np.float64)
    power = np.abs(np.fft.rfft2(image - image.mean())) ** 2
    ky, kx = frequency_grid_angstrom(image.shape, PIXEL)
    u = np.broadcast_to(np.sqrt(kx**2 + ky**2), power.shape)
    band = (u > 1 / 60) & (u < 1 / 6)

    def score(params: CtfParams) -> float:
        ctf2 = ctf_2d(params, image.shape, PIXEL).astype(np.float64) ** 2
        return float(np.corrcoef(power[band], ctf2[band])[0, 1])

    true = data.ctf_params[0]
    assert true.defocus_u_angstrom - true.defocus_v_angstrom == pytest.approx(4000, abs=0.02)
    rotated = dataclasses.replace(true, defocus_angle_degrees=true.defocus_angle_degrees + 90)
    shifted = dataclasses.replace(
        true,
        defocus_u_angstrom=true.defocus_u_angstrom + 1500,
        defocus_v_angstrom=true.defocus_v_angstrom + 1500,
    )
    assert score(true) > 0.25
    assert score(true) > score(rotated) + 0.2
    assert score(true) > score(shifted) + 0.2


def test_reproducible_for_fixed_seed(tmp_path: Path) -> None:
    a = _simulate(tmp_path / "a", n_micrographs=1)
    b = _simulate(tmp_path / "b", n_micrographs=1)
    c = _simulate(tmp_path / "c", n_micrographs=1, seed=4)
    np.testing.assert_array_equal(
        mrcfile.read(a.micrograph_paths[0]), mrcfile.read(b.micrograph_paths[0])
    )
    np.testing.assert_array_equal(a.positions_xy[0], b.positions_xy[0])
    assert a.ctf_params == b.ctf_params
    pd.testing.assert_frame_equal(starfile.read(a.pick_paths[0]), starfile.read(b.pick_paths[0]))
    assert a.truth_csv.read_text() == b.truth_csv.read_text()
    assert not np.array_equal(a.positions_xy[0], c.positions_xy[0])
    assert a.ctf_params != c.ctf_params


def test_uint16_counts(tmp_path: Path) -> None:
    data = _simulate(tmp_path, n_micrographs=1, dtype="uint16")
    with mrcfile.open(data.micrograph_paths[0]) as mrc:
        assert mrc.header.mode == 6
        assert mrc.data.dtype == np.uint16
        assert int(mrc.data.max()) < 32767  # a reader treating mode 6 as int16 agrees
        assert int(mrc.data.min()) > 0
        assert mrc.voxel_size.x == pytest.approx(PIXEL)


def test_float16(tmp_path: Path) -> None:
    data = _simulate(tmp_path, n_micrographs=1, dtype="float16")
    with mrcfile.open(data.micrograph_paths[0]) as mrc:
        assert mrc.header.mode == 12
        assert mrc.data.dtype == np.float16
        assert np.isfinite(mrc.data).all()


@pytest.mark.parametrize(
    "overrides",
    [
        {"dtype": "int8"},
        {"shape_yx": (120, 512)},
        {"snr": 0.0},
        {"ice_fraction": -1.0},
        {"defocus_range_angstrom": (5000.0, 1000.0)},
        {"astigmatism_range_angstrom": (0.0, 20000.0)},
    ],
)
def test_invalid_arguments(tmp_path: Path, overrides: dict[str, object]) -> None:
    with pytest.raises(ParameterError):
        _simulate(tmp_path, **overrides)


def test_a_failed_write_leaves_no_file_under_its_name(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file is written under a temporary name and renamed when complete: a write
    that fails half-way (here the second micrograph's data) leaves neither a partial
    micrograph nor a temporary file behind."""
    import mrcfile.mrcfile

    real = mrcfile.mrcfile.MrcFile.set_data
    calls = []

    def failing(self, data):  # the header is on disk, the data never arrives
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "set_data", failing)
    with pytest.raises(OSError):
        simulate_dataset(tmp_path / "sim", n_micrographs=3, shape_yx=(128, 128),
                         particles_per_micrograph=3, pixel_size_angstrom=4.0, seed=1)
    written = sorted(p.relative_to(tmp_path / "sim").as_posix()
                     for p in (tmp_path / "sim").rglob("*") if p.is_file())
    assert written == ["Micrographs/mic_001.mrc", "Picks/mic_001_autopick.star"], written
