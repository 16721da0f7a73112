"""The subtraction mask's geometry (``ops.subtract.inspect_mask`` surface voxels and
``centre_of_mass_xyz``) against scipy.ndimage's ``binary_erosion`` and
``center_of_mass``, which the command no longer imports (0.2 s of start-up)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cryoextract.ops.subtract import centre_of_mass_xyz, inspect_mask


@pytest.mark.parametrize("shape", [(10, 12, 14), (1, 5, 5), (2, 2, 2), (31, 30, 29)])
def test_surface_voxels_and_centre_as_scipy(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    smooth = ndimage.gaussian_filter(rng.random(shape), 1.5)
    mask = (smooth - smooth.min()) / np.ptp(smooth)
    inside = mask >= 0.5
    surface = inside & ~ndimage.binary_erosion(inside, border_value=0)
    report = inspect_mask(mask)
    assert report.surface_voxels == int(np.count_nonzero(surface))
    assert report.inside_voxels == int(np.count_nonzero(inside))
    z, y, x = ndimage.center_of_mass(mask)
    np.testing.assert_allclose(centre_of_mass_xyz(mask), [x, y, z], rtol=0, atol=1e-9)


def test_a_full_cube_has_its_faces_as_surface() -> None:
    report = inspect_mask(np.ones((6, 6, 6), np.float32))
    assert report.surface_voxels == 6**3 - 4**3
    np.testing.assert_allclose(centre_of_mass_xyz(np.ones((6, 6, 6))), [2.5, 2.5, 2.5])
