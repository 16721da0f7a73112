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
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np
import pandas as pd

from cryoextract.io.images import ImageLocations, read_images
from cryoextract.io.mrc import ImageStats, stack_dtype, write_images_at
from cryoextract.ops.aberrations import OpticalAberrations, even_gamma_offset, odd_phase_factors
from cryoextract.ops.ctf import CtfParams, ctf_2d_batch
from cryoextract.ops.projection import (
    FourierVolume,
    load_kernel,
    origin_shifts_px,
    project_spectra,
)
from cryoextract.ops.rotations import euler_to_matrix, viewing_direction_order
from cryoextract.ops.subtract import SubtractedBatch, subtract_images
from cryoextract.pipeline.allocator import keep_freed_memory

__all__ = [
    "CTF_COLUMNS",
    "KEY_FLIPPED",
    "KEY_GROUP",
    "KEY_POWER",
    "CtfCache",
    "GroupOptics",
    "StackTask",
    "TaskContext",
    "TaskResult",
    "batch_ctf",
    "project_groups",
    "run_task",
    "split_stack",
    "task_pool",
]

#: bytes of input images (counted as float32) in one task: what a worker holds at once
TASK_BYTES = 16 * 2**20
#: pixels of images projected and subtracted at once within a task
CHUNK_PIXELS = 2**19
#: bytes of CTF images a process keeps for later tasks
CTF_CACHE_BYTES = 64 * 2**20
#: CTF parameter columns (``TaskContext.ctf`` keys); a distinct set gets its own CTF
CTF_COLUMNS = (
    "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
    "rlnAmplitudeContrast", "rlnPhaseShift", "rlnCtfBfactor", "rlnCtfScalefactor",
)
#: positions in a CTF cache key after the :data:`CTF_COLUMNS`: 1 (plain images) or 2
#: (CTF-premultiplied), phase-flipped 0 or 1, optics group whose aberrations change the
#: CTF (:meth:`GroupOptics.ctf_groups`; 0 for the plain CTF)
KEY_POWER, KEY_FLIPPED, KEY_GROUP = range(len(CTF_COLUMNS), len(CTF_COLUMNS) + 3)


