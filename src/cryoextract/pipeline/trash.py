"""Removing an earlier run's outputs without waiting for the file system.

``--overwrite`` on a folder of large stacks used to start with their deletion: freeing
the pages of hundreds of MiB to many GiB of files, 0.1 s per 400 MiB on a fast machine,
minutes for a big job on a network file system, before the first particle. Here each
output is renamed at once into a trash folder of the job's state folder
(``OUT/.cryoextract/trash-<pid>-<random>``: same file system, so the rename is atomic
and instant), and a separate ``rm -rf`` process deletes it while the job runs; the job waits
for it when it releases its lock (:class:`cryoextract.pipeline.frame.JobLock`). The
outputs are gone from their names before the job writes anything, so nothing stale is
ever read. A trash folder a killed run left behind is deleted the same way by the next
run that takes the lock, and never counts as an output.

A process, not a thread: the extraction forks its workers while the deletion runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: names of trash folders in a state folder
TRASH_PREFIX = "trash-"
#: free space the new outputs may need beyond the old ones' size before the old ones are
#: deleted at once instead (a nearly full disk: the old behaviour, nothing held twice)
FREE_MARGIN_BYTES = 1 << 30


def is_trash(name: str) -> bool:
    """Whether a state-folder entry named ``name`` is a trash folder."""
    return name.startswith(TRASH_PREFIX)


def discard(state_dir: Path, outputs: Iterable[Path]) -> Any | None:
    """Move ``outputs`` (files, folders, links: a link goes, not what it points to) out
    of the way into a new trash folder of ``state_dir`` and start deleting it.

    Returns the deleting process (``subprocess.Popen``) to wait for, or None when
    nothing was moved. Whatever cannot be renamed there (another file system: a mount
    point) is removed here and now, as is everything when ``rm`` cannot be started or
    ``state_dir`` is a link (it may lead out of OUT: nothing is moved there).
    """
    trash: Path | None = None
    for output in outputs:
        if not os.path.lexists(output):
            continue
        if state_dir.is_symlink():
            remove_now(output)
            continue
        if trash is None:  # a new name, whatever a killed run with this pid left
            state_dir.mkdir(parents=True, exist_ok=True)
            trash = Path(tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{os.getpid()}-",
                                          dir=state_dir))
        try:
            os.rename(output, trash / f"{len(os.listdir(trash))}-{output.name}")
        except OSError:
            remove_now(output)
    if trash is None:
        return None
    if _short_of_space(trash):
        remove_now(trash)
        return None
    return delete_in_background(trash)


def _short_of_space(folder: Path) -> bool:
    """Whether the disk holding ``folder`` has less free space than its contents' size
    plus :data:`FREE_MARGIN_BYTES` (the new outputs then need the old ones' space)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return False
    held = 0
    stack = [folder]
    while stack and held + FREE_MARGIN_BYTES <= free:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        held += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    return held + FREE_MARGIN_BYTES > free


def discard_leftovers(state_dir: Path) -> list[Any]:
    """Start deleting the trash folders that killed runs left in ``state_dir`` (not
    through a link)."""
    if state_dir.is_symlink():
        return []
    try:
        names = [e.name for e in os.scandir(state_dir) if is_trash(e.name) and e.is_dir()]
    except OSError:
        return []
    started = [delete_in_background(state_dir / name) for name in names]
    return [process for process in started if process is not None]


def delete_in_background(folder: Path) -> Any | None:
    """An ``rm -rf`` process deleting ``folder`` (None: removed here, ``rm`` missing)."""
    import subprocess

    try:
        # its own session: a Ctrl-C for the job does not stop the deletion half-way
        return subprocess.Popen(["rm", "-rf", "--", str(folder.absolute())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, close_fds=True,
                                start_new_session=True)
    except OSError:
        remove_now(folder)
        return None


def remove_now(path: Path) -> None:
    """Remove a file, link or folder now (a link goes, not what it points to, so nothing
    outside OUT is touched). A folder's errors are ignored; a file that cannot be removed
    raises OSError: it would be taken for this run's output."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def wait_all(processes: Iterable[Any]) -> None:
    """Wait for deleting processes; the folders of any that failed are removed here."""
    for process in processes:
        try:
            failed = process.wait() != 0
        except OSError:
            failed = True
        if failed:
            remove_now(Path(process.args[-1]))
