"""The job frame every writing command shares: the output folder's lock, claiming the
folder, where a job's files go (:class:`JobPaths`) and the files every job writes last
(summary, rejected rows), atomically.

Extraction (``pipeline/extraction/``: ``extract.py``, ``watch.py``) and the particle-stack
commands (``pipeline/stacks/``) take the same lock, ``OUT/.cryoextract/lock``:

- it is an advisory ``flock`` on that file, so two runs started together can never both
  hold it, and a run killed with ``kill -9`` leaves no lock behind (the kernel releases
  it); the file then only says who held it last;
- a lock file whose writer still runs but holds no ``flock`` (a run on another host, or
  one written by hand) is respected when its process is alive (same host), else taken
  over.

A command whose output may be a single file (``select --out x.star``, ``convert --out
x.star``) locks that file instead (:func:`output_lock`): the same lock on a hidden
``.x.star.lock`` beside it, removed when the run ends, so that two runs on one file never
both write it, and a run writing a file into someone's folder (an extraction's, say)
does not lock that whole folder. Its summary is a sidecar ``x.star.summary.json``
(:func:`summary_path`), never a bare ``summary.json`` beside it, which could replace the
folder's own (an extraction's). A folder output gets ``OUT/summary.json``
(:func:`write_summary`).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryoextract.errors import CryoExtractError, ParameterError
from cryoextract.io.atomic import TEMPORARY_GLOB, atomic_file
from cryoextract.io.star_text import value_problem
from cryoextract.pipeline.trash import (
    discard,
    discard_leftovers,
    is_trash,
    remove_now,
    wait_all,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "STATE_DIR",
    "JobLock",
    "JobLockedError",
    "JobPaths",
    "check_output_free",
    "claim_output",
    "die_with_parent",
    "holds_outputs",
    "output_lock",
    "remove_outputs",
    "summary_path",
    "write_summary",
    "write_tsv_atomic",
]

STATE_DIR = ".cryoextract"


@dataclass(frozen=True)
class JobPaths:
    """Where a job writes: stacks under ``Particles/``, one STAR, a summary."""

    out_dir: Path

    @property
    def particles_dir(self) -> Path:
        return self.out_dir / "Particles"

    @property
    def particles_star(self) -> Path:
        return self.out_dir / "particles.star"

    @property
    def summary_json(self) -> Path:
        return self.out_dir / "summary.json"

    @property
    def rejected_tsv(self) -> Path:
        return self.out_dir / "rejected_particles.tsv"


class JobLockedError(CryoExtractError):
    """Another run is writing into the same output directory."""


class JobLock:
    """An exclusive lock on an output directory; a lock left by a dead run is taken over."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / STATE_DIR / "lock"
        self.target = Path(out_dir)  # what the lock holds, for the messages
        self.stale_owner: dict[str, Any] | None = None
        self._fd: int | None = None
        self._deleting: list[Any] = []  # rm processes of discarded outputs

    def __enter__(self) -> JobLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(8):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_owner(fd)
                os.close(fd)
                raise self._locked(owner) from None
            if not _still_at(fd, self.path):  # its holder removed it as we opened it
                os.close(fd)
                continue
            owner = _read_owner(fd)
            if owner and _alive(owner) and owner.get("pid") != os.getpid():
                os.close(fd)
                raise self._locked(owner)
            self.stale_owner = owner
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self._fd = fd
            _HELD.add(self)
            if self.path.parent.name == STATE_DIR:  # trash a killed run left
                self._deleting += discard_leftovers(self.path.parent)
            return self
        raise JobLockedError(f"cannot take the lock {self.path}")

    def discard(self, outputs: Iterable[Path]) -> None:
        """Remove a previous run's ``outputs`` of this folder without waiting: renamed
        away at once, deleted while the job runs (:mod:`cryoextract.pipeline.trash`);
        the lock waits for the deletion when it is released."""
        process = discard(self.path.parent, outputs)
        if process is not None:
            self._deleting.append(process)

    def __exit__(self, *_: object) -> None:
        deleting, self._deleting = self._deleting, []
        try:
            wait_all(deleting)
        finally:  # released even if the wait is interrupted
            _HELD.discard(self)
            if self._fd is not None:
                self.path.unlink(missing_ok=True)  # while holding it: nobody else has it
                os.close(self._fd)
                self._fd = None

    def _locked(self, owner: dict[str, Any] | None) -> JobLockedError:
        who = ""
        if owner:
            who = (f" (pid {owner.get('pid')} on {owner.get('host')}, started "
                   f"{time.ctime(owner.get('started', 0))})")
        return JobLockedError(f"{self.target} is in use by another run{who}; "
                              f"wait for it, or remove {self.path} if that run is gone")


def output_lock(output: Path, *, single_file: bool) -> JobLock:
    """The lock of a command's output: a folder's own (``OUT/.cryoextract/lock``), or for
    a single output file ``FILE`` the same lock on ``.FILE.lock`` beside it (removed when
    the run ends); see the module docstring."""
    output = Path(output)
    if not single_file:
        return JobLock(output)
    lock = JobLock(output.parent)
    lock.path = output.parent / f".{output.name}.lock"
    lock.target = output
    return lock


def summary_path(output: Path, *, single_file: bool) -> Path:
    """Where a command's summary goes: ``OUT/summary.json`` for a folder, the sidecar
    ``FILE.summary.json`` for a single output file."""
    output = Path(output)
    if single_file:
        return output.with_name(f"{output.name}.summary.json")
    return output / "summary.json"


