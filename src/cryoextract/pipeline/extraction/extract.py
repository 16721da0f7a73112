"""The extraction job: plan, run the per-micrograph tasks, keep what is done, write outputs.

A job owns its output directory through a lock; each finished micrograph is recorded
(``pipeline/extraction/jobstate.py``) so ``resume`` redoes only what an interrupted run left
unfinished, and the STARs are written last, atomically.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryoextract.errors import CryoExtractError, InputError, ParameterError, os_error_message
from cryoextract.io.atomic import TEMPORARY_GLOB
from cryoextract.io.micrographs import MicrographSet, read_micrograph_set, with_ctffind
from cryoextract.io.paths import PathStyle
from cryoextract.pipeline.extraction.checks import (
    box_size_warnings,
    check_box_against_first_micrograph,
    delocalisation_warnings,
)
from cryoextract.pipeline.extraction.executors import run_tasks
from cryoextract.pipeline.extraction.helical import check_helix
from cryoextract.pipeline.extraction.jobstate import JobState, job_definition
from cryoextract.pipeline.extraction.outputs import ExtractionSummary, write_outputs
from cryoextract.pipeline.extraction.params import ExtractParams, check_integer
from cryoextract.pipeline.extraction.plan import PickSource, Plan, plan_tasks, resolve_output_size
from cryoextract.pipeline.extraction.task import MicrographResult
from cryoextract.pipeline.extraction.thumbnail_gate import ThumbnailGate, ThumbnailShortlist
from cryoextract.pipeline.frame import (
    STATE_DIR,
    JobLock,
    JobPaths,
    check_inputs_outside,
    holds_outputs,
    remove_outputs,
)

#: micrographs shown in the QC report
REPORT_MICROGRAPHS = 4
#: a Dask scheduler's address: [protocol://]host:port, an IPv6 host in brackets
DASK_ADDRESS = re.compile(r"([a-z]+://)?([^\s:/\[\]]+|\[[0-9a-fA-F:.]+\]):\d{1,5}")
#: the warning a failed QC report gives (the job itself succeeded)
REPORT_FAILED = "QC report not written"

__all__ = ["ExtractInputs", "ExtractionSummary", "RunOptions", "extract", "run_extraction"]

ProgressCallback = Callable[[MicrographResult], None]


@dataclass(frozen=True)
class ExtractInputs:
    """Where micrographs, picks and CTFs come from (see :func:`extract`)."""

    micrographs: str
    coords_dir: str | None = None
    coords_suffix: str | None = None
    coords: str | None = None
    coords_format: str = "auto"
    pixel_size_angstrom: float | None = None
    ctf_dir: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a job runs; none of these change what it computes."""

    workers: int | None = None
    dask_scheduler: str | None = None
    overwrite: bool = False
    resume: bool = False
    write_cs: bool = False
    report: bool = False
    path_style: PathStyle = PathStyle.CWD

    def __post_init__(self) -> None:
        if self.workers is not None:  # refused before anything is written
            check_integer(self.workers, "--workers", at_least=1)
        if self.dask_scheduler is not None and not DASK_ADDRESS.fullmatch(self.dask_scheduler):
            raise ParameterError(f"--dask-scheduler must be HOST:PORT or tcp://HOST:PORT, "
                                 f"got {self.dask_scheduler!r}")


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
    dask_scheduler: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    write_cs: bool = False,
    report: bool = False,
    path_style: PathStyle | str = PathStyle.CWD,
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
        Output directory; refused if it holds outputs unless ``overwrite`` or ``resume``.
    params : ExtractParams
        What to compute.
    coords_dir, coords_suffix : optional
        RELION-style per-micrograph coordinate files.
    coords : path-like, optional
        One coordinate file: a particles STAR or ``.cs`` with micrograph names, or any
        format for a single micrograph.
    coords_format : str
        ``auto`` (by extension and content) or a format name.
    pixel_size_angstrom : float, optional
        Micrograph pixel size; overrides the STAR's.
    ctf_dir : path-like, optional
        CTFFIND4 job directory; each micrograph's ``<name>.txt`` there gives its CTF.
    workers : int, optional
        Processes; ``None`` uses all cores, 1 runs in this process.
    dask_scheduler : str, optional
        ``tcp://host:port`` of a Dask scheduler to run the micrographs on.
    overwrite, resume : bool
        Replace a previous run's outputs / continue an interrupted run of the same job.
    write_cs : bool
        Also write a cryoSPARC ``particles.cs`` beside each STAR.
    path_style : PathStyle or str
        How the STARs name the stacks: ``relative-to-cwd`` (RELION's way: relative to
        the working directory, e.g. a RELION project) or ``relative-to-star``.
    report : bool
        Also write the QC report ``OUT/report/index.html`` (a failure there is a
        warning, never a failed job); the workers hand it thumbnails of the micrographs
        they hold, so it reads none again.
    on_progress, on_start : callable, optional
        Called with each finished micrograph's result / with the number of micrographs.

    Returns
    -------
    ExtractionSummary
    """
    inputs = ExtractInputs(
        micrographs=str(micrographs), coords_dir=_str(coords_dir), coords_suffix=coords_suffix,
        coords=_str(coords), coords_format=coords_format,
        pixel_size_angstrom=pixel_size_angstrom, ctf_dir=_str(ctf_dir),
    )
    options = RunOptions(workers=workers, dask_scheduler=dask_scheduler, overwrite=overwrite,
                         resume=resume, write_cs=write_cs, report=report,
                         path_style=PathStyle(path_style))
    return run_extraction(inputs, out_dir, params, options, on_start=on_start,
                          on_progress=on_progress)


def _str(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else str(value)


def run_extraction(
    inputs: ExtractInputs,
    out_dir: str | os.PathLike[str],
    params: ExtractParams,
    options: RunOptions | None = None,
    *,
    on_start: Callable[[int], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExtractionSummary:
    """:func:`extract` with its inputs and run options as records."""
    options = options or RunOptions()
    if options.overwrite and options.resume:
        raise ParameterError("--overwrite and --resume exclude each other")
    paths = JobPaths(Path(out_dir).absolute())
    mic_set, plan, summary = prepare_job(inputs, params, paths)
    params = plan.params  # the output box resolved for these micrographs
    if not plan.tasks:  # nothing to run: say why, write nothing
        name, reason = next(iter(plan.skipped.items()), ("", "the micrograph list is empty"))
        raise InputError(f"no micrograph to extract ({len(plan.skipped)} skipped; "
                         f"first: {name}: {reason})", inputs.micrographs)
    if options.resume:
        check_resumable(paths.out_dir)
    check_inputs_spared(paths, params, inputs, mic_set.micrographs["path"])
    made, fresh = not paths.out_dir.exists(), not holds_outputs(paths.out_dir)
    try:
        paths.out_dir.mkdir(parents=True, exist_ok=True)
        with JobLock(paths.out_dir) as lock:
            prepare_out_dir(paths, params, options, lock)
            state = JobState(paths.out_dir)
            state.start(job_definition(params, dataclasses.asdict(inputs)),
                        resume=options.resume)
            thumbnails = ThumbnailShortlist(REPORT_MICROGRAPHS) if options.report else None
            results = _run_job(plan, state, options, summary, on_start, on_progress,
                               thumbnails)
            failed = [r for r in results if r.error is not None]
            if len(failed) == len(results):  # no STAR that a later step would trust
                if fresh or options.overwrite:  # nothing of an earlier run: leave nothing
                    remove_outputs(_half_made(paths, params))
                raise CryoExtractError(f"no micrograph could be extracted ({len(failed)} "
                                       f"failed; first: {failed[0].error})")
            remove_temporaries(paths.out_dir, params)
            write_outputs(paths, mic_set, params, results, summary, write_cs=options.write_cs,
                          path_style=options.path_style)
            if thumbnails is not None:
                failed = write_job_report(paths.out_dir, inputs.micrographs, thumbnails)
                summary.warnings += [failed] if failed else []
    except OSError as exc:
        raise CryoExtractError(os_error_message(
            exc, when_full="; free some and run again with --resume")) from exc
    except CryoExtractError:
        if made:  # the folder this run made, if nothing is left in it (lock released)
            _remove_if_empty(paths.out_dir / STATE_DIR, paths.out_dir)
        raise
    return summary


def _half_made(paths: JobPaths, params: ExtractParams) -> list[Path]:
    """What a job that extracted nothing made: its stack folders (empty, or holding the
    stacks of micrographs that failed half-way) and its state."""
    out = paths.out_dir
    return [*(out / o.subdir / "Particles" for o in params.outputs),
            *(out / o.subdir for o in params.outputs if o.subdir),
            out / STATE_DIR / "done", out / STATE_DIR / "job.json"]


def _remove_if_empty(*folders: Path) -> None:
    """Remove each folder in turn if it is empty (else leave it, and those after it)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def prepare_job(
    inputs: ExtractInputs, params: ExtractParams, paths: JobPaths
) -> tuple[MicrographSet, Plan, ExtractionSummary]:
    """Read the micrograph list, check the parameters against it, plan the tasks.

    The plan carries the parameters of the tasks: ``params`` with the output box of
    ``--pixel-size-out`` worked out for these micrographs (:func:`resolve_output_size`).
    """
    mic_set = read_micrograph_set(inputs.micrographs,
                                  pixel_size_angstrom=inputs.pixel_size_angstrom)
    params = resolve_output_size(mic_set, params)
    summary = ExtractionSummary(
        out_dir=str(paths.out_dir), particles_star=str(paths.particles_star),
        box_px=params.box_px, output_box_px=params.output_box_px,
    )
    if inputs.ctf_dir is not None:
        mic_set, no_ctf = with_ctffind(mic_set, inputs.ctf_dir)
        if no_ctf:
            summary.warnings.append(f"{inputs.ctf_dir}: no CTFFIND results for "
                                    f"{len(no_ctf)} micrograph(s), e.g. {no_ctf[0]}")
    summary.warnings += box_size_warnings(params)
    summary.warnings += delocalisation_warnings(mic_set, params)
    check_box_against_first_micrograph(mic_set, params)
    check_helix(mic_set, params)
    picks = PickSource(
        coords_dir=None if inputs.coords_dir is None else Path(inputs.coords_dir),
        coords_suffix=inputs.coords_suffix,
        coords_file=None if inputs.coords is None else Path(inputs.coords),
        coords_format=inputs.coords_format,
    )
    plan = plan_tasks(mic_set, picks, params, paths)
    summary.micrographs_skipped.update(plan.skipped)
    summary.warnings += plan.warnings
    return mic_set, plan, summary


