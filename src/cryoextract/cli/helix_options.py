"""``extract``'s helical options (panel "Helical"), as ``Annotated`` aliases, and the
:class:`~cryoextract.pipeline.extraction.params.HelixParams` they make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cryoextract.pipeline.extraction.params import HelixParams

PANEL = "Helical"

HelixOption = Annotated[bool, typer.Option(
    "--helix", help="Helical segments, with RELION's helical columns (tube ID, "
    "priors, track length).", rich_help_panel=PANEL)]
TubesOption = Annotated[bool, typer.Option(
    "--helical-tubes", help="Picks are tube start/end pairs (rows 1-2 tube 1, ...), cut "
    "into segments as relion_preprocess --helical_tubes --helical_cut_into_segments.",
    rich_help_panel=PANEL)]
NrAsuOption = Annotated[int, typer.Option(
    "--helical-nr-asu", metavar="N", help="Asymmetric units per segment step.",
    rich_help_panel=PANEL)]
RiseOption = Annotated[float | None, typer.Option(
    "--helical-rise-angstrom", metavar="A", help="Helical rise in A (segment step = N x "
    "rise).", rich_help_panel=PANEL)]
DiameterOption = Annotated[float | None, typer.Option(
    "--helical-outer-diameter", metavar="A", help="Tube outer diameter in A: "
    "normalise on the pixels beyond it from the helical axis.", rich_help_panel=PANEL)]
BimodalOption = Annotated[bool, typer.Option(
    "--helical-bimodal-psi", help="rlnAnglePsiFlipRatio 0.5 (bimodal psi priors) instead "
    "of 0.", rich_help_panel=PANEL)]


def helix_params(helix: bool, tubes: bool, nr_asu: int, rise: float | None,
                 diameter: float | None, bimodal: bool) -> HelixParams | None:
    """The helical parameters, or ``None`` without ``--helix`` (ParameterError when a
    helical option is given without it)."""
    from cryoextract.errors import ParameterError
    from cryoextract.pipeline.extraction.params import HelixParams

    if not helix:
        if tubes or rise is not None or diameter is not None or bimodal or nr_asu != 1:
            raise ParameterError("the --helical-* options need --helix")
        return None
    return HelixParams(tubes=tubes, nr_asu=nr_asu, rise_angstrom=rise,
                       outer_diameter_angstrom=diameter, bimodal_psi=bimodal)
