"""``cryoextract extract``: cut particles out of micrographs (a thin wrapper over
:mod:`cryoextract.pipeline.extraction.extract`).

Registered on the main app by :mod:`cryoextract.cli.app`; like every command module this
imports the library it wraps only when the command runs.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from cryoextract.cli.common import COORDS_FORMAT_HELP, PATHS_HELP, fail, out, warn
from cryoextract.cli.helix_options import (
    BimodalOption,
    DiameterOption,
    HelixOption,
    NrAsuOption,
    RiseOption,
    TubesOption,
    helix_params,
)
from cryoextract.cli.subparticle_options import (
    AlignOption,
    ExpandAsuOption,
    MinDistanceOption,
    SymmetryOption,
    TwistOption,
    VectorsFileOption,
)
from cryoextract.errors import CryoExtractError, ParameterError, os_error_message
from cryoextract.options import CtfCorrection, EdgeMode, NormMode, PathStyle, SubpixelMode

if TYPE_CHECKING:
    from cryoextract.cli.progress import JobProgress
    from cryoextract.pipeline.extraction.extract import ExtractInputs, ExtractionSummary, RunOptions
    from cryoextract.pipeline.extraction.params import ExtractParams
    from cryoextract.pipeline.extraction.watch import WatchOptions


class ExtractCommand(TyperCommand):
    """The extract command: ``--recenter-xyz X Y Z`` may be given several times.

    typer has no option for a list of tuples; the option is declared a list and made to
    take three values per use here (its values are checked by
    :func:`cryoextract.pipeline.extraction.subparticles.subparticle_options`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.name == "recenter_xyz":
                param.nargs = 3


def extract_command(
    *,
    micrographs: Annotated[str, typer.Option(
        help="Micrographs STAR (RELION 3.0 or 3.1+) or a glob of MRC files.",
        rich_help_panel="Inputs")],
    coords_dir: Annotated[Path | None, typer.Option(
        help="Directory of per-micrograph coordinate files (as RELION's --coord_dir).",
        rich_help_panel="Inputs")] = None,
    coords_suffix: Annotated[str | None, typer.Option(
        help="Suffix replacing the micrograph extension, e.g. _autopick.star.",
        rich_help_panel="Inputs")] = None,
    coords: Annotated[Path | None, typer.Option(
        help="One coordinate file (a particles STAR with rlnMicrographName, or any format "
             "for a single micrograph).", rich_help_panel="Inputs")] = None,
    coords_format: Annotated[str, typer.Option(
        help=COORDS_FORMAT_HELP, rich_help_panel="Inputs")] = "auto",
    pixel_size: Annotated[float | None, typer.Option(
        help="Micrograph pixel size in A (required for a glob; overrides the STAR).",
        rich_help_panel="Inputs")] = None,
    coords_pixel_size: Annotated[float | None, typer.Option(
        help="Pixel size in A the picks were made at (binned picking); rescaled to the "
             "micrographs'.", rich_help_panel="Picks")] = None,
    swap_xy: Annotated[bool, typer.Option(
        "--swap-xy", help="Swap x and y of the picks.", rich_help_panel="Picks")] = False,
    flip_x: Annotated[bool, typer.Option(
        "--flip-x", help="Mirror picks in x (x -> nx-1-x).", rich_help_panel="Picks")] = False,
    flip_y: Annotated[bool, typer.Option(
        "--flip-y", help="Mirror picks in y (y -> ny-1-y).", rich_help_panel="Picks")] = False,
    recenter: Annotated[bool | None, typer.Option(
        "--recenter/--no-recenter",
        help="Move each pick by its refined origin (rlnOriginX/YAngst) before boxing "
             "\\[default: on when the picks carry origins].", rich_help_panel="Picks")] = None,
    recenter_xyz: Annotated[list[Any] | None, typer.Option(  # nargs=3: ExtractCommand
        metavar="X Y Z",
        help="Re-centre on this 3D point of the reference (X Y Z in A from its centre), "
             "projected with each particle's pose; repeat for several sub-particles.",
        rich_help_panel="Picks")] = None,
    symmetry_expand: SymmetryOption = None, subparticles: VectorsFileOption = None,
    align_subparticles: AlignOption = False, subparticle_min_distance: MinDistanceOption = None,
    helical_twist_deg: TwistOption = None, helical_expand_asu: ExpandAsuOption = 1,
    box: Annotated[int, typer.Option(
        help="Extraction box, micrograph pixels (even).", rich_help_panel="Box and binning")],
    bin_to: Annotated[int | None, typer.Option(
        help="Fourier-crop to this box (px).", rich_help_panel="Box and binning")] = None,
    bin_factor: Annotated[float | None, typer.Option(
        help="Fourier-crop by this factor (nearest even box).",
        rich_help_panel="Box and binning")] = None,
    pixel_size_out: Annotated[float | None, typer.Option(
        help="Fourier-crop to about this pixel size in A (nearest even box; exact size "
             "reported).", rich_help_panel="Box and binning")] = None,
    also_bin_to: Annotated[list[int] | None, typer.Option(
        help="Also write a Fourier-cropped stack of this box from the same read, in "
             "OUT/also_<box>px/ with its own STAR (repeatable).",
        rich_help_panel="Box and binning")] = None,
    norm: Annotated[NormMode, typer.Option(
        help="ramp: background plane + mean/std (RELION); mean: no ramp; whole: whole box; "
             "none.", rich_help_panel="Normalisation")] = NormMode.RAMP,
    bg_radius: Annotated[float | None, typer.Option(
        help="Background radius in output pixels \\[default: 0.375 x output box].",
        rich_help_panel="Normalisation")] = None,
    invert: Annotated[bool, typer.Option(
        help="Invert contrast after normalisation (white particles).",
        rich_help_panel="Normalisation")] = True,
    white_dust: Annotated[float | None, typer.Option(
        help="Replace pixels above mean + SIGMA*std by noise.",
        rich_help_panel="Normalisation")] = None,
    black_dust: Annotated[float | None, typer.Option(
        help="Replace pixels below mean - SIGMA*std by noise.",
        rich_help_panel="Normalisation")] = None,
    seed: Annotated[int, typer.Option(
        help="Seed for dust and noise fill.", rich_help_panel="Normalisation")] = 0,
    ctf_dir: Annotated[Path | None, typer.Option(
        help="CTFFIND4 job directory: each micrograph's <name>.txt gives its CTF.",
        rich_help_panel="CTF")] = None,
    ctf_correct: Annotated[CtfCorrection, typer.Option(
        help="Phase-flip or premultiply each particle by its CTF (from the STAR), in a "
             "padded box windowed back to --box.", rich_help_panel="CTF")] = CtfCorrection.NONE,
    ctf_box: Annotated[int | None, typer.Option(
        help="Padded box for CTF correction (micrograph px) \\[default: box + the defocus "
             "delocalisation at the output Nyquist].", rich_help_panel="CTF")] = None,
    ctf_on: Annotated[str, typer.Option(
        help="box (each particle, default) or micrograph (flip the whole micrograph "
             "first, as Xmipp).", rich_help_panel="CTF")] = "box",
    particle_diameter: Annotated[float | None, typer.Option(
        help="Particle diameter in A, for the box-size check against the defocus.",
        rich_help_panel="CTF")] = None,
    edge: Annotated[EdgeMode, typer.Option(
        help="Boxes leaving the micrograph: drop them, or keep them and fill outside pixels.",
        rich_help_panel="Edges and sub-pixel")
    ] = EdgeMode.DROP,
    subpixel: Annotated[SubpixelMode, typer.Option(
        help="Fraction of a pick: origin (record it in rlnOriginX/YAngst), shift (Fourier-"
             "shift onto the centre), drop (lose it, as RELION).",
        rich_help_panel="Edges and sub-pixel")] = SubpixelMode.ORIGIN,
    min_distance_angstrom: Annotated[float | None, typer.Option(
        help="Of picks closer than this, keep the best by --score-column. With "
             "sub-particles: between the sub-particles of one particle.",
        rich_help_panel="Selection")] = None,
    min_score: Annotated[float | None, typer.Option(
        help="Drop picks scoring below this in --score-column.",
        rich_help_panel="Selection")] = None,
    max_per_micrograph: Annotated[int | None, typer.Option(
        help="Keep at most this many picks per micrograph (the best scoring).",
        rich_help_panel="Selection")] = None,
    score_column: Annotated[str, typer.Option(
        help="Pick score used by the selection options.",
        rich_help_panel="Selection")] = "rlnAutopickFigureOfMerit",
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Output directory.", rich_help_panel="Outputs")],
    float16: Annotated[bool, typer.Option(
        "--float16",
        help="Write MRC mode 12 (float16) stacks.", rich_help_panel="Outputs")] = False,
    also_float16: Annotated[bool, typer.Option(
        "--also-float16",
        help="Write the --also-bin-to stacks as float16.", rich_help_panel="Outputs")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing output.", rich_help_panel="Outputs")] = False,
    write_cs: Annotated[bool, typer.Option(
        "--write-cs", help="Also write a cryoSPARC particles.cs beside each STAR.",
        rich_help_panel="Outputs")] = False,
    descriptors: Annotated[bool, typer.Option(
        help="Per-particle quality columns (ceScoreByVar, ceGiniPatch, ...; README).",
        rich_help_panel="Outputs")] = True,
    patch: Annotated[int | None, typer.Option(
        help="Patch for the local-variance descriptors, px \\[default: 1.5 x box].",
        rich_help_panel="Outputs")] = None,
    report: Annotated[bool, typer.Option(
        help="Write the visual QC report OUT/report/index.html at the end.",
        rich_help_panel="Outputs")] = True,
    paths: Annotated[PathStyle, typer.Option(
        "--paths", metavar="STYLE", help=PATHS_HELP, rich_help_panel="Outputs")] = PathStyle.CWD,
    workers: Annotated[int | None, typer.Option(
        help="Processes \\[default: all cores].", rich_help_panel="Execution")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume",
        help="Continue an interrupted run of the same job: finished micrographs are kept, "
             "the rest redone.", rich_help_panel="Execution")] = False,
    dask_scheduler: Annotated[str | None, typer.Option(
        help="Run on a Dask cluster (tcp://HOST:PORT); needs cryoextract\\[dask].",
        rich_help_panel="Execution")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet",
        help="No progress bar and no summary table.", rich_help_panel="Execution")] = False,
    progress_log: Annotated[Path | None, typer.Option(
        help="Append one JSON line per finished micrograph to this file.",
        rich_help_panel="Execution")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch",
        help="Live mode: follow a growing micrographs STAR or glob; extract each micrograph "
             "once its files have settled; stop on Ctrl-C/SIGTERM or --watch-timeout.",
        rich_help_panel="Execution")
    ] = False,
    watch_timeout: Annotated[float | None, typer.Option(
        help="With --watch: stop after this many seconds without a new micrograph.",
        rich_help_panel="Execution")] = None,
    settle: Annotated[float, typer.Option(
        help="With --watch: seconds a micrograph and its picks must stay unchanged.",
        rich_help_panel="Execution")] = 10.0,
    helix: HelixOption = False, helical_tubes: TubesOption = False,
    helical_nr_asu: NrAsuOption = 1, helical_rise_angstrom: RiseOption = None,
    helical_outer_diameter_angstrom: DiameterOption = None,
    helical_bimodal_psi: BimodalOption = False,
) -> None:
    """Cut particles out of micrographs at picked coordinates into stacks + a RELION STAR."""
    from cryoextract.cli.progress import JobProgress
    from cryoextract.pipeline.extraction.params import (
        ExtractParams,
        PickTransform,
        check_one_binning,
        resolve_output_box,
    )

    try:
        from cryoextract.pipeline.extraction.subparticles import subparticle_options

        subparticle_spec, recenter_point = subparticle_options(
            symmetry_expand, recenter_xyz, _opt(subparticles), align_subparticles,
            subparticle_min_distance, helical_twist_deg=helical_twist_deg,
            helical_rise_angstrom=helical_rise_angstrom, helical_asu=helical_expand_asu)
        if subparticle_spec is not None and subparticle_min_distance is None \
                and min_distance_angstrom is not None:
            # with sub-particles, the distance is between those of one particle
            subparticle_spec = dataclasses.replace(
                subparticle_spec, min_distance_angstrom=min_distance_angstrom)
            min_distance_angstrom = None
        if helical_twist_deg is not None and not helix:
            helical_rise_angstrom = None  # the expansion's, not segments' (needs --helix)
        check_one_binning(bin_to, bin_factor, pixel_size_out)
        # --pixel-size-out: the job works the box out per optics group (plan.py)
        out_box = resolve_output_box(box, bin_to_px=bin_to, bin_factor=bin_factor)
        params = ExtractParams(
            box_px=box, out_box_px=out_box, pixel_size_out_angstrom=pixel_size_out,
            norm=norm, bg_radius_px=bg_radius, invert=invert,
            white_dust_sigma=white_dust, black_dust_sigma=black_dust, edge=edge,
            subpixel=subpixel, float16=float16, seed=seed,
            also_out_box_px=tuple(also_bin_to or ()), also_float16=also_float16,
            picks=PickTransform(coords_pixel_size, swap_xy, flip_x, flip_y),
            recenter=recenter, recenter_xyz_angstrom=recenter_point,
            subparticles=subparticle_spec,
            ctf_correct=ctf_correct, ctf_box_px=ctf_box,
            ctf_on_micrograph=_ctf_on_micrograph(ctf_on),
            particle_diameter_angstrom=particle_diameter,
            descriptors=descriptors, patch_px=patch,
            min_distance_angstrom=min_distance_angstrom, min_score=min_score,
            max_per_micrograph=max_per_micrograph, score_column=score_column,
            helix=helix_params(helix, helical_tubes, helical_nr_asu, helical_rise_angstrom,
                               helical_outer_diameter_angstrom, helical_bimodal_psi),
        )
        # the extraction pipeline is imported only by the command that runs it
        from cryoextract.pipeline.extraction.extract import (
            REPORT_FAILED,
            ExtractInputs,
            RunOptions,
            extract,
        )
        from cryoextract.pipeline.extraction.watch import WatchOptions

        with JobProgress(quiet=quiet, log_path=progress_log) as progress:
            if watch:
                summary = _watch(
                    ExtractInputs(micrographs, _opt(coords_dir), coords_suffix, _opt(coords),
                                  coords_format, pixel_size, _opt(ctf_dir)),
                    out_dir, params,
                    RunOptions(workers, dask_scheduler, overwrite, False, write_cs,
                               path_style=paths),
                    WatchOptions(settle_s=settle, idle_timeout_s=watch_timeout), progress)
            else:
                summary = extract(
                    micrographs, out_dir, params, coords_dir=coords_dir,
                    coords_suffix=coords_suffix, coords=coords, coords_format=coords_format,
                    pixel_size_angstrom=pixel_size,
                    ctf_dir=ctf_dir, workers=workers, dask_scheduler=dask_scheduler,
                    overwrite=overwrite, resume=resume, write_cs=write_cs, report=report,
                    path_style=paths,
                    on_start=progress.on_start, on_progress=progress.on_progress,
                )
    except CryoExtractError as exc:
        fail(str(exc))
        return
    except OSError as exc:  # e.g. the progress log cannot be written
        fail(os_error_message(exc))
        return
    if quiet:
        for warning in summary.warnings:
            warn(warning)
    else:
        print_summary(summary)
    if report and watch:
        _write_report(out_dir, micrographs, quiet)
    elif report and not quiet and not any(
            w.startswith(REPORT_FAILED) for w in summary.warnings):
        out.print(f"QC report: {escape(str(out_dir / 'report' / 'index.html'))}")


