"""The one rule for a missing test prerequisite: skip locally, fail in CI.

A prerequisite is something outside the project that a test needs: the shared real data
(``../shared/data``, ``../shared/reference``), RELION or CTFFIND programs, chromium, an
optional Python package (cryosparc-tools, distributed). On a developer's machine a missing
one skips the test, with the reason; under CI (``CI=true``) it fails the test, so that CI
never goes green by skipping. Every skip of the test suite goes through :func:`require`
(``test_prereq.py`` checks that no other ``pytest.skip`` is left).
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest


def on_ci() -> bool:
    """True under CI (the environment variable ``CI`` is ``"true"``)."""
    return os.environ.get("CI") == "true"


def require(condition: object, reason: str) -> None:
    """Go on when ``condition`` holds; else skip the test (locally) or fail it (CI)."""
    if condition:
        return
    if on_ci():
        pytest.fail(f"{reason} (CI=true: every test prerequisite is required on CI)",
                    pytrace=False)
    else:
        pytest.skip(reason)


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
    assert module is not None  # require skipped or failed otherwise
    return module
