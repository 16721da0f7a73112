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

The transforms are scipy.fft's own, pocketfft's C++ module ``pypocketfft``, called with
the arguments scipy.fft passes it: where scipy.fft is not imported yet, that module is
loaded from scipy's folder on its own (3 ms), not through ``import scipy.fft`` (0.1 s:
scipy.special for FFTLog and the array-API layer, neither used here), after a check of
its results on a known input; else, and for any input it is not given as scipy.fft
would give it (another dtype, byte order, alignment or shape), scipy.fft itself.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from itertools import pairwise
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["fft", "irfft2", "rfft", "rfft2"]

#: below this many values per thread a transform runs in the calling thread
MIN_VALUES_PER_THREAD = 2**15


def rfft(x: np.ndarray, *, axis: int = -1, workers: int = 1) -> np.ndarray:
    """``scipy.fft.rfft(x, axis=axis)`` on up to ``workers`` threads."""
    return _threaded(_rfft, x, (axis,), workers, axis=axis)


def fft(x: np.ndarray, *, axis: int = -1, workers: int = 1,
        overwrite_x: bool = False) -> np.ndarray:
    """``scipy.fft.fft(x, axis=axis)`` on up to ``workers`` threads."""
    return _threaded(_fft, x, (axis,), workers, axis=axis, overwrite_x=overwrite_x)


def rfft2(x: np.ndarray, *, workers: int = 1) -> np.ndarray:
    """``scipy.fft.rfft2(x)`` (last two axes) on up to ``workers`` threads."""
    return _threaded(_rfft2, x, (-2, -1), workers)


def irfft2(x: np.ndarray, s: Sequence[int], *, workers: int = 1,
           overwrite_x: bool = False) -> np.ndarray:
    """``scipy.fft.irfft2(x, s=s)`` (last two axes) on up to ``workers`` threads."""
    return _threaded(_irfft2, x, (-2, -1), workers, s=tuple(s), overwrite_x=overwrite_x)


# scipy.fft's normalisation codes for pypocketfft (norm="backward"): none forward, 1/n back
_FORWARD, _BACKWARD = 0, 2


def _rfft(x: np.ndarray, *, axis: int) -> np.ndarray:
    kernel = _pocketfft()
    if kernel is None or not _as_scipy_gives(x, "f") or not -x.ndim <= axis < x.ndim:
        return _scipy_fft().rfft(x, axis=axis)
    return kernel.r2c(x, (axis % x.ndim,), True, _FORWARD, None, 1)  # type: ignore[no-any-return]


def _fft(x: np.ndarray, *, axis: int, overwrite_x: bool = False) -> np.ndarray:
    kernel = _pocketfft()
    if kernel is None or not _as_scipy_gives(x, "c") or not -x.ndim <= axis < x.ndim:
        return _scipy_fft().fft(x, axis=axis, overwrite_x=overwrite_x)
    out = x if overwrite_x else None
    return kernel.c2c(x, (axis % x.ndim,), True, _FORWARD, out, 1)  # type: ignore[no-any-return]


def _rfft2(x: np.ndarray) -> np.ndarray:
    kernel = _pocketfft()
    if kernel is None or not _as_scipy_gives(x, "f") or x.ndim < 2:
        return _scipy_fft().rfft2(x)
    return kernel.r2c(x, (x.ndim - 2, x.ndim - 1), True, _FORWARD, None, 1)  # type: ignore[no-any-return]


def _irfft2(x: np.ndarray, *, s: tuple[int, int], overwrite_x: bool = False) -> np.ndarray:
    kernel = _pocketfft()
    if (kernel is None or not _as_scipy_gives(x, "c") or x.ndim < 2 or len(s) != 2
            or x.shape[-2:] != (s[0], s[1] // 2 + 1)):  # no padding or cropping here
        return _scipy_fft().irfft2(x, s=s, overwrite_x=overwrite_x)
    return kernel.c2r(x, (x.ndim - 2, x.ndim - 1), s[1], False, _BACKWARD, None, 1)  # type: ignore[no-any-return]


#: the dtypes scipy.fft hands to pocketfft as they are (native byte order: a dtype of the
#: other order does not compare equal), by kind: ``"f"`` real, ``"c"`` complex
_AS_IS = {"f": (np.dtype(np.float32), np.dtype(np.float64)),
          "c": (np.dtype(np.complex64), np.dtype(np.complex128))}


def _as_scipy_gives(x: np.ndarray, kind: str) -> bool:
    """Whether scipy.fft would hand ``x`` to pocketfft as it is (a non-empty aligned array
    of one of :data:`_AS_IS`); others go through scipy.fft."""
    return (isinstance(x, np.ndarray) and x.dtype in _AS_IS[kind] and x.flags.aligned
            and x.size > 0)


def _scipy_fft() -> ModuleType:
    """scipy.fft, imported on first use (0.1-0.17 s: not for a job that never needs it)."""
    import scipy.fft

    return scipy.fft


_POCKETFFT = "scipy.fft._pocketfft.pypocketfft"
_LOADING = threading.Lock()


def _pocketfft() -> Any:
    """scipy's ``pypocketfft`` module, loaded without ``import scipy.fft`` when that is not
    imported yet; None (scipy.fft is used) when it cannot be found, loaded, or its results
    on a known input are not the expected ones (a scipy whose private module changed).
    Loaded once, whichever threads ask first."""
    with _LOADING:
        return _pocketfft_once()


@lru_cache(maxsize=1)
def _pocketfft_once() -> Any:
    if _POCKETFFT in sys.modules:
        module = sys.modules[_POCKETFFT]
    elif "scipy.fft" in sys.modules:
        return None  # scipy.fft is there already: nothing to spare
    else:
        module = _load_pocketfft()
    try:
        impulse = np.zeros((2, 4), np.float32)
        impulse[0, 0] = 1
        spectrum = module.r2c(impulse, (0, 1), True, _FORWARD, None, 1)
        back = module.c2r(spectrum, (0, 1), 4, False, _BACKWARD, None, 1)
        rows = module.c2c(spectrum, (1,), True, _FORWARD, None, 1)
        good = (spectrum.shape == (2, 3) and spectrum.dtype == np.complex64
                and np.array_equal(spectrum, np.ones((2, 3))) and back.dtype == np.float32
                and np.array_equal(back, impulse)
                and np.array_equal(rows, [[3, 0, 0]] * 2))
    except Exception:  # a changed private API: scipy.fft's public one instead
        good = False
    return module if good else None


def _load_pocketfft() -> Any:
    """The extension module from scipy's folder, registered under its own name (a later
    ``import scipy.fft`` then uses this very module)."""
    import importlib.machinery
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec("scipy")  # finds the package; runs none of it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "fft", "_pocketfft")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "pypocketfft" + suffix)
        if os.path.isfile(path):
            break
    else:
        return None
    try:
        loader = importlib.machinery.ExtensionFileLoader(_POCKETFFT, path)
        found = importlib.util.spec_from_file_location(_POCKETFFT, path, loader=loader)
        if found is None:
            return None
        module = importlib.util.module_from_spec(found)
        loader.exec_module(module)
    except (ImportError, OSError):
        return None
    sys.modules[_POCKETFFT] = module
    return module


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
