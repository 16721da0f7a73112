"""Central-slice projection (``cryoextract.ops.projection``) against independent oracles.

Oracles: a real-space projection written here (the map resampled at ``A.T @ r`` with
``scipy.ndimage.map_coordinates`` and summed along z, the definition in
docs/conventions.md "cryoSPARC and rotations"), and RELION 3.1.3's ``relion_project
--ctf`` on poses with non-zero tilts and offsets, for both half-maps.
"""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import ndimage

from conftest import OPTICS_300KV, optics_table, posed_particles, write_mrc
from cryoextract.errors import ParameterError
from cryoextract.ops.ctf import CtfParams, ctf_2d_batch
from cryoextract.ops.projection import (
    central_slices,
    fourier_volume,
    origin_shifts_px,
    padded_size,
    project,
    slice_grid,
)
from cryoextract.ops.rotations import euler_to_matrix
from relion_oracle import require_relion

N = 48
APIX = 2.0


def blob_map(seed: int, n: int = N, count: int = 40, sigma: float = 1.5) -> np.ndarray:
    """A random smooth map inside the central half of the box."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(count):
        z, y, x = rng.integers(n // 4 + 2, 3 * n // 4 - 2, 3)
        vol[z, y, x] += rng.uniform(0.5, 1.5)
    return ndimage.gaussian_filter(vol, sigma).astype(np.float32)


def real_space_projection(vol: np.ndarray, rot: float, tilt: float, psi: float) -> np.ndarray:
    """Sum along z of the map sampled at ``A.T @ (x, y, z)`` (cubic spline)."""
    n = vol.shape[0]
    a = euler_to_matrix(rot, tilt, psi)
    g = np.arange(n) - n // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    image_xyz = np.stack([x, y, z], -1).reshape(-1, 3)
    map_xyz = image_xyz @ a  # rows are (A.T r).T
    coords = np.stack([map_xyz[:, 2], map_xyz[:, 1], map_xyz[:, 0]]) + n // 2
    values = ndimage.map_coordinates(vol, coords, order=3, mode="constant")
    return values.reshape(n, n, n).sum(axis=0)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_identity_pose_is_the_sum_along_z():
    vol = blob_map(0)
    image = project(fourier_volume(vol), euler_to_matrix([0.0], [0.0], [0.0]))[0]
    reference = vol.sum(axis=0)
    assert corr(image, reference) >= 0.9995
    # line-integral scale: exact without gridding (frequency 0 is a grid point, where the
    # gridding correction, like RELION's, slightly over-corrects the blob's mass)
    plain = project(fourier_volume(vol, gridding=False), euler_to_matrix([0.0], [0.0], [0.0]))
    assert plain.sum() == pytest.approx(reference.sum(), rel=1e-4)
    assert image.sum() == pytest.approx(reference.sum(), rel=0.05)
    assert np.unravel_index(np.argmax(image), image.shape) == np.unravel_index(
        np.argmax(reference), reference.shape)


@pytest.mark.parametrize("angles", [(30.0, 50.0, -70.0), (-120.0, 135.0, 10.0),
                                    (75.0, 90.0, 160.0)])
def test_general_pose_matches_real_space_projection(angles):
    vol = blob_map(1)
    image = project(fourier_volume(vol), euler_to_matrix(*angles)[None])[0]
    reference = real_space_projection(vol, *angles)
    assert corr(image, reference) >= 0.999
    # the transposed matrix (the other rotation convention) must not pass
    wrong = project(fourier_volume(vol), euler_to_matrix(*angles).T[None])[0]
    assert corr(wrong, reference) < 0.95


def test_gridding_correction_reduces_interpolation_error():
    vol = blob_map(2, sigma=1.0)
    angles = (40.0, 70.0, 20.0)
    reference = real_space_projection(vol, *angles)
    a = euler_to_matrix(*angles)[None]
    errors = {}
    for gridding in (True, False):
        image = project(fourier_volume(vol, gridding=gridding), a)[0]
        errors[gridding] = np.linalg.norm(image - reference) / np.linalg.norm(reference)
    assert errors[True] < 0.6 * errors[False]
    assert errors[True] < 0.02


def test_origin_sign_particle_lies_at_coordinate_minus_origin():
    vol = np.zeros((N, N, N), np.float32)
    vol[N // 2, N // 2, N // 2] = 1.0
    vol = ndimage.gaussian_filter(vol, 1.0)
    origin_angstrom = np.array([[6.0 * APIX, -4.0 * APIX]])  # rlnOriginX/YAngst
    shifts = origin_shifts_px(origin_angstrom[:, 0], origin_angstrom[:, 1], APIX)
    image = project(fourier_volume(vol), euler_to_matrix([10.0], [20.0], [30.0]), shifts)[0]
    row, col = np.unravel_index(np.argmax(image), image.shape)
    assert (col, row) == (N // 2 - 6, N // 2 + 4)


def test_integer_shift_is_an_exact_roll():
    vol = blob_map(3)
    fv = fourier_volume(vol)
    a = euler_to_matrix([15.0], [60.0], [-45.0])
    base = project(fv, a)[0]
    moved = project(fv, a, np.array([[3.0, -5.0]]))[0]
    np.testing.assert_allclose(moved, np.roll(base, (-5, 3), axis=(0, 1)), atol=1e-5)


def test_two_maps_together_equal_each_alone():
    one, two = blob_map(4), blob_map(5)
    rng = np.random.default_rng(0)
    a = euler_to_matrix(rng.uniform(-180, 180, 7), rng.uniform(0, 180, 7),
                        rng.uniform(-180, 180, 7))
    together = central_slices(fourier_volume(np.stack([one, two])), a)
    assert together.shape == (2, 7, N, N // 2 + 1)
    np.testing.assert_allclose(together[0], central_slices(fourier_volume(one), a), atol=1e-6)
    np.testing.assert_allclose(together[1], central_slices(fourier_volume(two), a), atol=1e-6)


def test_slice_zero_beyond_nyquist_circle_and_sizes():
    grid = slice_grid(N)
    assert np.all(grid.kx ** 2 + grid.ky ** 2 <= (N // 2) ** 2)
    assert grid.ky.max() == N // 2  # RELION's Nyquist row is +N/2
    spectra = central_slices(fourier_volume(blob_map(6)), euler_to_matrix([5.0], [80.0], [0.0]))
    mask = np.zeros(N * (N // 2 + 1), bool)
    mask[grid.flat_index] = True
    assert np.all(spectra.reshape(1, -1)[:, ~mask] == 0)
    assert padded_size(48, 2.0) == 96 and padded_size(50, 1.5) == 76
    with pytest.raises(ParameterError):
        fourier_volume(np.zeros((4, 4, 6)))
    with pytest.raises(ParameterError):
        padded_size(48, 0.5)


# --------------------------------------------------------------------------- RELION
def write_particles_star(path: Path, n: int, seed: int, apix: float = APIX,
                         box: int = N, image_stack: str = "imgs.mrcs") -> pd.DataFrame:
    """Particles with random poses (tilts 10-170), offsets, CTFs and half-sets."""
    particles = posed_particles(n, seed, apix=apix, stack=image_stack, max_offset_px=4.0)
    starfile.write({"optics": optics_table(box, apix), "particles": particles}, path,
                   overwrite=True)
    return particles


def particle_ctfs(particles: pd.DataFrame, box: int = N, apix: float = APIX) -> np.ndarray:
    params = [CtfParams.from_star_row({**OPTICS_300KV, **row})
              for row in particles.to_dict("records")]
    return ctf_2d_batch(params, box, apix)


write_map = partial(write_mrc, apix=APIX)


def test_projections_match_relion_project_both_half_sets(tmp_path):
    """``relion_project --ctf`` applies rlnOriginX/YAngst with our sign (as the
    "Origins" convention: the projection is moved by -origin / apix), projects with the
    transposed Euler matrix and uses RELION's CTF; writes ``<o>.mrcs`` + ``<o>.star``."""
    require_relion("relion_project")
    halves = {1: blob_map(10), 2: blob_map(11)}  # deliberately different half-maps
    particles = write_particles_star(tmp_path / "all.star", 12, seed=3)
    for half, vol in halves.items():
        write_map(tmp_path / f"half{half}.mrc", vol)
        chosen = particles[particles["rlnRandomSubset"] == half].reset_index(drop=True)
        tables = starfile.read(tmp_path / "all.star")
        tables["particles"] = chosen
        starfile.write(tables, tmp_path / f"h{half}.star", overwrite=True)
        subprocess.run(["relion_project", "--i", f"half{half}.mrc", "--ang", f"h{half}.star",
                        "--ctf", "--o", f"proj{half}"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=120)
        relion = mrcfile.read(tmp_path / f"proj{half}.mrcs")
        a = euler_to_matrix(chosen["rlnAngleRot"], chosen["rlnAngleTilt"], chosen["rlnAnglePsi"])
        shifts = origin_shifts_px(chosen["rlnOriginXAngst"], chosen["rlnOriginYAngst"], APIX)
        ours = project(fourier_volume(vol), a, shifts, particle_ctfs(chosen))
        scores = [corr(x, y) for x, y in zip(ours, relion, strict=True)]
        assert min(scores) >= 0.99, scores
        ratio = [float((x * y).sum() / (y * y).sum()) for x, y in zip(ours, relion, strict=True)]
        np.testing.assert_allclose(ratio, 1.0, atol=0.01)  # same scale as RELION
        # the other half-map's projections do not match: the half-maps differ
        other = project(fourier_volume(halves[3 - half]), a, shifts, particle_ctfs(chosen))
        assert max(corr(x, y) for x, y in zip(other, relion, strict=True)) < 0.9
        # the opposite origin sign does not match either
        flipped = project(fourier_volume(vol), a, -shifts, particle_ctfs(chosen))
        assert np.median([corr(x, y) for x, y in zip(flipped, relion, strict=True)]) < 0.9


def test_overwrite_input_gives_the_same_volume_and_spares_other_dtypes() -> None:
    """``overwrite_input`` only saves memory: the same coefficients; a float32 map is
    used as scratch, a float64 one (converted anyway) is left as it was."""
    rng = np.random.default_rng(5)
    volume = ndimage.gaussian_filter(rng.random((24, 24, 24)), 2.0).astype(np.float32)
    reference = fourier_volume(volume)
    scratch = volume.copy()
    consumed = fourier_volume(scratch, overwrite_input=True)
    np.testing.assert_array_equal(consumed.data, reference.data)
    assert not np.array_equal(scratch, volume)
    double = volume.astype(np.float64)
    kept = double.copy()
    np.testing.assert_array_equal(fourier_volume(double, overwrite_input=True).data,
                                  reference.data)
    np.testing.assert_array_equal(double, kept)
