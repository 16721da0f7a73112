"""Quality descriptors (``cryoextract.ops.descriptors``): analytic cases, generated and real data.

Expected values are analytic (Gini of known sets, edge distances of known centres),
naive numpy on the same pixels, or a known layout: a generated micrograph with a rough
region, and the real micrograph in ``../shared/data/real/micrograph_cleaner_em`` with
its contamination mask (MicrographCleaner's probability, 0..1).
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import starfile
from scipy import ndimage

from cryoextract.errors import ParameterError
from cryoextract.ops import descriptors as D
from cryoextract.ops.boxes import EdgeMode, box_fraction_outside, cut_boxes
from cryoextract.ops.normalize import background_mask
from shared_data import REAL, require_paths

CLEANER = REAL / "micrograph_cleaner_em"
CLEANER_MIC = CLEANER / "mics" / "Ucsf_stack_1142_DW.mrc"
CLEANER_MASK = CLEANER / "masks" / "Ucsf_stack_1142_DW.mrc"
CLEANER_PICKS = CLEANER / "inCoords" / "relion" / "Ucsf_stack_1142_DW_autopick.star"


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


# --------------------------------------------------------------------------- Gini


@pytest.mark.parametrize(("values", "expected"), [
    ([1.0, 1.0, 1.0], 0.0),
    ([0.0, 0.0, 0.0], 0.0),
    ([0.0, 0.0, 0.0, 4.0], 0.75),  # 1 - 1/n
    ([5.0, 4.0, 3.0, 2.0, 1.0], 4.0 / 15.0),  # sum|xi-xj| = 40, 2 n^2 mean = 150
    ([1.0, 3.0], 0.25),  # |1-3| * 2 / (2 * 4 * 2)
    ([7.0], 0.0),
])
def test_gini_exact_on_small_sets(values: list[float], expected: float) -> None:
    assert float(D.gini(np.array(values))) == pytest.approx(expected, abs=1e-15)


def test_gini_equals_mean_absolute_difference_definition_along_axis() -> None:
    rng = np.random.default_rng(1)
    x = rng.exponential(size=(3, 50, 7))
    got = D.gini(x, axis=1)
    assert got.shape == (3, 7)
    naive = np.abs(x[:, :, None, :] - x[:, None, :, :]).sum(axis=(1, 2)) / (
        2 * 50**2 * x.mean(axis=1))
    np.testing.assert_allclose(got, naive, rtol=1e-12)


def test_gini_refuses_negative_values() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        D.gini(np.array([1.0, -1.0]))


def test_histogram_gini_of_constant_and_two_valued_sets() -> None:
    # all values in one of 256 bins: 1 - 1/256; two equal halves: 1 - 2/256
    assert D.histogram_gini(np.full(100, 3.0)) == pytest.approx(1 - 1 / 256)
    assert D.histogram_gini(np.r_[np.zeros(50), np.ones(50)]) == pytest.approx(1 - 2 / 256)
    assert D.micrograph_gini(np.ones((5, 7))) == pytest.approx(1 - 1 / 256)


# --------------------------------------------------------------------------- per-patch Gini


def test_patch_gini_constant_patch_is_zero_and_single_bright_pixel_near_one() -> None:
    image = np.full((256, 256), 5.0, dtype=np.float32)
    centres = np.array([[128, 128], [40, 200]])
    d = D.particle_descriptors(image, centres, 32, 32, 1.0)
    np.testing.assert_array_equal(d[D.GINI_PATCH], [0.0, 0.0])
    image[128, 128] = 100.0  # one bright pixel in the 32 x 32 patch of the first pick
    d = D.particle_descriptors(image, centres, 32, 32, 1.0)
    assert d[D.GINI_PATCH][0] == pytest.approx(1 - 1 / 32**2)
    assert d[D.GINI_PATCH][1] == 0.0


def test_patch_gini_of_gaussian_noise_is_scale_free() -> None:
    # Gini of |N(0, s)| (half-normal) is sqrt(2) - 1 whatever s and the mean
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1024, 1024)).astype(np.float32)
    centres = rng.integers(100, 900, size=(50, 2))
    g1 = D.particle_descriptors(image, centres, 64, 96, 1.0)[D.GINI_PATCH]
    g2 = D.particle_descriptors(7.0 * image + 300.0, centres, 64, 96, 1.0)[D.GINI_PATCH]
    assert np.mean(g1) == pytest.approx(np.sqrt(2) - 1, abs=0.01)
    np.testing.assert_allclose(g1, g2, atol=1e-5)


# --------------------------------------------------------------------------- local std


def test_local_std_map_grid_and_relative_values() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(600, 800))
    image[:, 400:] *= 3.0
    grid = D.PatchGrid.for_patch(image.shape, 64)
    assert (grid.stride, grid.half_samples, grid.step_px) == (2, 16, 32)
    std_map = D.local_std_map(image, 64)
    assert std_map.shape == grid.map_shape == (600 // 32 - 1, 800 // 32 - 1)
    # far from the boundary the smoothed relative std is the std ratio
    left, right = std_map[:, :6].mean(), std_map[:, -6:].mean()
    assert right / left == pytest.approx(3.0, rel=0.03)
    assert np.median(std_map) == pytest.approx(1.0)
    np.testing.assert_array_equal(D.local_std_map(np.zeros((300, 300)), 64), 1.0)


def test_local_std_map_patch_std_matches_numpy_before_smoothing() -> None:
    rng = np.random.default_rng(3)
    image = rng.gamma(2.0, size=(512, 384)).astype(np.float32)
    grid = D.PatchGrid.for_patch(image.shape, 128)  # stride 4, 16 samples per half patch
    assert (grid.stride, grid.half_samples) == (4, 16)
    raw = D._patch_std(grid.sample(image), grid.half_samples, grid.map_shape)
    i, j = 3, 4
    patch = image[i * 64 : i * 64 + 128 : 4, j * 64 : j * 64 + 128 : 4]
    assert raw[i, j] == pytest.approx(float(np.std(patch.astype(np.float64))), rel=1e-9)
    # the centre of patch (i, j) is the mean of its sampled pixel positions
    assert grid.first_centre_px + j * grid.step_px == pytest.approx(
        np.mean(np.arange(j * 64, j * 64 + 128, 4)))


def test_rough_region_scores_higher_by_var_than_flat_ice() -> None:
    # flat ice: white noise; a "carbon / thick ice" band: the same noise plus a strong
    # low-resolution texture, so its local std is higher
    rng = np.random.default_rng(4)
    ny, nx = 1024, 1536
    image = rng.normal(size=(ny, nx)).astype(np.float32)
    texture = ndimage.gaussian_filter(rng.normal(size=(ny, nx)), 4.0)
    image[:, 1000:] += (3.0 * texture[:, 1000:] / texture.std()).astype(np.float32)
    box, patch = 64, 96
    flat = np.column_stack([rng.integers(100, 850, 40), rng.integers(100, 924, 40)])
    rough = np.column_stack([rng.integers(1150, 1436, 40), rng.integers(100, 924, 40)])
    d = D.particle_descriptors(image, np.r_[flat, rough], box, patch, 1.0)
    score = d[D.SCORE_BY_VAR]
    assert score[40:].min() > score[:40].max()
    assert np.median(score[:40]) == pytest.approx(1.0, abs=0.1)


# --------------------------------------------------------------------------- geometry


def test_edge_distance_exact_and_consistent_with_fraction_outside() -> None:
    image = np.zeros((100, 200), dtype=np.float32)
    centres = np.array([[10, 50], [199, 50], [100, 3], [100, 97], [100, 50], [0, 0]])
    d = D.particle_descriptors(image, centres, 20, 32, 1.5)
    np.testing.assert_array_equal(d[D.EDGE_DISTANCE], np.array([10, 1, 3, 3, 50, 0]) * 1.5)
    rng = np.random.default_rng(5)
    many = np.column_stack([rng.integers(0, 200, 500), rng.integers(0, 100, 500)])
    d = D.particle_descriptors(image, many, 20, 32, 1.0)
    np.testing.assert_array_equal(d[D.FRACTION_OUTSIDE] > 0, d[D.EDGE_DISTANCE] < 10)
    np.testing.assert_array_equal(d[D.FRACTION_OUTSIDE],
                                  box_fraction_outside(many, 20, image.shape))


# --------------------------------------------------------------------------- background


def test_background_stats_of_raw_boxes_and_of_micrograph_agree() -> None:
    rng = np.random.default_rng(6)
    image = rng.normal(10.0, 2.0, size=(700, 900)).astype(np.float32)
    centres = rng.integers(200, 500, size=(30, 2))
    box, radius = 256, 96.0  # stride 8 on the box
    boxes = cut_boxes(image, centres, box, edge=EdgeMode.REPLICATE)
    mean, std = D.background_stats(boxes, radius)
    s = D.box_sample_stride(box)
    assert s == 8
    mask = background_mask(box, radius)[::s, ::s]
    values = boxes[:, ::s, ::s][:, mask].astype(np.float64)
    np.testing.assert_allclose(mean, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(axis=1), rtol=1e-12)
    m2, s2 = D.micrograph_background_stats(image, centres, box, radius)
    np.testing.assert_allclose(m2, mean, rtol=1e-12)
    np.testing.assert_allclose(s2, std, rtol=1e-12)
    d = D.particle_descriptors(image, centres, box, 384, 1.0, bg_radius_px=radius)
    np.testing.assert_allclose(d[D.BACKGROUND_MEAN], mean, rtol=1e-12)


def test_micrograph_background_uses_only_inside_pixels() -> None:
    image = np.zeros((200, 200), dtype=np.float32)
    image[:, :100] = 4.0  # left half 4, right half 0
    mean, std = D.micrograph_background_stats(image, np.array([[0, 100]]), 64, 24.0)
    assert mean[0] == 4.0 and std[0] == 0.0  # only the right half of the box is inside
    mean, _ = D.micrograph_background_stats(image, np.array([[1000, 1000]]), 64, 24.0)
    assert np.isnan(mean[0])


def test_descriptors_leave_the_image_alone_and_check_the_map() -> None:
    rng = np.random.default_rng(7)
    image = rng.normal(size=(300, 300))  # float64: a view would be writable
    before = image.copy()
    std_map = D.local_std_map(image, 64)
    D.particle_descriptors(image, np.array([[150, 150]]), 64, 64, 1.0, std_map=std_map,
                           bg_radius_px=24)
    np.testing.assert_array_equal(image, before)
    with pytest.raises(ParameterError, match="std_map has shape"):
        D.particle_descriptors(image, np.array([[150, 150]]), 64, 96, 1.0, std_map=std_map)
    empty = D.particle_descriptors(image, np.zeros((0, 2), int), 64, 64, 1.0)
    assert all(len(v) == 0 for v in empty.values())


# --------------------------------------------------------------------------- real data


def test_real_micrograph_picks_on_the_ice_blob_score_apart() -> None:
    require_paths(CLEANER_MIC, CLEANER_MASK, CLEANER_PICKS)
    image = mrcfile.read(CLEANER_MIC)
    mask = mrcfile.read(CLEANER_MASK)
    picks = starfile.read(CLEANER_PICKS)
    centres = np.floor(picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()).astype(int)
    probability = mask[centres[:, 1], centres[:, 0]]
    blob, thin = probability > 0.9, probability < 0.3  # contamination vs clean thin ice
    assert blob.sum() >= 5 and thin.sum() >= 20
    box, patch = 64, 96  # ~5 A/px (the header's 1.0 is wrong)
    std_map = D.local_std_map(image, patch)
    d = D.particle_descriptors(image, centres, box, patch, 5.0, std_map=std_map,
                               bg_radius_px=0.375 * box)
    score = d[D.SCORE_BY_VAR]
    assert _auc(score[blob], score[thin]) > 0.95
    assert score[blob].mean() > 2.0 * score[thin].mean()
    assert np.median(score[thin]) == pytest.approx(1.0, abs=0.15)
    # the blob is thick ice: darker background (lower mean) and rougher
    assert _auc(d[D.BACKGROUND_MEAN][thin], d[D.BACKGROUND_MEAN][blob]) > 0.95
    assert _auc(d[D.BACKGROUND_STD][blob], d[D.BACKGROUND_STD][thin]) > 0.95
    # a micrograph with a large blob has a more concentrated variance histogram than noise
    noise = np.random.default_rng(8).normal(size=image.shape)
    assert D.micrograph_gini(std_map) > D.micrograph_gini(D.local_std_map(noise, patch)) + 0.1
