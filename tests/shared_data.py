"""Where the shared real data live, and the rule for when they are missing.

Missing data fail the test in CI (``CI=true``) and skip it elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_paths(*paths: Path) -> None:
    """Fail (CI) or skip unless every path exists."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        message = f"shared real data missing: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
