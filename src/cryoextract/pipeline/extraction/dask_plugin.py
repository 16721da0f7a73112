"""Dask worker plugin; imported only when a run goes to a Dask cluster."""

from __future__ import annotations

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

from cryoextract.pipeline.allocator import keep_freed_memory

#: Dask's statistical profiler: a stack sample of every thread each 10 ms, taken on the
#: worker's event loop while holding the GIL (about a tenth of an extraction worker's time)
PROFILER_CALLBACKS = ("profile", "profile-cycle")


class ExtractionWorker(WorkerPlugin):
    """Set each worker up for extraction while a run uses it; undone when removed.

    - the allocator is tuned as the local pool's processes: the nanny starts workers
      with a tiny malloc trim threshold (``distributed.yaml``,
      ``MALLOC_TRIM_THRESHOLD_``), so every chunk of boxes would fault in fresh pages;
    - the statistical profiler is paused, and restarted by :meth:`teardown` (the run
      removes the plugin when it ends).

    A plugin also reaches workers that join later (adaptive ``dask-jobqueue`` clusters).
    """

    def __init__(self) -> None:
        self.paused: list[str] = []

    def setup(self, worker: Worker) -> None:
        keep_freed_memory()
        for name in PROFILER_CALLBACKS:
            callback = worker.periodic_callbacks.get(name)
            if callback is not None and callback.is_running():
                callback.stop()
                self.paused.append(name)

    def teardown(self, worker: Worker) -> None:
        for name in self.paused:
            callback = worker.periodic_callbacks.get(name)
            if callback is not None:
                callback.start()
        self.paused.clear()
