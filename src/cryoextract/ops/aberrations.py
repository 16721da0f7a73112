"""Optical aberrations of an optics group, as RELION 3.1's ``ObservationModel``.

Pure numpy, no file access. RELION 3.1's CtfRefine estimates per optics group (docs
"Optical aberrations"):

- beam tilt ``rlnBeamTiltX/Y`` (mrad) and other antisymmetric aberrations
  ``rlnOddZernike``: a phase ``exp(i · Σ c_j Z_j(k))`` on the image's spectrum;
- symmetric aberrations ``rlnEvenZernike``: an offset ``Σ c_j Z_j(k)`` added to the
  CTF's phase ``gamma``;
- anisotropic magnification ``rlnMagMat00/01/10/11``, a 2×2 matrix ``M`` that maps the
  image's frequencies to the map's: the CTF and the Zernike terms are evaluated at
  ``M k`` and the central slice is taken at ``A.T @ (M k, 0)``.

``Z_j`` are the unnormalised Zernike polynomials of the frequency ``k`` in 1/Å (not
scaled to a unit disc), ordered as RELION's ``Zernike::oddIndexToMN`` and
``evenIndexToMN``. Beam tilt is folded into the odd coefficients 0, 1, 3, 4 as
RELION's ``TiltHelper::insertTilt`` does; the resulting phase is the axial coma
``-2π Cs λ² |k|² (k · t)`` (``t`` the tilt in rad).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from cryoextract.errors import InputError, ParameterError
from cryoextract.ops.ctf import electron_wavelength_angstrom, frequency_grid_angstrom, star_number

__all__ = [
    "OpticalAberrations",
    "even_gamma_offset",
    "even_zernike_mn",
    "magnified_axes",
    "odd_phase_factors",
    "odd_zernike_mn",
    "with_beam_tilt",
    "zernike",
    "zernike_frequencies",
]

_ANGSTROM_PER_MM = 1e7
_RAD_PER_MRAD = 1e-3


@dataclass(frozen=True)
class OpticalAberrations:
    """The aberrations of one optics group (RELION 3.1 optics table).

    Attributes
    ----------
    odd_zernike : tuple of float
        Antisymmetric Zernike coefficients (radians), beam tilt already folded in
        (:func:`with_beam_tilt`).
    even_zernike : tuple of float
        Symmetric Zernike coefficients (radians), added to the CTF's ``gamma``.
    magnification : tuple of four floats or None
        ``(M00, M01, M10, M11)`` (``rlnMagMat``), None for the identity.
    """

    odd_zernike: tuple[float, ...] = ()
    even_zernike: tuple[float, ...] = ()
    magnification: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        values = (*self.odd_zernike, *self.even_zernike, *(self.magnification or ()))
        if not all(math.isfinite(v) for v in values):
            raise ParameterError("aberration coefficients must be finite")
        if self.magnification is not None:
            if len(self.magnification) != 4:
                raise ParameterError("a magnification matrix has four elements")
            m00, m01, m10, m11 = self.magnification
            if abs(m00 * m11 - m01 * m10) < 1e-6:
                raise ParameterError(f"magnification matrix {self.magnification} is singular")

    @classmethod
    def from_star_row(cls, row: Mapping[str, Any]) -> OpticalAberrations:
        """Read the aberrations of one RELION 3.1 optics row: ``rlnBeamTiltX/Y``,
        ``rlnOddZernike``, ``rlnEvenZernike``, ``rlnMagMat00/01/10/11``.

        ``rlnOddZernike``/``rlnEvenZernike`` are RELION's vectors, ``[c0,c1,...]``; a beam
        tilt needs ``rlnSphericalAberration`` and ``rlnVoltage`` in the same row.
        Missing labels mean no aberration.

        Raises
        ------
        InputError
            A value that is not a number (or a vector of numbers).
        """
        odd = _star_vector(row, "rlnOddZernike")
        even = _star_vector(row, "rlnEvenZernike")
        tilt = (star_number(row, "rlnBeamTiltX"), star_number(row, "rlnBeamTiltY"))
        if tilt != (None, None):
            cs, kv = (star_number(row, label) for label in
                      ("rlnSphericalAberration", "rlnVoltage"))
            if cs is None or kv is None:
                raise InputError("a beam tilt needs rlnSphericalAberration and rlnVoltage "
                                 "in its optics group")
            odd = with_beam_tilt(odd, tilt[0] or 0.0, tilt[1] or 0.0, cs,
                                 electron_wavelength_angstrom(kv))
        elements = [star_number(row, f"rlnMagMat{i}{j}") for i in (0, 1) for j in (0, 1)]
        magnification = None
        if any(e is not None for e in elements):
            identity = (1.0, 0.0, 0.0, 1.0)
            values = tuple(identity[k] if e is None else e for k, e in enumerate(elements))
            magnification = None if values == identity else values
        try:
            return cls(odd, even, magnification)  # type: ignore[arg-type]
        except ParameterError as exc:
            raise InputError(str(exc)) from None

    @property
    def is_identity(self) -> bool:
        """No aberration at all: the plain CTF and projection apply."""
        return not self.has_odd and not self.changes_ctf

    @property
    def has_odd(self) -> bool:
        """Whether a phase is applied to the projection."""
        return any(c != 0.0 for c in self.odd_zernike)

    @property
    def has_even(self) -> bool:
        """Whether the CTF's ``gamma`` gets an offset."""
        return any(c != 0.0 for c in self.even_zernike)

    @property
    def changes_ctf(self) -> bool:
        """Whether the CTF differs from the plain model (even terms or magnification)."""
        return self.has_even or self.magnification is not None

    @property
    def matrix(self) -> np.ndarray | None:
        """``M`` as a ``(2, 2)`` float64 array, None for the identity."""
        if self.magnification is None:
            return None
        return np.asarray(self.magnification, dtype=np.float64).reshape(2, 2)


