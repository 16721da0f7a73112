"""The file name of a compiled loop: ``_<stem>_<12 hex of the C source's sha256>.so``
beside its source, so that a library built from another version of the source is never
loaded. Standard library only: ``hatch_build.py`` runs this file at build time, where
the package's dependencies are not installed."""

from __future__ import annotations

import hashlib
from pathlib import Path


def library_name(source: Path) -> str:
    """The library's file name for the C file ``source``."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return f"_{source.stem}_{digest}.so"
