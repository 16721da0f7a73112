"""The CTF as RELION 3.1.3 computes it, written out independently of ``ops/ctf.py`` (the
``atan2`` form of RELION 3.0's ``getDeltaF``, not our bilinear one), and the constants of
the ``--ctf-correct`` tests (``test_ctf_correct*.py``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cryoextract.ops.ctf import CtfParams

BOX = 64
PAD = 128
APIX = 1.25
MIC_SIZE = 320
# per micrograph: U, V, angle, B-factor, scale, phase shift (deg)
MIC_CTFS = [
    (21000.0, 18000.0, 30.0, 0.0, 1.0, 0.0),
    (14000.0, 13000.0, -60.0, 150.0, 2.0, 0.0),
    (30000.0, 26000.0, 115.0, 0.0, 1.0, 40.0),
]
VOLTAGE, CS, Q0 = 300.0, 2.7, 0.1


# --------------------------------------------------------------------------- oracle CTF
def oracle_ctf(
    p: CtfParams, n: int | tuple[int, int], apix: float, *, damping: bool = True,
    rfft: bool = True,
) -> np.ndarray:
    """RELION's CTF with ``getDeltaF`` written out (atan2 form), float64, FFT layout.

    ``n`` is the square size or ``(ny, nx)``. The Nyquist row of an even size is at
    ``+1/(2 apix)`` (RELION's ``FOR_ALL_ELEMENTS_IN_FFTW_TRANSFORM2D``: ``ip = i`` for
    ``i < n/2 + 1``); with astigmatism ``CTF(kx, +N) != CTF(kx, -N)`` there.
    """
    ny, nx = (n, n) if isinstance(n, int) else n
    ky = np.fft.fftfreq(ny, apix)
    if ny % 2 == 0:
        ky[ny // 2] = 0.5 / apix
    ky = ky[:, None]
    kx = (np.fft.rfftfreq(nx, apix) if rfft else np.fft.fftfreq(nx, apix))[None, :]
    ctf = oracle_ctf_at(p, ky, kx)
    if damping:
        ctf = ctf * np.exp(-p.bfactor_angstrom2 / 4 * (kx**2 + ky**2))
    return p.scale * ctf


def oracle_correct(box: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """float64 rfft2 -> multiply -> irfft2."""
    return np.fft.irfft2(np.fft.rfft2(np.asarray(box, np.float64)) * factor,
                         s=box.shape[-2:])


def oracle_flip(p: CtfParams, n: int | tuple[int, int], apix: float) -> np.ndarray:
    """Our flip, rfft layout: ``scale * sign(-sin gamma)``, except on the column ``kx = nx/2``
    of an even width, which stands for ``+nx/2`` and ``-nx/2`` at once: there the sign of
    ``CTF(+nx/2, ky) + CTF(-nx/2, ky)`` (see ``ctf_multiplier``)."""
    ny, nx = (n, n) if isinstance(n, int) else n
    unit = replace(p, scale=1.0)
    ctf = oracle_ctf(unit, (ny, nx), apix, damping=False)
    if nx % 2 == 0:
        ky = np.fft.fftfreq(ny, apix)
        if ny % 2 == 0:
            ky[ny // 2] = 0.5 / apix
        both = np.stack([oracle_ctf_at(unit, ky, sign * 0.5 / apix) for sign in (1, -1)])
        ctf[:, -1] = both.sum(axis=0)
    return p.scale * np.where(ctf < 0, -1.0, 1.0)


def oracle_ctf_at(p: CtfParams, ky: np.ndarray, kx: float | np.ndarray) -> np.ndarray:
    """Undamped CTF at the frequencies ``(ky, kx)`` (atan2 form)."""
    lam = 12.2643247 / np.sqrt(p.voltage_kv * 1e3 * (1 + p.voltage_kv * 1e3 * 0.978466e-6))
    u2 = kx**2 + ky**2
    azimuth = np.arctan2(ky, kx) - np.deg2rad(p.defocus_angle_degrees)
    deltaf = (-(p.defocus_u_angstrom + p.defocus_v_angstrom) / 2
              - (p.defocus_u_angstrom - p.defocus_v_angstrom) / 2 * np.cos(2 * azimuth))
    k3 = np.arctan(p.amplitude_contrast / np.sqrt(1 - p.amplitude_contrast**2))
    gamma = (np.pi * lam * deltaf * u2 + np.pi / 2 * p.spherical_aberration_mm * 1e7
             * lam**3 * u2**2 - np.deg2rad(p.phase_shift_degrees) - k3)
    return -np.sin(gamma)


def drop_nyquist_column(images: np.ndarray) -> np.ndarray:
    """Images without their ``kx = n/2`` Fourier column."""
    spectrum = np.fft.rfft2(np.asarray(images, np.float64))
    spectrum[..., -1] = 0
    return np.fft.irfft2(spectrum, s=images.shape[-2:])


def ctf_params(u: float, v: float, angle: float, b: float = 0.0, scale: float = 1.0,
            phase: float = 0.0) -> CtfParams:
    return CtfParams(u, v, angle, VOLTAGE, CS, Q0, phase_shift_degrees=phase,
                     bfactor_angstrom2=b, scale=scale)
