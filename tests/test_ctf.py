"""Analytic checks of the RELION 3.1 CTF model in cryoextract.ops.ctf."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryoextract.errors import InputError, ParameterError
from cryoextract.ops.ctf import (
    CtfParams,
    ctf_2d,
    ctf_2d_batch,
    electron_wavelength_angstrom,
    frequency_grid_angstrom,
)

LAMBDA_300 = electron_wavelength_angstrom(300.0)


def _params(**overrides: float) -> CtfParams:
    values = {
        "defocus_u_angstrom": 15000.0,
        "defocus_v_angstrom": 15000.0,
        "defocus_angle_degrees": 0.0,
        "voltage_kv": 300.0,
        "spherical_aberration_mm": 2.7,
        "amplitude_contrast": 0.1,
    }
    values.update(overrides)
    return CtfParams(**values)


def _reference_ctf(p: CtfParams, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
    """RELION 3.0 ``getCTF`` with ``getDeltaF`` written out (atan2 form), float64."""
    lam = electron_wavelength_angstrom(p.voltage_kv)
    u2 = kx**2 + ky**2
    ang = np.arctan2(ky, kx) - np.deg2rad(p.defocus_angle_degrees)
    mean = -(p.defocus_u_angstrom + p.defocus_v_angstrom) / 2
    dev = -(p.defocus_u_angstrom - p.defocus_v_angstrom) / 2
    deltaf = mean + dev * np.cos(2 * ang)
    k3 = np.arctan(p.amplitude_contrast / np.sqrt(1 - p.amplitude_contrast**2))
    k2 = np.pi / 2 * p.spherical_aberration_mm * 1e7 * lam**3
    gamma = np.pi * lam * deltaf * u2 + k2 * u2**2 - np.deg2rad(p.phase_shift_degrees) - k3
    return p.scale * np.exp(-p.bfactor_angstrom2 / 4 * u2) * -np.sin(gamma)


def test_wavelength_300_and_200_kv() -> None:
    assert electron_wavelength_angstrom(300) == pytest.approx(0.01969, abs=1e-5)
    assert electron_wavelength_angstrom(200) == pytest.approx(0.02508, abs=1e-5)
    assert _params().wavelength_angstrom == pytest.approx(LAMBDA_300)


def test_wavelength_rejects_non_positive_voltage() -> None:
    with pytest.raises(ParameterError):
        electron_wavelength_angstrom(0.0)


@pytest.mark.parametrize("box", [128, 127, (96, 128), (128, 81)])
def test_shapes_and_dtype(box: int | tuple[int, int]) -> None:
    ny, nx = (box, box) if isinstance(box, int) else box
    half = ctf_2d(_params(), box, 1.3)
    full = ctf_2d(_params(), box, 1.3, rfft=False)
    assert half.shape == (ny, nx // 2 + 1)
    assert full.shape == (ny, nx)
    assert half.dtype == np.float32 and full.dtype == np.float32


@pytest.mark.parametrize("box", [128, 127, (96, 130), (101, 64)])
def test_rfft_layout_is_left_columns_of_full_layout(box: int | tuple[int, int]) -> None:
    p = _params(defocus_u_angstrom=21000, defocus_v_angstrom=17000, defocus_angle_degrees=37)
    half = ctf_2d(p, box, 1.1)
    full = ctf_2d(p, box, 1.1, rfft=False)
    np.testing.assert_array_equal(half, full[:, : half.shape[1]])


def test_frequency_grid_matches_fftfreq_except_nyquist() -> None:
    ky, kx = frequency_grid_angstrom((64, 96), 2.0, rfft=False)
    expected_y = np.fft.fftfreq(64, d=2.0)
    expected_y[32] = +1 / 4.0  # RELION: the Nyquist bin of an even axis is positive
    np.testing.assert_allclose(ky[:, 0], expected_y)
    _, kx_half = frequency_grid_angstrom((64, 96), 2.0)
    np.testing.assert_allclose(kx_half[0], np.fft.rfftfreq(96, d=2.0))
    assert kx.shape == (1, 96)


def test_value_at_origin_is_plus_q0() -> None:
    """RELION's sign: CTF(0) = -sin(-K3) = +Q0."""
    for q0 in (0.0, 0.07, 0.1, 0.3):
        assert ctf_2d(_params(amplitude_contrast=q0), 64, 1.0)[0, 0] == pytest.approx(q0, abs=1e-6)


def test_phase_shift_at_origin() -> None:
    p = _params(amplitude_contrast=0.1, phase_shift_degrees=90.0)
    assert ctf_2d(p, 64, 1.0)[0, 0] == pytest.approx(np.sqrt(1 - 0.1**2), abs=1e-6)


