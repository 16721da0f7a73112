"""The report's drawing pieces, each against an independent oracle.

* PNG encoder: random arrays round-trip through Pillow's decoder (and matplotlib's
  reader), and every chunk's CRC checks out.
* Thumbnails: equal to a block mean computed by ``reshape(...).mean()`` (float64), then
  scipy's Gaussian filter and the percentile display mapping, within one grey level;
  NaN and inf pixels do not poison them; cheap.
* Histogram SVG: tick rules and labels.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import matplotlib.image
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cryoextract.ops.thumbnail import (
    DISPLAY_SIGMA_PX,
    Thumbnail,
    block_mean,
    micrograph_thumbnail,
)
from cryoextract.report import figures
from cryoextract.report.histogram import histogram_bins, nice_ticks, tick_labels
from cryoextract.report.png import encode_png, write_png

# --------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 1), (31, 17), (200, 333), (5, 9, 3),
                                   (64, 101, 3)])
def test_png_round_trips_through_an_independent_decoder(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(pixels)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    assert decoded.mode == ("L" if len(shape) == 2 else "RGB")
    assert np.array_equal(np.asarray(decoded), pixels)
    read = matplotlib.image.imread(io.BytesIO(data))  # floats 0..1
    assert np.array_equal(np.rint(read * 255).astype(np.uint8), pixels)


def test_png_chunks_and_crcs() -> None:
    pixels = np.tile(np.arange(256, dtype=np.uint8), (40, 1))  # smooth: compresses
    data = encode_png(pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, kinds = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        kinds.append(kind)
        position += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    assert len(data) < pixels.size / 4


def test_png_refuses_what_it_cannot_encode(tmp_path) -> None:
    for bad in (np.zeros((3, 3), np.uint16), np.zeros((3, 3, 4), np.uint8),
                np.zeros((0, 3), np.uint8), np.zeros(5, np.uint8)):
        with pytest.raises(ValueError):
            encode_png(bad)
    path = write_png(tmp_path / "a.png", np.full((4, 6), 7, np.uint8))
    assert np.array_equal(np.asarray(Image.open(path)), np.full((4, 6), 7, np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary left


# --------------------------------------------------------------------------- thumbnails


def _oracle(means: np.ndarray) -> np.ndarray:
    """Display mapping of block means, computed independently (scipy, float64)."""
    smoothed = ndimage.gaussian_filter(means.astype(np.float64), DISPLAY_SIGMA_PX,
                                       mode="reflect", truncate=4.0)
    lo, hi = np.percentile(smoothed, [1.0, 99.0])
    return np.rint(255 * np.clip((smoothed - lo) / (hi - lo), 0.0, 1.0))


def _pattern(ny: int, nx: int, seed: int = 0) -> np.ndarray:
    """Noise over a bright disc and a left-to-right ramp: a known, uneven picture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:ny, :nx]
    disc = ((y - ny / 3) ** 2 + (x - nx / 2) ** 2 < (ny / 6) ** 2) * 40.0
    return (1000 + disc + 30 * x / nx + rng.normal(0, 8, (ny, nx))).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "uint16", ">f4", "float16", "int16"])
def test_thumbnail_is_the_block_mean_smoothed_and_scaled(dtype: str) -> None:
    image = _pattern(1003, 1541).astype(dtype)  # factor 3; 2 rows and 2 columns left over
    thumb = micrograph_thumbnail(image)
    assert isinstance(thumb, Thumbnail)
    assert thumb.shape_yx == (1003, 1541) and thumb.pixels.dtype == np.uint8
    assert thumb.pixels.shape == (334, 513)
    means = image.astype(np.float64)[:1002, :1539].reshape(334, 3, 513, 3).mean(axis=(1, 3))
    expected = _oracle(means)
    assert np.abs(thumb.pixels.astype(np.int16) - expected).max() <= 1
    assert thumb.pixels.std() > 20  # the disc and ramp show


