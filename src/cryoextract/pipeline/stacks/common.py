"""What the particle-stack commands share (restack, downsample, subtract): the particles
and their images with what is wrong with each, pixel sizes per optics group, the output
folder, optics and the files every job writes last.

The output folder itself (lock, refusal, removal of a previous run) is
:func:`cryoextract.pipeline.frame.claim_output`, shared with extraction.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from cryoextract.errors import CryoExtractError, ParameterError, os_error_message
from cryoextract.io.atomic import write_text_atomic
from cryoextract.io.images import ImageLocations, locate_images
from cryoextract.io.particles import ParticleTable
from cryoextract.io.paths import PathNamer, PathStyle, located_names, rebase_image_names
from cryoextract.pipeline.frame import JobPaths, claim_output, write_tsv_atomic

__all__ = [
    "JsonSummary",
    "ParticleImages",
    "check_batch_size",
    "claim_stack_output",
    "group_pixel_sizes",
    "micrograph_pixel_sizes",
    "move_coordinates",
    "named_for_star",
    "output_optics",
    "per_row",
    "resolved_workers",
    "write_job_files",
]


@dataclass
class ParticleImages:
    """Particles of a job, where their images are, and why some cannot be used.

    ``particles`` are the rows the job works on (index reset), ``input_rows`` their
    positions in the input file; ``problem[i]`` is ``None`` for a usable row, else the
    reason it is skipped (counted in the summary, listed in ``rejected_particles.tsv``
    with ``detail[i]``).
    """

    table: ParticleTable
    particles: pd.DataFrame
    input_rows: np.ndarray
    locations: ImageLocations
    problem: list[str | None]
    detail: list[str]
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def locate(cls, table: ParticleTable, rows: np.ndarray | None = None,
               warnings: Iterable[str] = ()) -> ParticleImages:
        """The ``rows`` of ``table`` (default all) and where their images are."""
        if rows is None:
            rows = np.arange(len(table.particles), dtype=np.int64)
        particles = table.particles.iloc[rows].reset_index(drop=True)
        locations = locate_images(particles["rlnImageName"].astype(str), table.base_dirs)
        return cls(table, particles, np.asarray(rows, dtype=np.int64), locations,
                   list(locations.problem), list(locations.detail),
                   [*table.warnings, *warnings])

    @property
    def groups(self) -> np.ndarray:
        """``(n,)`` int64 ``rlnOpticsGroup`` per row."""
        return self.particles["rlnOpticsGroup"].to_numpy(dtype=np.int64)

    @property
    def good(self) -> np.ndarray:
        """``(n,)`` bool: rows still usable."""
        return np.array([p is None for p in self.problem], dtype=bool)

    def reject(self, row: int, reason: str, detail: str) -> None:
        """Skip ``row`` (if not skipped already) for ``reason``."""
        if self.problem[row] is None:
            self.problem[row], self.detail[row] = reason, detail

    def skipped(self) -> dict[str, int]:
        """Skipped rows counted by reason."""
        return dict(sorted(Counter(p for p in self.problem if p is not None).items()))

    def nothing_usable(self, empty: str = "no particles selected") -> str:
        """The one-line error of a job none of whose particles can be used."""
        if not len(self.particles):
            return empty
        first = next(i for i, p in enumerate(self.problem) if p is not None)
        return (f"none of the {len(self.particles)} particles can be used; first: "
                f"{self.locations.names[first]}: {self.problem[first]} "
                f"({self.detail[first]})")

    def rejected(self) -> pd.DataFrame:
        """``rejected_particles.tsv``: input row, image name, reason, detail."""
        bad = [i for i, p in enumerate(self.problem) if p is not None]
        return pd.DataFrame({
            "row": self.input_rows[bad] if bad else np.array([], dtype=np.int64),
            "rlnImageName": [self.locations.names[i] for i in bad],
            "reason": [self.problem[i] for i in bad],
            "detail": [self.detail[i] for i in bad],
        })

    def first_good_header_pixel_size(self, group: int) -> float | None:
        """The pixel size in the stack header of the group's first usable image."""
        for row, g in enumerate(self.groups):
            if g == group and self.problem[row] is None:
                size = self.locations.stacks[self.locations.stack[row]].pixel_size_angstrom
                return size if size > 0 else None
        return None


def group_pixel_sizes(images: ParticleImages, groups: Iterable[int]
                      ) -> tuple[dict[int, float | None], dict[int, str]]:
    """Each group's image pixel size: the STAR's ``rlnImagePixelSize``, else the header
    of its first usable stack (noted), else None (noted).

    Returns
    -------
    sizes : dict of int to float or None
    notes : dict of int to str
        Why a group's size is not the STAR's.
    """
    optics = images.table.optics.set_index("rlnOpticsGroup")
    stated = optics["rlnImagePixelSize"] if "rlnImagePixelSize" in optics else None
    sizes: dict[int, float | None] = {}
    notes: dict[int, str] = {}
    for group in groups:
        value = _positive(None if stated is None else stated.get(group))
        if value is not None:
            sizes[group] = value
            continue
        header = images.first_good_header_pixel_size(group)
        sizes[group] = header
        notes[group] = ("pixel size unknown (not in STAR/header)" if header is None else
                        f"no rlnImagePixelSize, using the stack header's {header:g} A")
    return sizes, notes


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def check_batch_size(batch_size: int) -> None:
    """Images per output stack: a positive integer."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ParameterError(f"batch size must be a positive integer, got {batch_size}")


def resolved_workers(workers: int | None) -> int:
    """Workers (processes or FFT threads) to use: all cores for None, else at least 1."""
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ParameterError(f"workers must be a positive integer, got {workers}")
    return int(workers)


def per_row(groups: np.ndarray, per_group: Mapping[int, float | None]) -> np.ndarray:
    """``(n,)`` float64 value of each row's group (NaN where unknown)."""
    lookup = {g: (np.nan if v is None else v) for g, v in per_group.items()}
    return np.array([lookup.get(int(g), np.nan) for g in groups], dtype=np.float64)


