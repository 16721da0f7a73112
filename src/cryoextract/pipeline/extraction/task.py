"""One micrograph in, its particle stacks and metadata rows out.

:func:`run_task` is pure apart from reading its micrograph (and picks file) and writing
its stacks: local processes and cluster workers run it alike.
"""

from __future__ import annotations

import errno
import traceback
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import CryoExtractError, MicrographError
from cryoextract.io.coords import read_picks
from cryoextract.io.micrographs import OPTICS_COLUMNS
from cryoextract.io.mrc import StackWriter
from cryoextract.io.mrc_micrograph import open_micrograph
from cryoextract.ops.boxes import (
    REASON_BAD_COORDINATE,
    REASON_EDGE,
    REASON_NOT_FINITE,
    REASON_OUTSIDE,
    EdgeMode,
    box_fraction_outside,
    box_indices,
)
from cryoextract.ops.boxsize import ctf_padding_box
from cryoextract.ops.coordinates import off_micrograph_warning
from cryoextract.ops.ctf import CtfParams
from cryoextract.ops.ctf_correct import (
    CtfCorrection,
    apply_fourier_multiplier,
    ctf_multiplier,
)
from cryoextract.ops.descriptors import (
    BACKGROUND_MEAN,
    BACKGROUND_STD,
    SCORE_BY_GINI,
    local_std_map,
    micrograph_gini,
    particle_descriptors,
)
from cryoextract.ops.particles import ParticleRecipe, process_chunk
from cryoextract.ops.thumbnail import Thumbnail, micrograph_thumbnail
from cryoextract.pipeline.extraction.helical import located_picks, tube_psi, tube_radius_px
from cryoextract.pipeline.extraction.params import ExtractParams, OutputSpec
from cryoextract.pipeline.extraction.positions import Placement, place_particles
from cryoextract.pipeline.extraction.tables import with_columns
from cryoextract.pipeline.extraction.thumbnail_gate import ThumbnailGate
from cryoextract.pipeline.selection import selection_reasons

# Boxes processed at once: bounds memory to about this many bytes of float32 pixels.
# Small enough that the FFT and normalisation temporaries stay in cache.
CHUNK_BYTES = 8 * 2**20
# Per-particle count of pixels replaced as dust (main output).
DUST_PIXELS = "ceDustPixels"
# Pixel-size disagreement between header and STAR that earns a warning.
PIXEL_SIZE_TOLERANCE = 0.01
# The QC report's thumbnail bar in this process (set by the executor), or None.
_GATE: ThumbnailGate | None = None


@dataclass(frozen=True)
class MicrographTask:
    """Everything needed to extract one micrograph.

    ``picks`` is the picks table, or ``None`` when the picks are read from
    ``coords_path`` by the worker. ``metadata`` holds per-micrograph columns given to
    every particle (optics group, CTF). Each output of ``params.outputs`` is written to
    ``out_dir/<output subdir>/<stack_name>``.
    """

    def stack_path(self, output: OutputSpec) -> Path:
        """Where this micrograph's stack for one output goes."""
        return Path(self.out_dir) / output.subdir / self.stack_name

    index: int
    micrograph_name: str
    micrograph_path: str
    pixel_size_angstrom: float
    out_dir: str
    stack_name: str
    params: ExtractParams
    picks: pd.DataFrame | None = None
    coords_path: str | None = None
    coords_format: str = "auto"
    metadata: dict[str, object] = field(default_factory=dict)
    optics: dict[str, object] = field(default_factory=dict)
    # with a QC report: the micrograph's place in name order (the report's tie-break),
    # and the task returns a display thumbnail when the report may show it
    report_rank: int | None = None


@dataclass
class MicrographResult:
    """What one task did: particle rows written, picks dropped (with reasons), or an error."""

    index: int
    micrograph_name: str
    particles: pd.DataFrame | None = None
    dropped: pd.DataFrame | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    detail: str | None = None
    shape_yx: tuple[int, int] | None = None
    out_of_space: bool = False
    thumbnail: Thumbnail | None = None

    @property
    def n_particles(self) -> int:
        return 0 if self.particles is None else len(self.particles)


