"""``cryoextract select`` and ``cryoextract report``: thin wrappers over the library.

The lead registers these functions on the main app (``app.command("select")(...)``);
they do not import :mod:`cryoextract.cli.app`, so either module may import the other.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cryoextract.cli.common import PathsOption, fail, out, warn
from cryoextract.errors import CryoExtractError
from cryoextract.options import PathStyle


def select_command(
    source: Annotated[Path, typer.Argument(
        help="Extraction folder (its particles.star), a particles STAR or a cryoSPARC .cs.",
        show_default=False)],
    where: Annotated[str, typer.Option(
        "--where",
        help='Condition on the particle columns, e.g. "ceScoreByVar < 1.5 and '
             'ceEdgeDistanceAngstrom > 50" (column names, numbers, < <= > >= == !=, '
             'and, or, not; the ce/rln prefix may be left out).',
        show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "--out", help="Output STAR (.star) or folder \\[default: SOURCE/selected/particles.star]."
    )] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    paths: PathsOption = PathStyle.CWD,
) -> None:
    """Write the particles that pass a condition as a new STAR (and .cs); stacks are not copied."""
    from cryoextract.pipeline.stacks.select import select_particles

    try:
        summary = select_particles(source, where, output, overwrite=overwrite,
                                   path_style=paths)
    except CryoExtractError as exc:
        fail(str(exc))
        return
    for warning in summary.warnings:
        warn(warning)
    table = Table(title="cryoextract select", show_header=False)
    table.add_row("condition", escape(summary.where))
    table.add_row("particles in", str(summary.particles_in))
    table.add_row("particles selected", str(summary.particles_selected))
    table.add_row("particles STAR", escape(summary.particles_star))
    if summary.particles_cs is not None:
        table.add_row("particles .cs", escape(summary.particles_cs))
    out.print(table)


def report_command(
    out_dir: Annotated[Path, typer.Argument(
        help="Extraction output folder (particles.star, summary.json, "
             "rejected_particles.tsv).", show_default=False)],
    micrograph_dir: Annotated[list[Path] | None, typer.Option(
        "--micrograph-dir",
        help="Folder where relative micrograph names are looked up after the working "
             "directory (repeatable).")] = None,
    particles: Annotated[int, typer.Option(
        "--particles", min=0, help="Particles in the random gallery.")] = 40,
    worst: Annotated[int, typer.Option(
        "--worst", min=0, help="Particles in each worst-by-descriptor gallery.")] = 16,
    micrographs: Annotated[int, typer.Option(
        "--micrographs", min=0, help="Micrograph thumbnails with picks drawn.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the random gallery.")] = 0,
) -> None:
    """Write OUT/report/index.html: galleries, micrographs with picks, histograms, summary."""
    from cryoextract.pipeline.frame import STATE_DIR, JobLock
    from cryoextract.report import write_report

    # a folder a cryoextract job made is written under that job's lock: no report while a
    # run (extract, --watch, --resume) writes there, none while another report does
    lock = JobLock(out_dir) if (out_dir / STATE_DIR).is_dir() else nullcontext()
    try:
        with lock:
            page = write_report(out_dir, micrograph_dirs=micrograph_dir or (),
                                n_random=particles, n_worst=worst,
                                max_micrographs=micrographs, seed=seed)
    except CryoExtractError as exc:
        fail(str(exc))
        return
    out.print(f"report: {escape(str(page))}", highlight=False, soft_wrap=True)

