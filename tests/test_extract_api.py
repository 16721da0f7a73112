"""``cryoextract.extract`` from Python: the job as the API runs it (binned, against a naive
Fourier crop), and NaN pixels with the ``mean`` and ``reflect`` edges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest

import cryoextract
from cryoextract import EdgeMode, ExtractParams, NormMode, ParameterError
from cryoextract.pipeline.extraction.outputs import ExtractionSummary
from extract_cli import (
    BOX,
    PIXEL,
    SHAPE,
    Sim,
    fits,
    load_output,
    window,
)


# --------------------------------------------------------------------------- Python API
def _naive_crop(image: np.ndarray, m: int) -> np.ndarray:
    n = image.shape[-1]
    spectrum = np.fft.rfft2(image.astype(np.float64))
    rows = np.r_[0 : m // 2 + 1, n - m // 2 + 1 : n]
    return np.fft.irfft2(spectrum[rows, : m // 2 + 1], s=(m, m)) * (m / n) ** 2


def test_python_api(sim: Sim, tmp_path: Path) -> None:
    out = tmp_path / "api"
    params = ExtractParams(
        box_px=BOX, out_box_px=32, norm=NormMode.NONE, invert=False, edge=EdgeMode.DROP
    )

    def extract(**options: Any) -> ExtractionSummary:
        return cryoextract.extract(str(sim.star), out, params, coords_dir=sim.root / "Picks",
                                   coords_suffix="_autopick.star", workers=1, **options)

    seen: list[int] = []
    summary = extract(on_start=seen.append)
    assert seen == [2]
    assert summary.particles_kept == sim.n_fit
    assert summary.micrographs_done == 2
    assert summary.output_box_px == 32
    assert summary.output_pixel_size_angstrom == {"opticsGroup1": 2 * PIXEL}
    res = load_output(out)
    assert float(res.optics["rlnImagePixelSize"].iloc[0]) == 2 * PIXEL
    assert int(res.optics["rlnImageSize"].iloc[0]) == 32
    for name, mic in sim.mics.items():
        rows = res.of(name)
        kept = sim.picks[name][fits(sim.picks[name], BOX, SHAPE)]
        assert len(rows) == len(kept)
        # origins stay in Å of the micrograph frame
        np.testing.assert_allclose(
            rows["rlnOriginXAngst"], -(kept[:, 0] - np.floor(kept[:, 0])) * PIXEL, atol=2e-6
        )
        for _, row in rows.iterrows():
            cx, cy = int(row["rlnCoordinateX"]), int(row["rlnCoordinateY"])
            expected = _naive_crop(window(mic, cx, cy), 32)
            got = res.image(row).astype(np.float64)
            assert got.shape == (32, 32)
            assert np.max(np.abs(got - expected)) < 1e-4 * np.abs(expected).max()
    with mrcfile.open(out / "Particles/mic_001.mrcs", header_only=True) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(2 * PIXEL)
    # a second call into the same folder is refused without overwrite
    with pytest.raises(ParameterError):
        extract()
    again = extract(overwrite=True)
    assert again.particles_kept == sim.n_fit


# --------------------------------------------------------------------------- NaNs and edges
def _nan_micrograph(tmp_path: Path, nan_at: tuple[slice, slice]) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(77)
    mic = rng.normal(10.0, 1.0, size=(200, 220)).astype(np.float32)
    mic[nan_at] = np.nan
    path = tmp_path / "nanmic.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(mic)
        mrc.voxel_size = 1.0
    return path, mic


def test_edge_mean_fill_ignores_nan_elsewhere(tmp_path: Path) -> None:
    """``--edge mean`` fills with the mean of the finite pixels, not NaN."""
    path, mic = _nan_micrograph(tmp_path, (slice(150, 160), slice(150, 160)))
    picks = tmp_path / "picks.txt"
    picks.write_text("5.5 100.5\n100 100\n155 155\n")  # edge, interior, on the NaNs
    out = tmp_path / "out"
    params = ExtractParams(box_px=32, edge=EdgeMode.MEAN, norm=NormMode.NONE, invert=False)
    summary = cryoextract.extract(
        str(path), out, params, coords=picks, pixel_size_angstrom=1.0, workers=1
    )
    assert summary.particles_kept == 2
    assert summary.particles_dropped == {"non-finite pixels": 1}
    res = load_output(out)
    (stack,) = res.stacks.values()
    assert np.all(np.isfinite(stack)), "NaN fill in a box that touches no NaN pixel"
    edge_box = stack[0].astype(np.float64)
    # columns 5-16 .. 5+15 = -11..20: the first 11 columns are outside
    np.testing.assert_allclose(edge_box[:, :11], np.nanmean(mic.astype(np.float64)), rtol=1e-5)
    np.testing.assert_array_equal(stack[0][:, 11:], mic[84:116, 0:21])


def test_edge_reflect_drops_box_with_mirrored_nan(tmp_path: Path) -> None:
    """A reflected box reads pixels beyond its in-image part; NaNs there count too."""
    path, mic = _nan_micrograph(tmp_path, (slice(32, 33), slice(100, 101)))
    picks = tmp_path / "picks.txt"
    # centre row 0, box 64: rows -32..31; reflection reads rows 1..32 -> row 32 holds a NaN
    picks.write_text("100.5 0.2\n50.5 0.2\n")
    out = tmp_path / "out"
    params = ExtractParams(box_px=64, edge=EdgeMode.REFLECT, norm=NormMode.NONE, invert=False)
    summary = cryoextract.extract(
        str(path), out, params, coords=picks, pixel_size_angstrom=1.0, workers=1
    )
    res = load_output(out)
    for stack in res.stacks.values():
        assert np.all(np.isfinite(stack)), "a kept particle holds a NaN pixel"
    assert summary.particles_kept == 1
    assert summary.particles_dropped == {"non-finite pixels": 1}
    (stack,) = res.stacks.values()
    padded = np.pad(mic, 64, mode="reflect")
    np.testing.assert_array_equal(stack[0], padded[64 - 32 : 64 + 32, 64 + 50 - 32 : 64 + 50 + 32])