def _star_vector(row: Mapping[str, Any], label: str) -> tuple[float, ...]:
    """RELION's ``[c0,c1,...]`` vector (one number alone is accepted too)."""
    value = row.get(label)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ()
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"{label} is not a list of numbers: {value!r}") from None


def with_beam_tilt(
    odd_zernike: Sequence[float], tilt_x_mrad: float, tilt_y_mrad: float,
    spherical_aberration_mm: float, wavelength_angstrom: float,
) -> tuple[float, ...]:
    """Fold a beam tilt into antisymmetric Zernike coefficients (RELION's ``insertTilt``).

    The tilt's coma is ``Z3x (3 r² - 2) x + 2 Z3x x`` (and the same in y) with
    ``Z3x = -2π Cs λ² t_x / 3``: coefficients 3 and 4 (the ``n = 3, m = ±1`` terms) are
    *set* to ``Z3y``, ``Z3x`` and ``2 Z3y``, ``2 Z3x`` are added to coefficients 0 and 1
    (the tilts ``n = 1``), as RELION does.

    Returns
    -------
    tuple of float
        At least five coefficients.
    """
    coefficients = [float(c) for c in odd_zernike]
    if len(coefficients) < 5:
        coefficients += [0.0] * (5 - len(coefficients))
    scale = (spherical_aberration_mm * _ANGSTROM_PER_MM * _RAD_PER_MRAD * 2.0 * math.pi
             * wavelength_angstrom**2)
    z3x = -scale * tilt_x_mrad / 3.0
    z3y = -scale * tilt_y_mrad / 3.0
    coefficients[1] += 2.0 * z3x
    coefficients[0] += 2.0 * z3y
    coefficients[4] = z3x
    coefficients[3] = z3y
    return tuple(float(c) for c in coefficients)


def odd_zernike_mn(index: int) -> tuple[int, int]:
    """``(m, n)`` of RELION's antisymmetric coefficient ``index`` (``oddIndexToMN``):
    0, 1 → ``(-1, 1), (1, 1)``; 2..5 → ``(-3, 3), (-1, 3), (1, 3), (3, 3)``; ..."""
    k = int((math.sqrt(1 + 4 * index) - 1.0) / 2.0)
    n = 2 * k + 1
    return 2 * (index - k * k - k) - n, n


def even_zernike_mn(index: int) -> tuple[int, int]:
    """``(m, n)`` of RELION's symmetric coefficient ``index`` (``evenIndexToMN``):
    0 → ``(0, 0)``; 1..3 → ``(-2, 2), (0, 2), (2, 2)``; 4..8 → ``(-4, 4) .. (4, 4)``."""
    k = int(math.sqrt(index))
    return 2 * (index - k * k - k), 2 * k


