"""Where tasks run: in this process, a local process pool, or a Dask cluster.

Every executor runs the same :func:`~cryoextract.pipeline.jobstate.run_and_record` on
the same tasks and yields results as they finish; workers write their stacks and
finished-micrograph records themselves, the driver only gathers the rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

from cryoextract.errors import ParameterError
from cryoextract.pipeline.allocator import keep_freed_memory
from cryoextract.pipeline.jobstate import run_and_record
from cryoextract.pipeline.task import MicrographResult, MicrographTask

# Dask reschedules the tasks of a worker that died; an error is retried this many times.
DASK_RETRIES = 2


def run_tasks(
    tasks: list[MicrographTask], workers: int | None = None, dask_scheduler: str | None = None
) -> Iterator[MicrographResult]:
    """Run every task and yield its result as soon as it is done (any order)."""
    if dask_scheduler is not None:
        yield from _run_dask(tasks, dask_scheduler)
        return
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ParameterError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(tasks) <= 1:
        yield from map(run_and_record, tasks)
        return
    with ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), initializer=keep_freed_memory
    ) as pool:
        futures = [pool.submit(run_and_record, task) for task in tasks]
        for future in as_completed(futures):
            yield future.result()


def _run_dask(tasks: list[MicrographTask], address: str) -> Iterator[MicrographResult]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_as_completed

        from cryoextract.pipeline.dask_plugin import KeepFreedMemory
    except ImportError:
        raise ParameterError(
            "--dask-scheduler needs Dask: pip install 'cryoextract[dask]'"
        ) from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ParameterError(f"cannot reach the Dask scheduler {address} ({exc})") from None
    with client:
        client.register_plugin(KeepFreedMemory(), name="cryoextract-allocator")
        keys = [f"cryoextract-{task.index:08d}-{os.getpid()}" for task in tasks]
        futures = client.map(run_and_record, tasks, key=keys, pure=False, retries=DASK_RETRIES)
        for future in dask_as_completed(futures):
            yield future.result()
