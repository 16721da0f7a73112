"""Per-particle and per-micrograph quality descriptors, computed on the micrograph in memory.

Xmipp annotates extracted particles with a local variance score and a Gini coefficient
(``xmipp_coordinates_noisy_zones_filter``: ``filters.cpp::varianceFilter`` and
``giniCoeff``); cryoextract computes the same ideas, plus a few more, without a
per-pixel Python loop and without touching most pixels of the micrograph:

* The micrograph is **sampled** on a regular grid with stride ``k`` (every ``k``-th
  pixel of every ``k``-th row; ``k`` chosen so that a patch holds about 32 x 32 samples,
  ``k = 1`` for patches up to about 32 px). A strided view costs a few milliseconds for a
  4096 x 4096 micrograph, where anything reading every pixel costs tens.
* :func:`local_std_map` is Xmipp's ``varianceFilter``: the standard deviation of each
  square patch of side ``patch_px`` on a grid of step ``patch_px / 2`` (patches overlap
  by half), Gaussian-smoothed with a sigma of one grid step (Xmipp's ``w1 =
  kernelSize / 2``), divided by its median ("typical local std"; Xmipp divides by the
  mean, which a large contamination drags up). Values are relative: 1 is a typical
  patch.
* :func:`micrograph_gini` is Xmipp's ``giniCoeff``: the Gini coefficient of the bin
  counts of a 256-bin histogram of that map (min-max scaled to [0, 1]).
* :func:`particle_descriptors` gives, per pick, the columns below.

Descriptor columns (custom STAR labels, RELION style, prefix ``ce`` for cryoextract):

``ceScoreByVar``
    The smoothed relative local std map at the box centre (bilinear interpolation of
    the grid; beyond the outermost patch centres the nearest value). Xmipp's
    ScoreByVar. Higher: rougher region than the micrograph's typical (carbon edge,
    contamination, thick textured ice, aggregates).
``ceGiniPatch``
    Gini coefficient of ``|v - median(v)|`` over the sampled pixels ``v`` of the
    ``patch_px`` square around the pick (at the micrograph's edge the patch is moved
    inside, so it always holds the same number of samples). 0 for a constant patch,
    ``1 - 1/m`` for one bright pixel among ``m`` equal ones, ``sqrt(2) - 1 = 0.414`` for
    Gaussian noise whatever its level; higher means the deviation is concentrated in a
    few pixels (dust, hot pixels, sharp high-contrast objects). Shift and scale
    invariant.
``ceEdgeDistanceAngstrom``
    Distance from the box centre to the nearest micrograph edge, in Å:
    ``min(cx, cy, nx - cx, ny - cy) * pixel_size`` for the integer centre ``(cx, cy)``
    (docs/conventions.md, "Box centre": the box covers ``[cx - N/2, cx + N/2)``, so the
    box fits exactly when this is at least ``N/2`` pixels). Negative for centres off the
    micrograph.
``ceFractionOutside``
    Fraction of the box's pixels outside the micrograph (:func:`box_fraction_outside`).
``ceBackgroundMean``, ``ceBackgroundStd``
    Mean and population std of the raw box's background (pixels farther than the
    background radius from the box centre, as "Normalisation"), before any
    normalisation, dust removal or inversion: an ice-thickness proxy. From
    :func:`background_stats` on raw boxes, or from the micrograph directly when
    :func:`particle_descriptors` is given ``bg_radius_px`` (only the pixels inside the
    micrograph count). Sampled with stride ``max(1, round(box / 32))`` (about 550
    background pixels per box), the same pixels either way.
``ceScoreByGini``
    Per micrograph (the same value on each of its particles): :func:`micrograph_gini`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cryoextract.errors import ParameterError
from cryoextract.ops.boxes import box_fraction_outside
from cryoextract.ops.filters import bilinear_nearest, gaussian_nearest
from cryoextract.ops.normalize import background_mask

SCORE_BY_VAR = "ceScoreByVar"
SCORE_BY_GINI = "ceScoreByGini"
GINI_PATCH = "ceGiniPatch"
EDGE_DISTANCE = "ceEdgeDistanceAngstrom"
FRACTION_OUTSIDE = "ceFractionOutside"
BACKGROUND_MEAN = "ceBackgroundMean"
BACKGROUND_STD = "ceBackgroundStd"
#: every column this module may add, in output order
DESCRIPTOR_COLUMNS = (
    SCORE_BY_VAR, SCORE_BY_GINI, GINI_PATCH, EDGE_DISTANCE, FRACTION_OUTSIDE,
    BACKGROUND_MEAN, BACKGROUND_STD,
)

#: samples along half a patch side (a patch holds about (2 * this)**2 samples)
HALF_PATCH_SAMPLES = 16
#: samples along a box side for the background statistics
BOX_SAMPLES = 32
#: histogram bins of Xmipp's giniCoeff
GINI_BINS = 256
#: the variance map is interpolated to at least this many values along its short side
#: before its histogram is taken (Xmipp's map is dense, one value per pixel)
GINI_MAP_SIDE = 256


# --------------------------------------------------------------------------- Gini


def gini(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Gini coefficient of non-negative values along an axis.

    The standard (population) definition ``G = sum_ij |x_i - x_j| / (2 n^2 mean)``,
    computed from the ascending order statistics as
    ``G = sum_i (2 i - n - 1) x_(i) / (n sum x)``, ``i = 1..n``. This is Xmipp's
    Lorenz-curve area formula in ``giniCoeff``. 0 when all values are equal (also when
    they are all 0), ``1 - 1/n`` when one value holds everything.

    Parameters
    ----------
    values : array_like
        Non-negative numbers; NaN propagates.
    axis : int
        Axis along which each coefficient is computed.

    Returns
    -------
    np.ndarray
        float64, ``values`` with ``axis`` removed (a 0-d array for 1-D input).

    Raises
    ------
    ValueError
        A negative value, or an empty axis.
    """
    x = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    if n == 0:
        raise ValueError("Gini coefficient of an empty set")
    if np.any(x[..., 0] < 0):
        raise ValueError("Gini coefficient needs non-negative values")
    weights = 2.0 * np.arange(1, n + 1) - n - 1
    total = x.sum(axis=-1)
    weighted = x @ weights
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(total > 0, weighted / (n * np.where(total > 0, total, 1.0)), 0.0)
    return np.where(np.isnan(total), np.nan, result)


