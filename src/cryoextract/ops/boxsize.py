"""FFT-efficient box sizes (cryoSPARC's list) and the Rosenthal-Henderson box advisor."""

from __future__ import annotations

import bisect
import math
import sys
from dataclasses import dataclass

from cryoextract.errors import ParameterError
from cryoextract.ops.ctf import electron_wavelength_angstrom

EFFICIENT_BOX_SIZES: tuple[int, ...] = (
    32, 36, 40, 42, 48, 56, 60, 64, 70, 72, 80, 84, 90, 96, 100, 108, 112, 120, 128, 144,
    160, 180, 192, 200, 216, 224, 240, 256, 270, 288, 300, 320, 324, 336, 384, 400, 432,
    448, 450, 512, 576, 640, 648, 672, 720, 768, 784, 810, 864, 882, 1024, 1152, 1280,
    1296, 1344, 1440, 1568, 1620, 1728, 1792, 2000, 2048, 2160, 2592, 2744, 3456, 4096,
)


def check_box_size(size: int, what: str = "box") -> None:
    """Raise ParameterError unless ``size`` is a positive even integer."""
    if isinstance(size, bool) or int(size) != size:
        raise ParameterError(f"{what} size must be an integer, got {size!r}")
    if size <= 0:
        raise ParameterError(f"{what} size must be > 0, got {size}")
    if size % 2:
        raise ParameterError(f"{what} size must be even, got {size}")


#: a box beyond any detector: advice past it comes from values that are not real
MAX_ADVISED_BOX_PX = 1 << 16


def is_efficient_box(size_px: int) -> bool:
    """True if ``size_px`` is in :data:`EFFICIENT_BOX_SIZES` (or below its first entry)."""
    return size_px < EFFICIENT_BOX_SIZES[0] or size_px in EFFICIENT_BOX_SIZES


def nearest_efficient_boxes(size_px: int) -> tuple[int | None, int | None]:
    """The efficient sizes just below and just above ``size_px`` (``None`` past the ends)."""
    i = bisect.bisect_left(EFFICIENT_BOX_SIZES, size_px)
    below = EFFICIENT_BOX_SIZES[i - 1] if i > 0 else None
    j = i + 1 if i < len(EFFICIENT_BOX_SIZES) and EFFICIENT_BOX_SIZES[i] == size_px else i
    above = EFFICIENT_BOX_SIZES[j] if j < len(EFFICIENT_BOX_SIZES) else None
    return below, above


def smallest_efficient_box(size_px: float) -> int:
    """The smallest even FFT-efficient size >= ``size_px`` (even sizes past the list)."""
    for candidate in EFFICIENT_BOX_SIZES:
        if candidate >= size_px:
            return candidate
    return int(2 * math.ceil(size_px / 2))


@dataclass(frozen=True)
class BoxAdvice:
    """Box sizes for one particle, defocus and target resolution (Rosenthal & Henderson).

    ``delocalisation_angstrom`` is ``R = lambda * defocus / resolution``; the particle box
    must hold ``diameter + 2 R``. ``crop_box_px`` Fourier-crops that box so Nyquist is at
    least as fine as ``crop_resolution_angstrom``; ``ctf_box_px`` holds the signal that
    the defocus moves out of the box at the Nyquist frequency of ``pixel_size_angstrom``,
    for CTF correction before windowing back.
    """

    diameter_angstrom: float
    pixel_size_angstrom: float
    defocus_angstrom: float
    resolution_angstrom: float
    voltage_kv: float
    wavelength_angstrom: float
    delocalisation_angstrom: float
    box_angstrom: float
    box_px: int
    crop_resolution_angstrom: float
    crop_box_px: int
    crop_pixel_size_angstrom: float
    ctf_box_px: int


