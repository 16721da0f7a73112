"""The work of a particle subtraction, cut into tasks that worker processes run.

A task (:class:`StackTask`) is a set of images of one output stack, neighbours in
viewing direction (:func:`split_stack`). Its worker reads the input images itself,
projects, subtracts and writes the results at their place in the stack's temporary file
(:func:`cryoextract.io.mrc.write_images_at`); only the fitted scales and the pixel
statistics go back to the driver (:class:`TaskResult`). What every task reads
(particles, poses, CTFs, the Fourier volumes: :class:`TaskContext`) is handed to the
workers once, when the pool starts; with ``fork`` the workers share it with the driver
without a copy.

:func:`task_pool` runs the tasks: in the driver for one worker, else in forked processes
(no GIL shared between them, and each writes its own output).
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from cryoextract.io.images import ImageLocations, read_images
from cryoextract.io.mrc import ImageStats, stack_dtype, write_images_at
from cryoextract.ops.projection import (
    FourierVolume,
    load_kernel,
    origin_shifts_px,
    project_spectra,
)
from cryoextract.ops.rotations import euler_to_matrix, viewing_direction_order
from cryoextract.ops.subtract import SubtractedBatch, subtract_images
from cryoextract.pipeline.allocator import keep_freed_memory
from cryoextract.pipeline.frame import die_with_parent
from cryoextract.pipeline.stacks.subtract_ctf import GroupOptics, batch_ctf_images

__all__ = [
    "StackTask",
    "TaskContext",
    "TaskResult",
    "project_groups",
    "run_task",
    "split_stack",
    "task_pool",
]

#: bytes of input images (counted as float32) in one task: what a worker holds at once
TASK_BYTES = 16 * 2**20
#: pixels of images projected and subtracted at once within a task
CHUNK_PIXELS = 2**19
@dataclass(frozen=True)
class TaskContext:
    """What every task of one half-set reads; arrays are per row of ``particles``.

    Attributes
    ----------
    particles : pd.DataFrame
        The particle rows (``rlnImageName``).
    locations : ImageLocations
        Where their images are.
    rotations_deg : np.ndarray
        ``(n, 3)`` ``rlnAngleRot/Tilt/Psi``.
    origins_angstrom : np.ndarray
        ``(n, 2)`` ``rlnOriginX/YAngst``.
    integer_shifts_xy : np.ndarray
        ``(n, 2)`` content shifts of the recentring (0 without).
    ctf : np.ndarray
        ``(n,)`` :data:`~cryoextract.pipeline.stacks.subtract_ctf.CTF_RECORD`.
    optics_group : np.ndarray
        ``(n,)`` int ``rlnOpticsGroup``.
    optics : GroupOptics
        Aberrations and relative MTFs by optics group.
    pixel_size_angstrom : float
        Of the images and the map.
    region : FourierVolume
        The part of the map to remove.
    whole : FourierVolume or None
        The whole map, to fit the scale (None: fit against ``region``).
    out_box_px : int
        Side of the written images.
    float16 : bool
        Write MRC mode 12.
    fit_radius_px : float or None
        Fit the scale up to this frequency (cycles per box); None: scale 1.
    """

    particles: pd.DataFrame
    locations: ImageLocations
    rotations_deg: np.ndarray
    origins_angstrom: np.ndarray
    integer_shifts_xy: np.ndarray
    ctf: np.ndarray
    optics_group: np.ndarray
    optics: GroupOptics
    pixel_size_angstrom: float
    region: FourierVolume
    whole: FourierVolume | None
    out_box_px: int
    float16: bool
    fit_radius_px: float | None


@dataclass(frozen=True)
class StackTask:
    """The subtracted image of particle row ``rows[k]`` is image ``positions[k]`` of the
    stack being written at ``part_path``."""

    part_path: str
    rows: np.ndarray
    positions: np.ndarray


@dataclass(frozen=True)
class TaskResult:
    """The scale applied to each row of a task, and the statistics of its pixels."""

    task: StackTask
    scales: np.ndarray
    stats: ImageStats


def split_stack(
    part_path: str, rows: np.ndarray, rotations_deg: np.ndarray, box_px: int
) -> list[StackTask]:
    """The tasks of one output stack (its particle ``rows`` in stack order).

    The stack's particles are ordered by viewing direction
    (:func:`viewing_direction_order`) before they are cut into tasks of at most
    :data:`TASK_BYTES` of images: consecutive slices then read the same parts of the
    Fourier volume (the denser the directions, the fewer cache misses: 0.26 against
    0.35 ms per 128-px slice for 8,000 particles sorted or in file order), whatever the
    size of a task.

    Parameters
    ----------
    part_path : str
        :attr:`cryoextract.io.mrc.StackWriter.part_path` of the stack.
    rows : np.ndarray
        ``(k,)`` particle rows of the stack's images, in stack order.
    rotations_deg : np.ndarray
        ``(n, 3)`` poses of every particle row.
    box_px : int
        Side of the input images.
    """
    order = viewing_direction_order(rotations_deg[rows])
    per_task = max(1, TASK_BYTES // (4 * box_px * box_px))
    return [StackTask(part_path, rows[part], part)
            for part in (order[i : i + per_task] for i in range(0, len(order), per_task))]


# --------------------------------------------------------------------------- executors
_context: TaskContext | None = None


def _install(context: TaskContext) -> None:
    """Worker initialiser: keep the context for :func:`_run_installed`; Ctrl-C is the
    driver's to handle (it cancels the tasks and removes unpublished stacks); the worker
    dies with the driver (killed with SIGTERM or SIGKILL, it leaves no worker behind)."""
    global _context
    die_with_parent()
    _context = context
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_installed(task: StackTask) -> TaskResult:
    if _context is None:  # pragma: no cover - the pool always installs it first
        raise RuntimeError("subtraction worker started without its context")
    return run_task(_context, task)


def _run_now(context: TaskContext, task: StackTask) -> Future[TaskResult]:
    """Run a task in the calling thread; its result or error in a done future."""
    future: Future[TaskResult] = Future()
    try:
        future.set_result(run_task(context, task))
    except BaseException as exc:  # handed to the caller through the future
        future.set_exception(exc)
    return future


Submit = Callable[[StackTask], "Future[TaskResult]"]


@contextmanager
def kernel_loading_meanwhile(workers: int) -> Iterator[None]:
    """Load the compiled interpolation loop in a thread while the body runs.

    For the map transforms, whose FFTs leave the GIL free: where the loop is numba's (the
    C library was not built, :mod:`cryoextract.ops.native`), its 1.4 s of loading then
    costs less wall time; the C library loads in milliseconds. Joined on leaving, before
    any worker is forked; a failure to load is raised there. With one worker nothing
    runs in parallel, and the C library needs no thread: nothing is started.
    """
    from cryoextract.ops.native import kernel_backend

    if workers <= 1 or kernel_backend() == "c":
        yield
        return
    failure: list[BaseException] = []

    def load() -> None:
        try:
            load_kernel()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=load, name="cryoextract-kernel-load")
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failure:
        raise failure[0]


@contextmanager
def task_pool(context: TaskContext, workers: int) -> Iterator[Submit]:
    """A function that starts a :class:`StackTask` and returns its future.

    One worker runs each task in the calling thread when it is submitted; more run in
    forked processes that inherit ``context`` on Linux (threads elsewhere, where forking a
    process that has loaded numpy is not safe). On leaving, tasks not yet started are
    cancelled.
    """
    if workers <= 1:
        yield partial(_run_now, context)
        return
    load_kernel()  # once, inherited by the workers
    pool: Executor
    if sys.platform.startswith("linux"):
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_install, initargs=(context,))
        submit: Submit = partial(pool.submit, _run_installed)
    else:  # pragma: no cover - macOS, Windows
        pool = ThreadPoolExecutor(workers)
        submit = partial(pool.submit, run_task, context)
    try:
        yield submit
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- the work
def run_task(context: TaskContext, task: StackTask) -> TaskResult:
    """Read, subtract and write the images of one task.

    The particles are projected in the task's order (by viewing direction, see
    :func:`split_stack`), :data:`CHUNK_PIXELS` at a time; each distinct CTF is computed
    once per read batch.
    """
    dtype = stack_dtype(context.float16)
    scales = np.empty(len(task.rows), dtype=np.float64)
    stats = ImageStats()
    done = 0
    for rows, images in read_images(context.particles, locations=context.locations,
                                    rows=task.rows, max_batch_bytes=TASK_BYTES):
        box = images.shape[-1]
        chunk = max(1, CHUNK_PIXELS // (box * box))
        ctf_table, which = batch_ctf_images(context.ctf[rows], box, context.pixel_size_angstrom,
                                            context.optics.aberrations)
        for start in range(0, len(rows), chunk):
            part = slice(start, start + chunk)
            result = _subtract_chunk(context, rows[part], images[part], ctf_table[which[part]])
            values = result.images.astype(dtype, copy=False)
            stats = stats.merged(ImageStats.of(values))  # while the chunk is in cache
            write_images_at(task.part_path, task.positions[done + start : done + start + chunk],
                            values)
            scales[done + start : done + start + len(values)] = result.scales
        done += len(rows)
    if done != len(task.rows):
        raise OSError(f"read {done} of the {len(task.rows)} images of a task")
    return TaskResult(task=task, scales=scales, stats=stats)


def _subtract_chunk(
    context: TaskContext, rows: np.ndarray, images: np.ndarray, ctf: np.ndarray
) -> SubtractedBatch:
    """Project, CTF-modulate, fit and subtract the particles ``rows`` (their ``images``)."""
    rotations = euler_to_matrix(*context.rotations_deg[rows].T)
    origins = context.origins_angstrom[rows]
    offsets = origin_shifts_px(origins[:, 0], origins[:, 1], context.pixel_size_angstrom)
    groups = context.optics_group[rows]
    project = partial(project_groups, context.optics, groups, rotations, offsets, ctf,
                      pixel_size_angstrom=context.pixel_size_angstrom)
    region = project(context.region)
    fit_radius = context.fit_radius_px
    whole = None
    if context.whole is not None and fit_radius is not None:
        whole = project(context.whole, max_radius_px=fit_radius)
    return subtract_images(
        images, region, fit_spectra=whole, fit=fit_radius is not None,
        fit_radius_px=fit_radius, integer_shifts_xy=context.integer_shifts_xy[rows],
        box_px=context.out_box_px, workers=1,
    )


def project_groups(
    optics: GroupOptics, groups: np.ndarray, rotations: np.ndarray, offsets: np.ndarray,
    ctf: np.ndarray, fvol: FourierVolume, *, pixel_size_angstrom: float,
    max_radius_px: float | None = None,
) -> np.ndarray:
    """:func:`project_spectra` of particles of several optics groups, each with its
    group's optics: magnification (each group keeps its own ``|M k| <= N / 2``, RELION's
    ``r_max`` test), then the odd aberrations' phase and the relative MTF.

    Parameters
    ----------
    optics : GroupOptics
        By optics group.
    groups : np.ndarray
        ``(B,)`` optics group of each particle.
    rotations, offsets, ctf
        ``(B, 3, 3)``, ``(B, 2)``, ``(B, N, N // 2 + 1)``: as :func:`project_spectra`.
    fvol : FourierVolume
        The map.
    """
    present = np.unique(groups).tolist()
    if not any(optics.applies_to(g) for g in present):
        return project_spectra(fvol, rotations, offsets, ctf, max_radius_px=max_radius_px)
    n = fvol.box_px
    out = np.empty((len(groups), n, n // 2 + 1), dtype=np.complex64)
    for group in present:
        rows = np.flatnonzero(groups == group)
        spectra = project_spectra(fvol, rotations[rows], offsets[rows], ctf[rows],
                                  max_radius_px=max_radius_px,
                                  magnification=optics.magnification(group))
        factor = optics.spectrum_factor(group, n, pixel_size_angstrom)
        if factor is not None:
            spectra *= factor
        out[rows] = spectra
    return out