def _run_job(
    plan: Plan, state: JobState, options: RunOptions, summary: ExtractionSummary,
    on_start: Callable[[int], None] | None, on_progress: ProgressCallback | None,
    thumbnails: ThumbnailShortlist | None = None,
) -> list[MicrographResult]:
    """Results of every task: kept from a previous run where complete, else computed."""
    results: list[MicrographResult] = []
    todo = []
    for task in plan.tasks:
        done = state.load(task) if options.resume else None
        if done is None:
            todo.append(task)
        else:
            results.append(done)
    summary.micrographs_resumed = len(results)
    ranks: dict[str, int] = {}
    if thumbnails is not None:
        ranks = {name: i for i, name in enumerate(sorted(t.micrograph_name for t in plan.tasks))}
        todo = [dataclasses.replace(task, report_rank=ranks[task.micrograph_name])
                for task in todo]
    for task in todo:
        for output in task.params.outputs:
            task.stack_path(output).parent.mkdir(parents=True, exist_ok=True)
    if on_start is not None:
        on_start(len(plan.tasks))
    if on_progress is not None:
        for done in results:
            on_progress(done)
    gate = ThumbnailGate() if thumbnails is not None else None
    for result in run_tasks(todo, options.workers, options.dask_scheduler, gate):
        if result.out_of_space:
            # every other micrograph would fail the same way: stop, keep what is done
            raise CryoExtractError(f"{result.error}; no space left for the output: free "
                                   f"some and run again with --resume")
        thumbnail, result.thumbnail = result.thumbnail, None  # not kept with the rows
        if thumbnails is not None and thumbnail is not None:
            dropped = 0 if result.dropped is None else len(result.dropped)
            thumbnails.offer(result.micrograph_name, result.n_particles, dropped, thumbnail)
            worst = thumbnails.worst_kept
            if gate is not None and worst is not None:
                gate.raise_to(worst[0], worst[1], ranks[worst[2]])
        results.append(result)
        if on_progress is not None:
            on_progress(result)
    return results


