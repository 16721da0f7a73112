"""Keep freed memory for reuse instead of returning it to the kernel.

Each chunk of boxes allocates tens of MiB of temporaries. glibc serves such blocks with
fresh ``mmap`` pages and unmaps them on free, so every chunk pays one page fault per
4 KiB touched, which on virtual machines costs as much as the FFTs. Raising the mmap and
trim thresholds makes glibc recycle the same heap pages. Called explicitly by the CLI and
in our own worker processes, never at import.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit systems.
_MMAP_THRESHOLD_BYTES = 32 * 2**20
_TRIM_THRESHOLD_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for this process; False where it is not glibc."""
    try:
        # the C library the interpreter runs on, among the process's loaded symbols
        # (ctypes.util.find_library would run `ldconfig -p` in every worker)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows takes no None
        from ctypes.util import find_library

        name = find_library("c")
        try:
            mallopt = ctypes.CDLL(name).mallopt if name else None
        except (OSError, AttributeError):
            mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )
