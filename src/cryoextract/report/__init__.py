"""Visual quality-control report of an extraction (``cryoextract report OUT``).

:func:`write_report` (which needs pandas) is imported on first use (PEP 562), so that
importing this package costs only numpy (the thumbnails themselves are
:mod:`cryoextract.ops.thumbnail`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryoextract.ops.thumbnail import Thumbnail, micrograph_thumbnail

__all__ = ["Thumbnail", "micrograph_thumbnail", "write_report"]

if TYPE_CHECKING:
    from cryoextract.report.page import write_report


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from cryoextract.report.page import write_report

        globals()[name] = write_report
        return write_report
    raise AttributeError(f"module 'cryoextract.report' has no attribute {name!r}")