def test_thumbnail_of_a_small_micrograph_is_not_binned() -> None:
    image = _pattern(300, 500)
    thumb = micrograph_thumbnail(image)
    assert thumb.pixels.shape == (300, 500)
    assert np.abs(thumb.pixels.astype(np.int16) - _oracle(image)).max() <= 1


def test_thumbnail_ignores_nan_and_inf_pixels() -> None:
    image = _pattern(1536, 1536, seed=3)  # factor 2
    rng = np.random.default_rng(4)
    spots = rng.integers(0, 1536, (2, 3000))
    image[spots[0], spots[1]] = np.nan
    image[spots[1, :200], spots[0, :200]] = np.inf
    image[100:104, 200:210] = np.nan  # whole blocks without a finite pixel
    image[1000, 1000] = -np.inf
    thumb = micrograph_thumbnail(image)
    blocks = image.astype(np.float64).reshape(768, 2, 768, 2)
    finite = np.isfinite(blocks)
    with np.errstate(invalid="ignore"):
        means = np.where(finite, blocks, 0).sum(axis=(1, 3)) / finite.sum(axis=(1, 3))
    means[~np.isfinite(means)] = means[np.isfinite(means)].mean()
    assert np.abs(thumb.pixels.astype(np.int16) - _oracle(means)).max() <= 1
    assert thumb.pixels.std() > 20
    assert np.isfinite(block_mean(image, 2)[:50]).all()  # only the all-NaN blocks are NaN
    assert np.isnan(block_mean(image, 2)[50:52, 100:105]).all()
    all_nan = micrograph_thumbnail(np.full((64, 64), np.nan, np.float32))
    assert all_nan.pixels.shape == (64, 64)  # a flat picture, no error


def test_thumbnail_block_mean_of_a_particle_stack() -> None:
    stack = np.random.default_rng(5).normal(size=(4, 66, 70)).astype(np.float32)
    expected = stack[:, :66, :69].reshape(4, 22, 3, 23, 3).mean(axis=(2, 4))
    assert np.allclose(block_mean(stack, 3), expected, atol=1e-5)


def test_thumbnails_do_not_share_memory() -> None:
    """Working arrays are reused between calls (and threads have their own): never results."""
    first_image, other = _pattern(900, 1000, seed=1), _pattern(2000, 3100, seed=2)[::-1]
    first = micrograph_thumbnail(first_image)
    kept = first.pixels.copy()
    for image in (other, _pattern(50, 60), other.astype(np.uint16)):
        micrograph_thumbnail(image)
    assert np.array_equal(first.pixels, kept)
    assert np.array_equal(micrograph_thumbnail(first_image).pixels, kept)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(micrograph_thumbnail, [first_image, other] * 4))
    assert all(np.array_equal(r.pixels, kept) for r in results[::2])
    assert all(np.array_equal(r.pixels, results[1].pixels) for r in results[1::2])


def test_thumbnail_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        micrograph_thumbnail(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError):
        Thumbnail(np.zeros((4, 4), np.float32), (4, 4))
    with pytest.raises(ValueError):
        Thumbnail(np.zeros((4, 4), np.uint8), (0, 4))


def test_thumbnail_is_cheap() -> None:
    """4096 x 4096 micrographs: well under 0.1 s each (about 15 ms on one quiet core)."""
    rng = np.random.default_rng(6)
    for image in (rng.integers(0, 4000, (4096, 4096), dtype=np.uint16),
                  rng.normal(size=(4096, 4096)).astype(np.float32)):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            micrograph_thumbnail(image)
            times.append(time.perf_counter() - start)
        assert min(times) < 0.1, times


def test_thumbnail_module_imports_neither_pandas_nor_matplotlib() -> None:
    code = ("import sys, numpy as np\n"
            "from cryoextract.ops.thumbnail import micrograph_thumbnail\n"
            "micrograph_thumbnail(np.ones((100, 100), np.float32))\n"
            "print(sorted(m for m in ('pandas', 'matplotlib', 'scipy') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# --------------------------------------------------------------------------- histograms


def test_histogram_bins_rule() -> None:
    assert [histogram_bins(n) for n in (1, 16, 24, 25, 48, 2400, 10**6)] == \
        [5, 5, 5, 6, 7, 49, 50]


@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (0.013, 0.087), (-3.2, 17.9), (0.0, 4072.9),
                                    (1e3, 1e6), (1e-7, 3e-7), (-0.6, 0.6), (4.5, 5.5)])
