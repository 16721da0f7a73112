"""Boxes cut out of micrographs (``cryoextract.ops.boxes``: integer centres, edge modes,
the fraction outside) and the FFT-efficient box sizes (``ops.boxsize``).

Every expected value comes from an independent oracle: an analytic result or a naive
numpy re-implementation written here (never numbers copied from running our code).
Conventions: coordinates are 0-based pixel indices, x = column, y = row; a pick at x is
boxed around ``floor(x)``, which lands at index ``box // 2``.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryoextract.ops.boxes import (
    EdgeMode,
    box_fraction_outside,
    cut_boxes,
    integer_centres,
)
from cryoextract.ops.boxsize import is_efficient_box, nearest_efficient_boxes


# --------------------------------------------------------------------------- helpers
def _window(padded: np.ndarray, pad: int, cx: int, cy: int, box: int) -> np.ndarray:
    """Box ``[c - box//2, c + box//2 - 1]`` of the unpadded image, read from a padded one."""
    y0 = cy - box // 2 + pad
    x0 = cx - box // 2 + pad
    return padded[y0 : y0 + box, x0 : x0 + box]


def _outside_mask(cx: int, cy: int, box: int, shape_yx: tuple[int, int]) -> np.ndarray:
    rows = np.arange(box) - box // 2 + cy
    cols = np.arange(box) - box // 2 + cx
    return ((rows < 0) | (rows >= shape_yx[0]))[:, None] | ((cols < 0) | (cols >= shape_yx[1]))[
        None, :
    ]


# --------------------------------------------------------------------------- integer centres
def test_integer_centres_floor_and_residuals() -> None:
    coords = np.array([[10.25, 3.75], [0.0, 0.999], [-0.5, 7.0], [99.9999, -2.25]])
    centres, residuals = integer_centres(coords)
    assert centres.dtype == np.int64
    np.testing.assert_array_equal(centres, [[10, 3], [0, 0], [-1, 7], [99, -3]])
    np.testing.assert_allclose(
        residuals, [[0.25, 0.75], [0.0, 0.999], [0.5, 0.0], [0.9999, 0.75]], atol=1e-12
    )
    assert np.all((residuals >= 0) & (residuals < 1))
    np.testing.assert_allclose(centres + residuals, coords, atol=1e-12)


# --------------------------------------------------------------------------- cut_boxes
@pytest.mark.parametrize("box", [16, 32])
def test_delta_at_fractional_pick_lands_at_box_centre(box: int) -> None:
    image = np.zeros((80, 90), dtype=np.float32)
    x0, y0 = 41, 37  # column, row of the delta
    image[y0, x0] = 1.0
    picks = np.array([[x0 + 0.0, y0 + 0.0], [x0 + 0.3, y0 + 0.7], [x0 + 0.99, y0 + 0.01]])
    centres, _ = integer_centres(picks)
    boxes = cut_boxes(image, centres, box)
    assert boxes.shape == (3, box, box)
    assert boxes.dtype == np.float32
    for b in boxes:
        assert b[box // 2, box // 2] == 1.0
        assert b.sum() == 1.0


@pytest.mark.parametrize(
    ("dx_pick", "dy_pick"), [(1.5, -2.0 + 0.2), (-2.0 + 0.6, 1.1), (2.0, 2.9), (-1.0, -1.0)]
)
def test_delta_offset_for_picks_near_it(dx_pick: float, dy_pick: float) -> None:
    box = 20
    image = np.zeros((64, 64), dtype=np.float32)
    x0, y0 = 30, 33
    image[y0, x0] = 5.0
    cx, cy = int(np.floor(x0 + dx_pick)), int(np.floor(y0 + dy_pick))
    (b,) = cut_boxes(image, np.array([[cx, cy]]), box)
    row, col = np.unravel_index(np.argmax(b), b.shape)
    # box index = pixel - (centre - box//2)
    assert (row, col) == (y0 - cy + box // 2, x0 - cx + box // 2)
    assert b[row, col] == 5.0


def test_inside_boxes_equal_slices_for_every_mode() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(50, 60)).astype(np.float32)
    box = 12
    centres = np.array([[6, 6], [53, 43], [30, 20]])  # boxes exactly fit
    for edge in EdgeMode:
        boxes = cut_boxes(
            image, centres, box, edge=edge, fill_value=123.0, rng=np.random.default_rng(0)
        )
        for b, (cx, cy) in zip(boxes, centres, strict=True):
            np.testing.assert_array_equal(b, image[cy - 6 : cy + 6, cx - 6 : cx + 6])


def test_cut_boxes_reads_integer_images_as_float() -> None:
    image = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40
    image[20, 20] = 40000
    (b,) = cut_boxes(image, np.array([[20, 20]]), 8)
    assert b.dtype == np.float32
    assert b[4, 4] == 40000.0
    np.testing.assert_array_equal(b, image[16:24, 16:24].astype(np.float32))


EDGE_CENTRES = np.array([[0, 0], [39, 29], [2, 15], [20, 1], [38, 3], [-3, 10], [10, 31]])


@pytest.mark.parametrize("mode", [EdgeMode.REPLICATE, EdgeMode.DROP])
def test_replicate_equals_np_pad_edge(mode: EdgeMode) -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(30, 40)).astype(np.float32)
    box = 16
    padded = np.pad(image, box, mode="edge")
    boxes = cut_boxes(image, EDGE_CENTRES, box, edge=mode)
    for b, (cx, cy) in zip(boxes, EDGE_CENTRES, strict=True):
        np.testing.assert_array_equal(b, _window(padded, box, cx, cy, box))


def test_reflect_equals_np_pad_reflect() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(30, 40)).astype(np.float32)
    box = 16
    padded = np.pad(image, box, mode="reflect")
    boxes = cut_boxes(image, EDGE_CENTRES, box, edge=EdgeMode.REFLECT)
    for b, (cx, cy) in zip(boxes, EDGE_CENTRES, strict=True):
        np.testing.assert_array_equal(b, _window(padded, box, cx, cy, box))


