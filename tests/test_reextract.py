"""Re-extraction with re-centring, several outputs from one read, pick transforms.

Oracles: RELION 3.1's ``relion_preprocess --reextract_data_star --recenter`` (coordinates,
origins and pixels), analytic deltas, and separate single-output runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from relion_oracle import (
    load_particles,
    make_dataset,
    require_relion,
)

BOX = 64


def run_ours(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cryoextract", "extract", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def refined_particles(ds, seed: int = 1, with_poses: bool = False) -> pd.DataFrame:
    """Integer picks with known refined origins (never a rounding tie), as a 3.1 STAR table."""
    rng = np.random.default_rng(seed)
    rows = []
    for mic in ds.micrographs:
        ny, nx = mic.shape
        for x, y in mic.picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy():
            xi, yi = int(x), int(y)
            if not (BOX < xi < nx - BOX and BOX < yi < ny - BOX):
                continue
            offset = rng.uniform(-6, 6, 2)
            offset[np.abs(np.abs(offset % 1) - 0.5) < 0.05] += 0.2  # keep away from ties
            rows.append({
                "rlnCoordinateX": float(xi), "rlnCoordinateY": float(yi),
                "rlnMicrographName": mic.name, "rlnOpticsGroup": 1,
                "rlnOriginXAngst": offset[0] * ds.apix, "rlnOriginYAngst": offset[1] * ds.apix,
                "rlnClassNumber": len(rows) + 1,
                "rlnImageName": f"{len(rows) + 1:06d}@Old/particles.mrcs",
                "rlnAngleRot": rng.uniform(-180, 180) if with_poses else 0.0,
                "rlnAngleTilt": rng.uniform(0, 180) if with_poses else 0.0,
                "rlnAnglePsi": rng.uniform(-180, 180) if with_poses else 0.0,
            })
    return pd.DataFrame(rows)


def write_particles_star(ds, table: pd.DataFrame, name: str = "refined.star",
                         **optics_columns: float) -> str:
    optics = pd.DataFrame({**{k: [v] for k, v in optics_columns.items()},
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnImagePixelSize": [ds.apix], "rlnImageSize": [BOX], "rlnImageDimensionality": [2],
        "rlnVoltage": [ds.voltage], "rlnSphericalAberration": [ds.cs],
        "rlnAmplitudeContrast": [ds.amp_contrast],
    })
    starfile.write({"optics": optics, "particles": table}, ds.root / name, overwrite=True)
    return name


def relion_reextract(ds, star: str, part_dir: str, *extra: str, recenter: bool = True):
    cmd = [
        "relion_preprocess", "--i", ds.micrographs_star, "--reextract_data_star", star,
        *(["--recenter"] if recenter else []), "--part_star", f"{part_dir}/particles.star",
        "--part_dir", f"{part_dir}/", "--extract", "--extract_size", str(BOX), *extra,
    ]
    proc = subprocess.run(cmd, cwd=ds.root, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return load_particles(ds.root / part_dir / "particles.star", ds.root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("reextract")
    return make_dataset(root, kinds=("float32", "float32"), shape=(320, 320), n_picks=14,
                        n_edge=0, box=BOX, dust=0)


def _by_class(particles: pd.DataFrame) -> np.ndarray:
    return np.argsort(particles["rlnClassNumber"].to_numpy())


def test_recentring_matches_relion(dataset):
    require_relion()
    table = refined_particles(dataset)
    star = write_particles_star(dataset, table)
    relion = relion_reextract(dataset, star, "RelionRex")
    run_ours(dataset.root, "--micrographs", dataset.micrographs_star, "--coords", star,
             "--box", str(BOX), "--norm", "none", "--no-invert", "--out", "OursRex")
    ours = load_particles(dataset.root / "OursRex" / "particles.star", dataset.root)
    assert len(ours.particles) == len(relion.particles) == len(table)
    r, o = _by_class(relion.particles), _by_class(ours.particles)
    rp, op = relion.particles.iloc[r], ours.particles.iloc[o]
    for axis in ("X", "Y"):
        np.testing.assert_array_equal(op[f"rlnCoordinate{axis}"].to_numpy(),
                                      rp[f"rlnCoordinate{axis}"].to_numpy())
        np.testing.assert_allclose(op[f"rlnOrigin{axis}Angst"].to_numpy(),
                                   rp[f"rlnOrigin{axis}Angst"].to_numpy(), atol=1e-4)
        # the particle position is invariant: coordinate - origin / apix
        position = op[f"rlnCoordinate{axis}"] - op[f"rlnOrigin{axis}Angst"] / dataset.apix
        before = table.iloc[np.argsort(table["rlnClassNumber"].to_numpy())]
        expected = before[f"rlnCoordinate{axis}"] - before[f"rlnOrigin{axis}Angst"] / dataset.apix
        np.testing.assert_allclose(position.to_numpy(), expected.to_numpy(), atol=1e-4)
    np.testing.assert_array_equal(ours.images[o], relion.images[r])
    # every other column is kept
    assert (op["rlnImageName"] != "").all()
    assert "rlnAngleRot" in op.columns


def test_recentring_on_a_3d_point_matches_relion(dataset):
    require_relion()
    table = refined_particles(dataset, seed=2, with_poses=True)
    star = write_particles_star(dataset, table, "posed.star")
    point_px = (6.0, -4.0, 5.0)
    relion = relion_reextract(dataset, star, "RelionXYZ", "--recenter_x", str(point_px[0]),
                              "--recenter_y", str(point_px[1]), "--recenter_z", str(point_px[2]))
    point_angstrom = [str(v * dataset.apix) for v in point_px]
    run_ours(dataset.root, "--micrographs", dataset.micrographs_star, "--coords", star,
             "--box", str(BOX), "--norm", "none", "--no-invert", "--recenter-xyz",
             *point_angstrom, "--out", "OursXYZ")
    ours = load_particles(dataset.root / "OursXYZ" / "particles.star", dataset.root)
    r, o = _by_class(relion.particles), _by_class(ours.particles)
    rp, op = relion.particles.iloc[r], ours.particles.iloc[o]
    for axis in ("X", "Y"):
        np.testing.assert_array_equal(op[f"rlnCoordinate{axis}"].to_numpy(),
                                      rp[f"rlnCoordinate{axis}"].to_numpy())
        np.testing.assert_allclose(op[f"rlnOrigin{axis}Angst"].to_numpy(),
                                   rp[f"rlnOrigin{axis}Angst"].to_numpy(), atol=1e-3)


def test_half_pixel_origins_round_as_relion(dataset):
    """Origins of exactly +-0.5, +-1.5, +-2.5 px (the ties ``np.round`` sends to even):
    RELION's ``ROUND`` rounds the offset, halves away from zero. Extraction and
    ``downsample --recenter`` (the same ``ops.recenter``) give RELION's coordinates,
    origins and, for extraction, pixels."""
    require_relion()
    table = refined_particles(dataset, seed=3)
    ties = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5])
    for axis, step in (("X", 1), ("Y", 3)):
        table[f"rlnOrigin{axis}Angst"] = np.resize(np.roll(ties, step), len(table)) * dataset.apix
    # both parities of the coordinate meet every tie (half to even would tell them apart)
    table["rlnCoordinateX"] += np.arange(len(table)) % 2
    star = write_particles_star(dataset, table, "ties.star",
                                rlnMicrographOriginalPixelSize=dataset.apix)
    relion = relion_reextract(dataset, star, "RelionTies")
    run_ours(dataset.root, "--micrographs", dataset.micrographs_star, "--coords", star,
             "--box", str(BOX), "--norm", "none", "--no-invert", "--out", "OursTies")
    ours = load_particles(dataset.root / "OursTies" / "particles.star", dataset.root)
    # the same particles boxed by RELION where they were picked, moved by downsample
    relion_reextract(dataset, star, "RelionKept", recenter=False)
    proc = subprocess.run(
        [sys.executable, "-m", "cryoextract", "downsample", "--particles",
         "RelionKept/particles.star", "--box", str(BOX), "--recenter", "--out", "Moved"],
        cwd=dataset.root, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    moved = load_particles(dataset.root / "Moved" / "particles.star", dataset.root)
    r = _by_class(relion.particles)
    rp = relion.particles.iloc[r]
    assert len(rp) == len(table)
    for result in (ours, moved):
        op = result.particles.iloc[_by_class(result.particles)]
        for axis in ("X", "Y"):
            np.testing.assert_array_equal(op[f"rlnCoordinate{axis}"].to_numpy(),
                                          rp[f"rlnCoordinate{axis}"].to_numpy())
            np.testing.assert_allclose(op[f"rlnOrigin{axis}Angst"].to_numpy(),
                                       rp[f"rlnOrigin{axis}Angst"].to_numpy(), atol=1e-4)
    np.testing.assert_array_equal(ours.images[_by_class(ours.particles)], relion.images[r])


def _delta_micrograph(root: Path, shape=(200, 240), at=(101.0, 87.0), apix=1.0) -> str:
    image = np.zeros(shape, np.float32)
    image[int(at[1]), int(at[0])] = 1.0
    mrcfile.write(root / "delta.mrc", image, overwrite=True, voxel_size=apix)
    return "delta.mrc"


def test_delta_moved_by_known_shift_comes_back_centred(tmp_path):
    _delta_micrograph(tmp_path)
    # the pick is off by (+7, -5) px; the refined origin says so
    picks = pd.DataFrame({"rlnCoordinateX": [108.0], "rlnCoordinateY": [82.0],
                          "rlnOriginXAngst": [7.0], "rlnOriginYAngst": [-5.0]})
    starfile.write(picks, tmp_path / "p.star", overwrite=True)
    run_ours(tmp_path, "--micrographs", "delta.mrc", "--pixel-size", "1.0", "--coords",
             "p.star", "--box", "32", "--norm", "none", "--no-invert", "--out", "out")
    image = mrcfile.read(tmp_path / "out" / "Particles" / "delta.mrcs")
    image = image if image.ndim == 2 else image[0]
    assert np.unravel_index(np.argmax(image), image.shape) == (16, 16)
    star = starfile.read(tmp_path / "out" / "particles.star")["particles"]
    assert star["rlnCoordinateX"][0] == 101 and star["rlnCoordinateY"][0] == 87
    assert star["rlnOriginXAngst"][0] == pytest.approx(0) and star["rlnOriginYAngst"][0] == 0


def test_no_recenter_keeps_pick_and_accumulates_origin(tmp_path):
    _delta_micrograph(tmp_path)
    picks = pd.DataFrame({"rlnCoordinateX": [108.25], "rlnCoordinateY": [82.0],
                          "rlnOriginXAngst": [7.0], "rlnOriginYAngst": [-5.0]})
    starfile.write(picks, tmp_path / "p.star", overwrite=True)
    run_ours(tmp_path, "--micrographs", "delta.mrc", "--pixel-size", "1.0", "--coords",
             "p.star", "--box", "32", "--no-recenter", "--norm", "none", "--no-invert",
             "--out", "out")
    star = starfile.read(tmp_path / "out" / "particles.star")["particles"]
    assert star["rlnCoordinateX"][0] == 108
    assert star["rlnOriginXAngst"][0] == pytest.approx(7.0 - 0.25)
    image = mrcfile.read(tmp_path / "out" / "Particles" / "delta.mrcs")
    image = image if image.ndim == 2 else image[0]
    # delta at micrograph x=101 sits 7 px left of the box centre (column 16 - 7)
    assert np.unravel_index(np.argmax(image), image.shape) == (16 + 5, 16 - 7)


def test_binned_picks_and_flips(tmp_path):
    _delta_micrograph(tmp_path, shape=(200, 240), at=(101.0, 87.0))
    # picked on a 2x binned micrograph: (50.5, 43.5) * 2 = (101, 87)
    np.savetxt(tmp_path / "binned.txt", [[50.5, 43.5]])
    run_ours(tmp_path, "--micrographs", "delta.mrc", "--pixel-size", "1.0", "--coords",
             "binned.txt", "--coords-pixel-size", "2.0", "--box", "32", "--norm", "none",
             "--no-invert", "--out", "binned")
    image = mrcfile.read(tmp_path / "binned" / "Particles" / "delta.mrcs").reshape(32, 32)
    assert np.unravel_index(np.argmax(image), image.shape) == (16, 16)
    # picks written with y counted from the other edge: y' = ny - 1 - y = 199 - 87
    np.savetxt(tmp_path / "flipped.txt", [[101.0, 112.0]])
    run_ours(tmp_path, "--micrographs", "delta.mrc", "--pixel-size", "1.0", "--coords",
             "flipped.txt", "--flip-y", "--box", "32", "--norm", "none", "--no-invert",
             "--out", "flipped")
    image = mrcfile.read(tmp_path / "flipped" / "Particles" / "delta.mrcs").reshape(32, 32)
    assert np.unravel_index(np.argmax(image), image.shape) == (16, 16)
    # swapped axes: the tool warns and names the fix when picks fall off the micrograph
    np.savetxt(tmp_path / "swapped.txt", [[87.0, 101.0], [30.0, 230.0], [40.0, 220.0]])
    proc = run_ours(tmp_path, "--micrographs", "delta.mrc", "--pixel-size", "1.0", "--coords",
                    "swapped.txt", "--box", "32", "--out", "swapped")
    assert "--swap-xy" in proc.stderr


def test_several_outputs_from_one_read_equal_separate_runs(dataset):
    common = ["--micrographs", dataset.micrographs_star, "--coords-dir", dataset.coords_dir,
              "--coords-suffix", dataset.coords_suffix, "--box", str(BOX),
              "--edge", "replicate", "--white-dust", "3", "--seed", "5"]
    run_ours(dataset.root, *common, "--bg-radius", "24", "--also-bin-to", "32",
             "--also-bin-to", "48", "--out", "Multi")
    run_ours(dataset.root, *common, "--bg-radius", "12", "--bin-to", "32", "--out", "Single32")
    multi = load_particles(dataset.root / "Multi" / "also_32px" / "particles.star",
                           dataset.root)
    single = load_particles(dataset.root / "Single32" / "particles.star",
                            dataset.root)
    # the background radius scales with the box: 24 px of 64 -> 12 px of 32
    assert multi.images.shape == single.images.shape == (len(single.particles), 32, 32)
    assert float(multi.optics["rlnImagePixelSize"][0]) == pytest.approx(dataset.apix * 2)
    assert int(multi.optics["rlnImageSize"][0]) == 32
    main = load_particles(dataset.root / "Multi" / "particles.star", dataset.root)
    assert main.images.shape[1:] == (BOX, BOX)
    # each STAR names its own stacks, relative to where the command ran (RELION's way)
    assert [n.replace("Multi/", "Multi/also_32px/", 1) for n in main.particles["rlnImageName"]] \
        == list(multi.particles["rlnImageName"])
    assert all(n.split("@")[1].startswith("Multi/Particles/")
               for n in main.particles["rlnImageName"])
    size48 = load_particles(dataset.root / "Multi" / "also_48px" / "particles.star",
                            dataset.root)
    assert size48.images.shape[1:] == (48, 48)
    assert float(size48.optics["rlnImagePixelSize"][0]) == pytest.approx(dataset.apix * 64 / 48)


def test_extra_output_equals_separate_binned_run(dataset):
    common = ["--micrographs", dataset.micrographs_star, "--coords-dir", dataset.coords_dir,
              "--coords-suffix", dataset.coords_suffix, "--box", str(BOX), "--edge", "replicate"]
    run_ours(dataset.root, *common, "--bg-radius", "24", "--also-bin-to", "32", "--out", "M2")
    run_ours(dataset.root, *common, "--bin-to", "32", "--bg-radius", "12", "--out", "S2")
    run_ours(dataset.root, *common, "--bin-to", "32", "--bg-radius", "12", "--float16",
             "--out", "S2h")
    multi = load_particles(dataset.root / "M2" / "also_32px" / "particles.star",
                           dataset.root)
    single = load_particles(dataset.root / "S2" / "particles.star", dataset.root)
    np.testing.assert_allclose(multi.images, single.images, atol=1e-6)
    half = load_particles(dataset.root / "S2h" / "particles.star", dataset.root)
    for stack in (dataset.root / "S2h" / "Particles").glob("*.mrcs"):
        with mrcfile.open(stack, header_only=True) as handle:
            assert int(handle.header.mode) == 12
    np.testing.assert_allclose(half.images.astype(np.float32), single.images, atol=5e-3,
                               rtol=1e-3)
