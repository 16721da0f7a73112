"""Which finished micrographs still need a thumbnail for the QC report.

The report shows the micrographs with the most dropped picks, then the most kept
(:class:`cryoextract.report.thumbnail.ThumbnailShortlist`). Once the driver holds as many
thumbnails as the report shows, a micrograph ranked below the worst of them can never be
shown, so its worker need not make one (about 15 ms of a 4096 px micrograph): the driver
raises a bar in shared memory that the local pool's workers read. Workers of a Dask
cluster have no such memory and always make one.
"""

from __future__ import annotations

import multiprocessing

#: kept picks are packed below dropped ones in one 64-bit key
_KEPT_BITS = 32


class ThumbnailGate:
    """The rank a micrograph must reach for its thumbnail, shared with forked workers.

    One 64-bit value (written and read whole): ``dropped << 32 | kept`` of the worst
    micrograph the report would show now, ``-1`` while any micrograph may be shown.
    """

    def __init__(self) -> None:
        self._bar = multiprocessing.RawValue("q", -1)

    @staticmethod
    def key(dropped: int, kept: int) -> int:
        return (int(dropped) << _KEPT_BITS) | min(int(kept), 2**_KEPT_BITS - 1)

    def admits(self, dropped: int, kept: int) -> bool:
        """Whether a micrograph with these counts may still be shown (ties may)."""
        return self.key(dropped, kept) >= self._bar.value

    def raise_to(self, dropped: int, kept: int) -> None:
        """Micrographs ranked below these counts will not be shown."""
        self._bar.value = max(self._bar.value, self.key(dropped, kept))