def test_underfocus_is_positive_before_first_zero() -> None:
    """With positive defocus (underfocus) the low-frequency CTF is positive."""
    p = _params(defocus_u_angstrom=20000, defocus_v_angstrom=20000, amplitude_contrast=0.1)
    lam = LAMBDA_300
    first_zero_u2 = (1 - np.arcsin(0.1) / np.pi) / (lam * 20000)  # Cs term negligible here
    ky, kx = frequency_grid_angstrom(256, 1.0)
    ctf = ctf_2d(p, 256, 1.0)
    inside = (kx**2 + ky**2) < 0.9 * first_zero_u2
    assert inside.sum() > 10
    assert np.all(ctf[inside] > 0)


def test_zero_crossings_without_aberrations() -> None:
    """Q0 = 0, Cs = 0: CTF = sin(pi lambda D u²), zero at u² = n / (lambda D)."""
    box, pixel, index = 128, 1.0, 10
    u1 = index / (box * pixel)  # first zero lies exactly on grid index 10
    defocus = 1.0 / (LAMBDA_300 * u1**2)
    p = _params(
        defocus_u_angstrom=defocus,
        defocus_v_angstrom=defocus,
        spherical_aberration_mm=0.0,
        amplitude_contrast=0.0,
    )
    ctf = ctf_2d(p, box, pixel)
    for n, i in ((1, 10), (4, 20), (9, 30), (16, 40), (25, 50), (36, 60)):
        assert (i / (box * pixel)) ** 2 == pytest.approx(n / (LAMBDA_300 * defocus))
        assert abs(ctf[0, i]) < 1e-5  # along kx
        assert abs(ctf[i, 0]) < 1e-5  # along +ky
        assert abs(ctf[box - i, 0]) < 1e-5  # along -ky
    # Between zeros: the analytic value sin(pi lambda D u²) with its sign.
    for i in (5, 15, 25, 33):
        u2 = (i / (box * pixel)) ** 2
        assert ctf[0, i] == pytest.approx(np.sin(np.pi * LAMBDA_300 * defocus * u2), abs=1e-5)
    # Sign changes along kx are exactly the predicted zeros, up to index 45 where the
    # oscillation is still sampled finely enough (0.9 zeros per sample).
    row = ctf[0, 1:46]
    n_zeros = int(np.floor((45 / (box * pixel)) ** 2 * LAMBDA_300 * defocus))
    assert n_zeros == 20
    nonzero = np.abs(row) > 1e-4
    changes = np.count_nonzero(np.diff(np.sign(row[nonzero])))
    assert changes == n_zeros


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 90.0, 137.0, -20.0])
def test_matches_atan2_reference(angle: float) -> None:
    p = _params(
        defocus_u_angstrom=23000,
        defocus_v_angstrom=18000,
        defocus_angle_degrees=angle,
        phase_shift_degrees=12.0,
        bfactor_angstrom2=40.0,
        scale=0.8,
    )
    ky, kx = frequency_grid_angstrom((90, 128), 1.2, rfft=False)
    np.testing.assert_allclose(
        ctf_2d(p, (90, 128), 1.2, rfft=False), _reference_ctf(p, ky, kx), atol=2e-6
    )


def test_astigmatism_u_along_angle_v_perpendicular() -> None:
    box, pixel = 128, 1.0
    u, v = 22000.0, 12000.0
    iso_u = ctf_2d(_params(defocus_u_angstrom=u, defocus_v_angstrom=u), box, pixel, rfft=False)
    iso_v = ctf_2d(_params(defocus_u_angstrom=v, defocus_v_angstrom=v), box, pixel, rfft=False)
    idx = np.arange(1, 40)

    # angle 0: U along +x (columns), V along y (rows)
    ctf = ctf_2d(_params(defocus_u_angstrom=u, defocus_v_angstrom=v), box, pixel, rfft=False)
    np.testing.assert_allclose(ctf[0, idx], iso_u[0, idx], atol=1e-6)
    np.testing.assert_allclose(ctf[idx, 0], iso_v[idx, 0], atol=1e-6)
    assert not np.allclose(ctf[0, idx], iso_v[0, idx], atol=1e-2)

    # angle 90: swapped
    p90 = _params(defocus_u_angstrom=u, defocus_v_angstrom=v, defocus_angle_degrees=90)
    ctf = ctf_2d(p90, box, pixel, rfft=False)
    np.testing.assert_allclose(ctf[idx, 0], iso_u[idx, 0], atol=1e-6)
    np.testing.assert_allclose(ctf[0, idx], iso_v[0, idx], atol=1e-6)

    # angle 45: U along (kx, ky) = (+1, +1) (row i, column i), V along (+1, -1)
    p45 = _params(defocus_u_angstrom=u, defocus_v_angstrom=v, defocus_angle_degrees=45)
    ctf = ctf_2d(p45, box, pixel, rfft=False)
    np.testing.assert_allclose(ctf[idx, idx], iso_u[idx, idx], atol=1e-6)
    np.testing.assert_allclose(ctf[box - idx, idx], iso_v[box - idx, idx], atol=1e-6)
    # the angle is defined modulo 180 degrees
    p225 = _params(defocus_u_angstrom=u, defocus_v_angstrom=v, defocus_angle_degrees=225)
    np.testing.assert_allclose(ctf_2d(p225, box, pixel), ctf_2d(p45, box, pixel), atol=1e-5)