def run_task(task: MicrographTask) -> MicrographResult:
    """Extract one micrograph; never raises for bad input (the result carries the error)."""
    try:
        return _extract(task)
    except CryoExtractError as exc:
        return MicrographResult(task.index, task.micrograph_name, error=str(exc))
    except OSError as exc:
        return os_error_result(task, exc)
    except Exception as exc:  # one micrograph never aborts the job; keep the trace
        return MicrographResult(
            task.index, task.micrograph_name,
            error=f"{task.micrograph_path}: unexpected error ({type(exc).__name__}: {exc})",
            detail=traceback.format_exc(),
        )


def os_error_result(task: MicrographTask, exc: OSError) -> MicrographResult:
    """A failed result for an OS error; a full disk is flagged to stop the whole job."""
    full = exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    return MicrographResult(
        task.index, task.micrograph_name, out_of_space=full,
        error=f"{exc.filename or task.micrograph_path}: {exc.strerror or exc}",
    )


def task_rng(task: MicrographTask) -> np.random.Generator:
    """Random source that depends on the seed and micrograph only, not on scheduling."""
    return np.random.default_rng([task.params.seed, zlib.crc32(task.micrograph_name.encode())])


def _extract(task: MicrographTask) -> MicrographResult:
    params = task.params
    picks = task.picks
    if picks is None:
        if task.coords_path is None:
            raise MicrographError("no picks", task.micrograph_path)
        picks = read_picks(task.coords_path, task.coords_format)
    result = MicrographResult(task.index, task.micrograph_name)
    source = task.coords_path or task.micrograph_name
    with open_micrograph(task.micrograph_path) as (image, header):
        ny, nx = header.shape_yx
        result.shape_yx = header.shape_yx
        if params.box_px > min(ny, nx):
            raise MicrographError(
                f"box {params.box_px} px is larger than the micrograph ({nx}x{ny})",
                task.micrograph_path,
            )
        _check_header_pixel_size(header.pixel_size_angstrom, task, result)
        located = located_picks(picks, params, task.pixel_size_angstrom, header.shape_yx,
                                source, task.coords_path, task.coords_format)
        picks, xy = located.picks, located.xy
        _warn_axis_mismatch(xy, header.shape_yx, source, result)
        placement = place_particles(picks, xy, params, task.pixel_size_angstrom, source)
        reasons = _drop_reasons(xy, placement.centres, image, header.shape_yx, params)
        reasons = np.where(reasons == "", located.reasons, reasons)
        reasons = _selection_reasons(picks, xy, reasons, task)
        keep = reasons == ""
        result.dropped = _dropped_table(picks, reasons)
        kept = picks[keep].reset_index(drop=True)
        raw_image = image
        extras: dict[str, np.ndarray] = {}
        if len(kept):
            shifts = None if placement.shifts_px is None else placement.shifts_px[keep]
            ctfs = particle_ctfs(task, kept) if params.ctf_correct is not CtfCorrection.NONE \
                else None
            if params.ctf_on_micrograph and ctfs is not None:
                image = apply_fourier_multiplier(image, ctf_multiplier(
                    micrograph_ctf(task), header.shape_yx, task.pixel_size_angstrom,
                    CtfCorrection.FLIP))
                ctfs = None
            extras = _write_particles(task, image, placement.centres[keep], shifts, ctfs, result,
                                      tube_psi(kept, params))
        result.particles = _particle_rows(task, kept, placement, keep)
        if params.descriptors and len(kept):
            result.particles = _add_descriptors(result.particles, raw_image,
                                                placement.centres[keep], task, extras)
        if task.report_rank is not None and (
                _GATE is None or _GATE.admits(len(result.dropped), len(kept), task.report_rank)):
            result.thumbnail = micrograph_thumbnail(raw_image)  # the report reads none again
    return result


def set_thumbnail_gate(gate: ThumbnailGate | None) -> None:
    """Let this process's tasks skip thumbnails the report will not show (see
    :mod:`cryoextract.pipeline.extraction.thumbnail_gate`); ``None``: always make them."""
    global _GATE
    _GATE = gate


