"""Which finished micrographs still need a thumbnail for the QC report.

The report shows the micrographs with the most dropped picks, then the most kept, then
the first by name (:class:`cryoextract.report.thumbnail.ThumbnailShortlist`). Once the
driver holds as many thumbnails as the report shows, a micrograph ranked below the worst
of them can never be shown, so its worker need not make one (about 15 ms of a 4096 px
micrograph): the driver raises a bar in shared memory that the local pool's workers
read. Workers of a Dask cluster have no such memory and always make one.
"""

from __future__ import annotations

import multiprocessing


class ThumbnailGate:
    """The rank a micrograph must reach for its thumbnail, shared with forked workers.

    The bar is ``(dropped, kept, -name_rank)`` of the worst micrograph the report would
    show now (higher is better; ``name_rank`` is the micrograph's place in name order),
    read and written under one lock.
    """

    def __init__(self) -> None:
        self._bar = multiprocessing.Array("q", [-1, -1, -(2**62)], lock=True)

    def admits(self, dropped: int, kept: int, name_rank: int) -> bool:
        """Whether a micrograph with these counts and name rank may still be shown."""
        with self._bar.get_lock():
            bar = tuple(self._bar[:])
        return (int(dropped), int(kept), -int(name_rank)) >= bar

    def raise_to(self, dropped: int, kept: int, name_rank: int) -> None:
        """Micrographs ranked below this one will not be shown."""
        key = (int(dropped), int(kept), -int(name_rank))
        with self._bar.get_lock():
            if key > tuple(self._bar[:]):
                self._bar[:] = list(key)
