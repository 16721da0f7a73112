"""The report's PNGs, drawn with matplotlib's object API on an Agg canvas.

Every function here makes one figure on its own ``FigureCanvasAgg`` and saves it: no
pyplot, no global backend switch, nothing left open, so it is safe in any process
(including one with an interactive backend). matplotlib is imported inside the
functions, so importing cryoextract never imports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: largest side of a micrograph thumbnail, pixels
THUMBNAIL_PX = 768
#: largest side of one gallery tile, pixels
TILE_PX = 96
#: colours of dropped picks, by order of first reason (kept picks are green)
REASON_COLOURS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                  "#bcbd22", "#7f7f7f")
KEPT_COLOUR = "#2ca02c"
#: low-pass of micrograph thumbnails (thumbnail pixels): particles show through the noise
DISPLAY_SIGMA_PX = 1.5


def _figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png")
    return path


def display_range(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Percentile contrast limits of the finite pixels; a flat image gets ``(v - 1, v + 1)``."""
    finite = image[np.isfinite(image)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        return lo - 1.0, lo + 1.0
    return lo, hi


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """``(ny // f, nx // f)`` block means (float32); ``factor <= 1`` returns a float copy."""
    image = np.asarray(image, dtype=np.float32)
    if factor <= 1:
        return image.copy()
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor)
    return blocks.mean(axis=(1, 3))


# --------------------------------------------------------------------------- galleries


def mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile ``(n, h, w)`` images, each scaled to [0, 1] by its own percentiles, with gaps.

    Images larger than ``TILE_PX`` are binned down first. Empty tiles and the 2-pixel
    gaps are 1 (white).
    """
    n, h, w = images.shape
    factor = max(1, math.ceil(max(h, w) / TILE_PX))
    tiles = [bin_image(image, factor) for image in images]
    th, tw = tiles[0].shape
    rows = max(1, math.ceil(n / columns))
    gap = 2
    canvas = np.ones((rows * (th + gap) + gap, columns * (tw + gap) + gap), dtype=np.float32)
    for i, tile in enumerate(tiles):
        lo, hi = display_range(tile)
        r, c = divmod(i, columns)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        canvas[y : y + th, x : x + tw] = np.clip((np.nan_to_num(tile, nan=lo) - lo) / (hi - lo),
                                                  0.0, 1.0)
    return canvas


def gallery(
    images: np.ndarray, labels: Sequence[str], title: str, path: Path, columns: int = 8
) -> Path:
    """A grid of particle images with a small label under each (e.g. its value).

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)``, n >= 1.
    labels : sequence of str
        One per image (may be empty strings).
    title : str
        Figure title.
    path : Path
        PNG written.
    """
    columns = max(1, min(columns, len(images)))
    canvas = mosaic(np.asarray(images), columns)
    rows = math.ceil(len(images) / columns)
    width = min(12.0, 1.4 * columns + 0.4)
    figure = _figure(width, width * canvas.shape[0] / canvas.shape[1] + 0.6)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0 - 0.5 / figure.get_figheight()))
    axes.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_axis_off()
    tile_h = (canvas.shape[0] - 2) / rows
    tile_w = (canvas.shape[1] - 2) / columns
    for i, label in enumerate(labels):
        if label:
            r, c = divmod(i, columns)
            axes.text(2 + c * tile_w + 2, 2 + (r + 1) * tile_h - 4, label, color="yellow",
                      fontsize=7, va="bottom", ha="left",
                      bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


# --------------------------------------------------------------------------- micrographs


def micrograph_overlay(
    image: np.ndarray,
    kept_xy: np.ndarray,
    dropped: dict[str, np.ndarray],
    box_px: int | None,
    title: str,
    path: Path,
) -> Path:
    """A micrograph thumbnail with kept picks (green boxes) and dropped picks by reason.

    Parameters
    ----------
    image : np.ndarray
        ``(ny, nx)`` micrograph.
    kept_xy : np.ndarray
        ``(k, 2)`` kept pick coordinates, micrograph pixels.
    dropped : dict
        Reason to ``(m, 2)`` coordinates of the picks dropped for it.
    box_px : int, optional
        Box side drawn around each pick (a marker only when unknown).
    """
    from matplotlib.patches import Rectangle

    ny, nx = image.shape
    factor = max(1, math.ceil(max(ny, nx) / THUMBNAIL_PX))
    thumb = bin_image(image, factor)
    finite = np.isfinite(thumb)
    thumb = ndimage.gaussian_filter(np.where(finite, thumb, np.mean(thumb[finite]) if
                                             finite.any() else 0.0), DISPLAY_SIGMA_PX)
    lo, hi = display_range(thumb)
    width = 8.0
    figure = _figure(width, width * ny / nx + 0.8)
    axes = figure.add_axes((0.02, 0.02, 0.96, 0.96 - 0.8 / figure.get_figheight()))
    axes.imshow(thumb, cmap="gray", vmin=lo, vmax=hi, extent=(0, nx, ny, 0),
                interpolation="nearest")
    handles = []
    groups = [("kept", np.asarray(kept_xy, float).reshape(-1, 2), KEPT_COLOUR)]
    groups += [(reason, np.asarray(xy, float).reshape(-1, 2),
                REASON_COLOURS[i % len(REASON_COLOURS)]) for i, (reason, xy) in
               enumerate(dropped.items())]
    for label, xy, colour in groups:
        if not len(xy):
            continue
        if box_px:
            half = box_px / 2
            for x, y in xy:
                axes.add_patch(Rectangle((x - half, y - half), box_px, box_px, fill=False,
                                         edgecolor=colour, linewidth=0.7, alpha=0.7))
        marker = "o" if label == "kept" else "x"
        handles.append(axes.scatter(xy[:, 0], xy[:, 1], s=12, marker=marker, c=colour,
                                    linewidths=1.0, label=f"{label} ({len(xy)})"))
    axes.set_xlim(0, nx)
    axes.set_ylim(ny, 0)
    axes.set_xticks([])
    axes.set_yticks([])
    if handles:
        axes.legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.8)
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


# --------------------------------------------------------------------------- histograms


def histograms(columns: dict[str, np.ndarray], path: Path, per_row: int = 3) -> Path:
    """One histogram per named column (finite values), in a grid.

    Parameters
    ----------
    columns : dict
        Title to values; at least one entry.
    """
    n = len(columns)
    per_row = max(1, min(per_row, n))
    rows = math.ceil(n / per_row)
    figure = _figure(4.0 * per_row, 3.0 * rows)
    for i, (name, values) in enumerate(columns.items()):
        axes = figure.add_subplot(rows, per_row, i + 1)
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            axes.hist(finite, bins=min(50, max(5, int(np.sqrt(finite.size)) + 1)),
                      color="C0")
        else:
            axes.text(0.5, 0.5, "no finite values", ha="center", va="center",
                      transform=axes.transAxes)
        axes.set_title(name, fontsize=9)
        axes.tick_params(labelsize=7)
    figure.tight_layout()
    return _save(figure, path)
