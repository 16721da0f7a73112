"""Operate on existing particle stacks: restack (consolidate, select) and downsample.

Both jobs read a particles STAR (RELION 3.0 or 3.1+), read every referenced image once
through memory maps in bounded batches, and write ``OUT/Particles/batch_XXXXXX.mrcs``
stacks of at most ``batch_size`` images plus ``OUT/particles.star``,
``OUT/summary.json`` and ``OUT/rejected_particles.tsv``. Conventions:
docs/conventions.md, "Restack and downsample".
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.images import (
    ImageLocations,
    format_image_name,
    locate_images,
    read_images,
)
from cryoextract.io.mrc import StackWriter
from cryoextract.io.particles import (
    PIXEL_TO_ANGSTROM,
    ParticleTable,
    offsets_to_angstrom,
    read_particles,
    select_rows,
)
from cryoextract.io.paths import PathNamer, PathStyle, located_names, rebase_image_names
from cryoextract.io.star import write_star
from cryoextract.ops.fourier import fourier_crop_2d
from cryoextract.ops.recenter import recentre
from cryoextract.options import DEFAULT_BATCH_SIZE
from cryoextract.pipeline.params import JobPaths, check_box_size

WRONG_SIZE = "image size differs from its optics group"

ProgressCallback = Callable[[int], None]
#: per batch: (images (k, h, w), job rows (k,), output shape) -> output images
Transform = Callable[[np.ndarray, np.ndarray, tuple[int, int]], np.ndarray]


@dataclass
class StackJobSummary:
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


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
    job = _prepare("restack", particles_star, out_dir, select, indices, base_dir)
    out = _OutputSpec(
        shape_yx=dict(job.shape_yx), pixel_size_angstrom=dict(job.pixel_size_angstrom),
        float16=float16, batch_size=batch_size, path_style=PathStyle(path_style),
    )
    return _run(job, out, _copy, overwrite, on_start, on_progress)


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
    elif not pixel_size_angstrom > 0:
        raise ParameterError(f"output pixel size must be > 0, got {pixel_size_angstrom}")
    job = _prepare("downsample", particles_star, out_dir, select, indices, base_dir)
    out = dataclasses.replace(_downsample_spec(job, box_px, pixel_size_angstrom, float16,
                                               batch_size), path_style=PathStyle(path_style))
    shifts = np.zeros((len(job.particles), 2), dtype=np.int64)
    if recenter:
        shifts = _recenter(job)
    _sync_pixel_offsets(job, out)
    threads = workers or os.cpu_count() or 1

    def crop(images: np.ndarray, rows: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
        return _shift_and_crop(images, shifts[rows], shape_yx[0], threads)

    return _run(job, out, crop, overwrite, on_start, on_progress)


@dataclass
class _Job:
    """A validated job: the selected particles and where their images are."""

    command: str
    table: ParticleTable
    particles: pd.DataFrame  # selected rows, index reset; edited by downsample
    input_rows: np.ndarray  # position of each selected row in the input table
    locations: ImageLocations
    problem: list[str | None]
    detail: list[str]
    shape_yx: dict[int, tuple[int, int]]  # group -> input (h, w) px, readable groups
    pixel_size_angstrom: dict[int, float | None]  # group -> input pixel size (Å)
    out_dir: Path
    warnings: list[str] = field(default_factory=list)
    recentered: int = 0

    @property
    def groups(self) -> np.ndarray:
        return self.particles["rlnOpticsGroup"].to_numpy(dtype=np.int64)

    @property
    def good(self) -> np.ndarray:
        return np.array([p is None for p in self.problem], dtype=bool)


@dataclass(frozen=True)
class _OutputSpec:
    shape_yx: dict[int, tuple[int, int]]  # group -> output image shape (px)
    pixel_size_angstrom: dict[int, float | None]
    float16: bool | None
    batch_size: int
    path_style: PathStyle = PathStyle.CWD  # how the STAR names the stacks


def _prepare(
    command: str, particles_star: str | os.PathLike[str], out_dir: str | os.PathLike[str],
    select: str | os.PathLike[str] | None, indices: str | os.PathLike[str] | None,
    base_dir: str | os.PathLike[str] | None,
) -> _Job:
    table = read_particles(particles_star, base_dir=base_dir)
    rows, warnings = select_rows(table.particles, select=select, indices=indices)
    particles = table.particles.iloc[rows].reset_index(drop=True)
    locations = locate_images(particles["rlnImageName"].astype(str), table.base_dirs)
    job = _Job(
        command=command, table=table, particles=particles, input_rows=rows,
        locations=locations, problem=list(locations.problem), detail=list(locations.detail),
        shape_yx={}, pixel_size_angstrom={}, out_dir=Path(out_dir),
        warnings=[*table.warnings, *warnings],
    )
    _check_sizes(job)
    _find_pixel_sizes(job)
    return job


def _check_sizes(job: _Job) -> None:
    """One image size per optics group: the first readable image's; others are skipped."""
    expected: dict[int, tuple[int, int]] = {}
    for row, group in enumerate(job.groups):
        if job.problem[row] is not None:
            continue
        shape = job.locations.shape_of(row)
        first = expected.setdefault(int(group), shape)
        if shape != first:
            job.problem[row] = WRONG_SIZE
            job.detail[row] = f"{shape[1]}x{shape[0]} px, group has {first[1]}x{first[0]} px"
    optics = job.table.optics.set_index("rlnOpticsGroup")
    for group, (h, w) in expected.items():
        if h != w:
            job.warnings.append(f"optics group {group}: images are not square ({w}x{h} px)")
        job.shape_yx[group] = (h, w)
        stated = optics["rlnImageSize"].get(group) if "rlnImageSize" in optics else None
        if stated is not None and not pd.isna(stated) and int(stated) != w:
            job.warnings.append(
                f"optics group {group}: rlnImageSize {int(stated)} but images are {w} px; "
                "the images win"
            )


