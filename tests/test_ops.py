"""Pure array functions of ``cryoextract.ops`` and ``cryoextract.pipeline.extraction.params``.

Every expected value comes from an independent oracle: an analytic result or a naive
numpy re-implementation written here (never numbers copied from running our code).
Conventions: coordinates are 0-based pixel indices, x = column, y = row; a pick at x is
boxed around ``floor(x)``, which lands at index ``box // 2``.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryoextract.errors import ParameterError
from cryoextract.ops.boxes import (
    EdgeMode,
    box_fraction_outside,
    cut_boxes,
    integer_centres,
)
from cryoextract.ops.boxsize import is_efficient_box, nearest_efficient_boxes
from cryoextract.ops.fourier import fourier_crop_2d
from cryoextract.ops.normalize import NormMode, normalise
from cryoextract.pipeline.extraction.params import ExtractParams, resolve_output_box


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


def _naive_background(box: int, radius: float) -> np.ndarray:
    mask = np.zeros((box, box), dtype=bool)
    c = box // 2
    for i in range(box):
        for j in range(box):
            mask[i, j] = (i - c) ** 2 + (j - c) ** 2 > radius**2
    return mask


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


# --------------------------------------------------------------------------- Fourier crop
def _naive_crop(image: np.ndarray, m: int) -> np.ndarray:
    n = image.shape[-1]
    spectrum = np.fft.rfft2(image.astype(np.float64))
    rows = np.r_[0 : m // 2 + 1, n - m // 2 + 1 : n]
    cropped = spectrum[..., rows, :][..., : m // 2 + 1]
    return np.fft.irfft2(cropped, s=(m, m)) * (m / n) ** 2


def test_fourier_crop_preserves_mean() -> None:
    rng = np.random.default_rng(10)
    images = rng.normal(7.5, 3.0, size=(4, 64, 64)).astype(np.float32)
    out = fourier_crop_2d(images, 32)
    assert out.shape == (4, 32, 32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(
        out.mean(axis=(1, 2), dtype=np.float64),
        images.mean(axis=(1, 2), dtype=np.float64),
        rtol=1e-6,
    )


def test_fourier_crop_of_cosines_is_exact_cosine_on_coarse_grid() -> None:
    n, m = 96, 48
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    image = (
        2.0
        + np.cos(2 * np.pi * 5 * x / n + 0.4)
        + 0.5 * np.cos(2 * np.pi * 11 * y / n - 1.1)
        + 0.25 * np.cos(2 * np.pi * (7 * x + 3 * y) / n + 0.2)
        + 0.75 * np.sin(2 * np.pi * 23 * x / n)  # 23 < m/2 = 24
    )
    out = fourier_crop_2d(image.astype(np.float32), m)
    # coarse pixel (Y, X) sits at fine coordinate (Y*n/m, X*n/m)
    yc, xc = np.mgrid[0:m, 0:m].astype(np.float64) * (n / m)
    expected = (
        2.0
        + np.cos(2 * np.pi * 5 * xc / n + 0.4)
        + 0.5 * np.cos(2 * np.pi * 11 * yc / n - 1.1)
        + 0.25 * np.cos(2 * np.pi * (7 * xc + 3 * yc) / n + 0.2)
        + 0.75 * np.sin(2 * np.pi * 23 * xc / n)
    )
    assert np.max(np.abs(out - expected)) < 1e-5


@pytest.fixture(params=["fftw", "scipy"])
def fft_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through FFTW (pyFFTW, a dependency) and through the scipy fallback."""
    from cryoextract.ops import fourier

    if request.param == "fftw":
        assert fourier.fftw_available(), "pyFFTW is a dependency: pip install pyfftw"
    else:
        monkeypatch.setattr(fourier, "fftw_available", lambda: False)
    return str(request.param)