def write_summary(path: Path, command: str, *, inputs: Iterable[str | os.PathLike[str]],
                  parameters: dict[str, Any], counts: dict[str, Any],
                  warnings: Iterable[str] = (), **more: Any) -> None:
    """A command's ``summary.json`` (see :func:`summary_path`), written atomically: the
    command, its inputs, parameters, counts in and out, warnings and the cryoextract
    version, and any ``more`` fields."""
    import cryoextract

    record = {"command": command, "cryoextract_version": cryoextract.__version__,
              "inputs": [os.fspath(p) for p in inputs], "parameters": parameters,
              "counts": counts, **more, "warnings": list(warnings)}
    with atomic_file(path, "w", encoding="utf-8", newline="\n") as stream:
        stream.write(json.dumps(record, indent=2, default=str) + "\n")


#: the locks this process holds; a forked child (a worker) lets go of its copies
_HELD: set[JobLock] = set()
#: in a forked child, the process it was forked from
_FORKED_FROM: int | None = None


def _forget_locks() -> None:
    """In a forked child: close the inherited lock descriptors, so that a worker left
    behind by a killed run holds no lock (the parent's own hold is unchanged: a flock
    lasts while any descriptor of it is open), and never removes the lock file."""
    global _FORKED_FROM
    _FORKED_FROM = os.getppid()
    for lock in _HELD:
        if lock._fd is not None:
            os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks)


def die_with_parent() -> None:
    """Worker initialiser: be killed when the process that forked it dies (Linux
    ``PR_SET_PDEATHSIG``), so that a run killed with SIGTERM or SIGKILL leaves no worker
    behind, writing into its folder; elsewhere nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    parent = _FORKED_FROM or os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: nothing to be done
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _read_owner(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 4096, 0).decode()
        owner = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _still_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the run that wrote a lock still runs (only checkable on the same host)."""
    if owner.get("host") != socket.gethostname():
        return True  # cannot check another host's processes: assume it runs
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holds_outputs(out: Path) -> bool:
    """Anything in ``out`` but our own lock (and trash being deleted, :mod:`.trash`)."""
    if not out.is_dir():
        return False
    for entry in out.iterdir():
        if entry.name != STATE_DIR:
            return True
        if entry.is_dir() and any(e.name != "lock" and not is_trash(e.name)
                                  for e in entry.iterdir()):
            return True
    return False


@contextmanager
def claim_output(
    out_dir: Path, *, overwrite: bool, outputs: Iterable[Path],
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[None]:
    """Hold ``out_dir`` for one run: locked, and empty of earlier outputs.

    A folder that holds anything is refused unless ``overwrite``; then only ``outputs``
    (this command's own files and folders) are removed, after checking that no input
    lies among them. Temporary files a killed run left are removed. The lock is held
    until the block ends.

    Raises
    ------
    ParameterError
        Not empty without ``overwrite``, or an input would be replaced.
    JobLockedError
        Another run holds the folder.
    """
    outputs = [Path(p) for p in outputs]
    check_output_free(out_dir, overwrite)  # before anything is created there
    if overwrite:
        check_inputs_outside(outputs, inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with JobLock(out_dir) as lock:
        if holds_outputs(out_dir):
            if not overwrite:  # a run that finished since the first look
                raise ParameterError(f"output directory {out_dir} exists and is not empty; "
                                     "use --overwrite")
            lock.discard(outputs)
        for folder in {out_dir, *(p for p in outputs if p.is_dir())}:
            for tmp in folder.glob(TEMPORARY_GLOB):
                tmp.unlink(missing_ok=True)
        yield


def remove_outputs(outputs: Iterable[Path]) -> None:
    """Remove a previous run's outputs (files and folders); a link goes, not what it
    points to, so that nothing is written through it to outside OUT."""
    for stale in outputs:
        remove_now(stale)


def check_output_free(out_dir: Path, overwrite: bool) -> None:
    """:func:`claim_output`'s first look, for a command that makes it before its own
    checks: ParameterError for a folder no STAR can name, or one that holds anything
    (without ``overwrite``)."""
    check_output_name(out_dir)
    if holds_outputs(out_dir) and not overwrite:
        raise ParameterError(f"output directory {out_dir} exists and is not empty; "
                             "use --overwrite")


def check_output_name(out_dir: Path) -> None:
    """ParameterError for an output folder no STAR file can name (a newline in it): its
    files' names go into the STARs the job writes, so it is refused before the job."""
    problem = value_problem(str(out_dir))
    if problem is not None:
        raise ParameterError(f"output folder {str(out_dir)!r} {problem}")


def check_inputs_outside(outputs: Iterable[Path],
                         inputs: Iterable[str | os.PathLike[str] | None],
                         what: str = "--overwrite would replace") -> None:
    """ParameterError when an input is, or lies in, an output the command replaces."""
    # os.path.realpath, not Path.resolve: a symlink loop among the inputs (a micrograph
    # the task will report unreadable) makes Path.resolve raise RuntimeError on 3.11
    targets = [Path(os.path.realpath(p)) for p in outputs]
    for item in inputs:
        if item is None:
            continue
        source = Path(os.path.realpath(item))
        for target in targets:
            if source == target or source.is_relative_to(target):
                where = "is" if source == target else "lies in"
                raise ParameterError(f"input {item} {where} {target}, which {what}; "
                                     "choose another --out")


def write_tsv_atomic(path: Path, table: pd.DataFrame) -> None:
    """A tab-separated table (e.g. ``rejected_particles.tsv``), written atomically."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as stream:
        table.to_csv(stream, sep="\t", index=False)
