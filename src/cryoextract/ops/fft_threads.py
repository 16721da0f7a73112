"""scipy.fft transforms on several threads that never outlive the call.

``scipy.fft``'s own ``workers > 1`` starts a pocketfft thread pool that lives as long as
the process, with ``pthread_atfork`` handlers that stop it before every ``fork()`` and
start it again after. A process that forks several workers in a row (a
``ProcessPoolExecutor`` with the ``fork`` start method) can then hang for good in the
second ``fork()``: the handler waits for a pool thread that the first fork's restart
left waiting on a wake-up it never gets (seen with scipy 1.17 in our CI, where the
subtraction forks its workers after transforming the map). So no code of ours passes
``workers > 1`` to scipy.fft: these functions split the batch axes into one slice per
thread instead (pocketfft releases the GIL while it computes), and join their threads
before returning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from types import ModuleType

import numpy as np

__all__ = ["fft", "irfft2", "rfft", "rfft2"]

#: below this many values per thread a transform runs in the calling thread
MIN_VALUES_PER_THREAD = 2**15


def rfft(x: np.ndarray, *, axis: int = -1, workers: int = 1) -> np.ndarray:
    """``scipy.fft.rfft(x, axis=axis)`` on up to ``workers`` threads."""
    return _threaded(_scipy_fft().rfft, x, (axis,), workers, axis=axis)


def fft(x: np.ndarray, *, axis: int = -1, workers: int = 1,
        overwrite_x: bool = False) -> np.ndarray:
    """``scipy.fft.fft(x, axis=axis)`` on up to ``workers`` threads."""
    return _threaded(_scipy_fft().fft, x, (axis,), workers, axis=axis, overwrite_x=overwrite_x)


def rfft2(x: np.ndarray, *, workers: int = 1) -> np.ndarray:
    """``scipy.fft.rfft2(x)`` (last two axes) on up to ``workers`` threads."""
    return _threaded(_scipy_fft().rfft2, x, (-2, -1), workers)


def irfft2(x: np.ndarray, s: Sequence[int], *, workers: int = 1,
           overwrite_x: bool = False) -> np.ndarray:
    """``scipy.fft.irfft2(x, s=s)`` (last two axes) on up to ``workers`` threads."""
    return _threaded(_scipy_fft().irfft2, x, (-2, -1), workers, s=tuple(s),
                     overwrite_x=overwrite_x)


def _scipy_fft() -> ModuleType:
    """scipy.fft, imported on first use (0.17 s: not for a job that never needs it)."""
    import scipy.fft

    return scipy.fft


def _threaded(transform: Callable[..., np.ndarray], x: np.ndarray, axes: Sequence[int],
              workers: int, **options: object) -> np.ndarray:
    """``transform(x, **options)`` with ``x`` cut along its largest axis that is not
    transformed, one slice per thread (the results are the same: the transform acts
    along ``axes`` only)."""
    x = np.asarray(x)
    transformed = {a % x.ndim for a in axes}
    free = [a for a in range(x.ndim) if a not in transformed]
    threads = min(int(workers), x.size // MIN_VALUES_PER_THREAD)
    if threads < 2 or not free:
        return transform(x, **options)
    split = max(free, key=lambda a: x.shape[a])
    threads = min(threads, x.shape[split])
    if threads < 2:
        return transform(x, **options)
    bounds = np.linspace(0, x.shape[split], threads + 1).astype(int)
    parts = [x[(slice(None),) * split + (slice(a, b),)] for a, b in pairwise(bounds)]
    with ThreadPoolExecutor(threads, thread_name_prefix="cryoextract-fft") as pool:
        results = list(pool.map(lambda part: transform(part, **options), parts))
    return np.concatenate(results, axis=split)
