"""Visual quality-control report of an extraction (``cryoextract report OUT``).

:func:`write_report` (which needs pandas) is imported on first use (PEP 562), so that
an extraction worker can import :mod:`cryoextract.report.thumbnail` for
:func:`micrograph_thumbnail` and pay only for numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryoextract.report.thumbnail import Thumbnail, ThumbnailShortlist, micrograph_thumbnail

__all__ = ["Thumbnail", "ThumbnailShortlist", "micrograph_thumbnail", "write_report"]

if TYPE_CHECKING:
    from cryoextract.report.page import write_report


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from cryoextract.report.page import write_report

        globals()[name] = write_report
        return write_report
    raise AttributeError(f"module 'cryoextract.report' has no attribute {name!r}")
