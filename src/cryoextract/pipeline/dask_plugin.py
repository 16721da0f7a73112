"""Dask worker plugin; imported only when a run goes to a Dask cluster."""

from __future__ import annotations

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

from cryoextract.pipeline.allocator import keep_freed_memory


class KeepFreedMemory(WorkerPlugin):
    """Tune each worker's allocator as the local pool's processes are tuned.

    The nanny starts workers with a tiny malloc trim threshold (``distributed.yaml``,
    ``MALLOC_TRIM_THRESHOLD_``), so every chunk of boxes would fault in fresh pages.
    A plugin also reaches workers that join later (adaptive ``dask-jobqueue`` clusters).
    """

    def setup(self, worker: Worker) -> None:
        keep_freed_memory()
