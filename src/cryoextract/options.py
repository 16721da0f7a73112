"""Choices offered as command-line options, in a module that imports nothing heavy.

The CLI declares its options with these enums when it is imported, so showing ``--help``
or parsing arguments needs this module only, never the numerics that act on the choice
(which import numpy, scipy or pandas). The library re-exports each where it belongs
(``SubpixelMode`` from :mod:`cryoextract.pipeline.extraction.params`).
"""

from __future__ import annotations

import enum


class SubpixelMode(str, enum.Enum):
    """What happens to the fractional part of a pick (docs/conventions.md, "Box centre").

    ``origin``: the box is centred on the truncated pick and the residual is written to
    ``rlnOriginXAngst/YAngst``. ``shift``: the box is Fourier-shifted so the pick lies
    exactly on the box centre; origins are zero. ``drop``: RELION's behaviour, the
    fraction is lost.
    """

    ORIGIN = "origin"
    SHIFT = "shift"
    DROP = "drop"


class EdgeMode(str, enum.Enum):
    """What to do with a particle whose box leaves the micrograph."""

    DROP = "drop"
    REPLICATE = "replicate"
    MEAN = "mean"
    NOISE = "noise"
    REFLECT = "reflect"


class CtfCorrection(str, enum.Enum):
    """What to do with the CTF at extraction."""

    NONE = "none"
    FLIP = "flip"
    PREMULTIPLY = "premultiply"


class NormMode(str, enum.Enum):
    """Background circle with a ramp, background circle only, whole box, or none."""

    RAMP = "ramp"
    MEAN = "mean"
    WHOLE = "whole"
    NONE = "none"


class MaskMode(str, enum.Enum):
    """What the mask marks: the density to remove (cryoSPARC) or to keep (RELION)."""

    SUBTRACT = "subtract"
    KEEP = "keep"


class ScaleMode(str, enum.Enum):
    """Fit a least-squares scale per particle, or subtract with scale 1 (RELION)."""

    PER_PARTICLE = "per-particle"
    NONE = "none"


class OutputFormat(str, enum.Enum):
    """Metadata written besides ``particles.star``: ``cs`` adds ``particles.cs``."""

    AUTO = "auto"
    STAR = "star"
    CS = "cs"


#: default oversampling of the 3D Fourier transform (RELION's ``--pad``)
DEFAULT_PADDING_FACTOR = 2.0

#: default number of particles per output stack
DEFAULT_BATCH_SIZE = 10000

#: default band of the per-particle scale fit, fraction of Nyquist
DEFAULT_SCALE_BAND = 0.5


class PathStyle(str, enum.Enum):
    """How the STAR files we write name other files (docs/conventions.md, "Paths").

    ``relative-to-cwd``: as RELION, relative to the directory the command runs in (a
    RELION project); ``relative-to-star``: relative to the STAR file's folder (Warp's
    way, for output folders that move). A file outside that directory is named by its
    absolute path either way.
    """

    CWD = "relative-to-cwd"
    STAR = "relative-to-star"
