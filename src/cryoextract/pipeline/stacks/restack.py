"""Operate on existing particle stacks: restack (consolidate, select) and downsample.

Both jobs read a particles STAR (RELION 3.0 or 3.1+), read every referenced image once
through memory maps in bounded batches, and write ``OUT/Particles/batch_XXXXXX.mrcs``
stacks of at most ``batch_size`` images plus ``OUT/particles.star``,
``OUT/summary.json`` and ``OUT/rejected_particles.tsv``. Conventions:
docs/conventions.md, "Restack and downsample".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.images import format_image_name, read_images
from cryoextract.io.mrc import StackWriter
from cryoextract.io.paths import PathStyle
from cryoextract.io.star import write_star
from cryoextract.ops.boxsize import check_box_size
from cryoextract.ops.fourier import fourier_crop_2d
from cryoextract.options import DEFAULT_BATCH_SIZE
from cryoextract.pipeline.frame import JobPaths
from cryoextract.pipeline.stacks.common import (
    JsonSummary,
    check_batch_size,
    claim_stack_output,
    named_for_star,
    output_optics,
    resolved_workers,
    write_job_files,
)
from cryoextract.pipeline.stacks.restack_inputs import (
    OutputSpec,
    StackJob,
    downsample_spec,
    prepare_stack_job,
    sync_pixel_offsets,
)
from cryoextract.pipeline.stacks.restack_inputs import (
    recenter as recenter_particles,
)

ProgressCallback = Callable[[int], None]
#: per batch: (images (k, h, w), job rows (k,), output shape) -> output images
Transform = Callable[[np.ndarray, np.ndarray, tuple[int, int]], np.ndarray]


@dataclass
class StackJobSummary(JsonSummary):
    """What a restack or downsample job did; also written to ``OUT/summary.json``.

    ``box_px`` and ``pixel_size_angstrom`` map each optics group name to its
    ``[input, output]`` image side (pixels) and pixel size (Å, exact).
    """

    command: str
    out_dir: str
    particles_star: str
    particles_in: int = 0
    particles_selected: int = 0
    particles_written: int = 0
    particles_skipped: dict[str, int] = field(default_factory=dict)
    stacks: list[str] = field(default_factory=list)
    float16: bool = False
    box_px: dict[str, list[int]] = field(default_factory=dict)
    pixel_size_angstrom: dict[str, list[float | None]] = field(default_factory=dict)
    recentered: int = 0
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- jobs
def restack(
    particles_star: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    select: str | os.PathLike[str] | None = None,
    indices: str | os.PathLike[str] | None = None,
    float16: bool | None = None,
    overwrite: bool = False,
    base_dir: str | os.PathLike[str] | None = None,
    path_style: PathStyle | str = PathStyle.CWD,
    on_start: ProgressCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> StackJobSummary:
    """Copy particles into consolidated stacks of ``batch_size`` images, pixels unchanged.

    Parameters
    ----------
    particles_star : path-like
        Particles STAR (RELION 3.0 or 3.1+) or cryoSPARC ``.cs``; images may live in any
        number of float16 or float32 stacks.
    out_dir : path-like
        Gets ``Particles/batch_XXXXXX.mrcs``, ``particles.star``, ``summary.json`` and
        ``rejected_particles.tsv``; refused if not empty unless ``overwrite``.
    batch_size : int
        Images per output stack (the last one, and a stack before a change of image
        size, hold fewer).
    select, indices : path-like, optional
        Keep only some particles (see :func:`cryoextract.io.particles.select_rows`).
    float16 : bool, optional
        Output MRC mode 12 (True) or 2 (False); ``None`` keeps float16 when every input
        image is float16, else float32. float16 to float16 and anything to float32 are
        bit-exact copies.
    overwrite : bool
        Replace a previous output in ``out_dir`` (never the input stacks).
    base_dir : path-like, optional
        Where relative image names are looked up first (default: the working directory,
        then the STAR's directory).
    path_style : PathStyle or str
        How the output STAR names stacks, new (``rlnImageName``) and original
        (``rlnImageOriginalName``): ``relative-to-cwd`` (RELION's way) or
        ``relative-to-star`` (docs/conventions.md, "Paths").
    on_start, on_progress : callable, optional
        Called with the number of images to write / written so far.

    Returns
    -------
    StackJobSummary
        Particles whose image cannot be read (missing stack, index out of range,
        unreadable stack, wrong size) are skipped and counted, never written.
    """
    check_batch_size(batch_size)
    job = prepare_stack_job("restack", particles_star, select, indices, base_dir)
    out = OutputSpec(
        shape_yx=dict(job.shape_yx), pixel_size_angstrom=dict(job.pixel_size_angstrom),
        float16=float16, batch_size=batch_size, path_style=PathStyle(path_style),
    )
    return _run(job, out, _copy, JobPaths(Path(out_dir)), overwrite, on_start, on_progress)


def downsample(
    particles_star: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    box_px: int | None = None,
    pixel_size_angstrom: float | None = None,
    recenter: bool = False,
    float16: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    select: str | os.PathLike[str] | None = None,
    indices: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    path_style: PathStyle | str = PathStyle.CWD,
    on_start: ProgressCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> StackJobSummary:
    """Fourier-crop existing particles to a smaller box or a larger pixel size.

    Parameters
    ----------
    particles_star, out_dir, float16, batch_size, select, indices, overwrite, base_dir,
    path_style, on_start, on_progress
        As :func:`restack`.
    box_px : int, optional
        Output side in pixels (even, at most the input side).
    pixel_size_angstrom : float, optional
        Target pixel size in Å: each optics group gets the nearest even box
        ``2 * round(n * apix / target / 2)``; the exact size ``apix * n / m`` is written
        to the STAR and reported. Give exactly one of ``box_px`` and this.
    recenter : bool
        Move each image by the integer part of its offset before cropping: a circular
        shift by ``s = round(rlnOriginXAngst / apix)`` input pixels (half away from zero),
        the residual stays in ``rlnOriginX/YAngst`` and ``rlnCoordinateX/Y`` move by
        ``s * apix / micrograph_apix`` so the particle's micrograph position is kept.
    workers : int, optional
        FFT threads (default: all cores).

    Returns
    -------
    StackJobSummary
    """
    if (box_px is None) == (pixel_size_angstrom is None):
        raise ParameterError("give exactly one of --box and --pixel-size-out")
    if box_px is not None:
        check_box_size(box_px, "output box")
    elif not 0 < pixel_size_angstrom < np.inf:
        raise ParameterError(f"output pixel size must be > 0 and finite, got "
                             f"{pixel_size_angstrom}")
    check_batch_size(batch_size)
    threads = resolved_workers(workers)
    job = prepare_stack_job("downsample", particles_star, select, indices, base_dir)
    out = downsample_spec(job, box_px, pixel_size_angstrom, float16, batch_size,
                          PathStyle(path_style))
    shifts = np.zeros((len(job.particles), 2), dtype=np.int64)
    if recenter:
        shifts = recenter_particles(job)
    sync_pixel_offsets(job, out)

    def crop(images: np.ndarray, rows: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
        return _shift_and_crop(images, shifts[rows], shape_yx[0], threads)

    return _run(job, out, crop, JobPaths(Path(out_dir)), overwrite, on_start, on_progress)


def _shift_and_crop(
    images: np.ndarray, shifts: np.ndarray, out_px: int, workers: int
) -> np.ndarray:
    """Circularly shift each ``(h, w)`` image by its integer ``(dx, dy)``, then crop."""
    if np.any(shifts):
        images = np.array(images, dtype=np.float32)
        for k, (dx, dy) in enumerate(shifts):
            if dx or dy:
                images[k] = np.roll(images[k], (int(dy), int(dx)), axis=(0, 1))
    return fourier_crop_2d(images, out_px, workers=workers)


def _copy(images: np.ndarray, rows: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    return images


# --------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class _Stack:
    """One output stack: the job rows it holds, in order, and their image side."""

    rows: np.ndarray
    shape_yx: tuple[int, int]
    pixel_size_angstrom: float


def _run(
    job: StackJob, out: OutputSpec, transform: Transform, paths: JobPaths, overwrite: bool,
    on_start: ProgressCallback | None, on_progress: ProgressCallback | None,
) -> StackJobSummary:
    good = np.flatnonzero(job.images.good)
    if not len(good):  # nothing is written: no STAR that a later step would trust
        raise InputError(job.images.nothing_usable(), job.images.table.source)
    float16 = out.float16
    if float16 is None:
        float16 = all(job.images.locations.dtype_of(int(r)) == np.float16 for r in good)
    stacks = _plan_stacks(job, good, out)
    with claim_stack_output(paths, overwrite, job.images):
        if on_start is not None:
            on_start(len(good))
        names = np.empty(len(job.particles), dtype=object)
        done = 0
        for number, stack in enumerate(stacks):
            relative = f"{paths.particles_dir.name}/batch_{number:06d}.mrcs"
            _write_stack(job, stack, paths.out_dir / relative, float16, transform)
            names[stack.rows] = [format_image_name(i, relative) for i in range(len(stack.rows))]
            done += len(stack.rows)
            if on_progress is not None:
                on_progress(done)
        particles = _output_particles(job.particles, good, names[good])
        used = set(job.images.groups[good].tolist())
        optics = output_optics(job.images.table.optics, used,
                               {g: out.shape_yx[g][1] for g in used}, out.pixel_size_angstrom)
        write_star(paths.particles_star, {
            "optics": optics,
            "particles": named_for_star(
                particles, job.images, good, paths, out.path_style,
                originals="rlnImageOriginalName" not in job.particles.columns),
        })
        summary = _summary(job, out, paths, good, float16, len(stacks))
        write_job_files(paths, job.images, summary)
    return summary


def _plan_stacks(job: StackJob, good: np.ndarray, out: OutputSpec) -> list[_Stack]:
    """Runs of ``batch_size`` rows in table order; a new stack when the shape changes."""
    groups = job.images.groups
    shapes = [out.shape_yx[int(g)] for g in groups[good]]
    stacks: list[_Stack] = []
    start = 0
    while start < len(good):
        stop = start + 1
        while (stop < len(good) and stop - start < out.batch_size
               and shapes[stop] == shapes[start]):
            stop += 1
        apix = out.pixel_size_angstrom.get(int(groups[good[start]]))
        stacks.append(_Stack(good[start:stop], shapes[start], apix or 0.0))
        start = stop
    return stacks


def _write_stack(
    job: StackJob, stack: _Stack, path: Path, float16: bool, transform: Transform,
) -> None:
    with StackWriter(path, len(stack.rows), stack.shape_yx, stack.pixel_size_angstrom,
                     float16=float16) as writer:
        for rows, images in read_images(job.particles, locations=job.images.locations,
                                        rows=stack.rows):
            writer.write(transform(images, rows, stack.shape_yx))


def _output_particles(particles: pd.DataFrame, good: np.ndarray, names: np.ndarray
                      ) -> pd.DataFrame:
    """Good rows with their new names (relative to OUT); the input's names kept as
    ``rlnImageOriginalName`` (replaced by where each image was found when written,
    :func:`named_for_star`) unless the input already carries that column."""
    table = particles.iloc[good].reset_index(drop=True)
    if "rlnImageOriginalName" not in table.columns:
        position = list(table.columns).index("rlnImageName") + 1
        table.insert(position, "rlnImageOriginalName", table["rlnImageName"])
    table["rlnImageName"] = list(names)
    return table


def _summary(
    job: StackJob, out: OutputSpec, paths: JobPaths, good: np.ndarray, float16: bool,
    n_stacks: int,
) -> StackJobSummary:
    table = job.images.table
    names = table.optics.set_index("rlnOpticsGroup")["rlnOpticsGroupName"]
    summary = StackJobSummary(
        command=job.command, out_dir=str(paths.out_dir),
        particles_star=str(paths.particles_star),
        particles_in=len(table.particles), particles_selected=len(job.particles),
        particles_written=len(good), particles_skipped=job.images.skipped(),
        stacks=[str(paths.particles_dir / f"batch_{k:06d}.mrcs") for k in range(n_stacks)],
        float16=bool(float16), recentered=job.recentered, warnings=list(job.warnings),
    )
    for group in sorted(set(job.images.groups[good].tolist())):
        name = str(names.get(group, f"opticsGroup{group}"))
        summary.box_px[name] = [job.shape_yx[group][1], out.shape_yx[group][1]]
        summary.pixel_size_angstrom[name] = [
            job.pixel_size_angstrom[group], out.pixel_size_angstrom[group]
        ]
    return summary
