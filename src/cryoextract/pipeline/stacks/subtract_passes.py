"""The passes of a subtraction: one per half-set, each with its own Fourier volumes,
workers and output stacks (:mod:`.subtract_tasks` does the work of each task).

Memory is bounded whatever the number of particles: the work is cut into tasks of
consecutive images of one output stack, each worker reads, subtracts and writes its own
tasks, and each half-set is done in its own pass, so at most two Fourier volumes (region
to remove, whole map for the scale fit) are held at once, shared by the workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoextract.errors import CryoExtractError
from cryoextract.io.images import format_image_name
from cryoextract.io.mrc import StackWriter
from cryoextract.ops.projection import FourierVolume, fourier_volume
from cryoextract.options import ScaleMode
from cryoextract.pipeline.frame import JobPaths
from cryoextract.pipeline.stacks.subtract_inputs import SubtractJob
from cryoextract.pipeline.stacks.subtract_maps import region_volume
from cryoextract.pipeline.stacks.subtract_params import SubtractParams
from cryoextract.pipeline.stacks.subtract_tasks import (
    StackTask,
    TaskContext,
    TaskResult,
    kernel_loading_meanwhile,
    split_stack,
    task_pool,
)

ProgressCallback = Callable[[int], None]

@dataclass(frozen=True)
class PassSettings:
    """What the passes remove and how they write: the job's parameters, the mask, the
    output box and the workers."""

    params: SubtractParams
    mask: np.ndarray | None
    box_px: int
    workers: int


@dataclass
class PassesResult:
    """Per row: the new image name (relative to OUT) and the scale applied; the stacks
    written and the largest pair of Fourier volumes held."""

    names: np.ndarray
    scales: np.ndarray
    stacks: list[str] = field(default_factory=list)
    fourier_volume_bytes: int = 0


def run_passes(
    job: SubtractJob, good: np.ndarray, shifts: np.ndarray, paths: JobPaths,
    settings: PassSettings, on_progress: ProgressCallback | None,
) -> PassesResult:
    """One pass per half-set (its own Fourier volumes, workers and stacks)."""
    done = PassesResult(np.empty(len(job.particles), dtype=object),
                        np.full(len(job.particles), np.nan))
    progress = Progress(on_progress)
    workers = settings.workers
    params = settings.params
    for half, stacks in _plan_stacks(job, good, params.batch_size):
        with kernel_loading_meanwhile(workers):
            region, whole = _half_volumes(job.maps.volumes[half], settings)
        done.fourier_volume_bytes = max(done.fourier_volume_bytes, region.nbytes + (
            0 if whole is None else whole.nbytes))
        context = TaskContext(
            particles=job.particles, locations=job.locations, rotations_deg=job.rotations,
            origins_angstrom=job.origins_angstrom, integer_shifts_xy=shifts, ctf=job.ctf,
            optics_group=job.optics_group, optics=job.optics,
            pixel_size_angstrom=job.pixel_size_angstrom, region=region, whole=whole,
            out_box_px=settings.box_px, float16=params.float16,
            fit_radius_px=params.fit_radius_px(job.maps.box_px),
        )
        targets = []
        for rows in stacks:
            relative = f"{paths.particles_dir.name}/subtracted_{len(done.stacks):06d}.mrcs"
            done.names[rows] = [format_image_name(i, relative) for i in range(len(rows))]
            done.stacks.append(str(paths.out_dir / relative))
            targets.append((paths.out_dir / relative, rows))
        _write_stacks(context, targets, workers, done.scales, progress)
        del context, region, whole
    return done


@dataclass
class Progress:
    """Images written so far, reported to the caller's callback."""

    callback: ProgressCallback | None
    done: int = 0

    def add(self, count: int) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(self.done)


def _write_stacks(
    context: TaskContext, targets: list[tuple[Path, np.ndarray]], workers: int,
    scales: np.ndarray, progress: Progress,
) -> None:
    """Write the stacks ``(path, rows)`` of one half-set; fills ``scales[rows]``.

    The tasks are submitted in stack order, at most two per worker at a time; a stack is
    opened with its first task and published (renamed into place) when its last one is
    done. On any error every unpublished stack is removed.
    """
    writers: dict[str, StackWriter] = {}
    box, out_box, apix = context.region.box_px, context.out_box_px, context.pixel_size_angstrom

    def tasks() -> Iterator[StackTask]:
        for path, rows in targets:
            writer = StackWriter(path, len(rows), (out_box, out_box), apix,
                                 float16=context.float16)
            writers[str(writer.part_path)] = writer
            yield from split_stack(str(writer.part_path), rows, context.rotations_deg, box)

    def finish(result: TaskResult) -> None:
        task = result.task
        scales[task.rows] = result.scales
        writer = writers[task.part_path]
        writer.record(len(task.rows), result.stats)
        if writer.written == writer.count:
            writer.close()
            del writers[task.part_path]
        progress.add(len(task.rows))

    try:
        with task_pool(context, workers) as submit:
            pending: set[Future[TaskResult]] = set()
            for task in tasks():
                pending.add(submit(task))
                while len(pending) >= 2 * workers:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        finish(_result(future))
            for future in as_completed(pending):
                finish(_result(future))
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise


def _result(future: Future[TaskResult]) -> TaskResult:
    try:
        return future.result()
    except BrokenExecutor:
        raise CryoExtractError("a subtraction worker process died (out of memory? try fewer "
                               "--workers)") from None


def _plan_stacks(
    job: SubtractJob, good: np.ndarray, batch_size: int
) -> list[tuple[int, list[np.ndarray]]]:
    """Per half-set (in order 0 or 1, 2), its good rows in table order cut into stacks."""
    plan = []
    for half in sorted(job.maps.volumes):
        rows = good[job.subset[good] == half]
        if len(rows):
            plan.append((half, [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]))
    return plan


def _half_volumes(volume: np.ndarray, settings: PassSettings
                  ) -> tuple[FourierVolume, FourierVolume | None]:
    """Fourier volumes of the region to remove and, to fit the scale, of the whole map
    (None when the region is the whole map or with ``--scale none``)."""
    padding, workers = settings.params.padding_factor, settings.workers
    region = region_volume(volume, settings.mask, settings.params.mask_mode)
    whole_map = region is volume
    # the region is a product made here (unless it is the map): its memory is scratch
    region_fv = fourier_volume(region, padding_factor=padding, workers=workers,
                               overwrite_input=not whole_map)
    del region
    if settings.params.scale is ScaleMode.NONE or whole_map:
        return region_fv, None
    return region_fv, fourier_volume(volume, padding_factor=padding, workers=workers)
