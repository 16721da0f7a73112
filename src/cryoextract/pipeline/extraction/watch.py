"""Live mode: follow a growing micrographs STAR (or glob) and extract as data arrive.

A micrograph is extracted once its micrograph file and its picks have not changed for
``settle_s`` seconds; after each batch the outputs are rewritten atomically, so
``particles.star`` is valid at every moment. Finished micrographs are recorded as in a
normal run, so a restarted watch (or ``--resume``) continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryoextract.errors import CryoExtractError, ParameterError
from cryoextract.io.micrographs import MicrographSet
from cryoextract.pipeline.extraction.executors import run_tasks
from cryoextract.pipeline.extraction.extract import (
    ExtractInputs,
    ProgressCallback,
    RunOptions,
    check_inputs_spared,
    check_resumable,
    prepare_job,
    prepare_out_dir,
    remove_temporaries,
)
from cryoextract.pipeline.extraction.jobstate import JobState, job_definition
from cryoextract.pipeline.extraction.outputs import ExtractionSummary, write_outputs
from cryoextract.pipeline.extraction.params import ExtractParams, check_number
from cryoextract.pipeline.extraction.task import MicrographResult, MicrographTask
from cryoextract.pipeline.frame import JobLock, JobPaths


@dataclasses.dataclass(frozen=True)
class WatchOptions:
    """How live mode polls: ``settle_s`` unchanged before use, ``idle_timeout_s`` to stop."""

    settle_s: float = 10.0
    poll_s: float = 2.0
    idle_timeout_s: float | None = None

    def __post_init__(self) -> None:
        check_number(self.settle_s, "--settle")
        check_number(self.poll_s, "the poll interval", above=0)
        if self.settle_s < 0:
            raise ParameterError(f"--settle must be >= 0, got {self.settle_s}")
        if self.idle_timeout_s is not None:
            check_number(self.idle_timeout_s, "--watch-timeout", above=0)


def watch_extraction(
    inputs: ExtractInputs,
    out_dir: str | os.PathLike[str],
    params: ExtractParams,
    options: RunOptions | None = None,
    watch: WatchOptions | None = None,
    *,
    stop: threading.Event | None = None,
    on_progress: ProgressCallback | None = None,
    on_batch: Callable[[ExtractionSummary], None] | None = None,
) -> ExtractionSummary:
    """Extract micrographs as they arrive until ``stop`` is set or nothing new comes.

    ``idle_timeout_s`` ends the watch after that long without a new micrograph.
    """
    stop = stop or threading.Event()
    options = options or RunOptions()
    watch = watch or WatchOptions()
    paths = JobPaths(Path(out_dir).absolute())
    # a watch continues its folder's job (a folder no cryoextract run made is refused),
    # or with --overwrite replaces it
    resume = not options.overwrite
    if resume:
        check_resumable(paths.out_dir, "--watch")
    check_inputs_spared(paths, params, inputs)
    paths.out_dir.mkdir(parents=True, exist_ok=True)
    with JobLock(paths.out_dir) as lock:
        prepare_out_dir(paths, params, dataclasses.replace(options, resume=resume), lock)
        state = JobState(paths.out_dir)
        state.start(job_definition(params, dataclasses.asdict(inputs)), resume=resume,
                    flag="--watch")
        results: dict[str, MicrographResult] = {}
        summary = ExtractionSummary(out_dir=str(paths.out_dir),
                                    particles_star=str(paths.particles_star))
        last_new = time.monotonic()
        while not stop.is_set():
            batch = _ready_tasks(inputs, params, paths, state, results, watch)
            if batch is not None:
                mic_set, tasks, job_params = batch
                if tasks:
                    last_new = time.monotonic()
                    for result in run_tasks(tasks, options.workers, options.dask_scheduler):
                        results[result.micrograph_name] = result
                        if on_progress is not None:
                            on_progress(result)
                    remove_temporaries(paths.out_dir, job_params)
                    summary = _publish(paths, mic_set, job_params, results, options)
                    if on_batch is not None:
                        on_batch(summary)
            idle = time.monotonic() - last_new
            if watch.idle_timeout_s is not None and idle >= watch.idle_timeout_s:
                break
            stop.wait(watch.poll_s)
    return summary


def _ready_tasks(
    inputs: ExtractInputs, params: ExtractParams, paths: JobPaths, state: JobState,
    results: dict[str, MicrographResult], watch: WatchOptions,
) -> tuple[MicrographSet, list[MicrographTask], ExtractParams] | None:
    """Tasks of micrographs not done yet whose files have settled, and the parameters they
    carry (:attr:`Plan.params`); None if unreadable now."""
    try:
        mic_set, plan, _ = prepare_job(inputs, params, paths)
    except ParameterError:
        raise  # parameters that cannot work with these micrographs: waiting changes nothing
    except CryoExtractError:
        return None  # e.g. the STAR is being written: try again at the next poll
    now = time.time()
    ready = []
    for task in plan.tasks:
        if task.micrograph_name in results:
            continue
        done = state.load(task)
        if done is not None:
            results[task.micrograph_name] = done
            continue
        if _settled(task, now, watch.settle_s):
            ready.append(task)
    for task in ready:
        for output in plan.params.outputs:
            task.stack_path(output).parent.mkdir(parents=True, exist_ok=True)
    return mic_set, ready, plan.params


def _settled(task: MicrographTask, now: float, settle_s: float) -> bool:
    for path in (task.micrograph_path, task.coords_path):
        if path is None:
            continue
        try:
            if now - os.stat(path).st_mtime < settle_s:
                return False
        except OSError:
            return False
    return True


def _publish(
    paths: JobPaths, mic_set: MicrographSet, params: ExtractParams,
    results: dict[str, MicrographResult], options: RunOptions,
) -> ExtractionSummary:
    summary = ExtractionSummary(out_dir=str(paths.out_dir),
                                particles_star=str(paths.particles_star),
                                box_px=params.box_px, output_box_px=params.output_box_px)
    write_outputs(paths, mic_set, params, list(results.values()), summary,
                  write_cs=options.write_cs, path_style=options.path_style)
    return summary