@pytest.mark.parametrize(("n", "m"), [(64, 32), (64, 48), (100, 34), (64, 2), (32, 30)])
def test_fourier_crop_equals_naive_implementation(n: int, m: int, fft_backend: str) -> None:
    rng = np.random.default_rng(n * 1000 + m)
    images = rng.normal(size=(2, 3, n, n)).astype(np.float32)
    out = fourier_crop_2d(images, m)
    assert out.shape == (2, 3, m, m)
    expected = _naive_crop(images, m)
    assert np.max(np.abs(out - expected)) < 1e-5


def test_fftw_crop_equals_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both backends, several outputs and sub-pixel shifts: the same coefficients."""
    from cryoextract.ops import fourier

    rng = np.random.default_rng(7)
    images = rng.normal(size=(9, 96, 96)).astype(np.float32)
    shifts = rng.uniform(-1, 1, size=(9, 2))
    fftw = fourier.fourier_crop_many(images, (48, 96, 32), shifts_xy=shifts)
    monkeypatch.setattr(fourier, "fftw_available", lambda: False)
    plain = fourier.fourier_crop_many(images, (48, 96, 32), shifts_xy=shifts)
    for a, b in zip(fftw, plain, strict=True):
        assert a.shape == b.shape and a.dtype == np.float32
        assert np.max(np.abs(a - b)) < 2e-6 * np.abs(b).max()


def test_fourier_crop_same_size_without_shift_is_identity() -> None:
    image = np.random.default_rng(0).normal(size=(1, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(fourier_crop_2d(image, 32), image)


@pytest.mark.parametrize(("n", "m"), [(63, 32), (64, 31), (32, 64)])
def test_fourier_crop_rejects_bad_sizes(n: int, m: int) -> None:
    with pytest.raises(ValueError):
        fourier_crop_2d(np.zeros((1, n, n), dtype=np.float32), m)


def _band_limited(n: int, kmax: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random real image with |kx|, |ky| <= kmax; returns the image and its full fft2."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, n))
    spectrum = np.fft.fft2(image)
    k = np.fft.fftfreq(n) * n
    keep = (np.abs(k)[:, None] <= kmax) & (np.abs(k)[None, :] <= kmax)
    image = np.real(np.fft.ifft2(spectrum * keep))
    return image, np.fft.fft2(image)


def _fourier_series(spectrum: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Evaluate the image's Fourier series at arbitrary (x, y) (same-shaped arrays)."""
    n = spectrum.shape[0]
    k = np.fft.fftfreq(n) * n
    ex = np.exp(2j * np.pi * np.multiply.outer(xs, k) / n)  # (..., kx)
    ey = np.exp(2j * np.pi * np.multiply.outer(ys, k) / n)  # (..., ky)
    values = np.einsum("...a,ab,...b->...", ey, spectrum, ex) / n**2
    return np.real(values)


@pytest.mark.parametrize(("dx", "dy"), [(0.3, -0.7), (-0.45, 0.2)])
def test_shift_of_band_limited_image_equals_fourier_series(
    dx: float, dy: float, fft_backend: str
) -> None:
    n = 32
    image, spectrum = _band_limited(n, 10, seed=21)
    out = fourier_crop_2d(image[None].astype(np.float32), n, shifts_xy=np.array([[dx, dy]]))[0]
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    # content moves by +d: new(x, y) = old(x - dx, y - dy)
    expected = _fourier_series(spectrum, x - dx, y - dy)
    assert np.max(np.abs(out - expected)) < 1e-5 * max(1.0, np.abs(expected).max())
    assert np.max(np.abs(out - image)) > 0.1  # the shift did something


def test_shift_and_crop_of_band_limited_image(fft_backend: str) -> None:
    n, m = 48, 24
    dx, dy = 0.3, -0.7  # input pixels
    image, spectrum = _band_limited(n, 8, seed=22)  # 8 < m/2
    out = fourier_crop_2d(image[None].astype(np.float32), m, shifts_xy=np.array([[dx, dy]]))[0]
    yc, xc = np.mgrid[0:m, 0:m].astype(np.float64) * (n / m)
    expected = _fourier_series(spectrum, xc - dx, yc - dy)
    assert np.max(np.abs(out - expected)) < 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize(("dx", "dy"), [(3, -2), (-5, 0), (0, 7), (1, 1)])
