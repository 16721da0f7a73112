"""Contrast transfer function (CTF) with the conventions of RELION 3.1.

Pure numpy, no file access. The model follows ``CTF::initialise`` and ``CTF::getCTF``
of RELION 3.1 (``src/ctf.cpp``, ``src/ctf.h``); magnification matrices and symmetric
higher-order aberrations are optional (:func:`ctf_2d_batch`)::

    gamma(k) = K1 * df(k) * u² + K2 * u⁴ - K5 - K3
    CTF(k)   = scale * exp(-B * u² / 4) * (-sin(gamma(k)))

with ``u² = kx² + ky²`` in 1/Å², ``K1 = pi * lambda``, ``K2 = pi / 2 * Cs * lambda³`` (Cs
in Å), ``K3 = atan(Q0 / sqrt(1 - Q0²)) = asin(Q0)``, ``K5`` the phase shift in radians and
the *negated* astigmatic defocus::

    df(k) = -((U + V) / 2 + (U - V) / 2 * cos(2 * (atan2(ky, kx) - alpha)))

where U, V are ``rlnDefocusU``/``rlnDefocusV`` (positive = underfocus) and alpha is
``rlnDefocusAngle``, measured from the +x axis (image columns) towards +y (image rows).
Along alpha the defocus is U, perpendicular to it V.

Sign convention
---------------
This is RELION's sign, which is **positive at low frequency** for an underfocused
image: at u = 0, ``CTF = -sin(-K3 - K5) = sin(K3 + K5)``, i.e. ``+Q0`` without phase
shift (``+1`` for a 90° phase plate), and with df < 0 (underfocus) it grows towards ``+1`` at
the first peak before the first zero. RELION's image model is
``image = CTF * projection`` for images whose contrast has been *inverted* (particles
white, protein density positive). A raw micrograph, where particles are dark on a light
background, is therefore ``background - CTF * projection``; extracting with contrast
inversion turns it back into RELION's model. Conventions that call the CTF negative at low
frequency (``-Q0`` at the origin) describe the raw, non-inverted image and differ from this
one by an overall sign.

Frequency layout
----------------
Arrays are in FFT order, not ``fftshift``-ed. Index ``i`` along an axis of length ``n``
has the frequency ``i / (n * pixel_size)`` for ``i <= n // 2`` and ``(i - n) / (n *
pixel_size)`` above. This equals ``numpy.fft.fftfreq`` except that the Nyquist bin of an
even length gets ``+1 / (2 pixel_size)`` rather than ``-1 / (2 pixel_size)``, as in RELION's
``FOR_ALL_ELEMENTS_IN_FFTW_TRANSFORM2D``. The rfft layout is the columns
``0 .. nx // 2`` of the full layout, matching ``numpy.fft.rfft2``/``scipy.fft.rfft2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryoextract.errors import InputError, ParameterError

__all__ = [
    "CtfParams",
    "ctf_2d",
    "ctf_2d_batch",
    "electron_wavelength_angstrom",
    "frequency_grid_angstrom",
    "star_number",
]

# RELION's relativistic wavelength constant: lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))
_WAVELENGTH_CONSTANT_ANGSTROM_SQRT_VOLT = 12.2643247
_RELATIVISTIC_CORRECTION_PER_VOLT = 0.978466e-6
_ANGSTROM_PER_MM = 1e7
#: CTF values computed at once: the float64 temporaries of a block stay in the caches
_BLOCK_VALUES = 2**17


@dataclass(frozen=True)
class CtfParams:
    """CTF parameters of one micrograph or particle, in RELION 3.1 units.

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom
        Defoci along the angle and perpendicular to it; positive means underfocus.
    defocus_angle_degrees
        Azimuth of the U direction, from +x (columns) towards +y (rows).
    voltage_kv
        Acceleration voltage.
    spherical_aberration_mm
        Spherical aberration Cs.
    amplitude_contrast
        Fraction Q0 of amplitude contrast, in [0, 1].
    phase_shift_degrees
        Additional phase shift (phase plate).
    bfactor_angstrom2
        B-factor of the envelope ``exp(-B u² / 4)``; positive damps high frequencies.
    scale
        Overall scale factor (``rlnCtfScalefactor``).
    """

    defocus_u_angstrom: float
    defocus_v_angstrom: float
    defocus_angle_degrees: float
    voltage_kv: float
    spherical_aberration_mm: float
    amplitude_contrast: float
    phase_shift_degrees: float = 0.0
    bfactor_angstrom2: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "defocus_u_angstrom",
            "defocus_v_angstrom",
            "defocus_angle_degrees",
            "voltage_kv",
            "spherical_aberration_mm",
            "amplitude_contrast",
            "phase_shift_degrees",
            "bfactor_angstrom2",
            "scale",
        ):
            value = getattr(self, name)
            if not np.isfinite(value):
                raise ParameterError(f"CTF parameter {name} must be finite, got {value}")
        if not self.voltage_kv > 0:
            raise ParameterError(f"voltage must be > 0 kV, got {self.voltage_kv}")
        if not 0.0 <= self.amplitude_contrast <= 1.0:
            raise ParameterError(
                f"amplitude contrast must lie in [0, 1], got {self.amplitude_contrast}"
            )

    @classmethod
    def from_star_row(cls, row: Mapping[str, Any]) -> CtfParams:
        """Read the CTF of one row of a RELION STAR table.

        Parameters
        ----------
        row
            A mapping (dict, ``pandas.Series``) holding RELION labels. Voltage, Cs and
            amplitude contrast live in the optics table in RELION 3.1: merge them into
            the row first. ``rlnDefocusV`` defaults to ``rlnDefocusU`` and
            ``rlnDefocusAngle`` to 0, as in RELION; ``rlnPhaseShift``, ``rlnCtfBfactor``
            default to 0 and ``rlnCtfScalefactor`` to 1.

        Returns
        -------
        CtfParams

        Raises
        ------
        InputError
            If a required label is missing or a value is not a number.
        """
        defocus_u = _star_float(row, "rlnDefocusU", None)
        return cls(
            defocus_u_angstrom=defocus_u,
            defocus_v_angstrom=_star_float(row, "rlnDefocusV", defocus_u),
            defocus_angle_degrees=_star_float(row, "rlnDefocusAngle", 0.0),
            voltage_kv=_star_float(row, "rlnVoltage", None),
            spherical_aberration_mm=_star_float(row, "rlnSphericalAberration", None),
            amplitude_contrast=_star_float(row, "rlnAmplitudeContrast", None),
            phase_shift_degrees=_star_float(row, "rlnPhaseShift", 0.0),
            bfactor_angstrom2=_star_float(row, "rlnCtfBfactor", 0.0),
            scale=_star_float(row, "rlnCtfScalefactor", 1.0),
        )

    @property
    def wavelength_angstrom(self) -> float:
        """Relativistic electron wavelength at this voltage."""
        return electron_wavelength_angstrom(self.voltage_kv)


def star_number(row: Mapping[str, Any], label: str) -> float | None:
    """One numeric value of a STAR row (a mapping of labels), None when absent or empty.

    Raises
    ------
    InputError
        The value is not a number.
    """
    value = row.get(label, None)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} is not a number: {value!r}") from None


def _star_float(row: Mapping[str, Any], label: str, default: float | None) -> float:
    """A CTF value of a STAR row, ``default`` when absent (required when None)."""
    value = star_number(row, label)
    if value is not None:
        return value
    if default is None:
        raise InputError(f"CTF label {label} is missing")
    return float(default)


def electron_wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength, RELION's formula.

    ``lambda = 12.2643247 / sqrt(V * (1 + V * 0.978466e-6))`` with V in volts.

    Parameters
    ----------
    voltage_kv
        Acceleration voltage in kV (> 0).

    Returns
    -------
    float
        Wavelength in Å (0.019687 Å at 300 kV, 0.025079 Å at 200 kV).
    """
    if not voltage_kv > 0:
        raise ParameterError(f"voltage must be > 0 kV, got {voltage_kv}")
    volts = float(voltage_kv) * 1e3
    return _WAVELENGTH_CONSTANT_ANGSTROM_SQRT_VOLT / np.sqrt(
        volts * (1.0 + volts * _RELATIVISTIC_CORRECTION_PER_VOLT)
    )


