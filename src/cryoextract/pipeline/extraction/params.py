"""Typed parameter records of an extraction job."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryoextract.errors import ParameterError
from cryoextract.ops.boxes import EdgeMode
from cryoextract.ops.boxsize import check_box_size
from cryoextract.ops.ctf_correct import CtfCorrection
from cryoextract.ops.normalize import NormMode
from cryoextract.options import SubpixelMode  # defined apart for the CLI

if TYPE_CHECKING:
    from cryoextract.pipeline.extraction.subparticles import SubparticleSpec


@dataclass(frozen=True)
class ExtractParams:
    """Everything that decides what one extraction job computes.

    Sizes are in pixels: ``box_px`` in micrograph pixels, ``out_box_px`` in output
    pixels (``None``: no downsampling). ``bg_radius_px`` is in output pixels
    (``None``: 0.375 of the output box, RELION GUI's default).
    ``pixel_size_out_angstrom`` (``--pixel-size-out``) asks for the output box by its pixel
    size instead: the job works it out from the micrograph pixel size of each optics group
    when it reads the micrographs (:func:`~.plan.resolve_output_size`), before anything
    is written, and carries on with ``out_box_px`` set.
    """

    box_px: int
    out_box_px: int | None = None
    pixel_size_out_angstrom: float | None = None
    norm: NormMode = NormMode.RAMP
    bg_radius_px: float | None = None
    invert: bool = True
    white_dust_sigma: float | None = None
    black_dust_sigma: float | None = None
    edge: EdgeMode = EdgeMode.DROP
    subpixel: SubpixelMode = SubpixelMode.ORIGIN
    float16: bool = False
    seed: int = 0
    also_out_box_px: tuple[int, ...] = ()
    also_float16: bool = False
    picks: PickTransform = field(default_factory=lambda: PickTransform())
    recenter: bool | None = None
    recenter_xyz_angstrom: tuple[float, float, float] | None = None
    ctf_correct: CtfCorrection = CtfCorrection.NONE
    ctf_box_px: int | None = None
    ctf_on_micrograph: bool = False
    particle_diameter_angstrom: float | None = None
    descriptors: bool = True
    patch_px: int | None = None
    min_distance_angstrom: float | None = None
    min_score: float | None = None
    max_per_micrograph: int | None = None
    score_column: str = "rlnAutopickFigureOfMerit"
    helix: HelixParams | None = None  # helical segments (pipeline/extraction/helical.py)
    subparticles: SubparticleSpec | None = None  # expansion (pipeline/extraction/subparticles.py)

    def __post_init__(self) -> None:
        check_box_size(self.box_px, "box")
        self._check_numbers()
        for size in self.also_out_box_px:
            check_box_size(size, "additional output box")
            if size > self.box_px:
                raise ParameterError(
                    f"additional output box {size} px is larger than the extraction box "
                    f"{self.box_px} px: Fourier cropping only downsamples"
                )
        if self.ctf_box_px is not None:
            check_box_size(self.ctf_box_px, "CTF box")
            if self.ctf_box_px < self.box_px:
                raise ParameterError(
                    f"CTF box {self.ctf_box_px} px is smaller than the box {self.box_px} px"
                )
        if self.ctf_on_micrograph and self.ctf_correct is not CtfCorrection.FLIP:
            raise ParameterError("--ctf-on micrograph only goes with --ctf-correct flip")
        if self.subparticles is not None and self.subparticles.vectors_angstrom and (
                self.recenter is False or self.recenter_xyz_angstrom is not None):
            raise ParameterError("sub-particles are re-centred: drop --no-recenter")
        if self.recenter_xyz_angstrom is not None and self.recenter is False:
            raise ParameterError("--recenter-xyz needs re-centring; drop --no-recenter")
        if self.pixel_size_out_angstrom is not None:
            check_number(self.pixel_size_out_angstrom, "--pixel-size-out", above=0)
            check_one_binning(self.out_box_px, None, self.pixel_size_out_angstrom)
        if self.out_box_px is not None:
            check_box_size(self.out_box_px, "output box")
            if self.out_box_px > self.box_px:
                raise ParameterError(
                    f"output box {self.out_box_px} px is larger than the extraction box "
                    f"{self.box_px} px: Fourier cropping only downsamples"
                )
        if self.bg_radius_px is not None:
            if not 0 < self.bg_radius_px:
                raise ParameterError(f"background radius must be > 0, got {self.bg_radius_px}")
            if 2 * self.bg_radius_px > self.output_box_px:
                raise ParameterError(
                    f"background radius {self.bg_radius_px} px leaves no background in a "
                    f"{self.output_box_px} px box (2*radius > box)"
                )

    def _check_numbers(self) -> None:
        """Values that could never work, refused before a file is written."""
        check_integer(self.seed, "--seed", at_least=0)
        if self.patch_px is not None:
            check_integer(self.patch_px, "--patch", at_least=2)
        for what, value in (("--white-dust", self.white_dust_sigma),
                            ("--black-dust", self.black_dust_sigma),
                            ("--min-distance-angstrom", self.min_distance_angstrom),
                            ("--particle-diameter", self.particle_diameter_angstrom)):
            if value is not None:
                check_number(value, what, above=0)
        if self.min_score is not None:
            check_number(self.min_score, "--min-score")
        for value in self.recenter_xyz_angstrom or ():
            check_number(value, "--recenter-xyz")
        if self.max_per_micrograph is not None:
            check_integer(self.max_per_micrograph, "--max-per-micrograph", at_least=1)

    @property
    def descriptor_patch_px(self) -> int:
        """Patch for the local-variance descriptors (Xmipp's default: 1.5 x box)."""
        return self.patch_px or round(1.5 * self.box_px)

    @property
    def output_box_px(self) -> int:
        """Side of the written particle images, in output pixels."""
        return self.box_px if self.out_box_px is None else self.out_box_px

    @property
    def background_radius_px(self) -> float:
        """Radius beyond which pixels are background, in output pixels."""
        if self.bg_radius_px is not None:
            return self.bg_radius_px
        return float(round(0.375 * self.output_box_px))

    def output_pixel_size(self, pixel_size_angstrom: float, out_box_px: int | None = None) -> float:
        """Exact output pixel size for a micrograph pixel size (Fourier crop is exact)."""
        return pixel_size_angstrom * self.box_px / (out_box_px or self.output_box_px)

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        """Every stack written per micrograph: the main one first, then the extra sizes."""
        main = OutputSpec(self.output_box_px, self.float16, self.background_radius_px, "")
        extras = tuple(
            OutputSpec(size, self.also_float16, self.background_radius_px * size
                       / self.output_box_px if self.bg_radius_px is not None
                       else float(round(0.375 * size)), f"also_{size}px")
            for size in dict.fromkeys(self.also_out_box_px)
        )
        return (main, *extras)


@dataclass(frozen=True)
class HelixParams:
    """Helical extraction (docs/conventions.md, "Helical segments").

    ``tubes``: picks are start/end pairs cut into segments every ``nr_asu *
    rise_angstrom``; otherwise picks are segments already, grouped by tube.
    ``outer_diameter_angstrom``: the tube's width for normalisation (``None``: the
    circular background). ``bimodal_psi``: ``rlnAnglePsiFlipRatio`` 0.5 instead of 0.
    """

    tubes: bool = False
    nr_asu: int = 1
    rise_angstrom: float | None = None
    outer_diameter_angstrom: float | None = None
    bimodal_psi: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.nr_asu, bool) or int(self.nr_asu) != self.nr_asu \
                or self.nr_asu < 1:
            raise ParameterError(f"--helical-nr-asu must be an integer >= 1, got {self.nr_asu}")
        for what, value in (("--helical-rise-angstrom", self.rise_angstrom),
                            ("--helical-outer-diameter", self.outer_diameter_angstrom)):
            if value is not None and not sys.float_info.min <= value < math.inf:
                raise ParameterError(f"{what} must be > 0 and finite, got {value}")
        if self.tubes and self.rise_angstrom is None:
            raise ParameterError("--helical-tubes needs --helical-rise-angstrom")

    def step_px(self, pixel_size_angstrom: float) -> float:
        """Distance between segments, micrograph pixels (RELION's ``nr_asu * rise / apix``)."""
        return self.nr_asu * float(self.rise_angstrom or 0.0) / pixel_size_angstrom


@dataclass(frozen=True)
class OutputSpec:
    """One stack per micrograph: its box, precision, background radius and sub-directory.

    ``subdir`` is ``""`` for the main output (``OUT/``) and ``also_<box>px`` for the
    additional sizes written from the same read (``OUT/also_<box>px/``).
    """

    box_px: int
    float16: bool
    bg_radius_px: float
    subdir: str


@dataclass(frozen=True)
class PickTransform:
    """How picks map onto the stored micrograph (docs/conventions.md, "Axis flips").

    ``pixel_size_angstrom`` is the pixel size the picks were made at (binned picking);
    ``None`` means the micrograph's.
    """

    pixel_size_angstrom: float | None = None
    swap_xy: bool = False
    flip_x: bool = False
    flip_y: bool = False

    def __post_init__(self) -> None:
        if self.pixel_size_angstrom is not None:
            check_number(self.pixel_size_angstrom, "picks pixel size (--coords-pixel-size)",
                         above=0)


def check_number(value: float, what: str, *, above: float | None = None) -> None:
    """ParameterError unless ``value`` is a finite number (and > ``above``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ParameterError(f"{what} must be a finite number, got {value}")
    if above is not None and not number > above:
        raise ParameterError(f"{what} must be > {above:g}, got {value}")


def check_integer(value: int, what: str, *, at_least: int | None = None) -> None:
    """ParameterError unless ``value`` is an integer (and >= ``at_least``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or value != int(value):
        raise ParameterError(f"{what} must be an integer, got {value!r}")
    if at_least is not None and value < at_least:
        raise ParameterError(f"{what} must be >= {at_least}, got {value}")


def check_one_binning(bin_to_px: int | None, bin_factor: float | None,
                      pixel_size_out_angstrom: float | None) -> None:
    """ParameterError when more than one way of asking for downsampling is given."""
    given = [v is not None for v in (bin_to_px, bin_factor, pixel_size_out_angstrom)]
    if sum(given) > 1:
        raise ParameterError("give at most one of --bin-to, --bin-factor, --pixel-size-out")


def resolve_output_box(
    box_px: int,
    *,
    bin_to_px: int | None = None,
    bin_factor: float | None = None,
    pixel_size_out_angstrom: float | None = None,
    pixel_size_angstrom: float | None = None,
) -> int | None:
    """Output box from one of the three ways of asking for downsampling.

    ``bin_factor`` and ``pixel_size_out_angstrom`` round to the nearest even box; the
    exact resulting pixel size is ``pixel_size * box / out_box`` (reported by the job).
    """
    check_one_binning(bin_to_px, bin_factor, pixel_size_out_angstrom)
    if bin_to_px is not None:
        return None if bin_to_px == box_px else int(bin_to_px)
    if bin_factor is not None:
        check_number(bin_factor, "--bin-factor")
        if not bin_factor >= 1:
            raise ParameterError(f"bin factor must be >= 1, got {bin_factor}")
        target = box_px / bin_factor
    elif pixel_size_out_angstrom is not None:
        if pixel_size_angstrom is None:
            raise ParameterError("--pixel-size-out needs the micrograph pixel size")
        check_number(pixel_size_out_angstrom, "--pixel-size-out", above=0)
        if not pixel_size_out_angstrom >= pixel_size_angstrom:
            raise ParameterError(
                f"output pixel size {pixel_size_out_angstrom} A is smaller than the "
                f"micrograph pixel size {pixel_size_angstrom} A: Fourier cropping only downsamples"
            )
        target = box_px * pixel_size_angstrom / pixel_size_out_angstrom
    else:
        return None
    out = max(2, 2 * round(target / 2))
    return None if out == box_px else out
