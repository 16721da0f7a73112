"""Particle subtraction: remove the projection of a masked map from every particle image.

:func:`subtract_particles` reads a particles STAR (RELION 3.0 or 3.1+) or cryoSPARC ``.cs``
with poses, offsets, CTF and half-sets, and writes ``OUT/Particles/subtracted_XXXXXX.mrcs``,
``OUT/particles.star`` (and ``OUT/particles.cs`` on request), ``OUT/summary.json`` and
``OUT/rejected_particles.tsv``. :func:`~cryoextract.pipeline.stacks.revert.revert_subtraction`
gives the original particles back, origins included. Conventions: docs/conventions.md,
"Particle subtraction".

The parts: the maps (:mod:`.subtract_maps`), the particles and their CTFs and optics
(:mod:`.subtract_inputs`), one pass per half-set (:mod:`.subtract_passes`) of tasks run
by worker processes (:mod:`.subtract_tasks`); the output folder, lock and the files every
job writes are the particle-stack frame's (:mod:`.common`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.cryosparc import write_cs
from cryoextract.io.paths import PathStyle
from cryoextract.io.star import write_star
from cryoextract.ops.projection import DEFAULT_PADDING_FACTOR
from cryoextract.ops.recenter import recentre
from cryoextract.ops.subtract import MaskReport, suggested_edge_px
from cryoextract.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SCALE_BAND,
    MaskMode,
    OutputFormat,
    ScaleMode,
)
from cryoextract.pipeline.frame import JobPaths
from cryoextract.pipeline.stacks.common import (
    JsonSummary,
    claim_stack_output,
    move_coordinates,
    named_for_star,
    output_optics,
    write_job_files,
)
from cryoextract.pipeline.stacks.subtract_inputs import (
    ORIGINAL_COLUMNS,
    PRIOR_COLUMNS,
    SCALE_COLUMN,
    SubtractJob,
    describe_aberrations,
    prepare_subtraction,
)
from cryoextract.pipeline.stacks.subtract_maps import load_maps, load_mask, recenter_point
from cryoextract.pipeline.stacks.subtract_params import SubtractInputs, SubtractParams, SubtractRun
from cryoextract.pipeline.stacks.subtract_passes import PassesResult, PassSettings, run_passes

__all__ = ["SubtractSummary", "run_subtraction", "subtract_particles"]


ProgressCallback = Callable[[int], None]


@dataclass
class SubtractSummary(JsonSummary):
    """What a subtraction did; also written to ``OUT/summary.json``.

    ``scale`` holds statistics of the fitted per-particle scale factors (``count``,
    ``mean``, ``std``, ``min``, ``p05``, ``median``, ``p95``, ``max``), overall under
    ``"all"`` and per half-set under ``"half1"``/``"half2"``.
    """

    command: str
    out_dir: str
    particles_star: str
    particles_cs: str | None = None
    particles_in: int = 0
    particles_written: int = 0
    particles_skipped: dict[str, int] = field(default_factory=dict)
    maps: list[str] = field(default_factory=list)
    half_maps: bool = False
    mask: str | None = None
    mask_mode: str = MaskMode.SUBTRACT.value
    mask_edge_width_px: float | None = None
    mask_suggested_edge_px: float | None = None
    scale_mode: str = ScaleMode.PER_PARTICLE.value
    scale: dict[str, dict[str, float]] = field(default_factory=dict)
    box_px: list[int] = field(default_factory=list)
    pixel_size_angstrom: float = 0.0
    padding_factor: float = DEFAULT_PADDING_FACTOR
    scale_band: float = DEFAULT_SCALE_BAND
    fourier_volume_bytes: int = 0
    recenter_xyz_px: list[float] | None = None
    recentered: int = 0
    float16: bool = False
    aberrations: dict[str, list[str]] = field(default_factory=dict)
    stacks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def subtract_particles(
    particles: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    map_path: str | os.PathLike[str] | None = None,
    half_maps: Sequence[str | os.PathLike[str]] | None = None,
    mask: str | os.PathLike[str] | None = None,
    mask_mode: MaskMode | str = MaskMode.SUBTRACT,
    scale: ScaleMode | str = ScaleMode.PER_PARTICLE,
    recenter_on_mask: bool = False,
    recenter_xyz: Sequence[float] | None = None,
    new_box: int | None = None,
    float16: bool = False,
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    padding_factor: float = DEFAULT_PADDING_FACTOR,
    scale_band: float = DEFAULT_SCALE_BAND,
    map_resolution_angstrom: float | None = None,
    output_format: OutputFormat | str = OutputFormat.AUTO,
    overwrite: bool = False,
    base_dir: str | os.PathLike[str] | None = None,
    path_style: PathStyle | str = PathStyle.CWD,
    on_start: ProgressCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> SubtractSummary:
    """Subtract the projection of (part of) a map from every particle image.

    Parameters
    ----------
    particles : path-like
        Particles STAR (RELION 3.0 or 3.1+) with ``rlnAngleRot/Tilt/Psi``, origins, CTF
        (and ``rlnRandomSubset`` with half-maps), or a cryoSPARC ``.cs`` with
        ``alignments3D``.
    out_dir : path-like
        Gets ``Particles/subtracted_XXXXXX.mrcs``, ``particles.star`` (+ ``particles.cs``),
        ``summary.json``, ``rejected_particles.tsv``; refused if not empty unless
        ``overwrite``.
    map_path : path-like, optional
        One map for every particle (the gold-standard separation is then not kept; the
        summary says so).
    half_maps : pair of path-like, optional
        Half-maps 1 and 2: each particle is subtracted with the map of its own half-set
        (``rlnRandomSubset``), never the other. Give exactly one of ``map_path`` and this.
    mask : path-like, optional
        Soft mask in [0, 1] of the map's size. Without one the whole map is removed.
    mask_mode : MaskMode or str
        ``subtract``: remove the density inside the mask (cryoSPARC); ``keep``: remove
        the density outside it (RELION's ``--mask``).
    scale : ScaleMode or str
        ``per-particle``: least-squares scale of the whole map's CTF-modulated projection
        to each image, applied to the projection removed; ``none``: scale 1.
    recenter_on_mask : bool
        Centre each output image on the projection of the mask's centre of mass.
    recenter_xyz : three floats, optional
        ... or of this point, 0-based voxel indices ``(x, y, z)`` of the map (RELION's
        ``--center_x`` is ``x - N/2``).
    new_box : int, optional
        Crop the output to this even side (after recentring).
    float16 : bool
        Write MRC mode 12.
    workers : int, optional
        Worker processes (default: all cores; 1 runs everything in this process).
    batch_size : int
        Images per output stack.
    padding_factor : float
        Oversampling of the 3D Fourier transform (RELION's default 2).
    scale_band : float
        The per-particle scale is fitted over frequencies up to this fraction of Nyquist
        (default 0.5: where a map's signal and the images' SNR are; the whole map is then
        projected only there, which makes the fit cheap).
    map_resolution_angstrom : float, optional
        The map's resolution: the mask's soft edge is checked against cryoSPARC's
        suggested ``5 · resolution / apix``.
    output_format : OutputFormat or str
        ``cs`` also writes ``particles.cs``; ``auto`` does so for ``.cs`` input.
    overwrite : bool
        Replace a previous output in ``out_dir``.
    base_dir : path-like, optional
        Where relative image names are looked up first (default: the working directory,
        then the particles file's directory).
    path_style : PathStyle or str
        How ``particles.star`` names the new and the original images: relative to the
        working directory (RELION's way) or to its own folder (docs/conventions.md,
        "Paths"); ``particles.cs`` names its stacks relative to its folder.
    on_start, on_progress : callable, optional
        Called with the number of images to write / written so far.

    Returns
    -------
    SubtractSummary
    """
    params = SubtractParams(
        mask_mode=mask_mode, scale=scale, recenter_on_mask=recenter_on_mask,
        recenter_xyz=recenter_xyz,
        new_box=new_box, float16=float16, batch_size=batch_size,
        padding_factor=padding_factor, scale_band=scale_band,
        map_resolution_angstrom=map_resolution_angstrom, output_format=output_format)
    inputs = SubtractInputs.of(particles, map_path=map_path, half_maps=half_maps, mask=mask,
                               base_dir=base_dir)
    run = SubtractRun(workers=workers, overwrite=overwrite, path_style=path_style)
    return run_subtraction(inputs, out_dir, params, run, on_start=on_start,
                           on_progress=on_progress)


def run_subtraction(
    inputs: SubtractInputs, out_dir: str | os.PathLike[str], params: SubtractParams,
    run: SubtractRun | None = None, *, on_start: ProgressCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> SubtractSummary:
    """:func:`subtract_particles` with its inputs, parameters and run options as records."""
    run = run or SubtractRun()
    maps = load_maps(inputs.map_path, inputs.half_maps)
    mask_volume, mask_report = load_mask(inputs.mask, maps.box_px)
    point = recenter_point(params.recenter_on_mask, params.recenter_xyz, mask_volume)
    out_box = maps.box_px if params.new_box is None else int(params.new_box)
    if out_box > maps.box_px:
        raise ParameterError(f"new box {out_box} px is larger than the particles' {maps.box_px}")
    job = prepare_subtraction(inputs.particles, maps, inputs.base_dir)
    summary = _summary(job, inputs, params, out_dir, out_box)
    _mask_warnings(summary, job, mask_report, params)
    good = np.flatnonzero(job.good)
    if not len(good):  # nothing is written: no STAR that a later step would trust
        raise InputError(job.images.nothing_usable("no particles in the input"),
                         job.table.source)
    shifts, table = _recentered_table(job, point, summary)
    paths = JobPaths(Path(out_dir))
    settings = PassSettings(params, mask_volume, out_box, run.worker_count())
    write_cs_file = params.output_format is OutputFormat.CS or (
        params.output_format is OutputFormat.AUTO and inputs.particles.lower().endswith(".cs"))
    with claim_stack_output(paths, run.overwrite, job.images, inputs.maps):
        if on_start is not None:
            on_start(len(good))
        done = run_passes(job, good, shifts, paths, settings, on_progress)
        _write_outputs(job, table, good, done, paths, summary, params.scale, write_cs_file,
                       run.path_style)
    return summary


def _summary(job: SubtractJob, inputs: SubtractInputs, params: SubtractParams,
             out_dir: str | os.PathLike[str], out_box: int) -> SubtractSummary:
    """The summary's inputs and parameters, and the warnings they call for."""
    maps = job.maps
    summary = SubtractSummary(
        command="subtract", out_dir=str(out_dir), particles_star="", maps=maps.paths,
        half_maps=inputs.half_maps is not None, mask=inputs.mask,
        mask_mode=params.mask_mode.value, scale_mode=params.scale.value,
        box_px=[maps.box_px, out_box], padding_factor=params.padding_factor,
        scale_band=params.scale_band, float16=bool(params.float16),
        particles_in=len(job.particles), pixel_size_angstrom=job.pixel_size_angstrom,
    )
    summary.aberrations = {f"optics group {g}": describe_aberrations(a)
                           for g, a in sorted(job.optics.aberrations.items())}
    for group in sorted(job.optics.mtf_ratios):
        summary.aberrations.setdefault(f"optics group {group}", []).append(
            "detector MTF relative to the average of the optics groups'")
    if not maps.pixel_size_angstrom > 0:
        job.warnings.append(f"the map header has no pixel size; assumed the particles' "
                            f"{job.pixel_size_angstrom:g} A")
    if inputs.half_maps is None:
        job.warnings.append("single map: every particle is subtracted with the same map, so "
                            "the half-sets are no longer independent (give --half-maps)")
    return summary


def _write_outputs(
    job: SubtractJob, table: pd.DataFrame, good: np.ndarray, done: PassesResult,
    paths: JobPaths, summary: SubtractSummary, scale_mode: ScaleMode, write_cs_file: bool,
    path_style: PathStyle,
) -> None:
    """particles.star (+ .cs), then rejected_particles.tsv and summary.json."""
    fitted = scale_mode is ScaleMode.PER_PARTICLE
    out_table = _output_table(table, job, good, done.names, done.scales, fitted)
    used = set(job.optics_group[good].tolist())
    optics = output_optics(job.table.optics, used, dict.fromkeys(used, summary.box_px[1]))
    write_star(paths.particles_star, {
        "optics": optics,
        "particles": named_for_star(out_table, job.images, good, paths, path_style)})
    summary.particles_star = str(paths.particles_star)
    if write_cs_file:
        write_cs(paths.out_dir / "particles.cs", optics, out_table)
        summary.particles_cs = str(paths.out_dir / "particles.cs")
    summary.stacks = done.stacks
    summary.fourier_volume_bytes = done.fourier_volume_bytes
    summary.particles_written = len(good)
    summary.particles_skipped = job.images.skipped()
    if fitted:
        summary.scale = _scale_statistics(done.scales, _reported_half_sets(job))
    summary.warnings = list(job.warnings)
    write_job_files(paths, job.images, summary)


def _mask_warnings(summary: SubtractSummary, job: SubtractJob, report: MaskReport | None,
                   params: SubtractParams) -> None:
    apix, resolution = job.pixel_size_angstrom, params.map_resolution_angstrom
    if report is None:
        job.warnings.append("no mask: the whole map is subtracted")
        return
    summary.mask_edge_width_px = round(report.edge_width_px, 3)
    if resolution is not None:
        summary.mask_suggested_edge_px = round(suggested_edge_px(resolution, apix), 3)
    wanted = summary.mask_suggested_edge_px
    if report.hard or (wanted is not None and report.edge_width_px < wanted):
        advice = (f"at least {wanted:.1f} px (5 x {resolution:g} A / {apix:g} A)" if wanted
                  else "5 x resolution / pixel size voxels (give --map-resolution to check)")
        job.warnings.append(
            f"the mask has a hard edge (soft edge about {report.edge_width_px:.1f} px): "
            f"subtraction leaves artefacts at it; use a soft edge of {advice}")
    if params.recenter_on_mask and params.mask_mode is MaskMode.SUBTRACT:
        job.warnings.append("--recenter-on-mask with --mask-mode subtract centres the images "
                            "on the region removed; use --recenter-xyz to centre elsewhere")


def _recentered_table(
    job: SubtractJob, point: np.ndarray | None, summary: SubtractSummary
) -> tuple[np.ndarray, pd.DataFrame]:
    """Per-row integer content shifts and the particles table with new origins/coordinates."""
    table = job.particles.copy()
    shifts = np.zeros((len(table), 2), dtype=np.int64)
    if point is None:
        return shifts, table
    summary.recenter_xyz_px = [round(float(v), 4) for v in point]
    centre = point - job.maps.box_px // 2
    apix = job.pixel_size_angstrom
    moves = recentre(job.origins_angstrom / apix, job.rotations, centre)
    shifts = moves.shifts_px
    table["rlnOriginXAngst"] = moves.residual_px[:, 0] * apix
    table["rlnOriginYAngst"] = moves.residual_px[:, 1] * apix
    table = table.drop(columns=[c for c in PRIOR_COLUMNS if c in table.columns])
    move_coordinates(table, job.table.optics, shifts, np.full(len(table), apix),
                     job.warnings, "recentring")
    summary.recentered = int(np.count_nonzero(moves.moved & job.good))
    return shifts, table


def _output_table(
    table: pd.DataFrame, job: SubtractJob, good: np.ndarray, names: np.ndarray, scales: np.ndarray,
    fitted: bool,
) -> pd.DataFrame:
    """Good rows in input order: new names, original names/origins/coordinates, scales."""
    out = table.iloc[good].reset_index(drop=True)
    original = job.particles.iloc[good].reset_index(drop=True)
    out["rlnImageOriginalName"] = original["rlnImageName"].astype(str).to_numpy()
    out["rlnImageName"] = list(names[good])
    for column, keep in ORIGINAL_COLUMNS.items():
        if column in original.columns:
            out[keep] = original[column].to_numpy(dtype=float)
        elif column.startswith("rlnOrigin"):
            out[keep] = 0.0
    if fitted:
        out[SCALE_COLUMN] = scales[good]
    return out


def _reported_half_sets(job: SubtractJob) -> np.ndarray:
    """Half-set per row for the summary: ``rlnRandomSubset`` even with a single map."""
    if "rlnRandomSubset" not in job.particles.columns:
        return job.subset
    values = pd.to_numeric(job.particles["rlnRandomSubset"], errors="coerce")
    return values.fillna(0).to_numpy(dtype=np.int64)


def _scale_statistics(scales: np.ndarray, subset: np.ndarray) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    groups = {"all": np.isfinite(scales)}
    for half in (1, 2):
        chosen = np.isfinite(scales) & (subset == half)
        if chosen.any():
            groups[f"half{half}"] = chosen
    for name, chosen in groups.items():
        values = scales[chosen]
        if not len(values):
            continue
        p05, median, p95 = np.percentile(values, [5, 50, 95])
        stats[name] = {
            "count": len(values), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "p05": float(p05), "median": float(median),
            "p95": float(p95), "max": float(values.max()),
        }
    return stats
