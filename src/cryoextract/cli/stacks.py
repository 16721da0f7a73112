"""``cryoextract restack`` and ``cryoextract downsample``: thin wrappers over the library.

The lead registers these functions on the main app (``app.command("restack")(...)``);
they do not import :mod:`cryoextract.cli.app`, so either module may import the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cryoextract.cli.common import PathsOption, fail, out, warn
from cryoextract.errors import CryoExtractError
from cryoextract.options import DEFAULT_BATCH_SIZE, PathStyle

if TYPE_CHECKING:
    from cryoextract.pipeline.stacks.restack import StackJobSummary

ParticlesOption = Annotated[Path, typer.Option(
    "--particles", help="Particles STAR (RELION 3.0 or 3.1+) or cryoSPARC .cs.")]
OutOption = Annotated[Path, typer.Option("--out", help="Output directory.")]
BatchOption = Annotated[int, typer.Option(
    "--batch-size", help="Particles per output stack.")]
SelectOption = Annotated[Path | None, typer.Option(
    help="Keep only particles whose rlnImageName is in this STAR file.")]
IndicesOption = Annotated[Path | None, typer.Option(
    help="Keep only these 0-based rows (.npy, or text: integers separated by spaces, "
         "commas or newlines).")]
Float16Option = Annotated[bool | None, typer.Option(
    "--float16/--float32",
    help="Output MRC mode 12 or 2 (default: float16 only if every input is float16).")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace an existing output.")]


def restack_command(
    particles: ParticlesOption,
    out_dir: OutOption,
    batch_size: BatchOption = DEFAULT_BATCH_SIZE,
    select: SelectOption = None,
    indices: IndicesOption = None,
    float16: Float16Option = None,
    overwrite: OverwriteOption = False,
    paths: PathsOption = PathStyle.CWD,
) -> None:
    """Copy particles into consolidated stacks of N images (pixels unchanged) + a STAR."""
    from cryoextract.cli.progress import particle_progress
    from cryoextract.pipeline.stacks.restack import restack

    try:
        with particle_progress() as (on_start, on_progress):
            summary = restack(
                particles, out_dir, batch_size=batch_size, select=select, indices=indices,
                float16=float16, overwrite=overwrite, path_style=paths,
                on_start=on_start, on_progress=on_progress,
            )
    except CryoExtractError as exc:
        fail(str(exc))
        return
    print_stack_summary(summary)


def downsample_command(
    particles: ParticlesOption,
    out_dir: OutOption,
    box: Annotated[int | None, typer.Option(
        "--box", "--bin-to", help="Output box in pixels (even).")] = None,
    pixel_size_out: Annotated[float | None, typer.Option(
        help="Output pixel size in A (nearest even box per optics group; exact size "
             "reported).")] = None,
    recenter: Annotated[bool, typer.Option(
        help="Shift each image by the rounded rlnOriginX/YAngst first (circular shift); "
             "the residual stays in the origins.")] = False,
    float16: Float16Option = None,
    batch_size: BatchOption = DEFAULT_BATCH_SIZE,
    select: SelectOption = None,
    indices: IndicesOption = None,
    workers: Annotated[int | None, typer.Option(
        help="FFT threads \\[default: all cores].")] = None,
    overwrite: OverwriteOption = False,
    paths: PathsOption = PathStyle.CWD,
) -> None:
    """Fourier-crop existing particles to a smaller box or larger pixel size + a STAR."""
    from cryoextract.cli.progress import particle_progress
    from cryoextract.pipeline.stacks.restack import downsample

    try:
        with particle_progress() as (on_start, on_progress):
            summary = downsample(
                particles, out_dir, box_px=box, pixel_size_angstrom=pixel_size_out,
                recenter=recenter, float16=float16, batch_size=batch_size, select=select,
                indices=indices, workers=workers, overwrite=overwrite, path_style=paths,
                on_start=on_start, on_progress=on_progress,
            )
    except CryoExtractError as exc:
        fail(str(exc))
        return
    print_stack_summary(summary)




def print_stack_summary(summary: StackJobSummary) -> None:
    """The run summary as a table on stdout, warnings on stderr."""
    for warning in summary.warnings:
        warn(warning)
    table = Table(title=f"cryoextract {summary.command}", show_header=False)
    table.add_row("particles in", str(summary.particles_in))
    if summary.particles_selected != summary.particles_in:
        table.add_row("particles selected", str(summary.particles_selected))
    table.add_row("particles written", str(summary.particles_written))
    for reason, count in summary.particles_skipped.items():
        table.add_row(f"particles skipped: {reason}", str(count))
    if summary.command == "downsample":
        table.add_row("particles recentred", str(summary.recentered))
    for group, (box_in, box_out) in summary.box_px.items():
        size_in, size_out = summary.pixel_size_angstrom[group]
        table.add_row(f"{group}", f"{box_in} px, {_angstrom(size_in)} -> "
                                  f"{box_out} px, {_angstrom(size_out)}")
    mode = "float16" if summary.float16 else "float32"
    table.add_row("stacks", f"{len(summary.stacks)} ({mode})")
    table.add_row("particles STAR", escape(summary.particles_star))
    out.print(table)


def _angstrom(size: float | None) -> str:
    return "? A" if size is None else f"{size:.6g} A"
