"""The command's entry point: prepares the process, then runs the typer app.

typer's help formatter imports ``rich.markdown`` (and markdown-it, about 50 ms of a
0.25 s start-up) and ``rich.traceback`` (with pygments' styles, 15 ms) as soon as it is
imported, for Markdown help texts and pretty tracebacks, neither of which this command
line shows. Until something uses them, stand-in modules take their place; using the
stand-in's class (or any other name of the module) imports the real module, which then
replaces the stand-in. Nothing changes for a process that imported them before.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any


class _Deferred(type):
    """Metaclass of a stand-in class: making one, or any attribute, loads the real one."""

    _real: Any

    def __call__(cls, *args: object, **kwargs: object) -> object:
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> object:
        return getattr(cls._real(), name)


def _stand_in(module_name: str, class_name: str) -> types.ModuleType:
    """A module ``module_name`` whose ``class_name`` and other names load the real one."""
    stand_in = types.ModuleType(module_name, "deferred by cryoextract.cli.launch")

    def real_module() -> types.ModuleType:
        if sys.modules.get(module_name) is stand_in:
            del sys.modules[module_name]
        return importlib.import_module(module_name)

    def other_name(name: str) -> object:
        if name.startswith("__"):  # the import system's probes (__path__, ...)
            raise AttributeError(name)
        return getattr(real_module(), name)

    stand_in.__getattr__ = other_name  # type: ignore[attr-defined]
    setattr(stand_in, class_name, _Deferred(class_name, (), {
        "_real": staticmethod(lambda: getattr(real_module(), class_name))}))
    return stand_in


_STAND_INS = {name: _stand_in(name, cls) for name, cls in (
    ("rich.markdown", "Markdown"), ("rich.traceback", "Traceback"))}


def defer_rich_modules() -> None:
    """Put the stand-ins in place, for the modules not imported already."""
    for name, stand_in in _STAND_INS.items():
        sys.modules.setdefault(name, stand_in)


def one_line_warnings() -> None:
    """Python warnings (e.g. a STAR value RELION reads differently) as one line each,
    ``warning: <message>``, like the command's own warnings; not two with source code."""
    import warnings

    def format_warning(message: Warning | str, category: type[Warning], *_: object,
                       **__: object) -> str:
        return f"warning: {message}\n"

    warnings.formatwarning = format_warning  # type: ignore[assignment]


def one_blas_thread_per_process() -> None:
    """Start OpenBLAS with one thread unless the user asked for more.

    The commands' parallelism is their processes; OpenBLAS's own threads only
    busy-wait after each small product (about 3 % of an extraction's CPU time).
    Set before numpy is imported, which reads it once.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


#: glibc's tunable (2.35+; older versions ignore it) for transparent huge pages in malloc
_HUGE_PAGES = "glibc.malloc.hugetlb=1"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_for_malloc(argv: list[str] | None = None) -> None:
    """Restart the process once with glibc's malloc asking for transparent huge pages.

    A command's buffers (micrographs, boxes, transforms) are tens of MiB, freshly mapped
    in every worker; each 4 KiB page is a page fault, which on virtual machines costs
    10-20 µs: half of an extraction's faults and 5-15 % of its CPU time. glibc reads the
    tunable only when a process starts, so the launcher sets it and replaces itself (one
    ``exec`` of the bare interpreter, about 20 ms, before anything is imported). Not for
    ``--help`` or no arguments, nor where the kernel's huge pages are off, nor when the
    tunable is set already (the restarted process, or the user's own choice).
    """
    args = sys.argv[1:] if argv is None else argv
    if (not sys.platform.startswith("linux") or not args or "--help" in args
            or "-h" in args or "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")):
        return
    try:
        with open(_THP_MODE) as mode:
            if "[never]" in mode.read():
                return
    except OSError:
        return
    command = getattr(sys, "orig_argv", None)
    if not command or not sys.executable:
        return
    tunables = os.environ.get("GLIBC_TUNABLES")
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{_HUGE_PAGES}" if tunables else _HUGE_PAGES
    try:
        os.execv(sys.executable, command)
    except OSError:  # carry on as we are
        return


def main() -> None:
    """Console-script entry point (``cryoextract``)."""
    huge_pages_for_malloc()
    one_blas_thread_per_process()
    defer_rich_modules()
    one_line_warnings()
    from cryoextract.cli.app import main as run

    run()