def _find_pixel_sizes(job: _Job) -> None:
    """Input pixel size per group: the STAR's, else the first stack header's (warned)."""
    optics = job.table.optics.set_index("rlnOpticsGroup")
    stated = optics["rlnImagePixelSize"] if "rlnImagePixelSize" in optics else None
    for group in job.shape_yx:
        value = None if stated is None else stated.get(group)
        if value is not None and not pd.isna(value) and float(value) > 0:
            job.pixel_size_angstrom[group] = float(value)
            continue
        header = _header_pixel_size(job, group)
        job.pixel_size_angstrom[group] = header
        if header is None:
            job.warnings.append(f"optics group {group}: pixel size unknown (not in STAR/header)")
        else:
            job.warnings.append(
                f"optics group {group}: no rlnImagePixelSize, using the stack header's "
                f"{header:g} A"
            )
    sizes = job.pixel_size_angstrom
    pixel_offsets = any(c in job.particles.columns for c in PIXEL_TO_ANGSTROM)
    if (job.table.relion30 and pixel_offsets and sizes
            and all(v is not None for v in sizes.values())):
        optics = job.table.optics.copy()
        optics["rlnImagePixelSize"] = optics["rlnOpticsGroup"].map(sizes)
        _, job.particles = offsets_to_angstrom(optics, job.particles)


def _header_pixel_size(job: _Job, group: int) -> float | None:
    for row, g in enumerate(job.groups):
        if g == group and job.problem[row] is None:
            size = job.locations.stacks[job.locations.stack[row]].pixel_size_angstrom
            return size if size > 0 else None
    return None


def _downsample_spec(
    job: _Job, box_px: int | None, pixel_size_angstrom: float | None,
    float16: bool | None, batch_size: int,
) -> _OutputSpec:
    out_shape: dict[int, tuple[int, int]] = {}
    out_apix: dict[int, float | None] = {}
    for group, (h, n) in job.shape_yx.items():
        apix = job.pixel_size_angstrom[group]
        if n % 2 or h != n:
            raise InputError(f"optics group {group}: {n}x{h} px images cannot be "
                             "Fourier-cropped (square, even side needed)", job.table.source)
        if pixel_size_angstrom is not None:
            if apix is None:
                raise InputError(f"optics group {group}: no pixel size in the STAR or the "
                                 "stack headers; use --box", job.table.source)
            m = max(2, 2 * round(n * apix / pixel_size_angstrom / 2))
        else:
            m = int(box_px)  # type: ignore[arg-type]
        if m > n:
            raise ParameterError(
                f"optics group {group}: output box {m} px is larger than the input {n} px: "
                "Fourier cropping only downsamples"
            )
        out_shape[group] = (m, m)
        out_apix[group] = None if apix is None else apix * n / m
    return _OutputSpec(out_shape, out_apix, float16, batch_size)


def _recenter(job: _Job) -> np.ndarray:
    """Integer shifts ``(n, 2)`` (dx, dy) in input pixels; updates origins and coordinates."""
    particles = job.particles.copy()
    shifts = np.zeros((len(particles), 2), dtype=np.int64)
    columns = ("rlnOriginXAngst", "rlnOriginYAngst")
    if not all(c in particles.columns for c in columns):
        job.warnings.append("--recenter: no rlnOriginXAngst/YAngst, images not moved")
        return shifts
    apix = _row_values(job, job.pixel_size_angstrom)
    if not np.all(np.isfinite(apix[job.good])):
        job.warnings.append("--recenter: pixel size unknown for some optics groups; "
                            "their particles are not moved")
    origins = particles[list(columns)].to_numpy(dtype=float)
    moves = recentre(origins / apix[:, None])
    shifts = moves.shifts_px
    known = np.isfinite(apix)[:, None]
    particles[list(columns)] = np.where(known, moves.residual_px * apix[:, None], origins)
    _move_coordinates(job, particles, shifts, apix)
    job.particles = particles
    job.recentered = int(np.count_nonzero(np.any(shifts != 0, axis=1) & job.good))
    return shifts


