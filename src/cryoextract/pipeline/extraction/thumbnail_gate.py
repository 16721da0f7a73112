"""Which finished micrographs still need a thumbnail for the QC report.

The report shows the micrographs with the most dropped picks, then the most kept, then
the first by name (:class:`ThumbnailShortlist`). Once the
driver holds as many thumbnails as the report shows, a micrograph ranked below the worst
of them can never be shown, so its worker need not make one (about 15 ms of a 4096 px
micrograph): the driver raises a bar in shared memory that the local pool's workers
read. Workers of a Dask cluster have no such memory and always make one.
"""

from __future__ import annotations

import multiprocessing

from cryoextract.ops.thumbnail import Thumbnail


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


class ThumbnailShortlist:
    """The thumbnails a report will show, kept while a job runs (the others are let go).

    The report shows the micrographs with the most dropped picks, then the most kept
    picks, then the first by name (see :func:`cryoextract.report.run.choose_micrographs`);
    this keeps the ``size`` best of those offered by the same rule, so that a job of
    thousands of micrographs holds a few thumbnails, not all of them. Pass
    :attr:`thumbnails` to :func:`cryoextract.report.write_report`.

    Parameters
    ----------
    size : int
        Thumbnails kept (``write_report``'s ``max_micrographs``).
    """

    def __init__(self, size: int = 4) -> None:
        self.size = max(0, int(size))
        self._kept: dict[str, tuple[tuple[int, int, str], Thumbnail]] = {}

    def offer(self, name: str, n_kept: int, n_dropped: int, thumbnail: Thumbnail) -> None:
        """Consider one micrograph (an offer for a name already held replaces it)."""
        self._kept[name] = ((-int(n_dropped), -int(n_kept), name), thumbnail)
        if len(self._kept) > self.size:
            del self._kept[max(self._kept, key=lambda n: self._kept[n][0])]

    @property
    def worst_kept(self) -> tuple[int, int, str] | None:
        """``(n_dropped, n_kept, name)`` of the worst thumbnail held once all ``size``
        are; a micrograph ranked below it will not be kept (``None`` until then)."""
        if not self.size or len(self._kept) < self.size:
            return None
        dropped, kept, name = max(key for key, _ in self._kept.values())
        return -dropped, -kept, name

    @property
    def thumbnails(self) -> dict[str, Thumbnail]:
        """Micrograph name to thumbnail, best first."""
        return {n: t for n, (_, t) in sorted(self._kept.items(), key=lambda item: item[1][0])}
