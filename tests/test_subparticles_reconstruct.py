"""Sub-particles reconstructed by RELION (issue 17): ``relion_reconstruct`` of the
sub-particles ``extract --symmetry-expand C4 --recenter-xyz`` cuts from exactly projected
micrographs of a C4 map of Gaussian blobs (a body, and per copy a region and a weaker
marker beside it) puts the region at the box centre; with ``--align-subparticles`` in the
frame where the vector points along +z (analytic positions of the marker and the body).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoextract.ops.rotations import euler_to_matrix
from cryoextract.ops.subparticles import vector_to_z
from cryoextract.ops.symmetry import symmetry_operators
from relion_oracle import make_dataset, require_relion
from test_subparticles import BOX, _one_particle_star, extract_cli, particle_optics

APIX = 2.0
SIGMA_A = 4.0
REGION = np.array([24.0, 10.0, 20.0])  # the sub-particle vector, Å
MARKER = np.array([0.0, 12.0, -4.0])  # a weaker blob beside the region, Å from it


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    """A C4 map of Gaussian blobs: a body at the centre, per copy a region and a marker."""
    ops = symmetry_operators("C4")
    centres = [np.zeros(3)] + [s @ REGION for s in ops] + [s @ (REGION + MARKER) for s in ops]
    amplitudes = [1.0] + [1.0] * 4 + [0.6] * 4
    return np.array(centres), np.array(amplitudes)


def _render(shape: tuple[int, int], positions: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Exact projections: a 3D Gaussian at c projects to a 2D Gaussian at (A c)[:2]."""
    centres, amplitudes = _blobs()
    image = np.zeros(shape)
    sigma_px = SIGMA_A / APIX
    reach = int(6 * sigma_px)  # the Gaussian is < 1e-7 beyond
    for position, matrix in zip(positions, matrices, strict=True):
        for centre, amplitude in zip(centres, amplitudes, strict=True):
            x, y = position + (matrix @ centre)[:2] / APIX
            x0, y0 = int(x) - reach, int(y) - reach
            yy, xx = np.mgrid[y0:y0 + 2 * reach + 1, x0:x0 + 2 * reach + 1]
            image[y0:y0 + 2 * reach + 1, x0:x0 + 2 * reach + 1] += amplitude * np.exp(
                -((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_px**2))
    return image.astype(np.float32)


@pytest.fixture(scope="module")
def c4_project(tmp_path_factory):
    """Two micrographs of 25 C4 particles each with known poses and sub-pixel centres."""
    import mrcfile

    root = tmp_path_factory.mktemp("c4")
    rng = np.random.default_rng(17)
    rows, names = [], []
    for m in range(2):
        grid = np.array([(x, y) for x in range(64, 449, 96) for y in range(64, 449, 96)], float)
        positions = grid + rng.uniform(-3, 3, grid.shape)
        angles = np.column_stack([rng.uniform(-180, 180, len(grid)),
                                  np.degrees(np.arccos(rng.uniform(-1, 1, len(grid)))),
                                  rng.uniform(-180, 180, len(grid))])
        name = f"Micrographs/c4_{m}.mrc"
        (root / "Micrographs").mkdir(exist_ok=True)
        with mrcfile.new(root / name, overwrite=True) as out:
            out.set_data(_render((512, 512), positions, euler_to_matrix(*angles.T)))
            out.voxel_size = APIX
        names.append(name)
        coordinates = np.round(positions) + 1
        for (x, y), (cx, cy), angle in zip(positions, coordinates, angles, strict=True):
            rows.append({"rlnCoordinateX": cx, "rlnCoordinateY": cy, "rlnMicrographName": name,
                         "rlnOpticsGroup": 1, "rlnOriginXAngst": (cx - x) * APIX,
                         "rlnOriginYAngst": (cy - y) * APIX, "rlnAngleRot": angle[0],
                         "rlnAngleTilt": angle[1], "rlnAnglePsi": angle[2]})
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [APIX], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    starfile.write({"optics": optics, "micrographs": pd.DataFrame(
        {"rlnMicrographName": names, "rlnOpticsGroup": [1, 1]})}, root / "mics.star",
        overwrite=True)
    starfile.write({"optics": particle_optics(APIX), "particles": pd.DataFrame(rows)},
                   root / "refined.star", overwrite=True)
    return root


def _reconstruct(root: Path, out: str, *extra: str) -> np.ndarray:
    import mrcfile

    require_relion("relion_reconstruct")
    done = extract_cli(root, "--micrographs", "mics.star", "--coords", "refined.star",
                 "--box", "32", "--norm", "none", "--no-invert", "--no-report", "--quiet",
                 "--symmetry-expand", "C4", "--recenter-xyz", *map(str, REGION), *extra,
                 "--out", out)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(["relion_reconstruct", "--i", f"{out}/particles.star", "--o",
                           f"{out}/rec.mrc"], cwd=root, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    with mrcfile.open(root / out / "rec.mrc") as volume:
        return np.asarray(volume.data, dtype=np.float64)  # (z, y, x)


def _offsets(volume: np.ndarray) -> np.ndarray:
    """(z, y, x, 3) offsets (x, y, z) of each voxel from the box centre (index N // 2)."""
    z, y, x = np.indices(volume.shape)
    return np.stack([x, y, z], axis=-1) - np.array(volume.shape)[::-1] // 2


def _peak_near(volume: np.ndarray, expected_xyz_px: np.ndarray, radius: float) -> np.ndarray:
    """(x, y, z) from the box centre of the largest voxel within ``radius`` of a place."""
    offsets = _offsets(volume)
    near = np.linalg.norm(offsets - expected_xyz_px, axis=-1) <= radius
    return offsets[np.unravel_index(np.argmax(np.where(near, volume, -np.inf)), volume.shape)]


def _blob_centre(volume: np.ndarray, expected_xyz_px: np.ndarray) -> np.ndarray:
    """Centroid (x, y, z from the box centre) of the density above the local median
    within 2.5 px of a place."""
    offsets = _offsets(volume)
    near = np.linalg.norm(offsets - expected_xyz_px, axis=-1) <= 2.5
    weights = np.where(near, np.clip(volume - np.median(volume[near]), 0, None), 0.0)
    return (offsets * weights[..., None]).sum(axis=(0, 1, 2)) / weights.sum()


def test_aligned_subparticles_reconstruct_with_the_region_centred_and_vector_on_z(c4_project):
    """relion_reconstruct of our sub-particles: without alignment the region sits at the box
    centre in the reference's frame (marker at w); with --align-subparticles in the frame
    V (marker at V w), V taking the vector to +z."""
    plain = _reconstruct(c4_project, "Plain")
    aligned = _reconstruct(c4_project, "Aligned", "--align-subparticles")
    for volume in (plain, aligned):  # the region at the box centre
        np.testing.assert_array_equal(_peak_near(volume, np.zeros(3), radius=6), [0, 0, 0])
    assert np.linalg.norm(_blob_centre(plain, MARKER / APIX) - MARKER / APIX) < 0.5
    # aligned: the particle's centre (the body) lies |v| below, on the z axis (the box
    # edge at -16 px: |v| = 16.5 px); it is the strongest voxel of the volume
    body = _peak_near(aligned, np.array([0.0, 0.0, -16.0]), radius=2)
    np.testing.assert_array_equal(body, [0, 0, -16])
    assert aligned.max() == aligned[0, 16, 16]
    rotated = vector_to_z(REGION) @ MARKER / APIX
    assert np.linalg.norm(_blob_centre(aligned, rotated) - rotated) < 0.5
    assert np.linalg.norm(rotated - MARKER / APIX) > 3  # the two frames told apart


def test_min_distance_with_subparticles_is_per_particle(tmp_path):
    """Identity pose, C4 about z, a vector along z: the four copies project onto one centre,
    so ``--min-distance-angstrom`` keeps one per particle; two particles 2 px apart are
    both kept (the distance is between the sub-particles of one particle, not the picks')."""
    data = make_dataset(tmp_path, kinds=("float32",), shape=(320, 320), n_picks=2, n_edge=0,
                        box=BOX, dust=0)
    star = _one_particle_star(data, "two.star", 100.0, 160.0)
    table = starfile.read(data.root / star)
    table["particles"] = pd.concat([table["particles"]] * 2, ignore_index=True)
    table["particles"].loc[1, "rlnCoordinateX"] = 102.0
    starfile.write(table, data.root / star, overwrite=True)
    common = ("--micrographs", data.micrographs_star, "--coords", star, "--box", str(BOX),
              "--no-report", "--quiet", "--symmetry-expand", "C4", "--recenter-xyz", "0",
              "0", str(10 * data.apix))
    for option in ("--min-distance-angstrom", "--subparticle-min-distance"):
        out = f"Near{option}"
        done = extract_cli(data.root, *common, option, str(5 * data.apix), "--out", out)
        assert done.returncode == 0, done.stderr
        kept = starfile.read(data.root / out / "particles.star")["particles"]
        assert sorted(kept["ceSourceParticle"]) == [1, 2]
        assert list(kept["ceSymmetryCopy"]) == [1, 1]
    done = extract_cli(data.root, *common, "--out", "All")
    assert len(starfile.read(data.root / "All" / "particles.star")["particles"]) == 8