def _sync_pixel_offsets(job: _Job, out: _OutputSpec) -> None:
    """Offsets in pixels follow the new pixel size.

    A legacy pixel column beside its Å column becomes ``Å / output pixel size``; a pixel
    column alone (pixel size unknown) is scaled by ``m / n``.
    """
    apix = _row_values(job, out.pixel_size_angstrom)
    ratio = _row_values(job, {g: out.shape_yx[g][1] / job.shape_yx[g][1] for g in job.shape_yx})
    for column, target in PIXEL_TO_ANGSTROM.items():
        if column not in job.particles.columns:
            continue
        values = job.particles[column].to_numpy(dtype=float)
        if target in job.particles.columns:
            new = job.particles[target].to_numpy(dtype=float) / apix
        else:
            new = values * ratio
        job.particles[column] = np.where(np.isfinite(new), new, values)


def _row_values(job: _Job, per_group: dict[int, float | None]) -> np.ndarray:
    """Per-row value of a per-group mapping (NaN where unknown)."""
    lookup = {g: (np.nan if v is None else v) for g, v in per_group.items()}
    return np.array([lookup.get(int(g), np.nan) for g in job.groups], dtype=float)


def _move_coordinates(
    job: _Job, particles: pd.DataFrame, shifts: np.ndarray, apix: np.ndarray
) -> None:
    if not {"rlnCoordinateX", "rlnCoordinateY"} <= set(particles.columns):
        return
    optics = job.table.optics.set_index("rlnOpticsGroup")
    mic: dict[int, float | None] = {}
    for group in job.shape_yx:
        mic[group] = None
        for column in ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"):
            if column in optics and not pd.isna(optics[column].get(group)):
                mic[group] = float(optics[column][group])
                break
    if any(v is None for v in mic.values()):
        job.warnings.append("--recenter: no micrograph pixel size in the optics table, "
                            "rlnCoordinateX/Y not moved (re-extraction would be off)")
        return
    ratio = apix / _row_values(job, mic)
    for axis, column in enumerate(("rlnCoordinateX", "rlnCoordinateY")):
        moved = particles[column].to_numpy(dtype=float) - shifts[:, axis] * ratio
        particles[column] = np.where(np.isfinite(moved), moved, particles[column])


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
    job: _Job, out: _OutputSpec,
    transform: Transform,
    overwrite: bool, on_start: ProgressCallback | None, on_progress: ProgressCallback | None,
) -> StackJobSummary:
    if int(out.batch_size) != out.batch_size or out.batch_size < 1:
        raise ParameterError(f"batch size must be a positive integer, got {out.batch_size}")
    good = np.flatnonzero(job.good)
    if not len(good):
        raise InputError(_nothing_readable(job), job.table.source)
    float16 = out.float16
    if float16 is None:
        float16 = all(job.locations.dtype_of(int(r)) == np.float16 for r in good)
    paths = JobPaths(job.out_dir)
    stacks = _plan_stacks(job, good, out)
    _prepare_out_dir(paths, overwrite, job.locations.stacks)
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
    namer = PathNamer.for_star(paths.particles_star, out.path_style)
    particles = _output_particles(
        job.particles, good,
        np.array(rebase_image_names(names[good], paths.out_dir, namer), dtype=object),
        located_names(job.locations, good, namer))
    write_star(paths.particles_star, {
        "optics": _output_optics(job, out, set(job.groups[good].tolist())),
        "particles": particles,
    })
    summary = _summary(job, out, paths, good, float16, len(stacks))
    _write_rejected(paths.rejected_tsv, job)
    paths.summary_json.write_text(summary.to_json())
    return summary


def _nothing_readable(job: _Job) -> str:
    if not len(job.particles):
        return "no particles selected"
    first = next(i for i, p in enumerate(job.problem) if p is not None)
    return (f"none of the {len(job.particles)} particles can be read; first: "
            f"{job.locations.names[first]}: {job.problem[first]} ({job.detail[first]})")


