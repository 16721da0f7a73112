"""File names made from data (micrograph paths, column names): safe, unique, deterministic.

Every file name that cryoextract builds from a string it did not choose itself goes
through :func:`safe_component` (one name, no folder) and, for a set of names that share a
folder, :func:`unique_components` (docs/conventions.md, "Paths"). The result:

- is one path component: no ``/`` or ``\\``, never ``.`` or ``..`` nor any run of dots;
- holds only letters and digits (Unicode), ``.``, ``_``, ``+``, ``-``: no spaces, quotes,
  control characters or newlines, nor ``@``, ``:``, ``#``, which RELION reads as image
  index, format and ``#`` separators in a file name; every other character becomes ``_``;
- does not start with ``.`` or ``-`` (no hidden file, no option to a shell command);
- is at most :data:`MAX_BYTES` bytes of UTF-8 (a suffix such as ``.mrcs`` still fits
  the usual 255-byte limit of a file name);
- within a folder, differs from every other name in more than letter case (a
  case-insensitive file system would otherwise merge them): names that clash get
  ``_`` and the first :data:`HASH_CHARS` hex digits of the SHA-256 of their original
  string, the same on every run, so ``--resume`` finds the same names again.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

__all__ = ["HASH_CHARS", "MAX_BYTES", "safe_component", "unique_components"]

#: longest name, in bytes of UTF-8, before a suffix is added
MAX_BYTES = 200
#: hex digits of the hash that tells clashing names apart
HASH_CHARS = 10
_KEPT = frozenset("._+-")
_DOTS = re.compile(r"\.{2,}")
_UNDERSCORES = re.compile(r"_{2,}")


def safe_component(text: str, *, max_bytes: int = MAX_BYTES) -> str:
    """One safe file-name component made from ``text`` (see the module docstring).

    Parameters
    ----------
    text : str
        Any string: a path (its separators become ``_``), a column name, a label.
    max_bytes : int
        Longest result in bytes of UTF-8 (at least :data:`HASH_CHARS` + 2). A longer name
        is cut and ends in ``_`` and the hash of ``text``, so two long names that share
        their start stay apart.

    Returns
    -------
    str
        A non-empty name; the same ``text`` always gives the same name.
    """
    if max_bytes < HASH_CHARS + 2:
        raise ValueError(f"max_bytes must be at least {HASH_CHARS + 2}, got {max_bytes}")
    normal = unicodedata.normalize("NFC", str(text))
    name = "".join(c if c in _KEPT or c.isalnum() else "_" for c in normal)
    name = _UNDERSCORES.sub("_", _DOTS.sub(".", name))
    name = name.lstrip(".-").rstrip(".")
    if not name.strip("_"):
        name = "_" + _digest(text)
    if len(name.encode("utf-8")) > max_bytes:
        name = _cut(name, max_bytes - HASH_CHARS - 1) + "_" + _digest(text)
    return name


def unique_components(
    texts: Sequence[str], keys: Sequence[str] | None = None, *, max_bytes: int = MAX_BYTES
) -> list[str]:
    """Safe names (:func:`safe_component`) for things whose files share one folder.

    Things with equal keys get equal names (they are the same thing); different keys
    get names that differ in more than letter case. Every member of a clash (after
    :func:`safe_component`, compared case-insensitively) gets ``_<hash of its key>``
    added, so the name of a thing does not depend on the order of the others.

    Parameters
    ----------
    texts : sequence of str
        What each name is made from, e.g. the stem of a micrograph's file name.
    keys : sequence of str, optional
        What tells the things apart and is hashed on a clash, e.g. the micrograph path
        as listed; default ``texts``.
    max_bytes : int
        Longest name, bytes of UTF-8.

    Returns
    -------
    list of str
        One name per thing, in order.
    """
    keys = texts if keys is None else keys
    if len(keys) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(keys)} keys")
    names = [safe_component(t, max_bytes=max_bytes) for t in texts]
    room = max_bytes - HASH_CHARS - 1
    for _ in range(4):  # a name with a hash may equal another string's own name: again
        clashing = _clashing(keys, names)
        if not clashing:
            return names
        names = [f"{_cut(name, room)}_{_digest(key)}" if name.casefold() in clashing
                 else name for key, name in zip(keys, names, strict=True)]
    raise ValueError(f"no unique file names for {len(keys)} strings (hash collision)")


def _clashing(keys: Sequence[str], names: list[str]) -> set[str]:
    """Case-folded names given to more than one distinct key."""
    owners: dict[str, set[str]] = {}
    for key, name in zip(keys, names, strict=True):
        owners.setdefault(name.casefold(), set()).add(key)
    return {key for key, members in owners.items() if len(members) > 1}


def _digest(text: str) -> str:
    return hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def _cut(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` bytes of UTF-8, on a character boundary."""
    data = name.encode("utf-8")
    if len(data) <= max_bytes:
        return name
    return data[:max_bytes].decode("utf-8", "ignore")
