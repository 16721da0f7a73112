"""The inputs of ``restack`` and ``downsample``, resolved once before anything is written:
the selected particles, one image size and one pixel size per optics group, the output
box of each group, and ``--recenter``'s integer shifts (docs/conventions.md, "Restack
and downsample").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.particles import (
    PIXEL_TO_ANGSTROM,
    offsets_to_angstrom,
    read_particles,
    select_rows,
)
from cryoextract.io.paths import PathStyle
from cryoextract.ops.recenter import recentre
from cryoextract.pipeline.stacks.common import (
    ParticleImages,
    group_pixel_sizes,
    move_coordinates,
    per_row,
)

WRONG_SIZE = "image size differs from its optics group"


@dataclass
class StackJob:
    """A validated restack or downsample job."""

    command: str
    images: ParticleImages
    shape_yx: dict[int, tuple[int, int]] = field(default_factory=dict)  # input (h, w) px
    pixel_size_angstrom: dict[int, float | None] = field(default_factory=dict)  # input
    recentered: int = 0

    @property
    def particles(self) -> pd.DataFrame:
        return self.images.particles

    @property
    def warnings(self) -> list[str]:
        return self.images.warnings

    def row_values(self, per_group: dict[int, float | None]) -> np.ndarray:
        """Per-row value of a per-group mapping (NaN where unknown)."""
        return per_row(self.images.groups, per_group)


@dataclass(frozen=True)
class OutputSpec:
    """What is written per optics group: image shape and pixel size."""

    shape_yx: dict[int, tuple[int, int]]
    pixel_size_angstrom: dict[int, float | None]
    float16: bool | None
    batch_size: int
    path_style: PathStyle = PathStyle.CWD  # how the STAR names the stacks


def prepare_stack_job(
    command: str, particles_star: str | os.PathLike[str],
    select: str | os.PathLike[str] | None, indices: str | os.PathLike[str] | None,
    base_dir: str | os.PathLike[str] | None,
) -> StackJob:
    """Read and select the particles, find their images, sizes and pixel sizes."""
    table = read_particles(particles_star, base_dir=base_dir)
    rows, warnings = select_rows(table.particles, select=select, indices=indices)
    job = StackJob(command, ParticleImages.locate(table, rows, warnings))
    _check_sizes(job)
    _find_pixel_sizes(job)
    return job


def _check_sizes(job: StackJob) -> None:
    """One image size per optics group: the first readable image's; others are skipped."""
    images = job.images
    expected: dict[int, tuple[int, int]] = {}
    for row, group in enumerate(images.groups):
        if images.problem[row] is not None:
            continue
        shape = images.locations.shape_of(row)
        first = expected.setdefault(int(group), shape)
        if shape != first:
            images.reject(row, WRONG_SIZE,
                          f"{shape[1]}x{shape[0]} px, group has {first[1]}x{first[0]} px")
    optics = images.table.optics.set_index("rlnOpticsGroup")
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


def _find_pixel_sizes(job: StackJob) -> None:
    """Input pixel size per group (:func:`group_pixel_sizes`, warned when not the STAR's);
    RELION 3.0 pixel offsets become Å once every size is known."""
    sizes, notes = group_pixel_sizes(job.images, job.shape_yx)
    job.pixel_size_angstrom.update(sizes)
    job.warnings.extend(f"optics group {g}: {note}" for g, note in notes.items())
    pixel_offsets = any(c in job.particles.columns for c in PIXEL_TO_ANGSTROM)
    if (job.images.table.relion30 and pixel_offsets and sizes
            and all(v is not None for v in sizes.values())):
        optics = job.images.table.optics.copy()
        optics["rlnImagePixelSize"] = optics["rlnOpticsGroup"].map(sizes)
        _, job.images.particles = offsets_to_angstrom(optics, job.particles)


def downsample_spec(
    job: StackJob, box_px: int | None, pixel_size_angstrom: float | None,
    float16: bool | None, batch_size: int, path_style: PathStyle,
) -> OutputSpec:
    """Each group's output box: ``box_px``, or the even box nearest ``pixel_size_angstrom``."""
    out_shape: dict[int, tuple[int, int]] = {}
    out_apix: dict[int, float | None] = {}
    source = job.images.table.source
    for group, (h, n) in job.shape_yx.items():
        apix = job.pixel_size_angstrom[group]
        if n % 2 or h != n:
            raise InputError(f"optics group {group}: {n}x{h} px images cannot be "
                             "Fourier-cropped (square, even side needed)", source)
        if pixel_size_angstrom is not None:
            if apix is None:
                raise InputError(f"optics group {group}: no pixel size in the STAR or the "
                                 "stack headers; use --box", source)
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
    return OutputSpec(out_shape, out_apix, float16, batch_size, path_style)


def recenter(job: StackJob) -> np.ndarray:
    """Integer shifts ``(n, 2)`` (dx, dy) in input pixels; updates origins and coordinates."""
    particles = job.particles.copy()
    shifts = np.zeros((len(particles), 2), dtype=np.int64)
    columns = ["rlnOriginXAngst", "rlnOriginYAngst"]
    if not all(c in particles.columns for c in columns):
        job.warnings.append("--recenter: no rlnOriginXAngst/YAngst, images not moved")
        return shifts
    apix = job.row_values(job.pixel_size_angstrom)
    if not np.all(np.isfinite(apix[job.images.good])):
        job.warnings.append("--recenter: pixel size unknown for some optics groups; "
                            "their particles are not moved")
    origins = particles[columns].to_numpy(dtype=float)
    moves = recentre(origins / apix[:, None])
    shifts = moves.shifts_px
    known = np.isfinite(apix)[:, None]
    particles[columns] = np.where(known, moves.residual_px * apix[:, None], origins)
    move_coordinates(particles, job.images.table.optics, shifts, apix, job.warnings,
                     "--recenter")
    job.images.particles = particles
    job.recentered = int(np.count_nonzero(moves.moved & job.images.good))
    return shifts


def sync_pixel_offsets(job: StackJob, out: OutputSpec) -> None:
    """Offsets in pixels follow the new pixel size.

    A legacy pixel column beside its Å column becomes ``Å / output pixel size``; a pixel
    column alone (pixel size unknown) is scaled by ``m / n``.
    """
    apix = job.row_values(out.pixel_size_angstrom)
    ratio = job.row_values({g: out.shape_yx[g][1] / job.shape_yx[g][1] for g in job.shape_yx})
    for column, target in PIXEL_TO_ANGSTROM.items():
        if column not in job.particles.columns:
            continue
        values = job.particles[column].to_numpy(dtype=float)
        if target in job.particles.columns:
            new = job.particles[target].to_numpy(dtype=float) / apix
        else:
            new = values * ratio
        job.particles[column] = np.where(np.isfinite(new), new, values)
