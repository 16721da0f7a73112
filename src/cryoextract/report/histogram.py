"""Histograms as inline SVG: bars, a title, rounded tick labels on both axes, no script.

The bars are filled with matplotlib's default "C0" blue, as the report's histograms
always were; each bar is one ``<rect class="bar">`` (one per bin, empty bins included,
in bin order), so a test can read the counts back from the drawing.
"""

from __future__ import annotations

import html
import math

import numpy as np

__all__ = ["BAR_COLOUR", "histogram_bins", "histogram_svg", "nice_ticks", "tick_labels"]

#: matplotlib's "C0"
BAR_COLOUR = "#1f77b4"
#: size of one histogram, CSS pixels
WIDTH, HEIGHT = 380, 260
#: plot area inside it: left, top, right, bottom
_LEFT, _TOP, _RIGHT, _BOTTOM = 58, 28, 368, 222
_FONT = 'font-family="sans-serif"'


def histogram_bins(count: int) -> int:
    """Bins of a histogram of ``count`` values: ``sqrt(count) + 1``, within 5..50."""
    return min(50, max(5, int(np.sqrt(count)) + 1))


def histogram_svg(title: str, values: np.ndarray) -> str:
    """One histogram of the finite ``values``, as an ``<svg>`` element.

    Parameters
    ----------
    title : str
        Shown above the plot (escaped here).
    values : np.ndarray
        ``(n,)`` numbers; NaN and inf are left out. With none left, the plot says so.

    Returns
    -------
    str
        ``<svg class="hist" ...>...</svg>``, :data:`WIDTH` x :data:`HEIGHT` pixels.
    """
    finite = np.asarray(values, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    parts = [f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="histogram of {_e(title)}">',
             f'<text x="{(_LEFT + _RIGHT) / 2:g}" y="17" text-anchor="middle" font-size="12" '
             f'{_FONT}>{_e(title)}</text>']
    if not finite.size:
        parts.append(f'<text x="{(_LEFT + _RIGHT) / 2:g}" y="{(_TOP + _BOTTOM) / 2:g}" '
                     f'text-anchor="middle" font-size="11" {_FONT}>no finite values</text>')
        return "".join(parts) + "</svg>"
    counts, edges = np.histogram(finite, bins=histogram_bins(finite.size))
    top = _axis_top(int(counts.max()))
    x_of = _Map(float(edges[0]), float(edges[-1]), _LEFT, _RIGHT)
    y_of = _Map(0.0, float(top), _BOTTOM, _TOP)
    lefts = x_of(edges[:-1])
    width = (_RIGHT - _LEFT) / len(counts)
    tops = y_of(counts.astype(np.float64))
    bars = "".join(f'<rect class="bar" x="{x:.3f}" y="{y:.3f}" width="{width:.3f}" '
                   f'height="{_BOTTOM - y:.3f}"/>' for x, y in zip(lefts.tolist(), tops.tolist(),
                                                                  strict=True))
    parts.append(f'<g class="bars" fill="{BAR_COLOUR}">{bars}</g>')
    parts.append(_axes(float(edges[0]), float(edges[-1]), top, x_of, y_of))
    return "".join(parts) + "</svg>"


def _axes(lo: float, hi: float, top: int, x_of: _Map, y_of: _Map) -> str:
    """Axis lines, ticks and their labels, and the y-axis label."""
    lines = [f"M{_LEFT} {_TOP}V{_BOTTOM}H{_RIGHT}"]
    labels = []
    x_ticks = nice_ticks(lo, hi)
    for text, x in zip(tick_labels(x_ticks), x_of(x_ticks).tolist(), strict=True):
        lines.append(f"M{x:.2f} {_BOTTOM}v4")
        labels.append(f'<text x="{x:.2f}" y="{_BOTTOM + 16}" text-anchor="middle">'
                      f"{_e(text)}</text>")
    y_ticks = nice_ticks(0.0, float(top), integers=True)
    for value, y in zip(y_ticks.tolist(), y_of(y_ticks).tolist(), strict=True):
        lines.append(f"M{_LEFT} {y:.2f}h-4")
        labels.append(f'<text x="{_LEFT - 6}" y="{y + 3.5:.2f}" text-anchor="end">'
                      f"{round(value)}</text>")
    middle = (_TOP + _BOTTOM) / 2
    labels.append(f'<text x="12" y="{middle:g}" text-anchor="middle" '
                  f'transform="rotate(-90 12 {middle:g})">count</text>')
    return (f'<path d="{"".join(lines)}" stroke="#333" stroke-width="1" fill="none"/>'
            f'<g class="labels" font-size="10" fill="#333" {_FONT}>{"".join(labels)}</g>')


class _Map:
    """A linear map of data values to drawing coordinates."""

    def __init__(self, lo: float, hi: float, start: float, stop: float) -> None:
        self.lo, self.start = lo, start
        self.slope = (stop - start) / (hi - lo) if hi > lo else 0.0

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return self.start + (np.asarray(values, dtype=np.float64) - self.lo) * self.slope


def _axis_top(largest: int) -> int:
    """Top of the count axis: the largest count plus about 5 %, at least 1."""
    return max(1, math.ceil(largest * 1.05))


def nice_ticks(lo: float, hi: float, target: int = 5, *, integers: bool = False
               ) -> np.ndarray:
    """Round tick values within ``[lo, hi]``: multiples of 1, 2, 2.5 or 5 times 10^k.

    Parameters
    ----------
    lo, hi : float
        Axis range.
    target : int
        At most this many intervals (so up to ``target + 1`` ticks).
    integers : bool
        Steps of at least 1 (for counts).

    Returns
    -------
    np.ndarray
        ``(k,)`` float64 ticks, ascending; ``[lo]`` for an empty range.
    """
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return np.array([lo], dtype=np.float64)
    magnitude = 10.0 ** math.floor(math.log10(span / target))
    step = 10.0 * magnitude
    for multiple in (1.0, 2.0, 2.5, 5.0, 10.0):
        if span / (multiple * magnitude) <= target:
            step = multiple * magnitude
            break
    if integers:
        step = max(1.0, float(round(step)))
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return np.arange(first, last + 1, dtype=np.float64) * step


def tick_labels(ticks: np.ndarray) -> list[str]:
    """Tick values written with the decimals their step needs (``-0`` written ``0``).

    Parameters
    ----------
    ticks : np.ndarray
        ``(k,)`` evenly spaced values, as from :func:`nice_ticks`.
    """
    values = np.asarray(ticks, dtype=np.float64).ravel()
    step = float(values[1] - values[0]) if len(values) > 1 else 0.0
    largest = float(np.abs(values).max()) if len(values) else 0.0
    if not step:
        texts = [f"{v:.4g}" for v in values.tolist()]
    elif largest >= 1e6 or step < 1e-4:
        texts = [f"{v:.3g}" for v in values.tolist()]
    else:
        decimals = max(0, -math.floor(math.log10(step)))
        if abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
            decimals += 1
        texts = [f"{v:.{decimals}f}" for v in values.tolist()]
    return ["0" if float(t) == 0 else t for t in texts]


def _e(text: str) -> str:
    return html.escape(text, quote=True)