def micrograph_pixel_sizes(optics: pd.DataFrame, groups: np.ndarray) -> np.ndarray | None:
    """``(n,)`` micrograph pixel size of each row's group (``rlnMicrographPixelSize``, else
    ``rlnMicrographOriginalPixelSize``); None unless every row has one."""
    table = optics.set_index("rlnOpticsGroup")
    for column in ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"):
        if column in table.columns:
            values = per_row(groups, pd.to_numeric(table[column], errors="coerce").to_dict())
            if np.all(np.isfinite(values)):
                return values
    return None


def move_coordinates(particles: pd.DataFrame, optics: pd.DataFrame, shifts_px: np.ndarray,
                     image_pixel_size: np.ndarray, warnings: list[str], what: str) -> None:
    """``rlnCoordinateX/Y -= shift * image / micrograph pixel size`` (in place), so a
    re-centred particle keeps its place on the micrograph; warned when the micrograph
    pixel size is unknown."""
    if not {"rlnCoordinateX", "rlnCoordinateY"} <= set(particles.columns):
        return
    groups = particles["rlnOpticsGroup"].to_numpy(dtype=np.int64)
    mic = micrograph_pixel_sizes(optics, groups)
    if mic is None:
        warnings.append(f"{what}: no micrograph pixel size in the optics table, "
                        "rlnCoordinateX/Y not moved (re-extraction would be off)")
        return
    ratio = image_pixel_size / mic
    for axis, column in enumerate(("rlnCoordinateX", "rlnCoordinateY")):
        before = particles[column].to_numpy(dtype=float)
        moved = before - shifts_px[:, axis] * ratio
        particles[column] = np.where(np.isfinite(moved), moved, before)


def output_optics(
    optics: pd.DataFrame, used: Iterable[int], image_size: Mapping[int, int],
    pixel_size: Mapping[int, float | None] | None = None,
) -> pd.DataFrame:
    """The input optics of the groups written, with their output image size and (when
    every group's is known) pixel size."""
    used = {int(g) for g in used}
    optics = optics[optics["rlnOpticsGroup"].astype(int).isin(used)].reset_index(drop=True)
    optics = optics.copy()
    groups = [int(g) for g in optics["rlnOpticsGroup"]]
    if pixel_size is not None:
        sizes = [pixel_size.get(g) for g in groups]
        if all(s is not None for s in sizes):
            optics["rlnImagePixelSize"] = [float(s) for s in sizes]  # type: ignore[arg-type]
    optics["rlnImageSize"] = [int(image_size[g]) for g in groups]
    if "rlnImageDimensionality" not in optics.columns:
        optics["rlnImageDimensionality"] = 2
    return optics


def named_for_star(
    particles: pd.DataFrame, images: ParticleImages, good: np.ndarray, paths: JobPaths,
    path_style: PathStyle, *, originals: bool = True,
) -> pd.DataFrame:
    """``particles`` (the ``good`` rows, names relative to OUT) with ``rlnImageName`` and,
    with ``originals``, ``rlnImageOriginalName`` (where each input image was found) named
    as the STAR's ``path_style`` says."""
    namer = PathNamer.for_star(paths.particles_star, path_style)
    named = particles.copy()
    named["rlnImageName"] = rebase_image_names(particles["rlnImageName"].astype(str),
                                               paths.out_dir, namer)
    if originals:
        named["rlnImageOriginalName"] = located_names(images.locations, good, namer)
    return named


class JsonSummary:
    """Mixin of the jobs' summary dataclasses: ``summary.json`` is their fields."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # type: ignore[call-overload]


def write_job_files(paths: JobPaths, images: ParticleImages, summary: JsonSummary) -> None:
    """``rejected_particles.tsv`` then ``summary.json``, each atomically, last of a job."""
    write_tsv_atomic(paths.rejected_tsv, images.rejected())
    write_text_atomic(paths.summary_json, summary.to_json())


@contextmanager
def claim_stack_output(
    paths: JobPaths, overwrite: bool, images: ParticleImages,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[None]:
    """:func:`~cryoextract.pipeline.frame.claim_output` for a particle-stack job: its own
    outputs are ``Particles/``, ``particles.star`` (+ ``.cs``), ``summary.json`` and
    ``rejected_particles.tsv``; the particles file, every input stack and ``inputs``
    must lie outside them. A failed write is a one-line error naming the file."""
    out = paths.out_dir
    outputs = [paths.particles_dir, paths.particles_star, out / "particles.cs",
               paths.summary_json, paths.rejected_tsv]
    sources = [images.table.source, *images.locations.stacks, *inputs]
    try:
        with claim_output(out, overwrite=overwrite, outputs=outputs, inputs=sources):
            paths.particles_dir.mkdir(parents=True, exist_ok=True)
            yield
    except OSError as exc:  # writing the outputs (in a worker or here): e.g. a full disk
        raise CryoExtractError(os_error_message(exc)) from exc