def histogram_gini(values: np.ndarray, bins: int = GINI_BINS) -> float:
    """Gini coefficient of the bin counts of a histogram of ``values`` (Xmipp's giniCoeff).

    The finite values are min-max scaled to [0, 1] and counted in ``bins`` equal bins;
    the result is :func:`gini` of the counts. Values concentrated in few bins (a mostly
    uniform map with a few outlying regions) give a high value; values spread evenly
    over their range a low one. All values equal: every count in one bin,
    ``1 - 1/bins``.

    Parameters
    ----------
    values : array_like
        Any shape; non-finite values are ignored.
    bins : int
        Number of histogram bins.

    Returns
    -------
    float
        In ``[0, 1 - 1/bins]``; NaN when no value is finite.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan
    low, high = float(v.min()), float(v.max())
    scaled = (v - low) / (high - low) if high > low else np.zeros_like(v)
    counts = np.bincount(np.minimum((scaled * bins).astype(np.int64), bins - 1), minlength=bins)
    return float(gini(counts))


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class PatchGrid:
    """Sampling of a micrograph for patch statistics (all sizes in micrograph pixels).

    Attributes
    ----------
    stride : int
        Every ``stride``-th pixel of every ``stride``-th row is used.
    half_samples : int
        Samples along half a patch side; a patch holds ``(2 * half_samples)**2``.
    shape_yx : tuple of int
        Shape of the micrograph.
    """

    stride: int
    half_samples: int
    shape_yx: tuple[int, int]

    @classmethod
    def for_patch(cls, shape_yx: tuple[int, int], patch_px: int) -> PatchGrid:
        """The grid for patches of about ``patch_px`` on a ``(ny, nx)`` micrograph.

        ``stride = max(1, round(patch_px / 2 / HALF_PATCH_SAMPLES))``; the patch becomes
        ``2 * half_samples * stride`` px (``patch_px`` rounded to a multiple of
        ``2 * stride``), at most half the micrograph's shorter side.
        """
        if patch_px < 2:
            raise ParameterError(f"patch must be at least 2 px, got {patch_px}")
        ny, nx = int(shape_yx[0]), int(shape_yx[1])
        half_px = patch_px / 2
        stride = max(1, round(half_px / HALF_PATCH_SAMPLES))
        half = max(1, round(half_px / stride))
        samples_y, samples_x = -(-ny // stride), -(-nx // stride)
        half = max(1, min(half, samples_y // 2, samples_x // 2))
        return cls(stride, half, (ny, nx))

    @property
    def step_px(self) -> int:
        """Distance between neighbouring patch centres (half the patch side)."""
        return self.half_samples * self.stride

    @property
    def patch_px(self) -> int:
        """Patch side actually used."""
        return 2 * self.step_px

    @property
    def map_shape(self) -> tuple[int, int]:
        """Shape ``(ny', nx')`` of the local std map: patches along y and x."""
        ny, nx = self.shape_yx
        return tuple(  # type: ignore[return-value]
            -(-n // self.stride) // self.half_samples - 1 for n in (ny, nx)
        )

    @property
    def first_centre_px(self) -> float:
        """Pixel coordinate (index, pixel ``i`` at ``i``) of the first patch's centre.

        Patch ``i`` samples pixels ``i * step + j * stride``, ``j = 0 .. 2 * half - 1``;
        its centre is their mean.
        """
        return (2 * self.half_samples - 1) * self.stride / 2

    def sample(self, image: np.ndarray) -> np.ndarray:
        """The strided samples ``image[::stride, ::stride]`` (a view, nothing copied)."""
        return image[:: self.stride, :: self.stride]

    def map_index(self, xy: np.ndarray) -> np.ndarray:
        """``(n, 2)`` fractional map indices ``(row, column)`` of pixel positions ``(x, y)``."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy[:, ::-1] - self.first_centre_px) / self.step_px


