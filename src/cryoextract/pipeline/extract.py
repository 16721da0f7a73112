"""The extraction job: plan, run tasks locally (in-process or a process pool), gather, write."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import ParameterError
from cryoextract.io.cryosparc import write_cs as write_cryosparc
from cryoextract.io.micrographs import MicrographSet, read_micrograph_set, with_ctffind
from cryoextract.io.mrc import open_micrograph
from cryoextract.io.star import write_star
from cryoextract.ops.boxsize import (
    delocalisation_px,
    is_efficient_box,
    nearest_efficient_boxes,
    smallest_efficient_box,
)
from cryoextract.ops.ctf_correct import CtfCorrection
from cryoextract.pipeline.allocator import keep_freed_memory
from cryoextract.pipeline.params import ExtractParams, JobPaths, OutputSpec
from cryoextract.pipeline.plan import PickSource, plan_tasks
from cryoextract.pipeline.task import MicrographResult, MicrographTask, run_task

ProgressCallback = Callable[[MicrographResult], None]


@dataclass
class ExtractionSummary:
    """What a job did; also written to ``OUT/summary.json``."""

    out_dir: str
    particles_star: str
    micrographs_done: int = 0
    micrographs_skipped: dict[str, str] = field(default_factory=dict)
    particles_kept: int = 0
    particles_dropped: dict[str, int] = field(default_factory=dict)
    box_px: int = 0
    output_box_px: int = 0
    output_pixel_size_angstrom: dict[str, float] = field(default_factory=dict)
    additional_outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def extract(
    micrographs: str,
    out_dir: str | os.PathLike[str],
    params: ExtractParams,
    *,
    coords_dir: str | os.PathLike[str] | None = None,
    coords_suffix: str | None = None,
    coords: str | os.PathLike[str] | None = None,
    coords_format: str = "auto",
    pixel_size_angstrom: float | None = None,
    ctf_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    write_cs: bool = False,
    on_progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ExtractionSummary:
    """Extract particles from micrographs at picked coordinates.

    Parameters
    ----------
    micrographs : str
        A RELION micrographs STAR file, or a glob of MRC files (with
        ``pixel_size_angstrom``).
    out_dir : path-like
        Output directory; refused if it holds files unless ``overwrite``.
    params : ExtractParams
        What to compute.
    coords_dir, coords_suffix : optional
        RELION-style per-micrograph coordinate files.
    coords : path-like, optional
        One coordinate file: a particles STAR with ``rlnMicrographName``, or any format
        for a single micrograph.
    coords_format : str
        ``auto`` (by extension), ``star``, ``box`` or ``txt``.
    pixel_size_angstrom : float, optional
        Micrograph pixel size; overrides the STAR's.
    ctf_dir : path-like, optional
        CTFFIND4 job directory; each micrograph's ``<name>.txt`` there gives its CTF.
    workers : int, optional
        Processes; ``None`` uses all cores, 1 runs in this process.
    write_cs : bool
        Also write a cryoSPARC ``particles.cs`` beside each STAR.
    on_progress, on_start : callable, optional
        Called with each finished micrograph's result / with the number of tasks.

    Returns
    -------
    ExtractionSummary
    """
    paths = JobPaths(Path(out_dir))
    picks = PickSource(
        coords_dir=None if coords_dir is None else Path(coords_dir),
        coords_suffix=coords_suffix,
        coords_file=None if coords is None else Path(coords),
        coords_format=coords_format,
    )
    mic_set = read_micrograph_set(micrographs, pixel_size_angstrom=pixel_size_angstrom)
    summary = ExtractionSummary(
        out_dir=str(paths.out_dir), particles_star=str(paths.particles_star),
        box_px=params.box_px, output_box_px=params.output_box_px,
    )
    if ctf_dir is not None:
        mic_set, no_ctf = with_ctffind(mic_set, ctf_dir)
        if no_ctf:
            summary.warnings.append(
                f"{ctf_dir}: no CTFFIND results for {len(no_ctf)} micrograph(s), e.g. {no_ctf[0]}")
    summary.warnings += box_size_warnings(params)
    summary.warnings += delocalisation_warnings(mic_set, params)
    _check_box_against_first_micrograph(mic_set, params)
    plan = plan_tasks(mic_set, picks, params, paths)
    summary.micrographs_skipped.update(plan.skipped)
    _prepare_out_dir(paths, params, overwrite)
    for task in plan.tasks:
        for output in params.outputs:
            task.stack_path(output).parent.mkdir(parents=True, exist_ok=True)
    if on_start is not None:
        on_start(len(plan.tasks))
    results = sorted(_run(plan.tasks, workers, on_progress), key=lambda r: r.index)
    _gather(results, summary)
    particles = [r.particles for r in results if r.particles is not None and len(r.particles)]
    table = pd.concat(particles, ignore_index=True) if particles else _empty_particles()
    shapes = {r.micrograph_name: r.shape_yx for r in results if r.shape_yx is not None}
    for output in params.outputs:
        optics = output_optics(mic_set, params, output, results)
        write_star(paths.out_dir / output.subdir / "particles.star",
                   {"optics": optics, "particles": table})
        if write_cs:
            write_cryosparc(paths.out_dir / output.subdir / "particles.cs", optics, table,
                            micrograph_shapes=shapes, blob_sign=1.0 if params.invert else -1.0)
    summary.output_pixel_size_angstrom = {
        str(row.rlnOpticsGroupName): float(params.output_pixel_size(row.rlnMicrographPixelSize))
        for row in mic_set.optics.itertuples()
    }
    summary.additional_outputs = [
        str(paths.out_dir / o.subdir / "particles.star") for o in params.outputs[1:]
    ]
    _write_rejected(paths.rejected_tsv, results)
    paths.summary_json.write_text(summary.to_json())
    return summary


def box_size_warnings(params: ExtractParams) -> list[str]:
    """Warnings for box sizes that make FFTs slow, naming the nearest efficient sizes."""
    warnings = []
    for what, size in (("box", params.box_px), ("output box", params.output_box_px)):
        if not is_efficient_box(size):
            below, above = nearest_efficient_boxes(size)
            options = " or ".join(str(s) for s in (below, above) if s is not None)
            warnings.append(f"{what} {size} px is not an FFT-efficient size; nearest: {options}")
    return list(dict.fromkeys(warnings))


def delocalisation_warnings(mic_set: MicrographSet, params: ExtractParams) -> list[str]:
    """Warn when the box is smaller than Rosenthal & Henderson's D + 2 lambda dF / d.

    ``d`` is the output Nyquist resolution, ``dF`` the largest defocus of each optics
    group, ``D`` the particle diameter (0 when not given).
    """
    table = mic_set.micrographs
    if "rlnDefocusU" not in table.columns:
        return []
    warnings = []
    optics = mic_set.optics.set_index("rlnOpticsGroup")
    for group, rows in table.groupby("rlnOpticsGroup"):
        row = optics.loc[group]
        if "rlnVoltage" not in row.index:
            continue
        apix = float(row["rlnMicrographPixelSize"])
        defocus = float(np.nanmax(rows[[c for c in ("rlnDefocusU", "rlnDefocusV")
                                        if c in rows.columns]].to_numpy(np.float64)))
        nyquist = 2 * params.output_pixel_size(apix)
        shift = delocalisation_px(defocus, float(row["rlnVoltage"]), apix, nyquist) * apix
        diameter = params.particle_diameter_angstrom or 0.0
        needed = diameter + 2 * shift
        if params.box_px * apix < needed:
            warnings.append(
                f"box {params.box_px} px = {params.box_px * apix:.0f} A is smaller than "
                f"D + 2*lambda*dF/d = {needed:.0f} A (defocus {defocus:.0f} A, "
                f"d = {nyquist:.2f} A output Nyquist, D = {diameter:.0f} A): signal moved "
                f"out of the box is lost; about --box "
                f"{smallest_efficient_box(needed / apix)} keeps it"
            )
    return warnings


def _check_box_against_first_micrograph(mic_set: MicrographSet, params: ExtractParams) -> None:
    """A box larger than the micrographs is a parameter error, not thousands of skips."""
    for path in mic_set.micrographs["path"]:
        if Path(path).is_file():
            try:
                with open_micrograph(path) as (_, header):
                    shape = header.shape_yx
            except Exception:  # the task reports unreadable micrographs
                continue
            if params.box_px > min(shape):
                raise ParameterError(
                    f"box {params.box_px} px is larger than the micrographs "
                    f"({shape[1]}x{shape[0]}, e.g. {path})"
                )
            return


def _prepare_out_dir(paths: JobPaths, params: ExtractParams, overwrite: bool) -> None:
    out = paths.out_dir
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ParameterError(f"output directory {out} exists and is not empty; use --overwrite")
        # remove only what a previous run wrote, so nothing stale is trusted
        shutil.rmtree(paths.particles_dir, ignore_errors=True)
        for extra in out.glob("also_*px"):
            shutil.rmtree(extra, ignore_errors=True)
        for stale in (paths.particles_star, paths.summary_json, paths.rejected_tsv,
                      out / "particles.cs"):
            stale.unlink(missing_ok=True)
    for output in params.outputs:
        (out / output.subdir / "Particles").mkdir(parents=True, exist_ok=True)


def _run(
    tasks: list[MicrographTask], workers: int | None, on_progress: ProgressCallback | None
) -> Iterator[MicrographResult]:
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ParameterError(f"workers must be >= 1, got {workers}")
    results: Iterable[MicrographResult]
    if workers == 1 or len(tasks) <= 1:
        results = map(run_task, tasks)
        for result in results:
            if on_progress is not None:
                on_progress(result)
            yield result
        return
    with ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), initializer=keep_freed_memory
    ) as pool:
        futures = [pool.submit(run_task, task) for task in tasks]
        for future in as_completed(futures):
            result = future.result()
            if on_progress is not None:
                on_progress(result)
            yield result


def _gather(results: list[MicrographResult], summary: ExtractionSummary) -> None:
    dropped: Counter[str] = Counter()
    for result in results:
        summary.warnings += result.warnings
        if result.error is not None:
            summary.micrographs_skipped[result.micrograph_name] = result.error
            continue
        summary.micrographs_done += 1
        summary.particles_kept += result.n_particles
        if result.dropped is not None:
            dropped.update(result.dropped["reason"])
    summary.particles_dropped = dict(sorted(dropped.items()))


def output_optics(
    mic_set: MicrographSet, params: ExtractParams, output: OutputSpec,
    results: list[MicrographResult],
) -> pd.DataFrame:
    """Optics block of the particles: input optics plus image size and pixel size.

    Groups without particles are left out, as RELION does.
    """
    optics = mic_set.optics.copy()
    used = set()
    for result in results:
        if result.particles is not None and "rlnOpticsGroup" in result.particles.columns:
            used.update(int(g) for g in result.particles["rlnOpticsGroup"])
    if used:
        optics = optics[optics["rlnOpticsGroup"].isin(used)]
    optics["rlnImagePixelSize"] = [
        params.output_pixel_size(float(p), output.box_px) for p in optics["rlnMicrographPixelSize"]
    ]
    optics["rlnImageSize"] = output.box_px
    optics["rlnImageDimensionality"] = 2
    optics["rlnCtfDataArePhaseFlipped"] = int(params.ctf_correct is CtfCorrection.FLIP)
    optics["rlnCtfDataAreCtfPremultiplied"] = int(
        params.ctf_correct is CtfCorrection.PREMULTIPLY)
    return optics.drop(columns=["rlnMicrographPixelSize"]).reset_index(drop=True)


def _empty_particles() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in (
        "rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName",
        "rlnOpticsGroup", "rlnOriginXAngst", "rlnOriginYAngst")})


def _write_rejected(path: Path, results: list[MicrographResult]) -> None:
    frames = [
        r.dropped.assign(rlnMicrographName=r.micrograph_name)
        for r in results if r.dropped is not None and len(r.dropped)
    ]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"rlnCoordinateX": [], "rlnCoordinateY": [], "reason": [], "rlnMicrographName": []})
    table[["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "reason"]].to_csv(
        path, sep="\t", index=False)
