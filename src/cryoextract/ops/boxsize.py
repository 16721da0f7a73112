"""FFT-efficient box sizes (the list in cryoSPARC's extraction guide)."""

from __future__ import annotations

import bisect

EFFICIENT_BOX_SIZES: tuple[int, ...] = (
    32, 36, 40, 42, 48, 56, 60, 64, 70, 72, 80, 84, 90, 96, 100, 108, 112, 120, 128, 144,
    160, 180, 192, 200, 216, 224, 240, 256, 270, 288, 300, 320, 324, 336, 384, 400, 432,
    448, 450, 512, 576, 640, 648, 672, 720, 768, 784, 810, 864, 882, 1024, 1152, 1280,
    1296, 1344, 1440, 1568, 1620, 1728, 1792, 2000, 2048, 2160, 2592, 2744, 3456, 4096,
)


def is_efficient_box(size_px: int) -> bool:
    """True if ``size_px`` is in :data:`EFFICIENT_BOX_SIZES` (or below its first entry)."""
    return size_px < EFFICIENT_BOX_SIZES[0] or size_px in EFFICIENT_BOX_SIZES


def nearest_efficient_boxes(size_px: int) -> tuple[int | None, int | None]:
    """The efficient sizes just below and just above ``size_px`` (``None`` past the ends)."""
    i = bisect.bisect_left(EFFICIENT_BOX_SIZES, size_px)
    below = EFFICIENT_BOX_SIZES[i - 1] if i > 0 else None
    j = i + 1 if i < len(EFFICIENT_BOX_SIZES) and EFFICIENT_BOX_SIZES[i] == size_px else i
    above = EFFICIENT_BOX_SIZES[j] if j < len(EFFICIENT_BOX_SIZES) else None
    return below, above