# --------------------------------------------------------------------------- local std


def local_std_map(image: np.ndarray, patch_px: int) -> np.ndarray:
    """Relative local standard deviation of a micrograph on a grid of half-overlapping patches.

    Xmipp's ``varianceFilter`` (relative): the population std of the (sampled) pixels of
    each ``patch_px`` square, the squares on a grid of step ``patch_px / 2``; the grid is
    Gaussian-smoothed (sigma one step, edges replicated) and divided by its median.
    Non-finite pixels are left out of each patch's statistics.

    Parameters
    ----------
    image : np.ndarray
        ``(ny, nx)`` micrograph, any real dtype; not modified, not copied.
    patch_px : int
        Patch side in micrograph pixels (e.g. 1.5 x the box, Xmipp's default).

    Returns
    -------
    np.ndarray
        ``(ny', nx')`` float64, ``PatchGrid.for_patch(image.shape, patch_px).map_shape``:
        element ``(i, j)`` is centred on pixel
        ``(first_centre_px + j * step_px, first_centre_px + i * step_px)`` as ``(x, y)``.
        1 is the typical patch. All ones when the micrograph is flat.
    """
    if image.ndim != 2:
        raise ParameterError(f"expected a 2-D micrograph, got shape {image.shape}")
    grid = PatchGrid.for_patch(image.shape, patch_px)
    std = _patch_std(grid.sample(image), grid.half_samples, grid.map_shape)
    smooth = gaussian_nearest(std, sigma=1.0)
    typical = float(np.median(smooth))
    if not typical > 0:
        typical = float(np.mean(smooth))
    if not typical > 0:
        return np.ones_like(smooth)
    return smooth / typical


def _patch_std(samples: np.ndarray, half: int, map_shape: tuple[int, int]) -> np.ndarray:
    """Population std of each 2x2 group of ``half x half`` blocks of ``samples``.

    ``PatchGrid.for_patch`` guarantees at least two blocks along each axis.
    """
    rows, cols = (map_shape[0] + 1) * half, (map_shape[1] + 1) * half
    values = np.array(samples[:rows, :cols], dtype=np.float64)  # a copy: changed below
    finite = np.isfinite(values)
    if finite.all():
        count = np.full(map_shape, float(4 * half * half))
    else:
        values = np.where(finite, values, 0.0)
        count = _pairs(_block_sums(finite.astype(np.float64), half))
    values -= values[finite].mean() if finite.any() else 0.0  # no cancellation in s2
    values[~finite] = 0.0
    s1 = _pairs(_block_sums(values, half))
    s2 = _pairs(_block_sums(values * values, half))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / count
        variance = np.maximum(s2 / count - mean * mean, 0.0)
    return np.where(count > 0, np.sqrt(variance), 0.0)