def _plan_stacks(job: _Job, good: np.ndarray, out: _OutputSpec) -> list[_Stack]:
    """Runs of ``batch_size`` rows in table order; a new stack when the shape changes."""
    shapes = [out.shape_yx[int(g)] for g in job.groups[good]]
    stacks: list[_Stack] = []
    start = 0
    while start < len(good):
        stop = start + 1
        while (stop < len(good) and stop - start < out.batch_size
               and shapes[stop] == shapes[start]):
            stop += 1
        apix = out.pixel_size_angstrom.get(int(job.groups[good[start]]))
        stacks.append(_Stack(good[start:stop], shapes[start], apix or 0.0))
        start = stop
    return stacks


def _write_stack(
    job: _Job, stack: _Stack, path: Path, float16: bool,
    transform: Transform,
) -> None:
    with StackWriter(path, len(stack.rows), stack.shape_yx, stack.pixel_size_angstrom,
                     float16=float16) as writer:
        for rows, images in read_images(job.particles, locations=job.locations,
                                        rows=stack.rows):
            writer.write(transform(images, rows, stack.shape_yx))


def _output_particles(
    particles: pd.DataFrame, good: np.ndarray, names: np.ndarray, originals: list[str]
) -> pd.DataFrame:
    """Good rows with their new names; the input's names kept as ``rlnImageOriginalName``
    (``originals``: where each input image was found, named as the output names are)
    unless the input already carries that column."""
    table = particles.iloc[good].reset_index(drop=True)
    if "rlnImageOriginalName" not in table.columns:
        position = list(table.columns).index("rlnImageName") + 1
        table.insert(position, "rlnImageOriginalName", originals)
    table["rlnImageName"] = list(names)
    return table





def _output_optics(job: _Job, out: _OutputSpec, used: set[int]) -> pd.DataFrame:
    """Input optics of the groups written, with the output image size and pixel size."""
    optics = job.table.optics
    optics = optics[optics["rlnOpticsGroup"].isin(used)].reset_index(drop=True).copy()
    groups = [int(g) for g in optics["rlnOpticsGroup"]]
    sizes = [out.pixel_size_angstrom.get(g) for g in groups]
    if all(s is not None for s in sizes):
        optics["rlnImagePixelSize"] = [float(s) for s in sizes]  # type: ignore[arg-type]
    optics["rlnImageSize"] = [out.shape_yx[g][1] for g in groups]
    if "rlnImageDimensionality" not in optics.columns:
        optics["rlnImageDimensionality"] = 2
    return optics


def _prepare_out_dir(paths: JobPaths, overwrite: bool, input_stacks: dict[str, object]) -> None:
    out = paths.out_dir
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ParameterError(f"output directory {out} exists and is not empty; use --overwrite")
        target = paths.particles_dir.resolve()
        for stack in input_stacks:
            if Path(stack).resolve().is_relative_to(target):
                raise ParameterError(
                    f"input stack {stack} lies in {paths.particles_dir}, which --overwrite "
                    "would replace; choose another output directory"
                )
        shutil.rmtree(paths.particles_dir, ignore_errors=True)
        for stale in (paths.particles_star, paths.summary_json, paths.rejected_tsv):
            stale.unlink(missing_ok=True)
    paths.particles_dir.mkdir(parents=True, exist_ok=True)


def _summary(
    job: _Job, out: _OutputSpec, paths: JobPaths, good: np.ndarray, float16: bool, n_stacks: int
) -> StackJobSummary:
    names = job.table.optics.set_index("rlnOpticsGroup")["rlnOpticsGroupName"]
    summary = StackJobSummary(
        command=job.command, out_dir=str(paths.out_dir),
        particles_star=str(paths.particles_star),
        particles_in=len(job.table.particles), particles_selected=len(job.particles),
        particles_written=len(good),
        particles_skipped=dict(sorted(Counter(p for p in job.problem if p is not None).items())),
        stacks=[str(paths.particles_dir / f"batch_{k:06d}.mrcs") for k in range(n_stacks)],
        float16=bool(float16), recentered=job.recentered, warnings=list(job.warnings),
    )
    for group in sorted(set(job.groups[good].tolist())):
        name = str(names.get(group, f"opticsGroup{group}"))
        summary.box_px[name] = [job.shape_yx[group][1], out.shape_yx[group][1]]
        summary.pixel_size_angstrom[name] = [
            job.pixel_size_angstrom[group], out.pixel_size_angstrom[group]
        ]
    return summary


def _write_rejected(path: Path, job: _Job) -> None:
    bad = [i for i, p in enumerate(job.problem) if p is not None]
    pd.DataFrame({
        "row": job.input_rows[bad] if bad else np.array([], dtype=np.int64),
        "rlnImageName": [job.locations.names[i] for i in bad],
        "reason": [job.problem[i] for i in bad],
        "detail": [job.detail[i] for i in bad],
    }).to_csv(path, sep="\t", index=False)
