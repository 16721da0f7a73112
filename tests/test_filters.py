"""ops/filters against scipy.ndimage (the oracle they stand in for)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cryoextract.ops.filters import bilinear_nearest, gaussian_nearest


@pytest.mark.parametrize(("shape", "sigma"), [((17, 23), 1.0), ((5, 40), 2.3), ((3, 3), 1.0),
                                              ((1, 9), 0.7), ((30, 30), 0.1)])
def test_gaussian_equals_ndimage_nearest(shape: tuple[int, int], sigma: float) -> None:
    image = np.random.default_rng(sum(shape)).normal(size=shape) * 5 + 2
    np.testing.assert_allclose(gaussian_nearest(image, sigma),
                               ndimage.gaussian_filter(image, sigma, mode="nearest"),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(12, 9), (1, 7), (6, 1), (2, 2)])
def test_bilinear_equals_map_coordinates_nearest(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    values = rng.normal(size=shape)
    rows = rng.uniform(-2, shape[0] + 1, 200)
    cols = rng.uniform(-2, shape[1] + 1, 200)
    rows[:5], cols[:5] = np.arange(5) % shape[0], np.arange(5) % shape[1]  # on the grid
    expected = ndimage.map_coordinates(values, np.stack([rows, cols]), order=1, mode="nearest")
    np.testing.assert_allclose(bilinear_nearest(values, rows, cols), expected, atol=1e-12)
