"""Detector MTF curves (``io/mtf.py``) and their Fourier-grid images (``ops/mtf.py``).

The RELION oracle is ``test_subtract.py::test_different_detector_mtfs_match_relion_...``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoextract.errors import InputError
from cryoextract.io.mtf import read_mtf
from cryoextract.ops.mtf import mtf_image, relative_mtfs

BOX, APIX = 40, 1.2


def test_a_linear_curve_is_read_off_at_each_frequency():
    """MTF = 1 - r (r in 1/pixel of a detector of the images' pixel size): RELION's
    interpolation between points reproduces it except in its first bin, which takes the
    first value, and beyond the curve's last bin, which takes the last."""
    resolution = np.linspace(0.0, 0.5, 101)
    image = mtf_image(resolution, 1.0 - resolution, APIX, BOX, APIX)
    rows = np.arange(BOX, dtype=float)
    rows[rows > BOX // 2] -= BOX
    r = np.hypot(rows[:, None], np.arange(BOX // 2 + 1)[None, :]) / BOX  # 1/pixel
    step = 0.5 / 101
    middle = (r >= step) & (r < 100 * step)
    np.testing.assert_allclose(image[middle], 1.0 - r[middle], atol=1e-12)
    assert image[0, 0] == 1.0
    np.testing.assert_allclose(image[r >= 100 * step], 0.5)


def test_relative_mtfs_average_to_one():
    resolution = np.linspace(0.0, 0.5, 21)
    images = [mtf_image(resolution, np.exp(-d * resolution), 1.0, BOX, APIX) for d in (1, 4)]
    ratios = relative_mtfs(images)
    np.testing.assert_allclose((ratios[0] + ratios[1]) / 2, 1.0)
    assert ratios[0][0, 5] > 1 > ratios[1][0, 5]


def test_bad_mtf_files_fail_in_one_line(tmp_path):
    good = pd.DataFrame({"rlnResolutionInversePixel": [0.0, 0.25, 0.5],
                         "rlnMtfValue": [1.0, 0.6, 0.3]})
    starfile.write(good, tmp_path / "good.star", overwrite=True)
    resolution, value = read_mtf(tmp_path / "good.star")
    np.testing.assert_allclose(resolution, [0.0, 0.25, 0.5])
    np.testing.assert_allclose(value, [1.0, 0.6, 0.3])
    for name, table, message in (
        ("zero.star", good.assign(rlnMtfValue=[1.0, 0.0, 0.3]), "> 0"),
        ("order.star", good.assign(rlnResolutionInversePixel=[0.0, 0.5, 0.25]), "increasing"),
        ("columns.star", good.rename(columns={"rlnMtfValue": "rlnFoo"}), "rlnMtfValue"),
    ):
        starfile.write(table, tmp_path / name, overwrite=True)
        with pytest.raises(InputError, match=message) as caught:
            read_mtf(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
    with pytest.raises(InputError, match="not found"):
        read_mtf(tmp_path / "missing.star")