def test_integer_shift_equals_roll(dx: int, dy: int) -> None:
    rng = np.random.default_rng(30)
    images = rng.normal(size=(2, 32, 32)).astype(np.float32)
    out = fourier_crop_2d(images, 32, shifts_xy=np.array([[dx, dy], [dx, dy]], dtype=float))
    expected = np.roll(images, shift=(dy, dx), axis=(1, 2))
    assert np.max(np.abs(out - expected)) < 1e-5


def test_per_image_shifts() -> None:
    rng = np.random.default_rng(31)
    images = rng.normal(size=(3, 16, 16)).astype(np.float32)
    shifts = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, -1.0]])
    out = fourier_crop_2d(images, 16, shifts_xy=shifts)
    for o, img, (dx, dy) in zip(out, images, shifts, strict=True):
        assert np.max(np.abs(o - np.roll(img, (int(dy), int(dx)), axis=(0, 1)))) < 1e-5


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


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("box", [63, 0, -64, 1, -2])
def test_params_reject_bad_boxes(box: int) -> None:
    with pytest.raises(ParameterError):
        ExtractParams(box_px=box)


@pytest.mark.parametrize("out_box", [130, 63, 0, -32])
def test_params_reject_bad_output_boxes(out_box: int) -> None:
    with pytest.raises(ParameterError):
        ExtractParams(box_px=128, out_box_px=out_box)


def test_params_accept_and_report_sizes() -> None:
    p = ExtractParams(box_px=256, out_box_px=128)
    assert p.output_box_px == 128
    assert p.output_pixel_size(1.0) == 2.0
    assert p.output_pixel_size(0.8538) == 0.8538 * 2
    assert p.background_radius_px == 48.0  # round(0.375 * 128)
    q = ExtractParams(box_px=256, out_box_px=86)
    assert q.output_pixel_size(1.0) == pytest.approx(256 / 86, rel=1e-15)
    r = ExtractParams(box_px=64)
    assert r.output_box_px == 64
    assert r.output_pixel_size(1.5) == 1.5
    assert r.background_radius_px == 24.0


def test_params_reject_bad_radius_and_dust() -> None:
    with pytest.raises(ParameterError):
        ExtractParams(box_px=64, bg_radius_px=33)
    with pytest.raises(ParameterError):
        ExtractParams(box_px=64, bg_radius_px=0)
    with pytest.raises(ParameterError):
        ExtractParams(box_px=64, white_dust_sigma=0)
    with pytest.raises(ParameterError):
        ExtractParams(box_px=64, black_dust_sigma=-1)


def test_resolve_output_box() -> None:
    assert resolve_output_box(256) is None
    assert resolve_output_box(256, bin_to_px=128) == 128
    assert resolve_output_box(256, bin_to_px=256) is None
    assert resolve_output_box(256, bin_factor=2) == 128
    assert resolve_output_box(256, bin_factor=3) == 86  # 85.33 -> nearest even
    assert resolve_output_box(256, bin_factor=1) is None
    assert resolve_output_box(256, pixel_size_out_angstrom=2.0, pixel_size_angstrom=1.0) == 128
    assert resolve_output_box(200, pixel_size_out_angstrom=3.0, pixel_size_angstrom=1.06) == 70
    with pytest.raises(ParameterError):
        resolve_output_box(256, bin_to_px=128, bin_factor=2)
    with pytest.raises(ParameterError):
        resolve_output_box(256, bin_factor=0.5)
    with pytest.raises(ParameterError):
        resolve_output_box(256, pixel_size_out_angstrom=0.5, pixel_size_angstrom=1.0)
    with pytest.raises(ParameterError):
        resolve_output_box(256, pixel_size_out_angstrom=2.0)