def _block_sums(values: np.ndarray, half: int) -> np.ndarray:
    ny, nx = values.shape[0] // half, values.shape[1] // half
    return values.reshape(ny, half, nx, half).sum(axis=(1, 3))


def _pairs(blocks: np.ndarray) -> np.ndarray:
    """Sums over each 2x2 group of neighbouring blocks (a patch = 2x2 blocks)."""
    return blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]


def micrograph_gini(std_map: np.ndarray, bins: int = GINI_BINS) -> float:
    """Xmipp's ScoreByGini of one micrograph: Gini of the histogram of its local std map.

    The map from :func:`local_std_map` is first interpolated bilinearly (corners kept)
    to at least ``GINI_MAP_SIDE`` values along its shorter side: Xmipp's map is dense,
    one value per pixel, while a coarse grid of a few hundred values would leave most of
    the 256 bins empty and bias the coefficient up. Then :func:`histogram_gini`.

    Parameters
    ----------
    std_map : np.ndarray
        ``(ny', nx')`` local std map.
    bins : int
        Histogram bins (Xmipp: 256).

    Returns
    -------
    float
        In ``[0, 1)``; ``1 - 1/bins`` for a flat map.
    """
    values = np.asarray(std_map, dtype=np.float64)
    factor = math.ceil(GINI_MAP_SIDE / max(1, min(values.shape)))
    if factor > 1:
        rows = _linear_interpolation_matrix(values.shape[0], factor)
        cols = _linear_interpolation_matrix(values.shape[1], factor)
        values = rows @ values @ cols.T
    return histogram_gini(values, bins)


def _linear_interpolation_matrix(size: int, factor: int) -> np.ndarray:
    """``((size - 1) * factor + 1, size)`` linear interpolation onto a ``factor`` finer grid."""
    if size == 1:
        return np.ones((1, 1))
    position = np.arange((size - 1) * factor + 1) / factor
    left = np.minimum(np.floor(position).astype(np.int64), size - 2)
    weight = position - left
    matrix = np.zeros((len(position), size))
    matrix[np.arange(len(position)), left] = 1.0 - weight
    matrix[np.arange(len(position)), left + 1] = weight
    return matrix


# --------------------------------------------------------------------------- per particle


def particle_descriptors(
    image: np.ndarray,
    centres_xy: np.ndarray,
    box_px: int,
    patch_px: int,
    pixel_size_angstrom: float,
    *,
    std_map: np.ndarray | None = None,
    bg_radius_px: float | None = None,
) -> dict[str, np.ndarray]:
    """Quality descriptors of the picks of one micrograph (see the module docstring).

    Parameters
    ----------
    image : np.ndarray
        ``(ny, nx)`` micrograph in memory (not modified, not copied).
    centres_xy : np.ndarray
        ``(n, 2)`` integer box centres ``(x, y)`` in pixels ("Box centre").
    box_px : int
        Box side in micrograph pixels.
    patch_px : int
        Patch side for ``ceScoreByVar`` and ``ceGiniPatch`` (e.g. ``1.5 * box_px``).
    pixel_size_angstrom : float
        Micrograph pixel size, Å.
    std_map : np.ndarray, optional
        :func:`local_std_map` of ``image`` for the same ``patch_px`` (computed when not
        given); pass it to reuse it for :func:`micrograph_gini`.
    bg_radius_px : float, optional
        Background radius in micrograph pixels; when given, ``ceBackgroundMean`` and
        ``ceBackgroundStd`` are computed from the micrograph's pixels around each centre
        (those inside the micrograph). Otherwise use :func:`background_stats` on the
        raw boxes.

    Returns
    -------
    dict of str to np.ndarray
        ``(n,)`` float64 per column: ``ceScoreByVar``, ``ceGiniPatch``,
        ``ceEdgeDistanceAngstrom``, ``ceFractionOutside`` and, with ``bg_radius_px``,
        ``ceBackgroundMean``, ``ceBackgroundStd``. ``ceScoreByGini`` is per micrograph:
        add ``micrograph_gini(std_map)`` yourself.
    """
    centres = np.asarray(centres_xy, dtype=np.int64).reshape(-1, 2)
    shape_yx = (int(image.shape[0]), int(image.shape[1]))
    grid = PatchGrid.for_patch(shape_yx, patch_px)
    if std_map is None:
        std_map = local_std_map(image, patch_px)
    elif std_map.shape != grid.map_shape:
        raise ParameterError(
            f"std_map has shape {std_map.shape}, expected {grid.map_shape} for a "
            f"{patch_px} px patch on a {shape_yx[1]}x{shape_yx[0]} micrograph"
        )
    result = {
        SCORE_BY_VAR: sample_map(std_map, grid, centres),
        GINI_PATCH: patch_gini(image, centres, grid),
        EDGE_DISTANCE: edge_distance_px(centres, shape_yx) * float(pixel_size_angstrom),
        FRACTION_OUTSIDE: box_fraction_outside(centres, box_px, shape_yx).astype(np.float64),
    }
    if bg_radius_px is not None:
        mean, std = micrograph_background_stats(image, centres, box_px, bg_radius_px)
        result[BACKGROUND_MEAN], result[BACKGROUND_STD] = mean, std
    return result


