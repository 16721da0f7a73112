"""Choices offered as command-line options, in a module that imports nothing heavy.

The CLI declares its options with these enums when it is imported, so showing ``--help``
or parsing arguments needs this module only, never the numerics that act on the choice
(which import numpy, scipy or pandas). The library re-exports each where it belongs
(``SubpixelMode`` from :mod:`cryoextract.pipeline.params`).
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