def test_friedel_symmetry_of_full_layout() -> None:
    """CTF(k) = CTF(-k): the full layout is point-symmetric away from the Nyquist bins."""
    p = _params(defocus_u_angstrom=21000, defocus_v_angstrom=16000, defocus_angle_degrees=33)
    n = 65  # odd: no Nyquist bin
    full = ctf_2d(p, n, 1.0, rfft=False)
    flipped = np.roll(full[::-1, ::-1], 1, axis=(0, 1))  # index i -> (n - i) % n
    np.testing.assert_allclose(full, flipped, atol=1e-6)


def test_bfactor_envelope_ratio() -> None:
    box, pixel, bfactor = 128, 1.0, 120.0
    plain = ctf_2d(_params(), box, pixel).astype(np.float64)
    damped = ctf_2d(_params(bfactor_angstrom2=bfactor), box, pixel).astype(np.float64)
    ky, kx = frequency_grid_angstrom(box, pixel)
    u2 = np.broadcast_to(kx**2 + ky**2, plain.shape)
    ok = np.abs(plain) > 0.05
    np.testing.assert_allclose(damped[ok] / plain[ok], np.exp(-bfactor / 4 * u2[ok]), rtol=1e-4)
    assert damped[0, 0] == pytest.approx(plain[0, 0])


def test_scale() -> None:
    np.testing.assert_allclose(
        ctf_2d(_params(scale=0.5), 64, 1.0), 0.5 * ctf_2d(_params(), 64, 1.0), atol=1e-7
    )


def test_batch_equals_single() -> None:
    params = [
        _params(
            defocus_u_angstrom=10000 + 3000 * i,
            defocus_v_angstrom=9000 + 2500 * i,
            defocus_angle_degrees=20.0 * i,
            bfactor_angstrom2=10.0 * i,
        )
        for i in range(4)
    ]
    batch = ctf_2d_batch(params, (64, 80), 1.5)
    assert batch.shape == (4, 64, 41) and batch.dtype == np.float32
    for i, p in enumerate(params):
        np.testing.assert_array_equal(batch[i], ctf_2d(p, (64, 80), 1.5))
    assert ctf_2d_batch([], 32, 1.0).shape == (0, 32, 17)


def test_from_star_row_dict_and_series() -> None:
    row = {
        "rlnDefocusU": 21000.5,
        "rlnDefocusV": 20000.25,
        "rlnDefocusAngle": 33.0,
        "rlnVoltage": 300,
        "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.1,
    }
    p = CtfParams.from_star_row(row)
    assert p == CtfParams(21000.5, 20000.25, 33.0, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0)
    full = dict(row, rlnPhaseShift=15.0, rlnCtfBfactor=30.0, rlnCtfScalefactor=0.9)
    q = CtfParams.from_star_row(pd.Series(full))
    assert (q.phase_shift_degrees, q.bfactor_angstrom2, q.scale) == (15.0, 30.0, 0.9)
    # RELION's defaults: V = U, angle = 0
    r = CtfParams.from_star_row(
        {k: v for k, v in row.items() if k not in ("rlnDefocusV", "rlnDefocusAngle")}
    )
    assert r.defocus_v_angstrom == r.defocus_u_angstrom and r.defocus_angle_degrees == 0.0


def test_from_star_row_missing_label() -> None:
    with pytest.raises(InputError, match="rlnVoltage"):
        CtfParams.from_star_row(
            {"rlnDefocusU": 1.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
        )


@pytest.mark.parametrize(
    "overrides",
    [
        {"amplitude_contrast": 1.5},
        {"amplitude_contrast": -0.1},
        {"voltage_kv": 0.0},
        {"defocus_u_angstrom": float("nan")},
    ],
)
def test_invalid_parameters(overrides: dict[str, float]) -> None:
    with pytest.raises(ParameterError):
        _params(**overrides)


def test_invalid_grid() -> None:
    with pytest.raises(ParameterError):
        ctf_2d(_params(), 0, 1.0)
    with pytest.raises(ParameterError):
        ctf_2d(_params(), 64, 0.0)
