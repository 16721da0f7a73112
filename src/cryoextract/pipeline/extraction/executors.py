"""Where tasks run: in this process, a local process pool, or a Dask cluster.

Every executor runs the same :func:`~cryoextract.pipeline.extraction.jobstate.run_and_record` on
the same tasks and yields results as they finish; workers write their stacks and
finished-micrograph records themselves, the driver only gathers the rows.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager

from cryoextract.errors import CryoExtractError, ParameterError, first_line
from cryoextract.pipeline.allocator import keep_freed_memory
from cryoextract.pipeline.extraction.jobstate import run_and_record
from cryoextract.pipeline.extraction.task import (
    MicrographResult,
    MicrographTask,
    set_thumbnail_gate,
)
from cryoextract.pipeline.extraction.thumbnail_gate import ThumbnailGate
from cryoextract.pipeline.frame import die_with_parent

# Dask reschedules the tasks of a worker that died; an error is retried this many times.
DASK_RETRIES = 2
#: name of the worker plugin a run registers (and removes at its end)
DASK_PLUGIN = "cryoextract-worker"


def run_tasks(
    tasks: list[MicrographTask], workers: int | None = None, dask_scheduler: str | None = None,
    gate: ThumbnailGate | None = None,
) -> Iterator[MicrographResult]:
    """Run every task and yield its result as soon as it is done (any order).

    ``gate`` lets local tasks skip report thumbnails the driver no longer needs.
    """
    if dask_scheduler is not None:
        yield from _run_dask(tasks, dask_scheduler)
        return
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ParameterError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(tasks) <= 1:
        set_thumbnail_gate(gate)
        try:
            with one_blas_thread():
                yield from map(run_and_record, tasks)
        finally:
            set_thumbnail_gate(None)
        return
    _import_before_fork()
    gc.freeze()  # the pool forks every worker at the first submit (fork start method)
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)), initializer=_prepare_worker, initargs=(gate,)
        ) as pool:
            futures = [pool.submit(run_and_record, task) for task in tasks]
            gc.unfreeze()
            for future in as_completed(futures):
                yield future.result()
    finally:
        gc.unfreeze()


def one_blas_thread() -> AbstractContextManager[object]:
    """Hold BLAS (OpenBLAS, MKL) to one thread in this process while the context lasts.

    A task is one core's work: its few small matrix products gain nothing from BLAS
    threads, whose busy-waiting after each call cost as much CPU time as the products
    (the workers' own parallelism is the processes). Dask's nanny already starts its
    workers with one BLAS thread.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _import_before_fork() -> None:
    """Import and load once in the driver what every forked worker would import or load
    on its own (pyFFTW, threadpoolctl, pyarrow's feather writer, numpy.rec, the compiled
    loops: 30-50 ms and a thousand page faults per worker).

    The driver then freezes its objects (``gc.freeze``) while the pool forks: a
    worker's garbage collections never walk the objects it inherited, and so never write
    to (and copy) the driver's memory pages, most of them huge pages (the launcher's
    malloc tunable). Unfrozen again once the workers exist.
    """
    import numpy.rec  # noqa: F401
    import pyarrow.feather  # noqa: F401
    import threadpoolctl  # noqa: F401

    from cryoextract.ops import native
    from cryoextract.ops.fourier import fftw_available

    fftw_available()
    native.normaliser()
    native.real_rows_unpacker()


def _prepare_worker(gate: ThumbnailGate | None = None) -> None:
    """Set-up of a local pool process: the allocator, one BLAS thread for its life, the
    report's thumbnail bar; it dies with the driver (a run killed with SIGTERM or
    SIGKILL leaves no worker writing into OUT)."""
    die_with_parent()
    keep_freed_memory()
    one_blas_thread()
    set_thumbnail_gate(gate)


def _run_dask(tasks: list[MicrographTask], address: str) -> Iterator[MicrographResult]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_as_completed

        from cryoextract.pipeline.extraction.dask_plugin import ExtractionWorker
    except ImportError:
        raise ParameterError(
            "--dask-scheduler needs Dask: pip install 'cryoextract[dask]'"
        ) from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ParameterError(f"cannot reach the Dask scheduler {address} ({exc})") from None
    with client:
        try:
            client.register_plugin(ExtractionWorker(), name=DASK_PLUGIN)
        except Exception as exc:  # raised on the workers, forwarded as any type
            raise ParameterError(
                f"the Dask workers at {address} cannot set up cryoextract "
                f"({first_line(exc)}); do "
                f"they run the same cryoextract version as this command?") from None
        try:
            keys = [f"cryoextract-{task.index:08d}-{os.getpid()}" for task in tasks]
            futures = client.map(_run_pickled, tasks, key=keys, pure=False,
                                 retries=DASK_RETRIES)
            for future in dask_as_completed(futures):
                try:
                    blob = future.result()
                except Exception as exc:  # e.g. KilledWorker: workers died on every retry
                    raise CryoExtractError(
                        f"Dask could not run task {future.key} on {address}: "
                        f"{type(exc).__name__}: {first_line(exc)}") from None
                yield pickle.loads(blob)
        finally:
            try:
                client.unregister_worker_plugin(DASK_PLUGIN)
            except Exception:  # the cluster is gone: nothing left to restore
                pass


def _run_pickled(task: MicrographTask) -> bytes:
    """:func:`run_and_record`, its result pickled: Dask then moves plain bytes, not
    DataFrames through its own (slower) pandas serialisation."""
    return pickle.dumps(run_and_record(task), protocol=pickle.HIGHEST_PROTOCOL)

