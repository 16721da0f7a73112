"""Files written under a temporary name and renamed into place when complete.

Every output of the project is written this way, so that no later step (nor a resumed
run) ever trusts a half-written file under its final name. The temporary name of
``DIR/NAME`` is ``DIR/.NAME.<pid>.tmp`` (:func:`temporary_path`): hidden, per process,
and matched by :data:`TEMPORARY_GLOB`, which is how a job finds what a killed run or a
dead worker left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["TEMPORARY_GLOB", "atomic_file", "atomic_path", "temporary_path",
           "write_text_atomic"]

#: what every temporary name matches (``Path.glob`` pattern)
TEMPORARY_GLOB = ".*.tmp"


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """The name ``path`` is written under by this process until it is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """The temporary name to write ``path`` under, for writers that open the file
    themselves (mrcfile, starfile); renamed to ``path`` when the block ends without
    error. On an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None and os.fspath(exc.filename) == os.fspath(tmp):
            exc.filename = os.fspath(path)  # the error names the output, not its temporary
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", **open_args: Any
                ) -> Iterator[IO[Any]]:
    """An open temporary file renamed to ``path`` when the block ends without error.

    On an error the temporary file is removed and ``path`` is left as it was.
    """
    with atomic_path(path) as tmp, open(tmp, mode, **open_args) as stream:
        yield stream


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, "w", encoding="utf-8", newline="\n") as stream:
        stream.write(text)