def _shape_yx(box_px: int | tuple[int, int]) -> tuple[int, int]:
    """A square box size or an explicit ``(ny, nx)`` as ``(ny, nx)``, validated."""
    if isinstance(box_px, (tuple, list)):
        if len(box_px) != 2:
            raise ParameterError(f"shape must be (ny, nx), got {box_px!r}")
        ny, nx = (int(n) for n in box_px)
    else:
        ny = nx = int(box_px)
    if ny < 1 or nx < 1:
        raise ParameterError(f"CTF image size must be positive, got {(ny, nx)}")
    return ny, nx


def _fft_frequencies(n: int, pixel_size_angstrom: float) -> np.ndarray:
    """Frequencies (1/Å) of an FFT axis of length ``n``, Nyquist positive; shape (n,)."""
    index = np.arange(n, dtype=np.float64)
    index[index > n // 2] -= n
    return index / (n * pixel_size_angstrom)


def frequency_grid_angstrom(
    box_px: int | tuple[int, int], pixel_size_angstrom: float, *, rfft: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies of an FFT grid, in the layout of :func:`ctf_2d`.

    Parameters
    ----------
    box_px
        Square size ``n`` or ``(ny, nx)`` of the real-space image, in pixels.
    pixel_size_angstrom
        Pixel size of the real-space image.
    rfft
        Half-plane layout with ``nx // 2 + 1`` columns (True) or the full plane.

    Returns
    -------
    ky, kx : np.ndarray
        float64, 1/Å, shapes (ny, 1) and (1, w) with ``w = nx // 2 + 1`` or ``nx``;
        they broadcast to the (ny, w) grid.
    """
    if not pixel_size_angstrom > 0:
        raise ParameterError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    ny, nx = _shape_yx(box_px)
    ky = _fft_frequencies(ny, pixel_size_angstrom)
    kx = _fft_frequencies(nx, pixel_size_angstrom)
    if rfft:
        kx = kx[: nx // 2 + 1]
    return ky[:, None], kx[None, :]


def _param_arrays(params: Sequence[CtfParams]) -> dict[str, np.ndarray]:
    """Parameters of ``n`` CTFs as float64 arrays of shape (n, 1, 1)."""
    names = (
        "defocus_u_angstrom",
        "defocus_v_angstrom",
        "defocus_angle_degrees",
        "voltage_kv",
        "spherical_aberration_mm",
        "amplitude_contrast",
        "phase_shift_degrees",
        "bfactor_angstrom2",
        "scale",
    )
    return {
        name: np.array([getattr(p, name) for p in params], dtype=np.float64)[:, None, None]
        for name in names
    }


def _ctf_values(p: dict[str, np.ndarray], ky: np.ndarray, kx: np.ndarray,
                gamma_offset: np.ndarray | float = 0.0) -> np.ndarray:
    """RELION 3.1 ``getCTF`` on a grid; parameter arrays (n, 1, 1), result (n, h, w)
    float32 (``gamma`` in float64, see :func:`_sin_float32`)."""
    volts = p["voltage_kv"] * 1e3
    wavelength = _WAVELENGTH_CONSTANT_ANGSTROM_SQRT_VOLT / np.sqrt(
        volts * (1.0 + volts * _RELATIVISTIC_CORRECTION_PER_VOLT)
    )
    k1 = np.pi * wavelength
    k2 = np.pi / 2.0 * p["spherical_aberration_mm"] * _ANGSTROM_PER_MM * wavelength**3
    q0 = p["amplitude_contrast"]
    k3 = np.arctan2(q0, np.sqrt(1.0 - q0 * q0))  # = atan(Q0 / sqrt(1 - Q0²)), safe at Q0 = 1
    k4 = -p["bfactor_angstrom2"] / 4.0
    k5 = np.deg2rad(p["phase_shift_degrees"])

    # Astigmatic defocus as RELION 3.1's bilinear form A = Qᵀ D Q, D = diag(-U, -V):
    # kᵀ A k = Δf(k) u².
    azimuth = np.deg2rad(p["defocus_angle_degrees"])
    cos_az, sin_az = np.cos(azimuth), np.sin(azimuth)
    neg_u, neg_v = -p["defocus_u_angstrom"], -p["defocus_v_angstrom"]
    axx = neg_u * cos_az**2 + neg_v * sin_az**2
    axy = (neg_u - neg_v) * cos_az * sin_az
    ayy = neg_u * sin_az**2 + neg_v * cos_az**2

    kx2, ky2 = kx * kx, ky * ky
    u2 = kx2 + ky2
    defocus_u2 = axx * kx2 + 2.0 * axy * (kx * ky) + ayy * ky2
    gamma = k1 * defocus_u2 + k2 * (u2 * u2) - k5 - k3 + gamma_offset
    values = _sin_float32(gamma)
    values *= (-p["scale"]).astype(np.float32)
    if np.any(k4):  # the envelope; exp(0) = 1 needs no pass
        values *= np.exp((k4 * u2).astype(np.float32))
    return values


def _sin_float32(angle: np.ndarray) -> np.ndarray:
    """``sin(angle)`` as float32, within 2e-7 of the float64 value.

    The angle (float64, up to thousands of radians at high defocus) is reduced to
    ``[-pi, pi]`` in float64, then its sine taken in float32: numpy's float32 ``sin`` is
    vectorised, its float64 ``sin`` is not (20 times slower, most of a CTF's time).
    """
    turns = np.rint(angle * (0.5 / np.pi))
    turns *= -2.0 * np.pi
    turns += angle
    return np.sin(turns.astype(np.float32))


def ctf_2d_batch(
    params: Sequence[CtfParams],
    box_px: int | tuple[int, int],
    pixel_size_angstrom: float,
    *,
    rfft: bool = True,
    magnification: np.ndarray | None = None,
    gamma_offset: np.ndarray | None = None,
) -> np.ndarray:
    """CTFs of several parameter sets on one Fourier grid.

    Parameters
    ----------
    params
        ``n`` parameter sets.
    box_px
        Square size ``n_px`` or ``(ny, nx)`` of the real-space images, in pixels.
    pixel_size_angstrom
        Pixel size of the real-space images.
    rfft
        Half-plane (``scipy.fft.rfft2``) layout or the full plane; see the module docstring.
    magnification
        ``(2, 2)`` anisotropic magnification ``M`` (``rlnMagMat``): the CTF is evaluated at
        ``M k``, as RELION 3.1's ``getCTF`` (docs "Optical aberrations").
    gamma_offset
        ``(ny, w)`` radians added to ``gamma`` (the symmetric aberrations,
        :func:`cryoextract.ops.aberrations.even_gamma_offset`).

    Returns
    -------
    np.ndarray
        float32, shape (n, ny, nx // 2 + 1) with ``rfft`` or (n, ny, nx) without; values
        in RELION's sign (``+Q0`` at the origin, see the module docstring). ``gamma`` is
        computed in float64, its sine within 2e-7 of the float64 one; in blocks of
        about 2**17 values, so the temporary memory is a few MiB whatever ``n``.
    """
    params = list(params)
    ky, kx = frequency_grid_angstrom(box_px, pixel_size_angstrom, rfft=rfft)
    if not params:
        return np.zeros((0, ky.shape[0], kx.shape[1]), dtype=np.float32)
    if magnification is not None:
        m = np.asarray(magnification, dtype=np.float64)
        kx, ky = m[0, 0] * kx + m[0, 1] * ky, m[1, 0] * kx + m[1, 1] * ky
    offset: np.ndarray | float = 0.0
    if gamma_offset is not None:
        grid_shape = (ky.shape[0], kx.shape[-1])
        try:
            offset = np.broadcast_to(np.asarray(gamma_offset, dtype=np.float64), grid_shape)
        except ValueError:
            raise ParameterError(f"gamma offset of shape {np.shape(gamma_offset)} does not "
                                 f"fit the {grid_shape} grid") from None
    values = _param_arrays(params)
    out = np.empty((len(params), ky.shape[0], kx.shape[-1]), dtype=np.float32)
    step = max(1, _BLOCK_VALUES // (out.shape[1] * out.shape[2]))
    for start in range(0, len(params), step):
        block = {name: value[start : start + step] for name, value in values.items()}
        out[start : start + step] = _ctf_values(block, ky, kx, offset)
    return out


def ctf_2d(
    params: CtfParams,
    box_px: int | tuple[int, int],
    pixel_size_angstrom: float,
    *,
    rfft: bool = True,
) -> np.ndarray:
    """The CTF of one parameter set on a Fourier grid, as RELION 3.1's ``getFftwImage``.

    Parameters
    ----------
    params
        CTF parameters.
    box_px
        Square size ``n`` or ``(ny, nx)`` of the real-space image (micrographs need not be
        square), in pixels.
    pixel_size_angstrom
        Pixel size of the real-space image.
    rfft
        True: half-plane layout of ``scipy.fft.rfft2``, shape (ny, nx // 2 + 1), rows in
        FFT order, columns ``kx = 0 .. nx // 2``. False: full plane (ny, nx) in FFT order,
        not ``fftshift``-ed; its first ``nx // 2 + 1`` columns equal the rfft layout.

    Returns
    -------
    np.ndarray
        float32, shape (ny, nx // 2 + 1) or (ny, nx). Positive at low frequency for
        underfocus; ``ctf[0, 0] = scale * sin(arcsin(Q0) + phase shift)``.
    """
    return ctf_2d_batch([params], box_px, pixel_size_angstrom, rfft=rfft)[0]