def advise_box(
    diameter_angstrom: float,
    pixel_size_angstrom: float,
    defocus_angstrom: float,
    resolution_angstrom: float,
    voltage_kv: float = 300.0,
    *,
    crop_resolution_angstrom: float = 8.0,
) -> BoxAdvice:
    """Rosenthal-Henderson box ``B = D + 2 lambda dF / d``, rounded up to an efficient size.

    Parameters
    ----------
    diameter_angstrom : float
        Particle diameter ``D``.
    pixel_size_angstrom : float
        Micrograph pixel size.
    defocus_angstrom : float
        Defocus ``dF`` (the largest of the dataset, for one box that suits all).
    resolution_angstrom : float
        Target resolution ``d`` of the final map.
    voltage_kv : float
        Acceleration voltage (relativistic wavelength).
    crop_resolution_angstrom : float
        Nyquist resolution wanted for a Fourier-cropped copy (2D classification).

    Returns
    -------
    BoxAdvice
    """
    for name, value in (("diameter", diameter_angstrom), ("pixel size", pixel_size_angstrom),
                        ("resolution", resolution_angstrom),
                        ("crop resolution", crop_resolution_angstrom),
                        ("voltage", voltage_kv)):
        if not value > 0:
            raise ParameterError(f"{name} must be > 0, got {value}")
    if not defocus_angstrom >= 0:
        raise ParameterError(f"defocus must be >= 0, got {defocus_angstrom}")
    for name, value in (("diameter", diameter_angstrom), ("pixel size", pixel_size_angstrom),
                        ("defocus", defocus_angstrom), ("resolution", resolution_angstrom),
                        ("crop resolution", crop_resolution_angstrom),
                        ("voltage", voltage_kv)):
        if not math.isfinite(value) or 0 < abs(value) < sys.float_info.min:
            raise ParameterError(f"{name} must be a finite, normal number, got {value}")
    wavelength = float(electron_wavelength_angstrom(voltage_kv))
    delocalisation = wavelength * defocus_angstrom / resolution_angstrom
    box_angstrom = diameter_angstrom + 2 * delocalisation
    size_px = box_angstrom / pixel_size_angstrom
    if not size_px <= MAX_ADVISED_BOX_PX:  # also inf from a denormal pixel size
        raise ParameterError(
            f"a box of {size_px:.3g} px ({box_angstrom:.3g} A at {pixel_size_angstrom:.3g} "
            f"A/px) is beyond any micrograph: check the values")
    box_px = smallest_efficient_box(size_px)
    crop_box = _crop_box(box_px, pixel_size_angstrom, crop_resolution_angstrom)
    ctf_box = ctf_padding_box(box_px, defocus_angstrom, voltage_kv, pixel_size_angstrom)
    return BoxAdvice(
        diameter_angstrom=diameter_angstrom, pixel_size_angstrom=pixel_size_angstrom,
        defocus_angstrom=defocus_angstrom, resolution_angstrom=resolution_angstrom,
        voltage_kv=voltage_kv, wavelength_angstrom=float(wavelength),
        delocalisation_angstrom=float(delocalisation), box_angstrom=float(box_angstrom),
        box_px=box_px,
        crop_resolution_angstrom=crop_resolution_angstrom, crop_box_px=crop_box,
        crop_pixel_size_angstrom=pixel_size_angstrom * box_px / crop_box,
        ctf_box_px=ctf_box,
    )


def _crop_box(box_px: int, pixel_size_angstrom: float, nyquist_angstrom: float) -> int:
    """Smallest efficient even box whose pixel size is at most ``nyquist / 2``."""
    needed = box_px * pixel_size_angstrom / (nyquist_angstrom / 2)
    if needed >= box_px:
        return box_px
    return min(smallest_efficient_box(needed), box_px)


def ctf_padding_box(
    box_px: int, defocus_angstrom: float, voltage_kv: float, pixel_size_angstrom: float,
    output_pixel_size_angstrom: float | None = None,
) -> int:
    """Box (micrograph px) that keeps what defocus moves out of ``box_px`` up to Nyquist.

    The signal at the output Nyquist frequency ``1 / (2 * output_pixel_size)`` is moved by
    ``lambda dF / (2 * output_pixel_size)``; the padding adds that on both sides.
    """
    nyquist = 2 * (output_pixel_size_angstrom or pixel_size_angstrom)
    shift = delocalisation_px(defocus_angstrom, voltage_kv, pixel_size_angstrom, nyquist)
    return max(box_px, smallest_efficient_box(box_px + 2 * shift))


def delocalisation_px(
    defocus_angstrom: float, voltage_kv: float, pixel_size_angstrom: float,
    resolution_angstrom: float,
) -> float:
    """How far (micrograph pixels) defocus moves signal of a resolution: ``lambda dF / d``."""
    return (electron_wavelength_angstrom(voltage_kv) * defocus_angstrom / resolution_angstrom
            / pixel_size_angstrom)
