"""``cryoextract convert``: picks from any supported format to any other.

Register with ``app.command("convert")(convert_command)``; a thin wrapper over
:func:`cryoextract.pipeline.convert.convert_picks`, imported when the command runs. The
formats offered, and their help, come from :mod:`cryoextract.io.pickformats.registry`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cryoextract.cli.common import COORDS_FORMAT_HELP, fail, out, warn
from cryoextract.cli.helix_options import (
    BimodalOption,
    HelixOption,
    NrAsuOption,
    RiseOption,
    TubesOption,
    helix_params,
)
from cryoextract.errors import CryoExtractError
from cryoextract.io.pickformats.registry import (
    PICK_FORMATS,
    describe,
    extension_list,
    readable,
    writable,
)

if TYPE_CHECKING:
    from cryoextract.pipeline.convert import ConvertOptions, ConvertResult

_MAX_WARNINGS = 10

#: output formats of ``cryoextract convert``, one member per writable format
OutputPickFormat = Enum(  # type: ignore[misc]
    "OutputPickFormat", [(name.upper(), name) for name in writable()], type=str)


def convert_command(
    inputs: Annotated[list[Path], typer.Argument(
        help="Pick files (" + extension_list(readable()) + "): several per-micrograph "
             "files or files for many micrographs.", show_default=False)],
    out_path: Annotated[Path, typer.Option(
        "--out", help="Output: a file (" + ", ".join(
            f.extensions[0] for f in PICK_FORMATS if f.many_micrographs and f.writer)
        + " for many micrographs, or one per-micrograph file) or a directory with one "
          "file per micrograph.", show_default=False)],
    to: Annotated[OutputPickFormat | None, typer.Option(  # type: ignore[valid-type]
        "--to", help="Output format: " + describe(writable())
        + " \\[default: the one --out's extension names].", show_default=False)] = None,
    coords_format: Annotated[str, typer.Option(help=COORDS_FORMAT_HELP)] = "auto",
    box: Annotated[float | None, typer.Option(
        "--box", help="Box side in output micrograph pixels for "
        + "/".join(f.extensions[0] for f in PICK_FORMATS if f.writer and f.needs_box)
        + " \\[default: the input's, rescaled].")] = None,
    coords_pixel_size: Annotated[float | None, typer.Option(
        help="Pixel size (A) of the micrographs the picks were made on (binned picking); "
             "coordinates are scaled by this / --pixel-size.")] = None,
    pixel_size: Annotated[float | None, typer.Option(
        help="Pixel size (A) of the micrographs the output refers to \\[default: from a "
             "--micrographs STAR].")] = None,
    swap_xy: Annotated[bool, typer.Option(
        "--swap-xy", help="Swap x and y (after scaling).")] = False,
    flip_x: Annotated[bool, typer.Option(
        "--flip-x", help="Mirror x: x -> nx - 1 - x (needs the micrograph shape).")] = False,
    flip_y: Annotated[bool, typer.Option(
        "--flip-y", help="Mirror y: y -> ny - 1 - y (needs the micrograph shape).")] = False,
    micrograph_shape: Annotated[tuple[int, int] | None, typer.Option(
        metavar="NY NX", help="NY NX of every micrograph (for flips and the off-micrograph check).",
        show_default=False)] = None,
    micrographs: Annotated[str | None, typer.Option(
        help="Micrographs STAR or glob of MRC files: names for the picks, shapes from the "
             "MRC headers, pixel sizes from the STAR.")] = None,
    suffix: Annotated[str | None, typer.Option(
        help="Ending of per-micrograph output files \\[default: the output format's "
             "extension].")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace existing output files.")] = False,
    helix: HelixOption = False, helical_tubes: TubesOption = False,
    helical_nr_asu: NrAsuOption = 1, helical_rise_angstrom: RiseOption = None,
    helical_bimodal_psi: BimodalOption = False,
) -> None:
    """Convert picks between formats, pixel sizes and axis conventions."""
    from cryoextract.pipeline.convert import ConvertOptions, convert_picks

    try:
        helical = helix_params(helix, helical_tubes, helical_nr_asu, helical_rise_angstrom,
                               None, helical_bimodal_psi)
    except CryoExtractError as exc:
        fail(str(exc))
        return
    options = ConvertOptions(
        to=None if to is None else to.value, out=out_path, coords_format=coords_format, box_px=box,
        coords_pixel_size_angstrom=coords_pixel_size, pixel_size_angstrom=pixel_size,
        swap_xy=swap_xy, flip_x=flip_x, flip_y=flip_y,
        micrograph_shape_yx=_shape(micrograph_shape), micrographs=micrographs,
        suffix=suffix, overwrite=overwrite, helix=helical,
    )
    try:
        result = convert_picks(inputs, options)
    except CryoExtractError as exc:
        fail(str(exc))
        return
    print_result(result, options)


def _shape(value: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None or any(v is None for v in value):
        return None
    return int(value[0]), int(value[1])


def print_result(result: ConvertResult, options: ConvertOptions) -> None:
    """Warnings on stderr (at most ten), a one-line summary on stdout."""
    for warning in result.warnings[:_MAX_WARNINGS]:
        warn(warning)
    if len(result.warnings) > _MAX_WARNINGS:
        warn(f"{len(result.warnings) - _MAX_WARNINGS} more warnings")
    where = str(result.files[0]) if len(result.files) == 1 else f"{len(result.files)} files " \
        f"in {options.out}"
    out.print(f"converted {result.n_picks} picks of {result.n_micrographs} micrographs to "
              f"{result.format}: {escape(where)}", highlight=False, soft_wrap=True)