def test_ticks_are_round_and_inside_the_range(lo: float, hi: float) -> None:
    ticks = nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 6
    assert ticks[0] >= lo - 1e-12 * abs(hi) and ticks[-1] <= hi + 1e-12 * abs(hi)
    step = ticks[1] - ticks[0]
    assert np.allclose(np.diff(ticks), step)
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    labels = tick_labels(ticks)
    assert len(set(labels)) == len(labels)  # distinct: enough decimals
    assert np.allclose([float(t) for t in labels], ticks, rtol=0.01, atol=step / 100)
    assert all(len(t) <= 8 for t in labels)


def test_tick_labels_write_zero_plainly() -> None:
    assert tick_labels(np.array([-0.5, 0.0, 0.5])) == ["-0.5", "0", "0.5"]
    assert tick_labels(nice_ticks(0.0, 3.0, integers=True)) == ["0", "1", "2", "3"]


# --------------------------------------------------------------------------- figures


def test_overlay_counts_every_pick_and_draws_those_it_can(tmp_path) -> None:
    thumbnail = Thumbnail(np.random.default_rng(7).integers(0, 256, (100, 150), np.uint8),
                          (400, 600))
    kept = np.array([[100.0, 50.0], [300.5, 200.25]])
    dropped = {"outside": np.array([[5000.0, 100.0], [-300.0, 100.0], [100.0, 1e300]]),
               "bad coordinate": np.array([[np.nan, 100.0], [100.0, np.inf], [128.0, 128.0]])}
    svg = figures.micrograph_overlay(thumbnail, kept, dropped, 64, tmp_path / "m.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")), thumbnail.pixels)
    assert 'viewBox="0 0 600 400"' in svg and '<image href="m.png"' in svg
    for label in ("kept (2)", "outside (3)", "bad coordinate (3)"):
        assert label in svg
    boxes = re.findall(r'<path class="boxes" d="([^"]+)"', svg)
    assert [b.count("M") for b in boxes] == [2, 1]  # NaN, inf and far-off picks not drawn
    assert "M68 18h64v64h-64z" in boxes[0] and "M268.5 168.2h64" in boxes[0]
    assert "e+" not in svg and "nan" not in svg.lower() and "inf" not in svg.lower()
    assert svg.count("<svg") == 1 and svg.endswith("</svg>")


def test_gallery_mosaic_and_labels(tmp_path) -> None:
    images = np.random.default_rng(8).normal(size=(5, 200, 200)).astype(np.float32)
    images[1] = 3.0  # flat
    images[2, :10] = np.nan
    canvas, (th, tw) = figures.mosaic(images, 3)
    assert (th, tw) == (66, 66)  # binned by 3 to at most 96 px
    assert canvas.shape == (2 * (66 + 2) + 2, 3 * (66 + 2) + 2) and canvas.dtype == np.uint8
    first = canvas[2 : 2 + 66, 2 : 2 + 66]
    assert first.min() == 0 and first.max() == 255  # scaled by its own percentiles
    assert (canvas[2 + 66 + 2 :, 2 * (66 + 2) + 2 :] == 255).all()  # the empty sixth tile
    html_text = figures.gallery(images, ["1.5", "", "x<y", "4", "5"], tmp_path / "g.png")
    assert re.findall(r'fill="yellow">([^<]+)</text>', html_text) == ["1.5", "x&lt;y", "4", "5"]
    decoded = np.asarray(Image.open(tmp_path / "g.png"))
    assert decoded.shape == (66 + 4, 5 * (66 + 2) + 2)  # one row of five
    plain = figures.gallery(images[:2], ["", ""], tmp_path / "p.png")
    assert plain.startswith('<img src="p.png"')