def write_job_report(
    out: Path, micrographs: str, thumbnails: ThumbnailShortlist | None = None
) -> str | None:
    """The QC report of a finished job (the workers' thumbnails when given); returns the
    warning when it could not be written: a report never fails a job."""
    import warnings

    from cryoextract.report import write_report

    star_dir = Path(micrographs).parent if micrographs.endswith(".star") else Path(".")
    try:
        with warnings.catch_warnings():  # NaN picks in the rejected list are not news
            warnings.simplefilter("ignore", RuntimeWarning)
            if thumbnails is None:
                write_report(out, micrograph_dirs=(star_dir,))
            else:
                write_report(out, micrograph_dirs=(star_dir,),
                             thumbnails=thumbnails.thumbnails, max_micrographs=thumbnails.size)
    except (CryoExtractError, OSError, ValueError) as exc:
        return f"{REPORT_FAILED}: {exc}"
    return None


def check_resumable(out: Path, flag: str = "--resume") -> None:
    """``--resume`` (or ``--watch``, ``flag``, which the refusal names) only into a folder
    a cryoextract run made (or an empty one), checked before anything is created there:
    e.g. a RELION Extract job folder is left alone. A folder the run writes into that is
    a symbolic link (``Particles``, ``report``, ``also_<box>px`` and its ``Particles``,
    the job's state) is refused too: continuing would write through it, to wherever it
    points (only ``--overwrite`` replaces a link, by removing it)."""
    if out.is_dir() and holds_outputs(out) and not (out / STATE_DIR / "job.json").is_file():
        raise ParameterError(
            f"{flag}: {out} holds files that no cryoextract run made (no "
            f"{STATE_DIR}/job.json); give a new --out, or --overwrite to replace them")
    if not out.is_dir():
        return
    also = [p for p in out.glob("also_*px") if re.fullmatch(r"also_\d+px", p.name)]
    for folder in (out / "Particles", out / "report", out / STATE_DIR,
                   out / STATE_DIR / "done", *also, *(p / "Particles" for p in also)):
        if folder.is_symlink():
            raise ParameterError(
                f"{flag}: {folder} is a symbolic link, which the run would write through; "
                "remove it, or use --overwrite to replace it, or a new --out")