def _selection_reasons(
    picks: pd.DataFrame, xy: np.ndarray, reasons: np.ndarray, task: MicrographTask
) -> np.ndarray:
    """Add ``--min-score``, ``--min-distance-angstrom`` and ``--max-per-micrograph`` drops."""
    params = task.params
    if params.min_score is None and params.min_distance_angstrom is None \
            and params.max_per_micrograph is None:
        return reasons
    table = pd.DataFrame({"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1],
                          "rlnMicrographName": task.micrograph_name})
    if params.score_column in picks.columns:
        table[params.score_column] = picks[params.score_column].to_numpy()
    elif params.min_score is not None:
        raise MicrographError(f"--min-score needs a {params.score_column} column",
                              task.coords_path or task.micrograph_path)
    else:
        table[params.score_column] = 0.0  # no scores: keep the first of close picks
    distance_px = None
    if params.min_distance_angstrom is not None:
        distance_px = params.min_distance_angstrom / task.pixel_size_angstrom
    selected = selection_reasons(
        table, min_distance_px=distance_px, min_score=params.min_score,
        max_per_micrograph=params.max_per_micrograph, score_column=params.score_column,
        pixel_size_angstrom=task.pixel_size_angstrom, active=reasons == "")
    return np.where(reasons == "", selected, reasons)


def _add_descriptors(
    rows: pd.DataFrame, image: np.ndarray, centres: np.ndarray, task: MicrographTask,
    extras: dict[str, np.ndarray],
) -> pd.DataFrame:
    """``rows`` with the quality descriptor columns (``ce*``, README), computed on the
    micrograph in memory."""
    params = task.params
    patch = params.descriptor_patch_px
    std_map = local_std_map(image, patch)
    columns = particle_descriptors(image, centres, params.box_px, patch,
                                   task.pixel_size_angstrom, std_map=std_map)
    columns[SCORE_BY_GINI] = np.full(len(rows), micrograph_gini(std_map))
    columns.update(extras)
    return with_columns(rows, columns)


def _warn_axis_mismatch(
    xy: np.ndarray, shape_yx: tuple[int, int], source: str, result: MicrographResult
) -> None:
    warning = off_micrograph_warning(xy, shape_yx, source)
    if warning is not None:
        result.warnings.append(warning)


def _check_header_pixel_size(
    header_px: float, task: MicrographTask, result: MicrographResult
) -> None:
    star_px = task.pixel_size_angstrom
    if header_px > 0 and abs(header_px - star_px) > PIXEL_SIZE_TOLERANCE * star_px:
        result.warnings.append(
            f"{task.micrograph_path}: header pixel size {header_px:.4f} A differs from the "
            f"given {star_px:.4f} A; using {star_px:.4f} A"
        )


def _drop_reasons(
    xy: np.ndarray, centres: np.ndarray, image: np.ndarray, shape_yx: tuple[int, int],
    params: ExtractParams,
) -> np.ndarray:
    """``(n,)`` reason each pick is dropped, ``""`` for kept ones."""
    reasons = np.full(len(xy), "", dtype=object)
    finite = np.isfinite(xy).all(axis=1)
    reasons[~finite] = REASON_BAD_COORDINATE
    ny, nx = shape_yx
    x, y = centres[:, 0], centres[:, 1]
    inside = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
    reasons[finite & ~inside] = REASON_OUTSIDE
    candidates = finite & inside
    outside_fraction = box_fraction_outside(centres, params.box_px, shape_yx)
    if params.edge is EdgeMode.DROP:
        reasons[candidates & (outside_fraction > 0)] = REASON_EDGE
    candidates = reasons == ""
    if np.issubdtype(image.dtype, np.floating) and candidates.any():
        bad = _boxes_touching_nonfinite(image, centres, params.box_px)
        # edge boxes read the pixels their edge mode maps to, which may lie beyond the box
        at_edge = np.flatnonzero(candidates & (outside_fraction > 0))
        if len(at_edge):
            rows, cols, _ = box_indices(centres[at_edge], params.box_px, shape_yx, params.edge)
            bad[at_edge] = ~np.isfinite(image[rows, cols]).all(axis=(1, 2))
        reasons[candidates & bad] = REASON_NOT_FINITE
    return reasons


