"""``cryoextract downsample`` on the real particle stacks in ``../shared/data`` (staged by
``stack_data.py``).

Oracles: a naive ``np.fft`` Fourier crop written here, and RELION 3.1's
``relion_image_handler --rescale_angpix`` when installed. The float16 cases use mode-12
copies of the real images.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryoextract.errors import ParameterError
from cryoextract.io.particles import read_particles
from cryoextract.pipeline.stacks.restack import downsample
from relion_oracle import require_relion
from stack_data import (
    mrc_mode,
    naive_crop,
    out_tables,
    read_stack,
    stage,
    staged_images,
    star_block,
)


# --------------------------------------------------------------------------- downsample
@pytest.mark.parametrize(("name", "float16"), [
    ("relion31", False), ("trpv1", False), ("aspire", False), ("sta_bin8_relion30", True),
])
def test_downsample_equals_naive_fourier_crop(tmp_path, name, float16):
    star = stage(name, tmp_path, float16=float16)
    source = star_block(star)
    theirs = staged_images(star.parent, source["rlnImageName"])
    n = theirs.shape[-1]
    m = n // 2 + 2 - (n // 2 + 2) % 2
    summary = downsample(star, tmp_path / "out", box_px=m, float16=False, batch_size=6)
    optics, particles = out_tables(tmp_path / "out")
    ours = staged_images(tmp_path / "out", particles["rlnImageName"])
    assert ours.shape == (len(source), m, m) and ours.dtype == np.float32
    for image, original in zip(ours, theirs, strict=True):
        oracle = naive_crop(original, m)
        np.testing.assert_allclose(image, oracle, rtol=0, atol=1e-5 * np.abs(oracle).max())
    # pixel sizes updated exactly per optics group, origins (Angstrom) unchanged
    before = read_particles(star).optics.set_index("rlnOpticsGroup")["rlnImagePixelSize"]
    for row in optics.itertuples():
        assert row.rlnImageSize == m
        assert row.rlnImagePixelSize == pytest.approx(before[row.rlnOpticsGroup] * n / m,
                                                      abs=1e-6)
        group = summary.pixel_size_angstrom[row.rlnOpticsGroupName]
        assert group[1] == before[row.rlnOpticsGroup] * n / m  # exact in the summary
    if "rlnOriginXAngst" in source.columns:
        np.testing.assert_allclose(particles["rlnOriginXAngst"], source["rlnOriginXAngst"],
                                   atol=1e-6)


def test_downsample_keeps_float16_and_targets_pixel_size(tmp_path):
    star = stage("sta_bin8_relion30", tmp_path, float16=True)
    # 64 px at 1.96 A to about 3.0 A: 64 * 1.96 / 3 = 41.8 -> 42 px, exactly 2.986667 A
    summary = downsample(star, tmp_path / "out", pixel_size_angstrom=3.0)
    assert summary.float16 and mrc_mode(Path(summary.stacks[0])) == 12
    assert summary.box_px == {"opticsGroup1": [64, 42]}
    assert summary.pixel_size_angstrom["opticsGroup1"][1] == 1.96 * 64 / 42
    optics, particles = out_tables(tmp_path / "out")
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(1.96 * 64 / 42, abs=1e-6)
    ours = staged_images(tmp_path / "out", particles["rlnImageName"]).astype(np.float32)
    theirs = staged_images(star.parent, star_block(star)["rlnImageName"])
    oracle = np.stack([naive_crop(t, 42) for t in theirs])
    np.testing.assert_allclose(ours, oracle, rtol=2e-3, atol=2e-3 * np.abs(oracle).max())
    with pytest.raises(ParameterError, match="only downsamples"):
        downsample(star, tmp_path / "up", pixel_size_angstrom=1.0)
    with pytest.raises(ParameterError, match="exactly one"):
        downsample(star, tmp_path / "up", box_px=32, pixel_size_angstrom=3.0)


def test_downsample_recenter_moves_by_rounded_shift(tmp_path):
    n, apix, mic_apix = 64, 2.0, 1.0
    offsets_px = np.array([[7.3, -4.5], [-2.5, 0.2], [0.0, 11.7]])  # (x, y), input pixels
    yy, xx = np.mgrid[0:n, 0:n]
    rng = np.random.default_rng(0)
    images = []
    for ox, oy in offsets_px:  # the particle lies at N/2 - origin (docs: "Origins")
        blob = np.exp(-((xx - (n / 2 - ox)) ** 2 + (yy - (n / 2 - oy)) ** 2) / (2 * 2.5**2))
        images.append((blob + 0.01 * rng.normal(size=(n, n))).astype(np.float32))
    with mrcfile.new(tmp_path / "p.mrcs") as handle:
        handle.set_data(np.stack(images))
    particles = pd.DataFrame({
        "rlnImageName": [f"{k + 1:06d}@p.mrcs" for k in range(3)],
        "rlnCoordinateX": [1000.0] * 3, "rlnCoordinateY": [500.0] * 3,
        "rlnOriginXAngst": offsets_px[:, 0] * apix, "rlnOriginYAngst": offsets_px[:, 1] * apix,
        "rlnOpticsGroup": 1,
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"],
                           "rlnImagePixelSize": [apix], "rlnImageSize": [n],
                           "rlnMicrographOriginalPixelSize": [mic_apix]})
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "p.star")
    summary = downsample(tmp_path / "p.star", tmp_path / "out", box_px=32, recenter=True)
    assert summary.recentered == 3
    _, out = out_tables(tmp_path / "out")
    steps = np.array([[7, -5], [-3, 0], [0, 12]])  # RELION ROUND: halves away from zero
    residual = offsets_px - steps
    np.testing.assert_allclose(out["rlnOriginXAngst"], residual[:, 0] * apix, atol=1e-6)
    np.testing.assert_allclose(out["rlnOriginYAngst"], residual[:, 1] * apix, atol=1e-6)
    np.testing.assert_allclose(out["rlnCoordinateX"], 1000 - steps[:, 0] * apix / mic_apix)
    # the particle's micrograph position x - origin / mic_apix is unchanged
    np.testing.assert_allclose(out["rlnCoordinateY"] - out["rlnOriginYAngst"] / mic_apix,
                               500 - offsets_px[:, 1] * apix / mic_apix, atol=1e-5)
    ours = staged_images(tmp_path / "out", out["rlnImageName"])
    for image, original, (sx, sy) in zip(ours, images, steps, strict=True):
        oracle = naive_crop(np.roll(original, (sy, sx), axis=(0, 1)), 32)
        np.testing.assert_allclose(image, oracle, atol=1e-5 * np.abs(oracle).max())
    # without cropping the blob now sits at N/2 - residual
    downsample(tmp_path / "p.star", tmp_path / "same", box_px=n, recenter=True)
    _, out = out_tables(tmp_path / "same")
    for image, (rx, ry) in zip(staged_images(tmp_path / "same", out["rlnImageName"]), residual,
                               strict=True):
        weight = np.where(image > 0.2, image, 0.0)
        centre = (np.sum(yy * weight) / weight.sum(), np.sum(xx * weight) / weight.sum())
        np.testing.assert_allclose(centre, (n / 2 - ry, n / 2 - rx), atol=0.05)


def test_downsample_matches_relion_image_handler_rescale(tmp_path):
    require_relion("relion_image_handler")
    star = stage("trpv1", tmp_path)
    stack = star.parent / "trpv1.mrcs"
    shutil.copy(star.parent / "batch_0_restacked.mrc", stack)  # .mrcs: RELION reads a stack
    result = subprocess.run(
        ["relion_image_handler", "--i", str(stack), "--o", str(tmp_path / "relion.mrcs"),
         "--angpix", "4.88", "--rescale_angpix", "6.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    relion = read_stack(tmp_path / "relion.mrcs")
    summary = downsample(star, tmp_path / "out", pixel_size_angstrom=6.1)
    assert summary.box_px["opticsGroup7"] == [48, relion.shape[-1]] == [48, 38]
    with mrcfile.open(tmp_path / "relion.mrcs") as handle:
        relion_apix = float(handle.voxel_size.x)
    assert summary.pixel_size_angstrom["opticsGroup7"][1] == pytest.approx(relion_apix, 1e-5)
    _, out = out_tables(tmp_path / "out")
    ours = staged_images(tmp_path / "out", out["rlnImageName"])
    np.testing.assert_allclose(ours, relion, rtol=0, atol=1e-5 * np.abs(relion).max())