def _write_report(out_dir: Path, micrographs: str, quiet: bool) -> None:
    """The QC report after ``--watch``; a failure here never fails the extraction."""
    from cryoextract.pipeline.extraction.extract import write_job_report

    failed = write_job_report(out_dir, micrographs)
    if failed:
        warn(failed)
    elif not quiet:
        out.print(f"QC report: {escape(str(out_dir / 'report' / 'index.html'))}")


def _opt(value: Path | None) -> str | None:
    return None if value is None else str(value)


def _watch(inputs: ExtractInputs, out_dir: Path, params: ExtractParams, options: RunOptions,
           watch: WatchOptions, progress: JobProgress) -> ExtractionSummary:
    """Live mode until a signal or the idle timeout; Ctrl-C ends it cleanly."""
    from cryoextract.pipeline.extraction.watch import watch_extraction

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        progress.on_start(0)
        return watch_extraction(inputs, out_dir, params, options, watch, stop=stop,
                                on_progress=progress.on_progress)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ctf_on_micrograph(value: str) -> bool:
    if value not in ("box", "micrograph"):
        raise ParameterError(f"--ctf-on must be box or micrograph, got {value!r}")
    return value == "micrograph"


def print_summary(summary: ExtractionSummary) -> None:
    """The run summary as tables on stdout, warnings on stderr."""
    for warning in summary.warnings:
        warn(warning)
    table = Table(title="cryoextract extract", show_header=False)
    table.add_row("micrographs done", str(summary.micrographs_done))
    if summary.micrographs_resumed:
        table.add_row("  of which kept from the interrupted run",
                      str(summary.micrographs_resumed))
    table.add_row("micrographs skipped", str(len(summary.micrographs_skipped)))
    table.add_row("particles kept", str(summary.particles_kept))
    for reason, count in summary.particles_dropped.items():
        table.add_row(f"particles dropped: {reason}", str(count))
    table.add_row("box", f"{summary.box_px} px -> {summary.output_box_px} px")
    for group, size in summary.output_pixel_size_angstrom.items():
        table.add_row(f"pixel size ({group})", f"{size:.6g} A")
    table.add_row("particles STAR", escape(summary.particles_star))
    for extra in summary.additional_outputs:
        table.add_row("also written", escape(extra))
    out.print(table)
    if summary.micrographs_skipped:
        skipped = Table(title="skipped micrographs", show_header=True)
        skipped.add_column("micrograph")
        skipped.add_column("reason")
        for name, reason in summary.micrographs_skipped.items():
            skipped.add_row(escape(name), escape(reason))
        out.print(skipped)