def _boxes_touching_nonfinite(image: np.ndarray, centres: np.ndarray, box_px: int) -> np.ndarray:
    """``(n,)`` True where a box contains a NaN or inf pixel (summed-area table)."""
    bad = ~np.isfinite(image)
    if not bad.any():
        return np.zeros(len(centres), dtype=bool)
    table = np.zeros((bad.shape[0] + 1, bad.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = bad.cumsum(0).cumsum(1)
    half = box_px // 2
    x0 = np.clip(centres[:, 0] - half, 0, bad.shape[1])
    x1 = np.clip(centres[:, 0] + half, 0, bad.shape[1])
    y0 = np.clip(centres[:, 1] - half, 0, bad.shape[0])
    y1 = np.clip(centres[:, 1] + half, 0, bad.shape[0])
    return (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]) > 0


def finite_mean(image: np.ndarray) -> float:
    """Mean of the finite pixels (NaN/inf elsewhere must not poison edge fills)."""
    if not np.issubdtype(image.dtype, np.floating):
        return float(np.mean(image, dtype=np.float64))
    finite = np.isfinite(image)
    return float(np.mean(image[finite], dtype=np.float64)) if finite.any() else 0.0


def _dropped_table(picks: pd.DataFrame, reasons: np.ndarray) -> pd.DataFrame:
    mask = reasons != ""
    return pd.DataFrame({
        "rlnCoordinateX": picks.loc[mask, "rlnCoordinateX"].to_numpy(),
        "rlnCoordinateY": picks.loc[mask, "rlnCoordinateY"].to_numpy(),
        "reason": reasons[mask].astype(str),
    })


def micrograph_ctf(task: MicrographTask) -> CtfParams:
    """The micrograph's CTF: its STAR row with its optics group's voltage, Cs, Q0."""
    try:
        return CtfParams.from_star_row({**task.optics, **task.metadata})
    except CryoExtractError as exc:
        raise MicrographError(f"no CTF for --ctf-correct ({exc})", task.micrograph_path) from exc


def particle_ctfs(task: MicrographTask, kept: pd.DataFrame) -> list[CtfParams]:
    """One CTF per particle: per-particle defocus columns win over the micrograph's."""
    if "rlnDefocusU" not in kept.columns:
        return [micrograph_ctf(task)] * len(kept)
    base = {**task.optics, **task.metadata}
    columns = [c for c in kept.columns if c.startswith(("rlnDefocus", "rlnCtf", "rlnPhase"))]
    try:
        return [CtfParams.from_star_row({**base, **dict(zip(columns, values, strict=True))})
                for values in kept[columns].itertuples(index=False)]
    except CryoExtractError as exc:
        raise MicrographError(f"bad CTF for --ctf-correct ({exc})", task.micrograph_path) from exc


def ctf_box_size(task: MicrographTask, ctfs: list[CtfParams]) -> int:
    """The padded box for CTF correction: given, or wide enough at the output Nyquist."""
    params = task.params
    if params.ctf_box_px is not None:
        return params.ctf_box_px
    worst = max(max(c.defocus_u_angstrom, c.defocus_v_angstrom) for c in ctfs)
    finest = min(params.output_pixel_size(task.pixel_size_angstrom, o.box_px)
                 for o in params.outputs)
    return ctf_padding_box(params.box_px, worst, ctfs[0].voltage_kv, task.pixel_size_angstrom,
                           finest)


def particle_recipe(task: MicrographTask, *, ctf_per_box: bool) -> ParticleRecipe:
    """The per-particle computation of a task's parameters (:mod:`cryoextract.ops.particles`).

    ``ctf_per_box`` is False when the CTF, if any, was corrected on the whole micrograph.
    """
    params = task.params
    return ParticleRecipe(
        box_px=params.box_px,
        out_box_px=tuple(o.box_px for o in params.outputs),
        bg_radius_px=tuple(o.bg_radius_px for o in params.outputs),
        norm=params.norm, invert=params.invert,
        white_dust_sigma=params.white_dust_sigma, black_dust_sigma=params.black_dust_sigma,
        ctf_correction=params.ctf_correct if ctf_per_box else CtfCorrection.NONE,
        pixel_size_angstrom=task.pixel_size_angstrom,
        measure_background=params.descriptors,
        tube_radius_px=tube_radius_px(params, task.pixel_size_angstrom),
    )


def _write_particles(
    task: MicrographTask, image: np.ndarray, centres: np.ndarray, shifts: np.ndarray | None,
    ctfs: list[CtfParams] | None, result: MicrographResult, psi_deg: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Compute the particles chunk by chunk and write every output's stack.

    Returns per-particle columns measured on the way (raw background, dust pixels) when
    descriptors are on.
    """
    params = task.params
    outputs = params.outputs
    rng = task_rng(task)
    recipe = particle_recipe(task, ctf_per_box=ctfs is not None)
    cut_px = params.box_px if ctfs is None else ctf_box_size(task, ctfs)
    # the CTF padding beyond the particle box is filled even when edge boxes are dropped:
    # with the micrograph mean, as RELION
    cut_edge = EdgeMode.MEAN if params.edge is EdgeMode.DROP else params.edge
    fill = 0.0
    if cut_edge is EdgeMode.MEAN and (box_fraction_outside(centres, cut_px, image.shape) > 0).any():
        fill = finite_mean(image)  # a pass over the whole micrograph: only when needed
    chunk = max(1, CHUNK_BYTES // (4 * cut_px**2))
    dust = 0
    measured: dict[str, list[np.ndarray]] = {
        BACKGROUND_MEAN: [], BACKGROUND_STD: [], DUST_PIXELS: []}
    with ExitStack() as stack:
        writers = [
            stack.enter_context(StackWriter(
                task.stack_path(output), len(centres), (output.box_px, output.box_px),
                params.output_pixel_size(task.pixel_size_angstrom, output.box_px),
                float16=output.float16,
            ))
            for output in outputs
        ]
        for start in range(0, len(centres), chunk):
            part = slice(start, start + chunk)
            done = process_chunk(
                image, centres[part], recipe, cut_px=cut_px, edge=cut_edge, fill_value=fill,
                shifts_px=None if shifts is None else shifts[part],
                ctfs=None if ctfs is None else ctfs[part], rng=rng,
                psi_deg=None if psi_deg is None else psi_deg[part])
            for writer, images, replaced in zip(writers, done.images, done.dust_pixels,
                                                strict=True):
                writer.write(images)
                dust += int(replaced.sum())
            if params.descriptors:
                measured[BACKGROUND_MEAN].append(done.background_mean)
                measured[BACKGROUND_STD].append(done.background_std)
                measured[DUST_PIXELS].append(done.dust_pixels[0])
    if dust:
        result.warnings.append(f"{task.micrograph_path}: {dust} dust pixels replaced")
    if not params.descriptors:
        return {}
    return {name: np.concatenate(parts).astype(np.float64) for name, parts in measured.items()}


def _particle_rows(
    task: MicrographTask, kept: pd.DataFrame, placement: Placement, keep: np.ndarray
) -> pd.DataFrame:
    """Output metadata: carried pick columns, then ours (docs/conventions.md, "Origins")."""
    n = len(kept)
    coordinates = placement.coordinates[keep]
    origins = placement.origins_angstrom[keep]
    ours = {
        "rlnImageName": [f"{i:06d}@{task.stack_name}" for i in range(1, n + 1)],
        "rlnMicrographName": np.full(n, task.micrograph_name, dtype=object),
        "rlnCoordinateX": coordinates[:, 0], "rlnCoordinateY": coordinates[:, 1],
        "rlnOriginXAngst": origins[:, 0], "rlnOriginYAngst": origins[:, 1],
    }
    # RELION 3.0 pixel origins are superseded above; optics values live in data_optics
    stale = {"rlnOriginX", "rlnOriginY", "rlnImagePixelSize", "rlnImageSize",
             "rlnImageDimensionality", *OPTICS_COLUMNS} - {"rlnOpticsGroup"}
    return with_columns(kept, {**{c: v for c, v in task.metadata.items()
                                  if c not in kept.columns}, **ours}, drop=stale)
