"""Fourier cropping and sub-pixel shifts (``cryoextract.ops.fourier``), with the FFTW and
scipy back ends.

Every expected value comes from an independent oracle: an analytic result or a naive
numpy re-implementation written here (never numbers copied from running our code).
Conventions: coordinates are 0-based pixel indices, x = column, y = row; a pick at x is
boxed around ``floor(x)``, which lands at index ``box // 2``.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryoextract.ops.fourier import fourier_crop_2d


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


def _use_backend(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """``fftw``: FFTW with the rows unpacked in C (``ops/native/real_rows.c``);
    ``fftw-real``: FFTW's own real transform of the rows (where the C library was not
    built); ``scipy``: the fallback without pyFFTW. Plans made before are dropped."""
    import cryoextract.ops.native as native
    from cryoextract.ops import fourier

    fourier._PLANS.__dict__.clear()
    if backend == "scipy":
        monkeypatch.setattr(fourier, "fftw_available", lambda: False)
        return
    assert fourier.fftw_available(), "pyFFTW is a dependency: pip install pyfftw"
    if backend == "fftw-real":
        monkeypatch.setattr(native, "real_rows_unpacker", lambda: None)
    else:
        assert native.real_rows_unpacker() is not None, "make venv builds real_rows.c"


@pytest.fixture(params=["fftw", "fftw-real", "scipy"])
def fft_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through each way of transforming (:func:`_use_backend`)."""
    from cryoextract.ops import fourier

    _use_backend(monkeypatch, request.param)
    yield str(request.param)
    fourier._PLANS.__dict__.clear()


@pytest.mark.parametrize(("n", "m"), [(64, 32), (64, 48), (100, 34), (64, 2), (32, 30)])
def test_fourier_crop_equals_naive_implementation(n: int, m: int, fft_backend: str) -> None:
    rng = np.random.default_rng(n * 1000 + m)
    images = rng.normal(size=(2, 3, n, n)).astype(np.float32)
    out = fourier_crop_2d(images, m)
    assert out.shape == (2, 3, m, m)
    expected = _naive_crop(images, m)
    assert np.max(np.abs(out - expected)) < 1e-5


@pytest.mark.parametrize("backend", ["fftw", "fftw-real"])
def test_fftw_crop_equals_scipy(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """Both ways through FFTW against scipy, several outputs (one uncropped: every
    column of the rows' transforms) and sub-pixel shifts: the same coefficients."""
    from cryoextract.ops import fourier

    rng = np.random.default_rng(7)
    images = rng.normal(size=(9, 96, 96)).astype(np.float32)
    boxes = list(rng.integers(0, 65535, size=(9, 96, 96)).astype(np.uint16))
    shifts = rng.uniform(-1, 1, size=(9, 2))
    with monkeypatch.context() as patch:
        _use_backend(patch, backend)
        fftw = fourier.fourier_crop_many(images, (48, 96, 32), shifts_xy=shifts)
        fftw_boxes = fourier.fourier_crop_boxes(boxes, (40,))
    _use_backend(monkeypatch, "scipy")
    plain = fourier.fourier_crop_many(images, (48, 96, 32), shifts_xy=shifts)
    plain_boxes = fourier.fourier_crop_boxes(boxes, (40,))
    fourier._PLANS.__dict__.clear()
    for a, b in zip([*fftw, *fftw_boxes], [*plain, *plain_boxes], strict=True):
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
