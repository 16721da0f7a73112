"""Background normalisation, inversion and dust removal (``cryoextract.ops.normalize``).

Every expected value comes from an independent oracle: an analytic result or a naive
numpy re-implementation written here (never numbers copied from running our code). Every
test runs twice: with the compiled normalisation (``ops/native/normalise.c``) and with
the numpy path used where it was not built.
"""

from __future__ import annotations

import numpy as np
import pytest

import cryoextract.ops.native as native
from cryoextract.ops.normalize import NormMode, normalise


@pytest.fixture(autouse=True, params=["c", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with the C library, then with ``CRYOEXTRACT_KERNEL=numpy``."""
    if request.param == "numpy":
        monkeypatch.setenv("CRYOEXTRACT_KERNEL", "numpy")
    native._library.cache_clear()
    native.normaliser.cache_clear()
    assert (native.normaliser() is not None) == (request.param == "c"), \
        "make venv (pip install -e .) builds ops/native/normalise.c"
    yield request.param
    monkeypatch.delenv("CRYOEXTRACT_KERNEL", raising=False)
    native._library.cache_clear()
    native.normaliser.cache_clear()


def _naive_background(box: int, radius: float) -> np.ndarray:
    mask = np.zeros((box, box), dtype=bool)
    c = box // 2
    for i in range(box):
        for j in range(box):
            mask[i, j] = (i - c) ** 2 + (j - c) ** 2 > radius**2
    return mask


# --------------------------------------------------------------------------- normalise
BOX = 48
RADIUS = 18.0


def _plane_stack(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:BOX, 0:BOX].astype(np.float64)
    stack = []
    for _ in range(n):
        a, b, c = rng.normal(size=3) * (0.3, 0.2, 20.0)
        img = a * x + b * y + c + rng.normal(0, 2.5, size=(BOX, BOX))
        img[20:28, 20:28] += 30.0  # a "particle" inside the radius
        stack.append(img)
    return np.array(stack, dtype=np.float32)


def _naive_ramp(image: np.ndarray, radius: float) -> np.ndarray:
    bg = _naive_background(image.shape[-1], radius)
    y, x = np.nonzero(bg)
    design = np.stack([x, y, np.ones_like(x)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, image[bg].astype(np.float64), rcond=None)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    flat = image.astype(np.float64) - (coef[0] * xx + coef[1] * yy + coef[2])
    return (flat - flat[bg].mean()) / flat[bg].std()


def test_background_mask_matches_definition() -> None:
    from cryoextract.ops.normalize import background_mask

    for box, r in ((48, 18.0), (64, 24.0), (10, 3.5)):
        np.testing.assert_array_equal(background_mask(box, r), _naive_background(box, r))


def test_ramp_normalisation_equals_naive_lstsq() -> None:
    stack = _plane_stack(4, seed=40)
    expected = np.array([_naive_ramp(img, RADIUS) for img in stack])
    images = stack.copy()
    dust, flat = normalise(images, NormMode.RAMP, radius_px=RADIUS)
    assert images.dtype == np.float32
    np.testing.assert_array_equal(dust, 0)
    np.testing.assert_array_equal(flat, False)
    assert np.max(np.abs(images - expected)) < 1e-4
    bg = _naive_background(BOX, RADIUS)
    values = images[:, bg].astype(np.float64)
    np.testing.assert_allclose(values.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(values.std(axis=1), 1.0, atol=1e-5)
    # the background plane is gone: a fresh lstsq fit has zero slopes
    y, x = np.nonzero(bg)
    design = np.stack([x, y, np.ones_like(x)], axis=1).astype(np.float64)
    for v in values:
        coef, *_ = np.linalg.lstsq(design, v, rcond=None)
        assert np.max(np.abs(coef)) < 1e-5


@pytest.mark.parametrize(("box", "radius"), [(50, 19.0), (130, 47.5), (6, 1.0)])
def test_ramp_normalisation_at_any_width(box: int, radius: float) -> None:
    """Widths that are no multiple of the C loop's 8 lanes (its tail), a large box with
    a big offset (float32 sums cancelling), and a tiny one."""
    rng = np.random.default_rng(box)
    y, x = np.mgrid[0:box, 0:box].astype(np.float64)
    stack = np.array([0.02 * x - 0.03 * y + 5000.0 + rng.normal(0, 3.0, (box, box))
                      for _ in range(5)], dtype=np.float32)
    expected = np.array([_naive_ramp(img, radius) for img in stack])
    images = stack.copy()
    normalise(images, NormMode.RAMP, radius_px=radius, invert=True)
    assert np.max(np.abs(images + expected)) < 5e-4  # float32 input of 5000 +- 3
    background = images[:, _naive_background(box, radius)].astype(np.float64)
    # no bias from rounding the large offset: mean 0 and std 1 far below the noise's
    assert np.abs(background.mean(axis=1)).max() < 1e-6
    assert np.abs(background.std(axis=1) - 1).max() < 1e-5


def test_mean_normalisation_keeps_the_ramp() -> None:
    stack = _plane_stack(3, seed=41)
    bg = _naive_background(BOX, RADIUS)
    expected = np.array(
        [(img - img[bg].mean(dtype=np.float64)) / img[bg].astype(np.float64).std() for img in stack]
    )
    images = stack.copy()
    _, flat = normalise(images, NormMode.MEAN, radius_px=RADIUS)
    assert not flat.any()
    assert np.max(np.abs(images - expected)) < 1e-4
    values = images[:, bg].astype(np.float64)
    np.testing.assert_allclose(values.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(values.std(axis=1), 1.0, atol=1e-5)
    # different from ramp mode (the planes have non-zero slopes)
    ramp = stack.copy()
    normalise(ramp, NormMode.RAMP, radius_px=RADIUS)
    assert np.max(np.abs(ramp - images)) > 0.1


def test_whole_normalisation_uses_every_pixel() -> None:
    stack = _plane_stack(3, seed=42)
    images = stack.copy()
    normalise(images, NormMode.WHOLE, radius_px=RADIUS)
    v = images.astype(np.float64)
    np.testing.assert_allclose(v.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(v.std(axis=(1, 2)), 1.0, atol=1e-5)
    s = stack.astype(np.float64)
    expected = (s - s.mean(axis=(1, 2), keepdims=True)) / s.std(axis=(1, 2), keepdims=True)
    assert np.max(np.abs(v - expected)) < 1e-4


def test_none_leaves_values_and_invert_negates() -> None:
    stack = _plane_stack(2, seed=43)
    images = stack.copy()
    dust, flat = normalise(images, NormMode.NONE, radius_px=RADIUS)
    np.testing.assert_array_equal(images, stack)
    np.testing.assert_array_equal(dust, 0)
    assert not flat.any()
    images = stack.copy()
    normalise(images, NormMode.NONE, radius_px=RADIUS, invert=True)
    np.testing.assert_array_equal(images, -stack)


@pytest.mark.parametrize("mode", [NormMode.RAMP, NormMode.MEAN, NormMode.WHOLE])
def test_invert_flag_negates_after_normalising(mode: NormMode) -> None:
    stack = _plane_stack(3, seed=44)
    plain, inverted = stack.copy(), stack.copy()
    normalise(plain, mode, radius_px=RADIUS)
    normalise(inverted, mode, radius_px=RADIUS, invert=True)
    np.testing.assert_allclose(inverted, -plain, atol=1e-6)
    bg = _naive_background(BOX, RADIUS) if mode is not NormMode.WHOLE else np.ones((BOX, BOX), bool)
    values = inverted[:, bg].astype(np.float64)
    np.testing.assert_allclose(values.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(values.std(axis=1), 1.0, atol=1e-5)
    # the particle (bright in the input) is dark after inversion
    assert np.all(inverted[:, 22:26, 22:26].mean(axis=(1, 2)) < -3)


@pytest.mark.parametrize("mode", [NormMode.RAMP, NormMode.MEAN, NormMode.WHOLE])
def test_constant_image_is_flagged_and_not_scaled(mode: NormMode) -> None:
    stack = _plane_stack(3, seed=45)
    stack[1] = 5.0
    images = stack.copy()
    _, flat = normalise(images, mode, radius_px=RADIUS)
    np.testing.assert_array_equal(flat, [False, True, False])
    assert np.all(np.isfinite(images))
    # the flat image is not divided by its (zero) std: still constant, no larger than before
    assert np.ptp(images[1]) < 1e-4
    assert np.abs(images[1]).max() <= 5.0 + 1e-4
    # its neighbours are normalised as usual
    bg = _naive_background(BOX, RADIUS) if mode is not NormMode.WHOLE else np.ones((BOX, BOX), bool)
    for i in (0, 2):
        v = images[i][bg].astype(np.float64)
        assert abs(v.mean()) < 1e-5
        assert abs(v.std() - 1) < 1e-5


def _dusty_stack(seed: int) -> tuple[np.ndarray, list[tuple[int, int, int, float]]]:
    rng = np.random.default_rng(seed)
    stack = rng.normal(0.0, 1.0, size=(3, BOX, BOX)).astype(np.float32)
    outliers = [
        (0, 24, 24, 40.0),
        (0, 20, 26, 35.0),
        (0, 25, 21, -40.0),  # inside the radius
        (1, 23, 23, -50.0),
        (2, 2, 3, 45.0),  # in the background
    ]
    for i, r, c, v in outliers:
        stack[i, r, c] = v
    return stack, outliers


def _naive_dust_count(img: np.ndarray, white: float, black: float) -> int:
    bg = _naive_background(BOX, RADIUS)
    m = img[bg].astype(np.float64).mean()
    s = img[bg].astype(np.float64).std()
    d = img.astype(np.float64) - m
    return int(((d > white * s) | (d < -black * s)).sum())


def test_dust_replacement() -> None:
    stack, outliers = _dusty_stack(50)
    images = stack.copy()
    dust, _ = normalise(
        images,
        NormMode.NONE,
        radius_px=RADIUS,
        rng=np.random.default_rng(7),
        white_sigma=5.0,
        black_sigma=5.0,
    )
    expected_counts = [_naive_dust_count(img, 5.0, 5.0) for img in stack]
    assert expected_counts == [3, 1, 1]
    np.testing.assert_array_equal(dust, expected_counts)
    changed = images != stack
    assert changed.sum() == sum(expected_counts)
    for i, r, c, _ in outliers:
        assert changed[i, r, c]
        assert np.isfinite(images[i, r, c])
        assert abs(images[i, r, c]) < 6.0  # a draw from the background distribution
    # white only: the negative outliers stay
    images = stack.copy()
    dust, _ = normalise(
        images, NormMode.NONE, radius_px=RADIUS, rng=np.random.default_rng(7), white_sigma=5.0
    )
    np.testing.assert_array_equal(dust, [_naive_dust_count(img, 5.0, np.inf) for img in stack])
    np.testing.assert_array_equal(dust, [2, 0, 1])
    assert images[0, 25, 21] == -40.0 and images[1, 23, 23] == -50.0
    # black only
    images = stack.copy()
    dust, _ = normalise(
        images, NormMode.NONE, radius_px=RADIUS, rng=np.random.default_rng(7), black_sigma=5.0
    )
    np.testing.assert_array_equal(dust, [1, 1, 0])
    assert images[0, 24, 24] == 40.0


def test_dust_then_normalise_gives_unit_background() -> None:
    stack, _ = _dusty_stack(51)
    images = stack.copy()
    dust, _ = normalise(
        images,
        NormMode.RAMP,
        radius_px=RADIUS,
        rng=np.random.default_rng(3),
        white_sigma=5.0,
        black_sigma=5.0,
    )
    assert dust.sum() == 5
    bg = _naive_background(BOX, RADIUS)
    v = images[:, bg].astype(np.float64)
    np.testing.assert_allclose(v.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(v.std(axis=1), 1.0, atol=1e-5)
    assert np.abs(images).max() < 8


def test_dust_is_reproducible_with_seed() -> None:
    stack, _ = _dusty_stack(52)
    runs = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        images = stack.copy()
        normalise(
            images,
            NormMode.MEAN,
            radius_px=RADIUS,
            rng=np.random.default_rng(seed),
            white_sigma=4.0,
            black_sigma=4.0,
        )
        runs[name] = images
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])
