"""The report's pictures: PNGs from :mod:`cryoextract.report.png`, drawings as inline SVG.

Each function writes its PNG under the report folder and returns the HTML that shows
it: an ``<svg>`` holding an ``<image href="NAME.png">`` (a relative link, which an
inline SVG may follow) with the picks or labels drawn over it, or a plain ``<img>``.
No matplotlib, no script.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cryoextract.ops.thumbnail import Thumbnail, block_mean, display_range, to_uint8
from cryoextract.report.png import write_png

__all__ = ["KEPT_COLOUR", "REASON_COLOURS", "TILE_PX", "gallery", "micrograph_overlay",
           "mosaic"]

#: largest side of one gallery tile, pixels
TILE_PX = 96
#: gap between gallery tiles, pixels (white)
GAP_PX = 2
#: colours of dropped picks, by order of first reason (kept picks are green)
REASON_COLOURS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                  "#bcbd22", "#7f7f7f")
KEPT_COLOUR = "#2ca02c"
#: display width of a micrograph, CSS pixels
MICROGRAPH_WIDTH = 800
#: widest gallery, CSS pixels, and its largest magnification
GALLERY_WIDTH, GALLERY_ZOOM = 1150, 2.0
_SVG = 'xmlns="http://www.w3.org/2000/svg" class="figure"'


# --------------------------------------------------------------------------- micrographs


def micrograph_overlay(
    thumbnail: Thumbnail,
    kept_xy: np.ndarray,
    dropped: Mapping[str, np.ndarray],
    box_px: int | None,
    path: Path,
    *,
    tubes: Sequence[np.ndarray] = (),
) -> str:
    """Write a micrograph thumbnail PNG; the HTML that draws the picks over it.

    Parameters
    ----------
    thumbnail : Thumbnail
        Display-scaled pixels covering the whole micrograph, and its ``(ny, nx)``.
    kept_xy : np.ndarray
        ``(k, 2)`` kept pick coordinates ``(x, y)``, micrograph pixels.
    dropped : mapping
        Reason to ``(m, 2)`` coordinates of the picks dropped for it (NaN allowed:
        counted in the legend, not drawn).
    box_px : int, optional
        Box side drawn around each pick (markers only when unknown).
    path : Path
        The PNG written.
    tubes : sequence of np.ndarray
        Helical segments: one ``(k, 2)`` ``(x, y)`` polyline per tube, drawn joined
        (and then no boxes, which would overlap).

    Returns
    -------
    str
        An ``<svg>`` in micrograph coordinates: the image, the tubes (one ``<path
        class="tubes">``), one ``<path>`` of boxes and one of markers per group (kept:
        green circles; dropped: crosses, one colour per reason), and a legend with the
        count of each group.
    """
    write_png(path, thumbnail.pixels)
    ny, nx = thumbnail.shape_yx
    unit = max(nx, ny) / MICROGRAPH_WIDTH  # micrograph pixels per CSS pixel, about
    height = round(MICROGRAPH_WIDTH * ny / nx)
    parts = [f'<svg {_SVG} viewBox="0 0 {nx} {ny}" width="{MICROGRAPH_WIDTH}" '
             f'height="{height}" role="img" aria-label="picks on {_e(path.stem)}">',
             f'<image href="{_e(path.name)}" x="0" y="0" width="{nx}" height="{ny}" '
             'preserveAspectRatio="none"/>']
    lines = "".join(_polyline(np.asarray(t, np.float64)) for t in tubes if len(t) > 1)
    if lines:
        parts.append(f'<path class="tubes" d="{lines}" fill="none" stroke="{KEPT_COLOUR}" '
                     'vector-effect="non-scaling-stroke" stroke-width="2" '
                     'stroke-opacity="0.8"/>')
    groups = [("kept", np.asarray(kept_xy, np.float64).reshape(-1, 2), KEPT_COLOUR)]
    groups += [(str(reason), np.asarray(xy, np.float64).reshape(-1, 2),
                REASON_COLOURS[i % len(REASON_COLOURS)])
               for i, (reason, xy) in enumerate(dropped.items())]
    legend = []
    for label, xy, colour in groups:
        if not len(xy):
            continue
        legend.append((f"{label} ({len(xy)})", colour, label == "kept"))
        shown = xy[np.isfinite(xy).all(axis=1)]
        margin = (box_px or 0) + 10 * unit  # far outside: not drawn (nor sent to a browser)
        shown = shown[(shown[:, 0] > -margin) & (shown[:, 0] < nx + margin)
                      & (shown[:, 1] > -margin) & (shown[:, 1] < ny + margin)]
        if not len(shown):
            continue
        stroke = f'fill="none" stroke="{colour}" vector-effect="non-scaling-stroke"'
        if box_px and not lines:  # overlapping segments' boxes would hide the tubes
            parts.append(f'<path class="boxes" d="{_boxes(shown, box_px)}" {stroke} '
                         'stroke-width="0.8" stroke-opacity="0.7"/>')
        marks = _circles(shown, 3 * unit) if label == "kept" else _crosses(shown, 3 * unit)
        parts.append(f'<path class="picks" d="{marks}" {stroke} stroke-width="1.2"/>')
    parts.append(_legend(legend, unit))
    return "".join(parts) + "</svg>"


def _polyline(xy: np.ndarray) -> str:
    points = np.round(xy[np.isfinite(xy).all(axis=1)], 1).tolist()
    return "M" + "L".join(f"{x:g} {y:g}" for x, y in points) if len(points) > 1 else ""


def _boxes(xy: np.ndarray, box: float) -> str:
    half = box / 2
    corners = np.round(xy - half, 1).tolist()
    return "".join(f"M{x:g} {y:g}h{box:g}v{box:g}h{-box:g}z" for x, y in corners)


def _circles(xy: np.ndarray, radius: float) -> str:
    r = round(radius, 1)
    starts = np.round(xy - (r, 0.0), 1).tolist()
    return "".join(f"M{x:g} {y:g}a{r:g} {r:g} 0 1 0 {2 * r:g} 0a{r:g} {r:g} 0 1 0 {-2 * r:g} 0"
                   for x, y in starts)


def _crosses(xy: np.ndarray, half: float) -> str:
    h = round(half, 1)
    starts = np.round(xy - h, 1).tolist()
    return "".join(f"M{x:g} {y:g}l{2 * h:g} {2 * h:g}m0 {-2 * h:g}l{-2 * h:g} {2 * h:g}"
                   for x, y in starts)


def _legend(entries: list[tuple[str, str, bool]], unit: float) -> str:
    """Top-left legend: a marker and ``label (count)`` per group."""
    if not entries:
        return ""
    row, font, pad = 17 * unit, 12 * unit, 6 * unit
    width = pad * 3 + 14 * unit + 0.62 * font * max(len(text) for text, _, _ in entries)
    parts = [f'<g class="legend" font-family="sans-serif" font-size="{font:.1f}">',
             f'<rect x="{pad:.1f}" y="{pad:.1f}" width="{width:.1f}" '
             f'height="{row * len(entries) + pad:.1f}" fill="white" fill-opacity="0.8" '
             'stroke="#999" vector-effect="non-scaling-stroke"/>']
    for i, (text, colour, kept) in enumerate(entries):
        y = pad + row * (i + 0.5) + pad / 2
        centre = np.array([[2 * pad + 7 * unit, y]])
        mark = _circles(centre, 4 * unit) if kept else _crosses(centre, 4 * unit)
        parts.append(f'<path d="{mark}" fill="none" stroke="{colour}" stroke-width="1.5" '
                     'vector-effect="non-scaling-stroke"/>'
                     f'<text x="{3 * pad + 14 * unit:.1f}" y="{y + 0.35 * font:.1f}">'
                     f"{_e(text)}</text>")
    return "".join(parts) + "</g>"


# --------------------------------------------------------------------------- galleries


def mosaic(images: np.ndarray, columns: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Tile images, each scaled to 0..255 by its own percentiles, with white gaps.

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)``, n >= 1; images larger than :data:`TILE_PX` are binned down first.
    columns : int
        Tiles per row.

    Returns
    -------
    canvas : np.ndarray
        ``(rows * (th + GAP_PX) + GAP_PX, columns * (tw + GAP_PX) + GAP_PX)`` uint8;
        empty tiles and the gaps are 255 (white), NaN pixels 0.
    tile_shape : tuple of int
        ``(th, tw)``.
    """
    images = np.asarray(images)
    n, h, w = images.shape
    tiles = block_mean(images, max(1, math.ceil(max(h, w) / TILE_PX)))
    flat = tiles.reshape(n, -1)
    lo, hi = np.percentile(flat, [1.0, 99.0], axis=1)
    bad = ~np.isfinite(flat).all(axis=1) | ~(hi > lo)
    for i in np.flatnonzero(bad):  # only tiles with NaN, inf or a flat top
        lo[i], hi[i] = display_range(tiles[i])
    scaled = to_uint8((tiles - lo[:, None, None]) / (hi - lo)[:, None, None], 0.0, 1.0)
    th, tw = tiles.shape[1:]
    rows = max(1, math.ceil(n / columns))
    canvas = np.full((rows * (th + GAP_PX) + GAP_PX, columns * (tw + GAP_PX) + GAP_PX), 255,
                     dtype=np.uint8)
    for i, tile in enumerate(scaled):
        r, c = divmod(i, columns)
        y, x = GAP_PX + r * (th + GAP_PX), GAP_PX + c * (tw + GAP_PX)
        canvas[y : y + th, x : x + tw] = tile
    return canvas, (th, tw)


