"""Where the shared real data live (``../shared`` beside the project), read-only.

Missing data fail the test (see ``prereq.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prereq import require_paths

__all__ = [
    "REAL", "REFERENCE", "SHARED_DATA", "cryolo_box_files", "cryolo_cbox_files", "real_files",
    "real_ids", "require_paths", "require_real",
]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"
REAL = SHARED_DATA / "real"
REFERENCE = SHARED / "reference"


def require_real(*parts: str) -> Path:
    """``REAL / parts...``, required to exist (the test fails otherwise)."""
    path = REAL.joinpath(*parts)
    require_paths(path)
    return path


def cryolo_box_files() -> list[Path]:
    """The real crYOLO EMAN ``.box`` files: one per micrograph, 12 (their README.txt)."""
    files = sorted(require_real("repic_empiar10017", "crYOLO").glob("*.box"))
    assert len(files) == 12, files
    return files


def cryolo_cbox_files() -> list[Path]:
    """The real crYOLO ``.cbox`` outputs of napari_boxmanager (TcdA1, their README.txt)."""
    folder = require_real("napari_boxmanager", "particle_cbox_2d")
    files = sorted(folder.glob("TcdA1-*.cbox"))
    assert [f.name for f in files] == ["TcdA1-0018_frames_sum.cbox",
                                       "TcdA1-0019_frames_sum.cbox"], files
    return files


def real_files(pattern: str, keep: Callable[[Path], bool] | None = None) -> list[Path]:
    """Files under ``REAL`` matching ``pattern`` (and ``keep``), for ``parametrize``.

    When none are found (the shared data missing), one stand-in path that does not exist,
    so that the test's ``require_paths(path)`` fails rather than pytest
    quietly skipping an empty parameter set.
    """
    found = sorted(REAL.rglob(pattern)) if REAL.is_dir() else []
    found = [p for p in found if keep is None or keep(p)]
    return found or [REAL / pattern]


def real_ids(paths: list[Path]) -> list[str]:
    """Test ids of :func:`real_files`: the paths below ``REAL``."""
    return [str(p.relative_to(REAL)) for p in paths]