def sample_map(std_map: np.ndarray, grid: PatchGrid, centres_xy: np.ndarray) -> np.ndarray:
    """``(n,)`` bilinear samples of a patch-grid map at pixel positions (nearest beyond)."""
    if not len(centres_xy):
        return np.zeros(0)
    rows, cols = grid.map_index(centres_xy).T
    return bilinear_nearest(std_map, rows, cols)


#: sample values gathered at once by :func:`patch_gini` (bounds its memory)
PATCH_CHUNK_VALUES = 2**21


def patch_gini(image: np.ndarray, centres_xy: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """``(n,)`` Gini of ``|v - median(v)|`` over the sampled patch around each centre.

    The patch is ``2 * half_samples`` samples square, starting ``half_samples`` samples
    before the centre's sample, moved inside the sampled micrograph where it would leave
    it. The median is the ``m // 2``-th smallest of the ``m`` samples. Computed in
    float32 (one partition and one sort per patch), summed in float64.
    """
    n = len(centres_xy)
    if not n:
        return np.zeros(0)
    samples = grid.sample(image)
    side = 2 * grid.half_samples
    sy, sx = samples.shape
    side_y, side_x = min(side, sy), min(side, sx)
    start = np.floor_divide(np.asarray(centres_xy, np.int64), grid.stride) - grid.half_samples
    x0 = np.clip(start[:, 0], 0, sx - side_x)
    y0 = np.clip(start[:, 1], 0, sy - side_y)
    windows = sliding_window_view(samples, (side_y, side_x))
    # a few thousand patches at a time: memory stays bounded whatever the picks
    step = max(1, PATCH_CHUNK_VALUES // (side_y * side_x))
    return np.concatenate([_gini_of_patches(windows[y0[i : i + step], x0[i : i + step]])
                           for i in range(0, n, step)])


def _gini_of_patches(windows: np.ndarray) -> np.ndarray:
    """``(k,)`` Gini of ``|v - median(v)|`` of each ``(k, h, w)`` patch (see :func:`patch_gini`)."""
    values = windows.reshape(len(windows), -1).astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():  # rare: non-finite samples get the patch's finite median
        fill = np.nanmedian(np.where(finite, values, np.nan), axis=1, keepdims=True)
        values = np.nan_to_num(np.where(finite, values, fill))
    m = values.shape[1]
    median = np.partition(values, m // 2, axis=1)[:, m // 2 : m // 2 + 1]
    deviations = np.sort(np.abs(values - median), axis=1).astype(np.float64)
    weights = 2.0 * np.arange(1, m + 1) - m - 1
    total = deviations.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, (deviations @ weights) / (m * safe), 0.0)


def edge_distance_px(centres_xy: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """``(n,)`` float64 ``min(cx, cy, nx - cx, ny - cy)``: box centre to nearest edge, px.

    The box around integer centre ``cx`` covers ``[cx - N/2, cx + N/2)`` in pixel-edge
    coordinates (pixel ``i`` spans ``[i, i + 1)``), so its geometric centre is ``cx`` and
    the edges are at 0 and ``nx``; a box fits exactly when the distance is ``>= N/2``.
    """
    c = np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2)
    ny, nx = shape_yx
    return np.min(np.stack([c[:, 0], c[:, 1], nx - c[:, 0], ny - c[:, 1]]), axis=0)


# --------------------------------------------------------------------------- background


def box_sample_stride(box_px: int) -> int:
    """Stride of the background samples of a ``box_px`` box (about 32 per side)."""
    return max(1, round(box_px / BOX_SAMPLES))


def background_stats(
    raw_boxes: np.ndarray | Sequence[np.ndarray], radius_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each raw box's background, before normalisation.

    The background is ``i**2 + j**2 > radius**2`` with ``i, j`` the offsets from index
    ``N // 2`` (docs/conventions.md, "Normalisation"), sampled with stride
    :func:`box_sample_stride` (rows and columns ``0, s, 2s, ...`` of the box), the same
    pixels as :func:`micrograph_background_stats` for boxes inside the micrograph.

    Parameters
    ----------
    raw_boxes : np.ndarray or sequence of np.ndarray
        ``(n, N, N)`` boxes as cut from the micrograph (edge fills included), or ``n``
        ``(N, N)`` boxes (:func:`cryoextract.ops.boxes.box_sources`).
    radius_px : float
        Background radius in pixels of these boxes.

    Returns
    -------
    mean, std : np.ndarray
        ``(n,)`` float64 each; NaN for a box without (finite) background pixels.
    """
    size = raw_boxes[0].shape[-1] if len(raw_boxes) else 0
    s = box_sample_stride(size)
    mask = background_mask(size, radius_px)[::s, ::s]
    samples = raw_boxes[:, ::s, ::s] if isinstance(raw_boxes, np.ndarray) else \
        np.stack([box[::s, ::s] for box in raw_boxes]) if len(raw_boxes) else \
        np.zeros((0, *mask.shape))
    values = samples[:, mask].astype(np.float64)
    return _row_stats(values, None)


def micrograph_background_stats(
    image: np.ndarray, centres_xy: np.ndarray, box_px: int, radius_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`background_stats` of the boxes around ``centres_xy``, read from the micrograph.

    Only background pixels inside the micrograph count (no edge fill); a box entirely
    outside gives NaN.

    Parameters
    ----------
    image : np.ndarray
        ``(ny, nx)`` micrograph.
    centres_xy : np.ndarray
        ``(n, 2)`` integer box centres ``(x, y)``.
    box_px : int
        Box side, pixels.
    radius_px : float
        Background radius, micrograph pixels.

    Returns
    -------
    mean, std : np.ndarray
        ``(n,)`` float64 each.
    """
    centres = np.asarray(centres_xy, dtype=np.int64).reshape(-1, 2)
    if not len(centres):
        return np.zeros(0), np.zeros(0)
    s = box_sample_stride(box_px)
    offsets = np.arange(0, box_px, s) - box_px // 2
    mask = background_mask(box_px, radius_px)[::s, ::s]
    ny, nx = image.shape
    rows = centres[:, 1, None] + offsets[None, :]
    cols = centres[:, 0, None] + offsets[None, :]
    inside_rows = (rows >= 0) & (rows < ny)
    inside_cols = (cols >= 0) & (cols < nx)
    windows = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    values = windows[:, mask].astype(np.float64)
    use = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, mask]
    return _row_stats(values, None if use.all() else use)


def _row_stats(values: np.ndarray, use: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each row over ``use`` and the finite values."""
    if values.shape[1] == 0:  # radius beyond the box corners: no background at all
        empty = np.full(values.shape[0], np.nan)
        return empty, empty.copy()
    finite = np.isfinite(values)
    if use is not None:
        finite &= use
    if finite.all():
        mean = values.mean(axis=1)
        return mean, values.std(axis=1)
    count = finite.sum(axis=1)
    v = np.where(finite, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = v.sum(axis=1) / count
        deviation = np.where(finite, values - mean[:, None], 0.0)
        std = np.sqrt((deviation * deviation).sum(axis=1) / count)
    return np.where(count > 0, mean, np.nan), np.where(count > 0, std, np.nan)
