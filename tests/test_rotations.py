"""RELION Euler angles and cryoSPARC axis-angle poses (cryoextract.ops.rotations).

Expected values are analytic, or from scipy.spatial.transform.Rotation, which uses an
independent implementation: RELION's ``A(rot, tilt, psi)`` is the transpose of scipy's
intrinsic ``"ZYZ"`` rotation ``R_z(rot) R_y(tilt) R_z(psi)`` (docs/conventions.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoextract.ops.rotations import (
    euler_to_matrix,
    euler_to_pose,
    matrix_to_euler,
    matrix_to_rodrigues,
    pose_to_euler,
    rodrigues_to_matrix,
)

RNG = np.random.default_rng(20261122)


def _random_angles(n: int) -> np.ndarray:
    """``(n, 3)`` (rot, tilt, psi) degrees away from the gimbal-lock tilts."""
    return np.column_stack([RNG.uniform(-179.9, 179.9, n), RNG.uniform(0.5, 179.5, n),
                            RNG.uniform(-179.9, 179.9, n)])


def _relion_reference(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION 3.1's ``Euler_angles2matrix`` (src/euler.cpp) written out element by element."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.array([
        [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
        [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
        [sb * ca, sb * sa, cb],
    ])


def test_identity():
    np.testing.assert_allclose(euler_to_matrix(0, 0, 0), np.eye(3), atol=1e-15)
    np.testing.assert_allclose(rodrigues_to_matrix([0.0, 0.0, 0.0]), np.eye(3), atol=1e-15)
    np.testing.assert_allclose(matrix_to_euler(np.eye(3)), [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(matrix_to_rodrigues(np.eye(3)), [0, 0, 0], atol=1e-15)


def test_ninety_degrees_about_z():
    # RELION rotates clockwise (passive): A(90, 0, 0) sends x to -y and y to x.
    expected_relion = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=float)
    np.testing.assert_allclose(euler_to_matrix(90, 0, 0), expected_relion, atol=1e-15)
    np.testing.assert_allclose(euler_to_matrix(0, 0, 90), expected_relion, atol=1e-15)
    # The axis-angle map is right-handed (counter-clockwise): x to y.
    expected_rodrigues = expected_relion.T
    np.testing.assert_allclose(rodrigues_to_matrix([0, 0, np.pi / 2]), expected_rodrigues,
                               atol=1e-15)
    np.testing.assert_allclose(matrix_to_rodrigues(expected_rodrigues), [0, 0, np.pi / 2],
                               atol=1e-15)


def test_ninety_degrees_tilt():
    np.testing.assert_allclose(euler_to_matrix(0, 90, 0),
                               [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-15)


def test_euler_matches_relion_source_formula():
    for rot, tilt, psi in _random_angles(20):
        np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi),
                                   _relion_reference(rot, tilt, psi), atol=1e-14)


def test_euler_is_transpose_of_scipy_intrinsic_zyz():
    angles = _random_angles(200)
    ours = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    scipy = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()
    np.testing.assert_allclose(ours, np.swapaxes(scipy, 1, 2), atol=1e-13)


def test_matrix_to_euler_round_trip_recovers_angles():
    angles = _random_angles(500)
    matrices = euler_to_matrix(*angles.T)
    np.testing.assert_allclose(matrix_to_euler(matrices), angles, atol=1e-9)


def test_matrix_to_euler_matches_scipy_decomposition():
    angles = _random_angles(100)
    matrices = euler_to_matrix(*angles.T)
    scipy_angles = Rotation.from_matrix(np.swapaxes(matrices, 1, 2)).as_euler("ZYZ", degrees=True)
    np.testing.assert_allclose(matrix_to_euler(matrices), scipy_angles, atol=1e-9)


@pytest.mark.parametrize(("rot", "psi"), [(30.0, 40.0), (-120.0, 75.0), (0.0, -10.0)])
def test_gimbal_lock_tilt_zero_puts_everything_in_psi(rot, psi):
    rot_out, tilt_out, psi_out = matrix_to_euler(euler_to_matrix(rot, 0.0, psi))
    assert rot_out == 0.0 and tilt_out == 0.0
    assert np.isclose((psi_out - (rot + psi) + 180) % 360 - 180, 0.0, atol=1e-9)


@pytest.mark.parametrize(("rot", "psi"), [(30.0, 40.0), (-120.0, 75.0)])
def test_gimbal_lock_tilt_180(rot, psi):
    matrix = euler_to_matrix(rot, 180.0, psi)
    angles = matrix_to_euler(matrix)
    assert angles[0] == 0.0 and angles[1] == pytest.approx(180.0)
    np.testing.assert_allclose(euler_to_matrix(*angles), matrix, atol=1e-12)


def test_orthonormal_with_determinant_one():
    angles = _random_angles(100)
    for matrices in (euler_to_matrix(*angles.T), rodrigues_to_matrix(RNG.normal(size=(100, 3)))):
        eye = np.broadcast_to(np.eye(3), matrices.shape)
        np.testing.assert_allclose(matrices @ np.swapaxes(matrices, 1, 2), eye, atol=1e-13)
        np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=1e-13)


def test_rodrigues_matches_scipy_rotvec():
    vectors = RNG.normal(size=(300, 3))
    vectors *= (RNG.uniform(0, np.pi, 300) / np.linalg.norm(vectors, axis=1))[:, None]
    np.testing.assert_allclose(rodrigues_to_matrix(vectors),
                               Rotation.from_rotvec(vectors).as_matrix(), atol=1e-13)
    np.testing.assert_allclose(matrix_to_rodrigues(Rotation.from_rotvec(vectors).as_matrix()),
                               vectors, atol=1e-10)


@pytest.mark.parametrize("angle", [1e-12, 1e-7, 1e-3, np.pi / 2, np.pi - 1e-6, np.pi])
def test_rodrigues_round_trip_small_and_half_turn(angle):
    axis = np.array([0.48, -0.6, 0.64])
    vector = axis / np.linalg.norm(axis) * angle
    matrix = rodrigues_to_matrix(vector)
    np.testing.assert_allclose(matrix, Rotation.from_rotvec(vector).as_matrix(), atol=1e-12)
    back = matrix_to_rodrigues(matrix)
    if angle == np.pi:  # +v and -v are the same half turn
        back = back if back @ vector > 0 else -back
    np.testing.assert_allclose(back, vector, atol=1e-9)


def test_batched_shapes_are_kept():
    vectors = RNG.normal(size=(4, 5, 3))
    matrices = rodrigues_to_matrix(vectors)
    assert matrices.shape == (4, 5, 3, 3)
    assert matrix_to_rodrigues(matrices).shape == (4, 5, 3)
    angles = RNG.uniform(10, 170, size=(2, 6))
    assert euler_to_matrix(angles, angles, 0.0).shape == (2, 6, 3, 3)
    assert matrix_to_euler(euler_to_matrix(angles, angles, 0.0)).shape == (2, 6, 3)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError):
        rodrigues_to_matrix(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        matrix_to_euler(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        matrix_to_rodrigues(np.zeros((4, 4)))


def _pyem_expmap(e: np.ndarray) -> np.ndarray:
    """pyem's ``geom.expmap`` (pyem/geom/convert.py), which its csparc2star feeds to
    ``rot2euler`` (RELION's decomposition): it builds the *transposed* skew matrix."""
    theta = np.linalg.norm(e)
    w = e / theta
    k = np.array([[0, w[2], -w[1]], [-w[2], 0, w[0]], [w[1], -w[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def test_pose_to_euler_matches_pyem_and_transposed_rodrigues():
    poses = RNG.normal(size=(50, 3))
    angles = pose_to_euler(poses)
    relion = euler_to_matrix(*angles.T)
    np.testing.assert_allclose(relion, np.swapaxes(rodrigues_to_matrix(poses), 1, 2),
                               atol=1e-12)
    for pose, matrix in zip(poses, relion, strict=True):
        np.testing.assert_allclose(matrix, _pyem_expmap(pose), atol=1e-12)


def test_euler_to_pose_inverts_pose_to_euler():
    angles = _random_angles(100)
    poses = euler_to_pose(*angles.T)
    assert poses.shape == (100, 3)
    np.testing.assert_allclose(pose_to_euler(poses), angles, atol=1e-9)


def test_pure_z_pose_is_psi():
    # a cryoSPARC pose about z by t is RELION psi = t (and the 2D pose maps to psi alike)
    np.testing.assert_allclose(pose_to_euler([0, 0, np.deg2rad(35.0)]), [0, 0, 35.0],
                               atol=1e-12)