def check_inputs_spared(paths: JobPaths, params: ExtractParams, inputs: ExtractInputs,
                        micrographs: Iterable[str] = ()) -> None:
    """No input (micrographs STAR, picks, CTFFIND folder, the ``micrographs`` files) is
    among the files the job writes or replaces (a re-extraction from OUT/particles.star
    into OUT, say, or micrographs kept in OUT/Particles, which --overwrite removes)."""
    out = paths.out_dir
    written = [paths.particles_star, paths.summary_json, paths.rejected_tsv,
               out / "particles.cs", out / STATE_DIR, out / "report",
               *(out / o.subdir / name for o in params.outputs
                 for name in ("Particles", "particles.star", "particles.cs"))]
    check_inputs_outside(written, [inputs.micrographs if inputs.micrographs.endswith(
        ".star") else None, inputs.coords, inputs.coords_dir, inputs.ctf_dir, *micrographs],
        "the extraction writes")


def prepare_out_dir(paths: JobPaths, params: ExtractParams, options: RunOptions,
                    lock: JobLock) -> None:
    """Under ``lock``: an earlier run's outputs discarded (``--overwrite``: renamed away,
    deleted while the job runs), temporaries removed, the stack folders made."""
    out = paths.out_dir
    if holds_outputs(out) and not options.resume:
        if not options.overwrite:
            raise ParameterError(
                f"output directory {out} exists and is not empty; use --overwrite, or "
                f"--resume to continue an interrupted run")
        # remove only what a previous run wrote, so nothing stale is trusted (a link
        # goes, not what it points to); also_<box>px folders are ours, not a user's
        lock.discard([paths.particles_dir, out / STATE_DIR / "done",
                        out / STATE_DIR / "job.json", paths.particles_star,
                        paths.summary_json, paths.rejected_tsv, out / "particles.cs",
                        *(p for p in out.glob("also_*px")
                          if re.fullmatch(r"also_\d+px", p.name))])
    remove_temporaries(out, params)
    for output in params.outputs:
        (out / output.subdir / "Particles").mkdir(parents=True, exist_ok=True)


def remove_temporaries(out: Path, params: ExtractParams) -> None:
    """Drop the half-written files of a killed run or of a worker that died.

    Call under the job's lock while no task runs (before the tasks, and after the last
    one: a worker killed while writing a stack leaves its temporary file, and its
    micrograph is done again elsewhere), so nobody still writes them. Only the folders
    this job writes are looked at, not below them (another tool may write in
    ``OUT/report`` or ``OUT/<subfolder>``); a file that cannot be removed is left.
    """
    folders = {out, out / STATE_DIR, out / STATE_DIR / "done"}
    for output in params.outputs:
        folders.update((out / output.subdir, out / output.subdir / "Particles"))
    for folder in folders:
        for tmp in folder.glob(TEMPORARY_GLOB):
            try:
                if tmp.is_file():
                    tmp.unlink()
            except OSError:
                pass  # only untidy: nothing reads a temporary name