@dataclass(frozen=True)
class GroupOptics:
    """What RELION's ``ObservationModel`` adds to a prediction, per optics group (docs
    "Optical aberrations"); groups that are not keys get the plain model.

    Attributes
    ----------
    aberrations : mapping of int to OpticalAberrations
        Beam tilt, Zernike terms and magnification of the groups that have any.
    mtf_ratios : mapping of int to np.ndarray
        ``(N, N // 2 + 1)`` float32 MTF of each group over the groups' average, when they
        have different MTFs.
    """

    aberrations: Mapping[int, OpticalAberrations] = field(default_factory=dict)
    mtf_ratios: Mapping[int, np.ndarray] = field(default_factory=dict)

    def applies_to(self, group: int) -> bool:
        """Whether the group's projections differ from the plain model."""
        return group in self.aberrations or group in self.mtf_ratios

    def magnification(self, group: int) -> np.ndarray | None:
        """``(2, 2)`` ``M`` of the group, None for the identity."""
        optics = self.aberrations.get(group)
        return None if optics is None else optics.matrix

    def spectrum_factor(self, group: int, box_px: int,
                        pixel_size_angstrom: float) -> np.ndarray | None:
        """``(N, N // 2 + 1)`` factor on the group's projected spectra: the odd
        aberrations' phase times the relative MTF; None when there is neither."""
        optics = self.aberrations.get(group)
        factor = None
        if optics is not None and optics.has_odd:
            factor = _odd_phases(optics, box_px, pixel_size_angstrom)
        ratio = self.mtf_ratios.get(group)
        if ratio is not None:
            factor = ratio if factor is None else factor * ratio
        return factor

    def ctf_groups(self, groups: np.ndarray) -> np.ndarray:
        """``groups`` where the group's CTF differs from the plain model, else 0: the
        CTF cache's key column (groups with plain CTFs share their entries)."""
        changed = [g for g, a in self.aberrations.items() if a.changes_ctf]
        return np.where(np.isin(groups, changed), groups, 0)


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
    ctf : dict of str to np.ndarray
        ``(n,)`` float64 per :data:`CTF_COLUMNS`.
    ctf_power : np.ndarray
        ``(n,)`` 1 (plain images), 2 (CTF-premultiplied).
    phase_flipped : np.ndarray
        ``(n,)`` bool.
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
    ctf: dict[str, np.ndarray]
    ctf_power: np.ndarray
    phase_flipped: np.ndarray
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
    driver's to handle (it cancels the tasks and removes unpublished stacks)."""
    global _context
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

    For the map transforms, whose FFTs leave the GIL free: numba's 0.7 s of loading then
    costs no wall time. Joined on leaving, before any worker is forked; a failure to load
    is raised there. With one worker nothing runs in parallel, so nothing is started.
    """
    if workers <= 1:
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
        ctf_table, which = batch_ctf(context, rows, box)
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


@lru_cache(maxsize=32)
def _odd_phases(aberrations: OpticalAberrations, box_px: int,
                pixel_size_angstrom: float) -> np.ndarray:
    return odd_phase_factors(aberrations, box_px, pixel_size_angstrom)


@lru_cache(maxsize=32)
def _gamma_offset(aberrations: OpticalAberrations, box_px: int,
                  pixel_size_angstrom: float) -> np.ndarray:
    return even_gamma_offset(aberrations, box_px, pixel_size_angstrom)


def batch_ctf(context: TaskContext, rows: np.ndarray, box_px: int) -> tuple[np.ndarray, np.ndarray]:
    """CTFs of the rows, once per distinct parameter set (and kept for later tasks of
    this process, see :class:`CtfCache`).

    Returns
    -------
    table : np.ndarray
        ``(U, N, N // 2 + 1)`` float32 CTFs (``|CTF|`` for phase-flipped data, ``CTF²``
        for CTF-premultiplied data).
    which : np.ndarray
        ``(len(rows),)`` index of each row's CTF in ``table``.
    """
    keys = np.column_stack([context.ctf[c][rows] for c in CTF_COLUMNS]
                           + [context.ctf_power[rows], context.phase_flipped[rows],
                              context.optics.ctf_groups(context.optics_group[rows])])
    unique, which = np.unique(keys, axis=0, return_inverse=True)
    table = _ctf_cache.table(unique, box_px, context.pixel_size_angstrom,
                             context.optics.aberrations)
    return table, which.ravel()


class CtfCache:
    """CTF images by parameter set, least recently used dropped beyond a byte budget.

    The particles of a task come from many micrographs (they are grouped by viewing
    direction, not by micrograph), so the same CTFs recur from task to task.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[tuple[object, ...], np.ndarray] = OrderedDict()
        self._bytes = 0

    def table(self, keys: np.ndarray, box_px: int, pixel_size_angstrom: float,
              aberrations: Mapping[int, OpticalAberrations]) -> np.ndarray:
        """``(U, N, N // 2 + 1)`` float32 CTFs of the ``(U, 12)`` keys (the values of
        :data:`CTF_COLUMNS`, then power 1 or 2, phase-flipped 0 or 1 and optics group:
        :data:`KEY_POWER`, ...), with the ``aberrations`` of their optics groups (part
        of what a CTF is cached under)."""
        table = np.empty((len(keys), box_px, box_px // 2 + 1), dtype=np.float32)
        wanted = [(*row, float(box_px), float(pixel_size_angstrom),
                   aberrations.get(int(row[KEY_GROUP]))) for row in keys.tolist()]
        missing = []
        for k, key in enumerate(wanted):  # every hit copied before a store can drop it
            image = self._items.get(key)
            if image is None:
                missing.append(k)
            else:
                table[k] = image
                self._items.move_to_end(key)
        if missing:
            table[missing] = _ctf_images(keys[missing], box_px, pixel_size_angstrom,
                                         aberrations)
            for k in missing:
                self._store(wanted[k], table[k].copy())
        return table

    def _store(self, key: tuple[object, ...], image: np.ndarray) -> None:
        self._items[key] = image
        self._bytes += image.nbytes
        while self._bytes > self.budget_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.nbytes


def _ctf_images(keys: np.ndarray, box_px: int, pixel_size_angstrom: float,
                aberrations: Mapping[int, OpticalAberrations]) -> np.ndarray:
    params = [CtfParams.from_star_row(dict(zip(CTF_COLUMNS, key[: len(CTF_COLUMNS)], strict=True)))
              for key in keys.tolist()]
    table = np.empty((len(keys), box_px, box_px // 2 + 1), dtype=np.float32)
    groups = keys[:, KEY_GROUP].astype(np.int64)
    for group in np.unique(groups):
        which = np.flatnonzero(groups == group)
        optics = aberrations.get(int(group))
        extra = {}
        if optics is not None and optics.changes_ctf:
            extra = {"magnification": optics.matrix,
                     "gamma_offset": _gamma_offset(optics, box_px, pixel_size_angstrom)}
        table[which] = ctf_2d_batch([params[k] for k in which], box_px, pixel_size_angstrom,
                                    **extra)
    flipped = keys[:, KEY_FLIPPED] > 0
    if np.any(flipped):
        table[flipped] = np.abs(table[flipped])
    squared = keys[:, KEY_POWER] == 2
    if np.any(squared):
        table[squared] *= table[squared]
    return table


#: this process's CTFs (each worker process has its own)
_ctf_cache = CtfCache(CTF_CACHE_BYTES)