def zernike(m: int, n: int, x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Unnormalised Zernike polynomial ``Z_n^m`` at Cartesian ``(x, y)``.

    ``R_n^|m|(r) cos(m φ)`` for ``m >= 0``, ``R_n^|m|(r) sin(|m| φ)`` for ``m < 0``, with
    ``φ = atan2(y, x)`` (0 at the origin) and the usual radial polynomial ``R``.
    """
    if abs(m) > n or (n - abs(m)) % 2:
        raise ParameterError(f"no Zernike polynomial with m = {m}, n = {n}")
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    rho = np.hypot(x, y)
    phi = np.arctan2(y, x)
    a = abs(m)
    radial = np.zeros_like(rho)
    for k in range((n - a) // 2 + 1):
        coefficient = ((-1) ** k * math.factorial(n - k)
                       / (math.factorial(k) * math.factorial((n + a) // 2 - k)
                          * math.factorial((n - a) // 2 - k)))
        radial += coefficient * rho ** (n - 2 * k)
    return radial * (np.cos(a * phi) if m >= 0 else np.sin(a * phi))


def zernike_frequencies(
    box_px: int, pixel_size_angstrom: float, magnification: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` = ``M k`` in 1/Å at the rfft points of an ``N``-pixel image, each
    ``(N, N // 2 + 1)``: where RELION evaluates the Zernike terms.

    The grid of :func:`cryoextract.ops.ctf.frequency_grid_angstrom`, but for row
    ``N // 2`` (``ky = -N/2`` for an even ``N``): RELION's ``getPhaseCorrection`` and
    ``getGammaOffset`` test ``y < N/2`` where the CTF itself tests ``y <= N/2``.
    """
    ky, kx = frequency_grid_angstrom(box_px, pixel_size_angstrom)
    ky = ky.copy()
    row = int(box_px) // 2
    ky[row] = (row - int(box_px)) / (int(box_px) * pixel_size_angstrom)
    y, x = np.broadcast_arrays(ky, kx)
    if magnification is None:
        return x, y
    m = magnification
    return m[0, 0] * x + m[0, 1] * y, m[1, 0] * x + m[1, 1] * y


def _zernike_sum(coefficients: Sequence[float], index_mn, x: np.ndarray,
                 y: np.ndarray) -> np.ndarray:
    total = np.zeros_like(x)
    for index, c in enumerate(coefficients):
        if c != 0.0:
            total += c * zernike(*index_mn(index), x, y)
    return total


def odd_phase_factors(
    aberrations: OpticalAberrations, box_px: int, pixel_size_angstrom: float
) -> np.ndarray:
    """``exp(i Σ c_j Z_j(M k))`` of the odd terms (RELION's ``getPhaseCorrection``).

    Returns
    -------
    np.ndarray
        ``(N, N // 2 + 1)`` complex64, rfft layout; multiplies a predicted spectrum.
    """
    x, y = zernike_frequencies(box_px, pixel_size_angstrom, aberrations.matrix)
    return np.exp(1j * _zernike_sum(aberrations.odd_zernike, odd_zernike_mn, x, y)
                  ).astype(np.complex64)


def even_gamma_offset(
    aberrations: OpticalAberrations, box_px: int, pixel_size_angstrom: float
) -> np.ndarray:
    """``Σ c_j Z_j(M k)`` of the even terms, added to the CTF's ``gamma`` (RELION's
    ``getGammaOffset``); ``(N, N // 2 + 1)`` float64, rfft layout."""
    x, y = zernike_frequencies(box_px, pixel_size_angstrom, aberrations.matrix)
    return _zernike_sum(aberrations.even_zernike, even_zernike_mn, x, y)


def magnified_axes(rotations: np.ndarray, magnification: np.ndarray) -> np.ndarray:
    """Pose matrices whose central slice reads the map at ``A.T @ (M k, 0)``.

    RELION projects with ``inv(M3) A`` (``applyAnisoMag``, ``M3`` = ``M`` padded with
    1): the slice point of the image frequency ``k`` is ``A.T @ M3 @ (k, 0)``, which the
    projection reads from rows 0 and 1 of ``[[Mᵀ, 0], [0, 1]] @ A``.

    Parameters
    ----------
    rotations : np.ndarray
        ``(B, 3, 3)`` Euler matrices.
    magnification : np.ndarray
        ``(2, 2)`` ``M``.

    Returns
    -------
    np.ndarray
        ``(B, 3, 3)`` float64; row 2 unchanged.
    """
    a = np.array(rotations, dtype=np.float64)
    m = np.asarray(magnification, dtype=np.float64)
    a[:, :2, :] = np.matmul(m.T, a[:, :2, :])
    return a
