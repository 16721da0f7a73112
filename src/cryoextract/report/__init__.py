"""Visual quality-control report of an extraction (``cryoextract report OUT``)."""

from cryoextract.report.page import write_report

__all__ = ["write_report"]