def gallery(images: np.ndarray, labels: Sequence[str], path: Path, columns: int = 8) -> str:
    """Write a grid of particle images as a PNG; the HTML that shows it with its labels.

    Parameters
    ----------
    images : np.ndarray
        ``(n, h, w)``, n >= 1.
    labels : sequence of str
        One per image, written on its tile (yellow on black); may be empty strings.
    path : Path
        The PNG written.
    columns : int
        Tiles per row, at most.

    Returns
    -------
    str
        An ``<img>`` (no labels) or an ``<svg>`` with the image and a ``<text>`` per
        labelled tile, magnified up to :data:`GALLERY_ZOOM` times.
    """
    images = np.asarray(images)
    columns = max(1, min(columns, len(images)))
    canvas, (th, tw) = mosaic(images, columns)
    write_png(path, canvas)
    ch, cw = canvas.shape
    zoom = min(GALLERY_ZOOM, GALLERY_WIDTH / cw)
    width, height = round(cw * zoom), round(ch * zoom)
    if not any(labels):
        return (f'<img src="{_e(path.name)}" width="{width}" height="{height}" '
                f'alt="{_e(path.stem)}">')
    font = 11 / zoom
    parts = [f'<svg {_SVG} viewBox="0 0 {cw} {ch}" width="{width}" height="{height}" '
             f'role="img" aria-label="{_e(path.stem)}">',
             f'<image href="{_e(path.name)}" x="0" y="0" width="{cw}" height="{ch}" '
             'style="image-rendering:pixelated"/>',
             f'<g class="labels" font-family="sans-serif" font-size="{font:.2f}">']
    for i, label in enumerate(labels):
        if not label:
            continue
        r, c = divmod(i, columns)
        x, bottom = GAP_PX + c * (tw + GAP_PX) + 1, GAP_PX + r * (th + GAP_PX) + th - 1
        parts.append(f'<rect x="{x}" y="{bottom - 1.25 * font:.2f}" '
                     f'width="{0.62 * font * len(label) + 0.4 * font:.2f}" '
                     f'height="{1.25 * font:.2f}" fill="black" fill-opacity="0.5"/>'
                     f'<text x="{x + 0.2 * font:.2f}" y="{bottom - 0.3 * font:.2f}" '
                     f'fill="yellow">{_e(label)}</text>')
    return "".join(parts) + "</g></svg>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
