"""Optical aberrations (``cryoextract.ops.aberrations``) against analytic results.

The RELION oracle (``relion_particle_subtract`` with beam tilt, Zernike terms and a
magnification matrix) is ``test_subtract.py::test_optical_aberrations_match_relion_...``.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryoextract.errors import InputError, ParameterError
from cryoextract.ops.aberrations import (
    OpticalAberrations,
    even_gamma_offset,
    even_zernike_mn,
    magnified_axes,
    odd_phase_factors,
    odd_zernike_mn,
    zernike,
)
from cryoextract.ops.ctf import CtfParams, ctf_2d_batch, electron_wavelength_angstrom
from cryoextract.ops.projection import fourier_volume, project_spectra
from cryoextract.ops.rotations import euler_to_matrix
from cryoextract.pipeline.stacks import subtract_ctf
from cryoextract.pipeline.stacks import subtract_tasks as tasks

BOX, APIX = 32, 1.5


def test_zernike_polynomials_in_cartesian_form():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (2, 50))
    r2 = x * x + y * y
    expected = {
        (1, 1): x, (-1, 1): y, (0, 2): 2 * r2 - 1, (2, 2): x * x - y * y, (-2, 2): 2 * x * y,
        (3, 3): x**3 - 3 * x * y * y, (-3, 3): 3 * x * x * y - y**3, (1, 3): (3 * r2 - 2) * x,
        (-1, 3): (3 * r2 - 2) * y, (0, 4): 6 * r2 * r2 - 6 * r2 + 1,
    }
    for (m, n), value in expected.items():
        np.testing.assert_allclose(zernike(m, n, x, y), value, atol=1e-12)
    np.testing.assert_allclose(zernike(0, 2, 0.0, 0.0), -1.0)
    with pytest.raises(ParameterError):
        zernike(1, 2, x, y)


def test_relion_coefficient_order():
    assert [odd_zernike_mn(i) for i in range(6)] == [(-1, 1), (1, 1), (-3, 3), (-1, 3), (1, 3),
                                                     (3, 3)]
    assert [even_zernike_mn(i) for i in range(9)] == [(0, 0), (-2, 2), (0, 2), (2, 2), (-4, 4),
                                                      (-2, 4), (0, 4), (2, 4), (4, 4)]


def test_beam_tilt_phase_is_the_axial_coma():
    """Folded into Zernike terms, a tilt ``t`` gives the phase ``-2π Cs λ² |k|² (k · t)``."""
    tilt_x, tilt_y, cs_mm, kv = 0.8, -0.5, 2.7, 300.0
    aberrations = OpticalAberrations.from_star_row({
        "rlnBeamTiltX": tilt_x, "rlnBeamTiltY": tilt_y, "rlnSphericalAberration": cs_mm,
        "rlnVoltage": kv})
    phase = np.angle(odd_phase_factors(aberrations, BOX, APIX).astype(np.complex128))
    # numpy's frequencies put the Nyquist row at -N/2, as RELION's phase correction
    y, x = np.meshgrid(np.fft.fftfreq(BOX, APIX), np.fft.rfftfreq(BOX, APIX), indexing="ij")
    wavelength = electron_wavelength_angstrom(kv)
    coma = (-2 * np.pi * cs_mm * 1e7 * wavelength**2 * (x * x + y * y)
            * (x * tilt_x + y * tilt_y) * 1e-3)
    assert np.abs(coma).max() > 0.5  # a test that can fail
    np.testing.assert_allclose(np.angle(np.exp(1j * (phase - coma))), 0.0, atol=2e-5)


def test_even_radial_term_is_a_defocus_and_phase_shift():
    """``c Z(0, 2) = c (2 u² - 1)`` in gamma: defocus less by ``2c / (πλ)``, phase shift ``c``."""
    c = 0.7
    params = CtfParams(defocus_u_angstrom=15000.0, defocus_v_angstrom=14000.0,
                       defocus_angle_degrees=30.0, voltage_kv=300.0,
                       spherical_aberration_mm=2.7, amplitude_contrast=0.1)
    aberrations = OpticalAberrations(even_zernike=(0.0, 0.0, c))
    offset = even_gamma_offset(aberrations, BOX, APIX)
    ctf = ctf_2d_batch([params], BOX, APIX, gamma_offset=offset)[0]
    shift = 2 * c / (np.pi * electron_wavelength_angstrom(300.0))
    same = CtfParams(defocus_u_angstrom=15000.0 - shift, defocus_v_angstrom=14000.0 - shift,
                     defocus_angle_degrees=30.0, voltage_kv=300.0, spherical_aberration_mm=2.7,
                     amplitude_contrast=0.1, phase_shift_degrees=np.degrees(c))
    plain = ctf_2d_batch([params], BOX, APIX)[0]
    np.testing.assert_allclose(ctf, ctf_2d_batch([same], BOX, APIX)[0], atol=2e-6)
    assert np.abs(ctf - plain).max() > 0.3


def test_magnified_ctf_is_evaluated_at_m_k():
    """Without astigmatism the CTF depends on |k| only: with ``M`` it is the plain CTF
    at ``|M k|``."""
    m = np.array([[1.03, 0.02], [-0.01, 0.97]])
    params = CtfParams(defocus_u_angstrom=12000.0, defocus_v_angstrom=12000.0,
                       defocus_angle_degrees=0.0, voltage_kv=200.0,
                       spherical_aberration_mm=1.4, amplitude_contrast=0.07,
                       bfactor_angstrom2=40.0)
    ctf = ctf_2d_batch([params], BOX, APIX, magnification=m)[0]
    ky = np.fft.fftfreq(BOX, APIX)
    ky[BOX // 2] *= -1  # the CTF's Nyquist row is +N/2 (RELION's getFftwImage)
    ky, kx = np.meshgrid(ky, np.fft.rfftfreq(BOX, APIX), indexing="ij")
    x, y = m[0, 0] * kx + m[0, 1] * ky, m[1, 0] * kx + m[1, 1] * ky
    u2 = x * x + y * y
    wavelength = electron_wavelength_angstrom(200.0)
    gamma = (np.pi * wavelength * -12000.0 * u2 + np.pi / 2 * 1.4e7 * wavelength**3 * u2 * u2
             - np.arcsin(0.07))
    np.testing.assert_allclose(ctf, -np.sin(gamma) * np.exp(-40.0 * u2 / 4), atol=2e-6)


def test_magnified_slice_reads_the_map_at_m_k():
    """The slice point of ``k`` is ``A.T @ (M k, 0)``: a projection with ``M`` equals,
    at each frequency, the plain projection's value interpolated at ``M k``; checked where
    that is a grid point (``M`` a permutation-free integer scaling along x)."""
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(BOX,) * 3).astype(np.float32)
    fvol = fourier_volume(vol)
    a = euler_to_matrix(30.0, 50.0, 70.0)[None]
    axes = magnified_axes(a, np.array([[2.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(axes[0, 0], 2 * a[0, 0])
    np.testing.assert_allclose(axes[0, 1:], a[0, 1:])
    stretched = project_spectra(fvol, a, magnification=np.diag([2.0, 1.0]))[0]
    plain = project_spectra(fvol, a)[0]
    # column 2j of the plain slice is column j of the stretched one, inside |M k| <= N/2;
    # (-1)^j: both are centred on pixel N/2, a phase that depends on the image frequency
    for row in (0, 3, BOX - 4):
        for col in range(0, 7):
            np.testing.assert_allclose(stretched[row, col] * (-1) ** col, plain[row, 2 * col],
                                       rtol=1e-4, atol=1e-3)
    assert stretched[0, BOX // 4 + 1] == 0  # |M k| beyond Nyquist: not read (RELION)


def test_optics_rows_parse_and_fail_in_one_line():
    row = {"rlnEvenZernike": "[0.5,0,-1.25]", "rlnOddZernike": "[]",
           "rlnMagMat00": 1.01, "rlnMagMat11": 0.99}
    aberrations = OpticalAberrations.from_star_row(row)
    assert aberrations.even_zernike == (0.5, 0.0, -1.25)
    assert aberrations.odd_zernike == () and not aberrations.has_odd
    assert aberrations.magnification == (1.01, 0.0, 0.0, 0.99)
    assert OpticalAberrations.from_star_row({"rlnMagMat00": 1.0, "rlnMagMat11": 1.0}).is_identity
    with pytest.raises(InputError, match="rlnOddZernike"):
        OpticalAberrations.from_star_row({"rlnOddZernike": "[0.1,x]"})
    with pytest.raises(InputError, match="needs rlnSphericalAberration"):
        OpticalAberrations.from_star_row({"rlnBeamTiltX": 0.3})
    with pytest.raises(InputError, match="singular"):
        OpticalAberrations.from_star_row({"rlnMagMat00": 0.0})


def test_ctf_cache_keeps_ctfs_of_different_aberrations_apart():
    """Two jobs in one process with the same CTF parameters but different optics."""
    params = CtfParams(defocus_u_angstrom=12000.0, defocus_v_angstrom=11000.0,
                       defocus_angle_degrees=30.0, voltage_kv=300.0,
                       spherical_aberration_mm=2.7, amplitude_contrast=0.1)
    optics = OpticalAberrations(even_zernike=(0.0, 2.0, 0.0, 0.0, 40.0),
                                magnification=(1.02, 0.0, 0.01, 0.98))
    cache = subtract_ctf.CtfCache(2**20)
    plain = cache.table([subtract_ctf.ParticleCtf(params)], BOX, APIX)
    aberrated = cache.table([subtract_ctf.ParticleCtf(params, aberrations=optics)], BOX, APIX)
    np.testing.assert_allclose(plain[0], ctf_2d_batch([params], BOX, APIX)[0], atol=1e-7)
    np.testing.assert_allclose(aberrated[0], ctf_2d_batch(
        [params], BOX, APIX, magnification=optics.matrix,
        gamma_offset=even_gamma_offset(optics, BOX, APIX))[0], atol=1e-7)
    assert np.abs(plain - aberrated).max() > 0.1


def test_zernike_terms_put_the_nyquist_row_at_minus_half():
    """RELION's ``getGammaOffset`` and ``getPhaseCorrection`` read row ``N/2`` as
    ``ky = -1 / (2 apix)`` (unlike the CTF's ``+1 / (2 apix)``): it matters for terms
    that are not even in ``ky``, such as ``Z(-2, 2) = 2 x y``."""
    c = 5.0
    offset = even_gamma_offset(OpticalAberrations(even_zernike=(0.0, c)), BOX, APIX)
    kx = np.arange(BOX // 2 + 1) / (BOX * APIX)
    np.testing.assert_allclose(offset[BOX // 2], c * 2 * kx * (-0.5 / APIX), atol=1e-12)
    np.testing.assert_allclose(offset[1], c * 2 * kx * (1 / (BOX * APIX)), atol=1e-12)


def test_each_optics_group_keeps_its_own_nyquist_region():
    """Particles of optics groups with different magnifications projected together: each
    slice equals its projection alone (not cut to the region of the other's ``M``), times
    its group's relative MTF."""
    rng = np.random.default_rng(4)
    fvol = fourier_volume(rng.normal(size=(BOX,) * 3).astype(np.float32))
    rotations = euler_to_matrix(*rng.uniform(0, 180, (3, 4)))
    stretch = (1.05, 0.01, 0.0, 0.97)
    half = np.full((BOX, BOX // 2 + 1), 0.5, dtype=np.float32)
    optics = subtract_ctf.GroupOptics({2: OpticalAberrations(magnification=stretch)}, {2: half})
    groups = np.array([1, 2, 1, 2])
    offsets = rng.uniform(-2, 2, (4, 2))
    ctf = np.ones((4, BOX, BOX // 2 + 1), dtype=np.float32)
    together = tasks.project_groups(optics, groups, rotations, offsets, ctf, fvol,
                                    pixel_size_angstrom=APIX)
    for row, group in enumerate(groups):
        matrix = np.reshape(stretch, (2, 2)) if group == 2 else None
        alone = project_spectra(fvol, rotations[row:row + 1], offsets[row:row + 1],
                                ctf[row:row + 1], magnification=matrix)[0]
        np.testing.assert_allclose(together[row], alone * (0.5 if group == 2 else 1.0),
                                   rtol=1e-6, atol=1e-6)
    plain = project_spectra(fvol, rotations[:1], offsets[:1], ctf[:1])[0]
    np.testing.assert_allclose(together[0], plain, rtol=1e-6, atol=1e-6)
    # groups of plain CTFs share one CTF cache column; group 2's magnification does not
    assert optics.ctf_groups(groups).tolist() == [0, 2, 0, 2]
