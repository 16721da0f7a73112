"""``cryoextract subtract``: remove a masked map's projection from every particle.

Register with ``app.command("subtract")(subtract_command)``; a thin wrapper over
:func:`cryoextract.pipeline.stacks.subtract.run_subtraction` (its parameters one
:class:`~cryoextract.pipeline.stacks.subtract_params.SubtractParams`) and
:func:`cryoextract.pipeline.stacks.revert.revert_subtraction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cryoextract.cli.common import PathsOption, fail, out, warn
from cryoextract.errors import CryoExtractError
from cryoextract.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PADDING_FACTOR,
    DEFAULT_SCALE_BAND,
    MaskMode,
    OutputFormat,
    PathStyle,
    ScaleMode,
)

if TYPE_CHECKING:
    from cryoextract.pipeline.stacks.revert import RevertSummary
    from cryoextract.pipeline.stacks.subtract import SubtractSummary


def subtract_command(
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Output directory.", show_default=False)],
    particles: Annotated[Path | None, typer.Option(
        help="Particles: RELION STAR (3.0 or 3.1+) with poses, origins, CTF and "
             "rlnRandomSubset, or a cryoSPARC .cs with alignments3D.",
        show_default=False)] = None,
    map_path: Annotated[Path | None, typer.Option(
        "--map", help="One map for every particle (breaks the half-set independence).",
        show_default=False)] = None,
    half_maps: Annotated[tuple[Path, Path] | None, typer.Option(
        "--half-maps", help="Half-maps 1 and 2: each particle is subtracted with the map of "
                            "its own half-set.", show_default=False)] = None,
    mask: Annotated[Path | None, typer.Option(
        help="Soft mask (values in [0, 1]) of the map's size \\[default: none, the whole map "
             "is subtracted].", show_default=False)] = None,
    mask_mode: Annotated[MaskMode, typer.Option(
        help="subtract: remove the density inside the mask (cryoSPARC); keep: remove the "
             "density outside it (RELION's --mask).")] = MaskMode.SUBTRACT,
    scale: Annotated[ScaleMode, typer.Option(
        help="per-particle: least-squares scale of the map's projection to each image; "
             "none: scale 1 (RELION).")] = ScaleMode.PER_PARTICLE,
    recenter_on_mask: Annotated[bool, typer.Option(
        "--recenter-on-mask",
        help="Centre the output images on the projection of the mask's centre of mass "
             "(integer shift; the residual goes to the origins).")] = False,
    recenter_xyz: Annotated[tuple[float, float, float] | None, typer.Option(
        metavar="X Y Z",
        help="Centre on this 3D point instead: 0-based voxel indices x y z of the map "
             "(RELION's --center_x is x - box/2).", show_default=False)] = None,
    new_box: Annotated[int | None, typer.Option(
        help="Crop the output images to this even box (after recentring).",
        show_default=False)] = None,
    float16: Annotated[bool, typer.Option(
        "--float16/--float32", help="Output MRC mode 12 or 2.")] = False,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes \\[default: all cores].", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(
        help="Particles per output stack.")] = DEFAULT_BATCH_SIZE,
    scale_band: Annotated[float, typer.Option(
        help="Fit the per-particle scale over frequencies up to this fraction of Nyquist.")
    ] = DEFAULT_SCALE_BAND,
    pad: Annotated[float, typer.Option(
        help="Oversampling of the map's Fourier transform (RELION's --pad).")
    ] = DEFAULT_PADDING_FACTOR,
    map_resolution: Annotated[float | None, typer.Option(
        help="The map's resolution in A: warns when the mask's soft edge is below "
             "cryoSPARC's suggested 5 x resolution / pixel size.", show_default=False)] = None,
    output_format: Annotated[OutputFormat, typer.Option(
        help="particles.star always; cs also writes particles.cs (auto: when the input is "
             ".cs).")] = OutputFormat.AUTO,
    revert: Annotated[Path | None, typer.Option(
        help="Instead of subtracting: give the original particles of this subtracted "
             "particles STAR back, with their origins.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing output.")] = False,
    paths: PathsOption = PathStyle.CWD,
) -> None:
    """Subtract the projection of a masked map (or half-maps) from every particle image."""
    from cryoextract.cli.progress import particle_progress
    from cryoextract.pipeline.stacks.revert import revert_subtraction
    from cryoextract.pipeline.stacks.subtract import run_subtraction
    from cryoextract.pipeline.stacks.subtract_params import (
        SubtractInputs,
        SubtractParams,
        SubtractRun,
    )

    try:
        if revert is not None:
            if particles is not None or map_path is not None or half_maps is not None:
                fail("--revert takes only --out (and --overwrite)")
            print_revert_summary(revert_subtraction(revert, out_dir, overwrite=overwrite,
                                                    path_style=paths))
            return
        if particles is None:
            fail("give --particles (or --revert)")
            return
        params = SubtractParams(
            mask_mode=mask_mode, scale=scale, recenter_on_mask=recenter_on_mask,
            recenter_xyz=recenter_xyz, new_box=new_box, float16=float16,
            batch_size=batch_size, padding_factor=pad, scale_band=scale_band,
            map_resolution_angstrom=map_resolution, output_format=output_format)
        inputs = SubtractInputs.of(particles, map_path=map_path, half_maps=half_maps,
                                   mask=mask)
        run = SubtractRun(workers=workers, overwrite=overwrite, path_style=paths)
        with particle_progress() as (on_start, on_progress):
            summary = run_subtraction(inputs, out_dir, params, run, on_start=on_start,
                                      on_progress=on_progress)
    except CryoExtractError as exc:
        fail(str(exc))
        return
    print_subtract_summary(summary)


def print_subtract_summary(summary: SubtractSummary) -> None:
    """The run summary as a table on stdout, warnings on stderr."""
    for message in summary.warnings:
        warn(message)
    table = Table(title="cryoextract subtract", show_header=False)
    table.add_row("particles in", str(summary.particles_in))
    table.add_row("particles written", str(summary.particles_written))
    for reason, count in summary.particles_skipped.items():
        table.add_row(f"particles skipped: {reason}", str(count))
    table.add_row("maps", "half-maps (own half-set per particle)" if summary.half_maps
                  else "one map for all particles")
    table.add_row("mask", f"{summary.mask or 'none'} ({summary.mask_mode})")
    if summary.mask_edge_width_px is not None:
        table.add_row("mask soft edge", f"{summary.mask_edge_width_px:.1f} px")
    for group, applied in summary.aberrations.items():
        table.add_row(f"{group} aberrations", escape("; ".join(applied)))
    for name, stats in summary.scale.items():
        table.add_row(f"scale {name}", f"median {stats['median']:.4g}, mean {stats['mean']:.4g} "
                                       f"+- {stats['std']:.3g} [{stats['min']:.4g}, "
                                       f"{stats['max']:.4g}]")
    if summary.recenter_xyz_px is not None:
        x, y, z = summary.recenter_xyz_px
        table.add_row("recentred on", f"voxel ({x:.2f}, {y:.2f}, {z:.2f}): "
                                      f"{summary.recentered} particles moved")
    box_in, box_out = summary.box_px
    table.add_row("box", f"{box_in} -> {box_out} px, {summary.pixel_size_angstrom:.6g} A")
    mode = "float16" if summary.float16 else "float32"
    table.add_row("stacks", f"{len(summary.stacks)} ({mode})")
    table.add_row("particles STAR", escape(summary.particles_star))
    if summary.particles_cs:
        table.add_row("particles .cs", escape(summary.particles_cs))
    out.print(table)


def print_revert_summary(summary: RevertSummary) -> None:
    """What ``--revert`` restored."""
    for message in summary.warnings:
        warn(message)
    table = Table(title="cryoextract subtract --revert", show_header=False)
    table.add_row("particles", str(summary.particles))
    table.add_row("origins restored", str(summary.origins_restored))
    table.add_row("coordinates restored", str(summary.coordinates_restored))
    for group, size in summary.image_size_px.items():
        table.add_row(f"{group} image size", f"{size} px")
    table.add_row("particles STAR", escape(summary.particles_star))
    out.print(table)
