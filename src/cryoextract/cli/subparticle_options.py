"""``extract``'s sub-particle options (panel "Sub-particles"), as ``Annotated`` aliases;
:func:`cryoextract.pipeline.extraction.subparticles.subparticle_options` turns them into a
:class:`~cryoextract.pipeline.extraction.subparticles.SubparticleSpec`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PANEL = "Sub-particles"

SymmetryOption = Annotated[str | None, typer.Option(
    "--symmetry-expand", metavar="SYM",
    help="Expand each particle by this point group (C<n>, D<n>, T, O, I, I1-I4): one row "
         "per symmetry copy, as RELION expands.", rich_help_panel=PANEL)]
VectorsFileOption = Annotated[Path | None, typer.Option(
    "--subparticles", metavar="FILE",
    help="Sub-particle vectors: a text file of 'x y z' (A from the reference's centre) or "
         "a Chimera .cmm (first marker: the centre).", rich_help_panel=PANEL)]
AlignOption = Annotated[bool, typer.Option(
    "--align-subparticles",
    help="Rotate each sub-particle's orientation so its vector points along z.",
    rich_help_panel=PANEL)]
MinDistanceOption = Annotated[float | None, typer.Option(
    "--subparticle-min-distance", metavar="A",
    help="Drop a sub-particle whose projected centre is closer than this (A) to an "
         "earlier kept one of the same particle (--min-distance-angstrom does the same "
         "when there are sub-particles).", rich_help_panel=PANEL)]
TwistOption = Annotated[float | None, typer.Option(
    "--helical-twist-deg", metavar="DEG",
    help="Helical expansion instead of a point group (with --helical-rise-angstrom and "
         "--helical-expand-asu), as RELION's --helix.", rich_help_panel=PANEL)]
ExpandAsuOption = Annotated[int, typer.Option(
    "--helical-expand-asu", metavar="N",
    help="Asymmetric units per particle in a helical expansion (>= 2).",
    rich_help_panel=PANEL)]