def test_mean_fills_outside_with_value_and_keeps_inside() -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(3.0, 1.0, size=(30, 40)).astype(np.float32)
    box = 16
    fill = -7.25
    padded = np.pad(image, box, mode="constant", constant_values=np.nan)
    boxes = cut_boxes(image, EDGE_CENTRES, box, edge=EdgeMode.MEAN, fill_value=fill)
    for b, (cx, cy) in zip(boxes, EDGE_CENTRES, strict=True):
        expected = _window(padded, box, cx, cy, box)
        outside = np.isnan(expected)
        np.testing.assert_array_equal(outside, _outside_mask(cx, cy, box, image.shape))
        assert outside.any()
        np.testing.assert_array_equal(b[outside], fill)
        np.testing.assert_array_equal(b[~outside], expected[~outside])


def test_noise_fill_matches_inside_statistics() -> None:
    rng = np.random.default_rng(5)
    image = rng.normal(50.0, 4.0, size=(200, 200)).astype(np.float32)
    box = 64
    centres = np.array([[0, 0], [199, 100], [100, 5]])
    padded = np.pad(image, box, mode="constant", constant_values=np.nan)
    boxes = cut_boxes(image, centres, box, edge=EdgeMode.NOISE, rng=np.random.default_rng(9))
    for b, (cx, cy) in zip(boxes, centres, strict=True):
        expected = _window(padded, box, cx, cy, box)
        outside = np.isnan(expected)
        assert outside.sum() >= 64 * 27
        np.testing.assert_array_equal(b[~outside], expected[~outside])
        inside_vals = expected[~outside].astype(np.float64)
        out_vals = b[outside].astype(np.float64)
        assert np.all(np.isfinite(out_vals))
        # mean within 5 standard errors, std within 10 %
        assert abs(out_vals.mean() - inside_vals.mean()) < 5 * inside_vals.std() / np.sqrt(
            out_vals.size
        )
        assert abs(out_vals.std() / inside_vals.std() - 1) < 0.1
        # not a copy of anything: outside values are not all equal
        assert out_vals.std() > 1.0
    # same seed: same draws; another seed: different ones
    again = cut_boxes(image, centres, box, edge=EdgeMode.NOISE, rng=np.random.default_rng(9))
    other = cut_boxes(image, centres, box, edge=EdgeMode.NOISE, rng=np.random.default_rng(10))
    np.testing.assert_array_equal(again, boxes)
    assert not np.array_equal(other, boxes)


@pytest.mark.parametrize(
    ("centre", "expected"),
    [
        ((50, 50), 0.0),  # fully inside
        ((5, 5), 0.0),  # exactly fits: [0, 9]
        ((0, 0), 0.75),  # 5 of 10 rows and columns inside
        ((2, 50), 0.3),  # columns -3..6: 7 of 10 inside
        ((50, 97), 0.2),  # rows 92..101 in a 100-row image: 8 inside
        ((99, 99), 0.4),  # rows 94..103 in a 100-row image: 6 of 10 inside
        ((-20, 50), 1.0),  # entirely outside
        ((50, 200), 1.0),
    ],
)
def test_box_fraction_outside_analytic(centre: tuple[int, int], expected: float) -> None:
    box = 10
    shape = (100, 120)  # ny, nx
    cx, cy = centre
    # independent count: pixels of the box inside the image
    cols = np.arange(cx - box // 2, cx + box // 2)
    rows = np.arange(cy - box // 2, cy + box // 2)
    n_in = ((cols >= 0) & (cols < shape[1])).sum() * ((rows >= 0) & (rows < shape[0])).sum()
    oracle = 1.0 - n_in / box**2
    assert oracle == pytest.approx(expected)
    got = box_fraction_outside(np.array([centre]), box, shape)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(oracle, abs=1e-12)


def test_box_fraction_outside_non_square_micrograph() -> None:
    # x is the column: nx = 30, ny = 100; centre x=29 leaves 5 of 10 columns outside
    got = box_fraction_outside(np.array([[29, 50], [50, 29]]), 10, (100, 30))
    assert got[0] == pytest.approx(0.4)  # columns 24..33: 6 inside (24..29)
    assert got[1] == pytest.approx(1.0)  # x = 50 is beyond nx = 30


# --------------------------------------------------------------------------- box sizes
def test_efficient_boxes() -> None:
    for size in (32, 64, 128, 200, 256, 384, 512, 1024):
        assert is_efficient_box(size)
    for size in (250, 130, 66, 1000):
        assert not is_efficient_box(size)
    assert is_efficient_box(16)  # below the table: always fine
    assert nearest_efficient_boxes(250) == (240, 256)
    assert nearest_efficient_boxes(256) == (240, 270)
    assert nearest_efficient_boxes(33) == (32, 36)
    assert nearest_efficient_boxes(10) == (None, 32)
    assert nearest_efficient_boxes(5000) == (4096, None)
    assert nearest_efficient_boxes(4096) == (3456, None)
