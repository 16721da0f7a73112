"""Cutting square boxes out of a micrograph.

Conventions (docs/conventions.md, "Box centre"): coordinates are 0-based pixel indices,
x the column (fast axis), y the row. A pick at x is boxed around the integer
``floor(x)``, which lands at index ``box // 2`` of the box; the box spans
``[floor(x) - box//2, floor(x) + box//2 - 1]``.
"""

from __future__ import annotations

import numpy as np

from cryoextract.options import EdgeMode

# Reasons a particle is dropped, as reported in summaries.
REASON_OUTSIDE = "centre outside micrograph"
REASON_EDGE = "box leaves micrograph"
REASON_NOT_FINITE = "non-finite pixels"
REASON_BAD_COORDINATE = "coordinate not a finite number"


def integer_centres(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split pick coordinates into integer box centres and sub-pixel residuals.

    Parameters
    ----------
    coords : np.ndarray
        ``(..., 2)`` float pick coordinates, ``(x, y)`` in pixels.

    Returns
    -------
    centres : np.ndarray
        ``(..., 2)`` int64 ``floor(coords)``.
    residuals : np.ndarray
        ``(..., 2)`` float64 ``coords - centres``, each in ``[0, 1)``.
    """
    coords = np.asarray(coords, dtype=np.float64)
    centres = np.floor(coords).astype(np.int64)
    return centres, coords - centres


def box_fraction_outside(
    centres_xy: np.ndarray, box_px: int, shape_yx: tuple[int, int]
) -> np.ndarray:
    """Fraction of each box's pixels that lie outside the micrograph.

    Parameters
    ----------
    centres_xy : np.ndarray
        ``(n, 2)`` integer box centres ``(x, y)``.
    box_px : int
        Box side in pixels.
    shape_yx : tuple of int
        Micrograph shape ``(ny, nx)``.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 in ``[0, 1]``.
    """
    half = box_px // 2
    inside = []
    for axis, size in ((0, shape_yx[1]), (1, shape_yx[0])):
        start = centres_xy[:, axis] - half
        lo = np.clip(start, 0, size)
        hi = np.clip(start + box_px, 0, size)
        inside.append(hi - lo)
    return 1.0 - (inside[0] * inside[1]) / float(box_px * box_px)


def box_indices(
    centres_xy: np.ndarray, box_px: int, shape_yx: tuple[int, int], edge: EdgeMode
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Row and column indices of every box pixel, mapped into the micrograph.

    Parameters
    ----------
    centres_xy : np.ndarray
        ``(n, 2)`` integer box centres ``(x, y)``.
    box_px : int
        Box side.
    shape_yx : tuple of int
        Micrograph shape ``(ny, nx)``.
    edge : EdgeMode
        ``replicate`` clamps to the nearest row/column (RELION); ``reflect`` mirrors
        about the edge pixel (``... 2 1 0 1 2 ...``); other modes clamp too and report
        the outside pixels in the mask so the caller can fill them.

    Returns
    -------
    rows : np.ndarray
        ``(n, box, 1)`` row indices.
    cols : np.ndarray
        ``(n, 1, box)`` column indices.
    outside : np.ndarray or None
        ``(n, box, box)`` bool, True where the pixel lies outside the micrograph;
        ``None`` when no pixel of any box does.
    """
    offsets = np.arange(box_px) - box_px // 2
    rows = centres_xy[:, 1, None] + offsets  # (n, box)
    cols = centres_xy[:, 0, None] + offsets
    ny, nx = shape_yx
    rows_out = (rows < 0) | (rows >= ny)
    cols_out = (cols < 0) | (cols >= nx)
    any_out = bool(rows_out.any() or cols_out.any())
    if edge is EdgeMode.REFLECT:
        rows, cols = _reflect(rows, ny), _reflect(cols, nx)
    else:
        rows, cols = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    outside = None
    if any_out:
        outside = rows_out[:, :, None] | cols_out[:, None, :]
    return rows[:, :, None], cols[:, None, :], outside


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    """Mirror indices into ``[0, size)`` about the edge pixels (period ``2*size - 2``)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * size - 2
    folded = np.mod(index, period)
    return np.where(folded >= size, period - folded, folded)


def cut_boxes(
    image: np.ndarray,
    centres_xy: np.ndarray,
    box_px: int,
    *,
    edge: EdgeMode = EdgeMode.REPLICATE,
    fill_value: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Cut square boxes centred on integer positions.

    Parameters
    ----------
    image : np.ndarray
        ``(ny, nx)`` micrograph, any real dtype (a memory map is read only where boxed).
    centres_xy : np.ndarray
        ``(n, 2)`` integer centres ``(x, y)``; each lands at index ``box_px // 2``.
    box_px : int
        Box side in pixels.
    edge : EdgeMode
        How pixels outside the micrograph are filled: ``replicate`` (nearest edge
        pixel, as RELION), ``reflect`` (mirror), ``mean`` (``fill_value``, the
        micrograph mean), ``noise`` (Gaussian draws with the mean and standard
        deviation of the box's inside pixels). ``drop`` behaves as ``replicate``;
        dropping is the caller's decision.
    fill_value : float
        Value for ``mean`` mode.
    rng : np.random.Generator, optional
        Random source for ``noise`` mode.

    Returns
    -------
    np.ndarray
        ``(n, box_px, box_px)`` float32.
    """
    sources = box_sources(image, centres_xy, box_px, edge=edge, fill_value=fill_value, rng=rng)
    boxes = np.empty((len(sources), box_px, box_px), dtype=np.float32)
    for i, source in enumerate(sources):  # plain slices copy rows at memory speed
        boxes[i] = source
    return boxes


def box_sources(
    image: np.ndarray,
    centres_xy: np.ndarray,
    box_px: int,
    *,
    edge: EdgeMode = EdgeMode.REPLICATE,
    fill_value: float = 0.0,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """The boxes of :func:`cut_boxes` without copying those inside the micrograph.

    Returns
    -------
    list of np.ndarray
        ``n`` arrays ``(box_px, box_px)``: read-only views of ``image`` (its dtype) for
        boxes inside it, float32 arrays filled by ``edge`` for the others. A consumer
        that converts each box anyway (an FFT's input buffer) saves a copy.
    """
    centres_xy = np.asarray(centres_xy, dtype=np.int64).reshape(-1, 2)
    ny, nx = image.shape[-2:]
    x0 = centres_xy[:, 0] - box_px // 2
    y0 = centres_xy[:, 1] - box_px // 2
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + box_px <= nx) & (y0 + box_px <= ny)
    view = image.view()
    view.setflags(write=False)
    sources: list[np.ndarray] = [
        view[y : y + box_px, x : x + box_px] for x, y in zip(x0.tolist(), y0.tolist(),
                                                            strict=True)]
    at_edge = np.flatnonzero(~inside)
    if len(at_edge):
        cut = _cut_edge_boxes(image, centres_xy[at_edge], box_px, edge, fill_value, rng)
        for i, box in zip(at_edge, cut, strict=True):
            sources[i] = box
    return sources


def _cut_edge_boxes(
    image: np.ndarray, centres_xy: np.ndarray, box_px: int, edge: EdgeMode, fill_value: float,
    rng: np.random.Generator | None,
) -> np.ndarray:
    rows, cols, outside = box_indices(centres_xy, box_px, image.shape[-2:], edge)
    boxes = np.asarray(image[rows, cols], dtype=np.float32)
    if outside is None or edge in (EdgeMode.REPLICATE, EdgeMode.REFLECT, EdgeMode.DROP):
        return boxes
    if edge is EdgeMode.MEAN:
        boxes[outside] = fill_value
    elif edge is EdgeMode.NOISE:
        _fill_with_noise(boxes, outside, rng or np.random.default_rng(0))
    return boxes


def _fill_with_noise(boxes: np.ndarray, outside: np.ndarray, rng: np.random.Generator) -> None:
    """Replace outside pixels by draws from each box's inside-pixel distribution, in place."""
    for i in np.flatnonzero(outside.any(axis=(1, 2))):
        inside_values = boxes[i][~outside[i]]
        count = int(outside[i].sum())
        boxes[i][outside[i]] = rng.normal(inside_values.mean(), inside_values.std(), count)
