"""Progress bars on stderr: an extraction's (micrographs, particles/s, ETA, and a JSON-lines
log) and a plain count of particles for the stack commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cryoextract.cli.common import err
from cryoextract.errors import ParameterError

if TYPE_CHECKING:
    from cryoextract.pipeline.extraction.task import MicrographResult


@contextmanager
def particle_progress() -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A transient bar of particles done (terminals only); yields the library's
    ``(on_start, on_progress)`` callbacks."""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True,
        disable=not err.is_terminal, auto_refresh=False,
    )
    with progress:
        bar = progress.add_task("particles", total=None)
        yield (lambda n: progress.update(bar, total=n, refresh=True),
               lambda k: progress.update(bar, completed=k, refresh=True))


def check_progress_log(path: Path) -> None:
    """ParameterError unless ``path`` is new, empty, or a progress log (its first line
    one of our JSON records): lines are never appended to an input (a STAR, picks, a
    micrograph) or any other file given by mistake."""
    try:
        with open(path, "rb") as stream:
            first = stream.readline(1 << 16)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise ParameterError(f"--progress-log {path} is a folder, not a file") from None
    if not first.strip():
        return
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "time" not in record:
        raise ParameterError(f"--progress-log {path} holds something else than a progress "
                             "log (its first line is not one of ours); give a new file")


class JobProgress:
    """Callbacks for :func:`cryoextract.extract` that draw a bar and/or log JSON lines.

    Each log line is one finished micrograph: ``{"time", "done", "total", "micrograph",
    "status", "particles", "particles_total", "particles_per_s"}``; the first line has
    ``"event": "start"``, the last ``"event": "end"`` (written by :meth:`finish`).
    """

    def __init__(self, *, quiet: bool = False, log_path: Path | None = None):
        self.started = time.monotonic()
        self.done = 0
        self.total = 0
        self.particles = 0
        if log_path:
            check_progress_log(log_path)
        self._log: IO[str] | None = open(log_path, "a") if log_path else None
        self._bar = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=True,
            disable=quiet or not err.is_terminal,
            # no refresh thread: worker processes are forked while the bar is live
            auto_refresh=False,
        )
        self._task = self._bar.add_task("micrographs", total=None, rate="")

    def __enter__(self) -> JobProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.__exit__(exc_type, exc, tb)
        self._emit({"event": "end" if exc is None else "error", "done": self.done,
                    "total": self.total, "particles_total": self.particles})
        if self._log is not None:
            self._log.close()

    def on_start(self, total: int) -> None:
        self.total = total
        self._bar.update(self._task, total=total, refresh=True)
        self._emit({"event": "start", "total": total})

    def on_progress(self, result: MicrographResult) -> None:
        self.done += 1
        self.particles += result.n_particles
        rate = self.particles / max(time.monotonic() - self.started, 1e-9)
        self._bar.update(self._task, advance=1, rate=f"{rate:,.0f} particles/s", refresh=True)
        self._emit({
            "done": self.done, "total": self.total, "micrograph": result.micrograph_name,
            "status": "skipped" if result.error else "done", "error": result.error,
            "particles": result.n_particles, "particles_total": self.particles,
            "particles_per_s": round(rate, 1),
        })

    def _emit(self, record: dict[str, object]) -> None:
        if self._log is None:
            return
        self._log.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self._log.flush()
