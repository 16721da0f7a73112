"""The one rule for a missing test prerequisite: the test fails, saying what is missing.

A prerequisite is something outside the project that a test needs: the shared real data
(``../shared/data``, ``../shared/reference``), RELION or CTFFIND programs, chromium, an
optional Python package (cryosparc-tools, distributed). ``make test`` installs all of
them; a missing one fails the test (locally as in CI) with the reason, never skips it, so
that no run goes green by checking less. ``test_prereq.py`` checks that the suite holds
no skip at all.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from types import ModuleType

import pytest


def require(condition: object, reason: str) -> None:
    """Go on when ``condition`` holds; else fail the test with ``reason``."""
    if not condition:
        pytest.fail(f"{reason} (a test prerequisite: `make test` installs it)", pytrace=False)


def require_paths(*paths: Path, what: str = "shared real data") -> None:
    """Require that every path exists."""
    missing = [str(p) for p in paths if not p.exists()]
    require(not missing, f"{what} missing: {', '.join(missing)}")


def require_programs(*programs: str) -> None:
    """Require every named program on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    require(not missing, f"program(s) not on PATH: {', '.join(missing)}")


def require_module(name: str, package: str | None = None) -> ModuleType:
    """Import and return module ``name``; ``package`` is what to install when it is missing."""
    try:
        module: ModuleType | None = importlib.import_module(name)
    except ImportError:
        module = None
    require(module is not None,
            f"Python package {package or name} not installed (a test dependency)")
    assert module is not None  # require failed otherwise
    return module
