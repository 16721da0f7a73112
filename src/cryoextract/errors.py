"""Exception types of cryoextract.

Every error a user can cause derives from :class:`CryoExtractError`; the CLI turns
these into a one-line message and exit code 2.  Anything else is a bug.
"""

from __future__ import annotations

import errno
from os import PathLike


class CryoExtractError(Exception):
    """Base class of all errors caused by input or parameters."""


class ParameterError(CryoExtractError, ValueError):
    """A parameter (box size, binning, option combination) is invalid."""


class InputError(CryoExtractError):
    """An input file is missing, unreadable or malformed.

    The message names the file and, for text formats, the 1-based line.
    """

    def __init__(
        self, message: str, path: str | PathLike[str] | None = None, line: int | None = None
    ):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(f"{where}{message}")


class MicrographError(InputError):
    """One micrograph cannot be used; the job skips it and goes on."""


def first_line(message: object) -> str:
    """The first non-blank line of a message (an exception's, say: pandas' and Dask's
    run over several), so that every error we print stays one line. Of an exception
    whose arguments are a (message, position) pair (``tokenize.TokenError``, raised by
    numpy on a bad ``.npy`` header), the message."""
    text = str(message)
    if (isinstance(message, BaseException) and len(message.args) == 2
            and isinstance(message.args[0], str)):
        text = message.args[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(message).__name__


def os_error_message(exc: OSError, *, when_full: str = "") -> str:
    """One line for a failed write or read: the file, then what went wrong; ``when_full``
    is added for a full disk (what the user can do then)."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"{where}no space left on the device{when_full}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}cannot write here ({exc.strerror})"
    return f"{where}{exc.strerror or exc}"
