"""Extraction from real micrographs in ``../shared/data`` (relative to the repository root).

(a) ``real/micrograph_cleaner_em``: a real 959x927 float32 micrograph with 45 real RELION
    3.0 autopick picks; its header pixel size (1.0) is wrong, so ``--pixel-size 5``.
(b) ``real/mrcfile_1.5.4_sdist/fei-extended.mrc``: a real 3710x3838 uint16 micrograph with
    an FEI extended header; picks are made up here.

Expected values come from the raw files (picks via ``starfile``, pixels via ``mrcfile`` or
raw bytes) and naive numpy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from shared_data import require_paths

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
CLEANER = DATA / "real" / "micrograph_cleaner_em"
CLEANER_MIC = CLEANER / "mics" / "Ucsf_stack_1142_DW.mrc"
CLEANER_PICKS = CLEANER / "inCoords" / "relion" / "Ucsf_stack_1142_DW_autopick.star"
FEI = DATA / "real" / "mrcfile_1.5.4_sdist" / "fei-extended.mrc"

BOX = 64
RADIUS = round(0.375 * BOX)
FEI_BOX = 32
FEI_PIXEL = 0.8538


def _run_many(jobs: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "cryoextract", "extract", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, args in jobs.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(jobs[name], proc.returncode, out, err)
    return results


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr


def _load(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray], dict]:
    blocks = starfile.read(out / "particles.star", always_dict=True)
    particles = blocks["particles"]
    stacks = {}
    for name in {str(n).split("@")[1] for n in particles["rlnImageName"]}:
        with mrcfile.open(out / name) as mrc:
            stacks[name] = np.array(mrc.data).reshape(-1, *mrc.data.shape[-2:])
    summary = json.loads((out / "summary.json").read_text())
    return blocks["optics"], particles, stacks, summary


def _image(stacks: dict[str, np.ndarray], image_name: str) -> np.ndarray:
    index, name = image_name.split("@")
    return stacks[name][int(index) - 1]


def _fits(xy: np.ndarray, box: int, shape_yx: tuple[int, int]) -> np.ndarray:
    c = np.floor(xy).astype(int)
    ny, nx = shape_yx
    return (
        (c[:, 0] - box // 2 >= 0)
        & (c[:, 0] + box // 2 <= nx)
        & (c[:, 1] - box // 2 >= 0)
        & (c[:, 1] + box // 2 <= ny)
    )


# --------------------------------------------------------------------------- (a) cleaner
@pytest.fixture(scope="module")
def cleaner(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, subprocess.CompletedProcess[str]], dict[str, Path]]:
    require_paths(CLEANER_MIC, CLEANER_PICKS)
    base = tmp_path_factory.mktemp("cleaner")
    common = [
        "--micrographs",
        str(CLEANER_MIC),
        "--coords",
        str(CLEANER_PICKS),
        "--pixel-size",
        "5",
        "--box",
        str(BOX),
        "--workers",
        "1",
    ]
    outs = {"raw": base / "raw", "ramp": base / "ramp"}
    jobs = {
        "raw": [*common, "--norm", "none", "--no-invert", "--out", str(outs["raw"])],
        "ramp": [*common, "--out", str(outs["ramp"])],
    }
    return _run_many(jobs), outs


def _cleaner_inputs() -> tuple[np.ndarray, np.ndarray]:
    picks = starfile.read(CLEANER_PICKS)
    if isinstance(picks, dict):
        picks = next(iter(picks.values()))
    xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    with mrcfile.open(CLEANER_MIC) as mrc:
        mic = np.array(mrc.data, dtype=np.float32)
    return xy, mic


def test_cleaner_counts_and_drops(cleaner: tuple[dict, dict]) -> None:
    results, outs = cleaner
    _ok(results["raw"])
    xy, mic = _cleaner_inputs()
    assert mic.shape == (927, 959)
    assert len(xy) == 45
    fit = _fits(xy, BOX, mic.shape)
    n_fit = int(fit.sum())
    assert 0 < n_fit < 45
    optics, particles, stacks, summary = _load(outs["raw"])
    assert summary["particles_kept"] == n_fit
    assert summary["particles_dropped"] == {"box leaves micrograph": 45 - n_fit}
    assert len(particles) == n_fit
    rejected = pd.read_csv(outs["raw"] / "rejected_particles.tsv", sep="\t")
    assert len(rejected) == 45 - n_fit
    assert set(rejected["reason"]) == {"box leaves micrograph"}
    np.testing.assert_allclose(rejected[["rlnCoordinateX", "rlnCoordinateY"]], xy[~fit], atol=1e-6)
    # kept in pick order, at the truncated centres, the fractions in the origins (5 A/px)
    kept = xy[fit]
    np.testing.assert_array_equal(particles["rlnCoordinateX"], np.floor(kept[:, 0]))
    np.testing.assert_array_equal(particles["rlnCoordinateY"], np.floor(kept[:, 1]))
    np.testing.assert_allclose(
        particles["rlnOriginXAngst"], -(kept[:, 0] - np.floor(kept[:, 0])) * 5, atol=5e-6
    )
    np.testing.assert_allclose(
        particles["rlnOriginYAngst"], -(kept[:, 1] - np.floor(kept[:, 1])) * 5, atol=5e-6
    )
    np.testing.assert_allclose(
        particles["rlnAutopickFigureOfMerit"],
        starfile.read(CLEANER_PICKS)["rlnAutopickFigureOfMerit"][fit],
        atol=1e-6,
    )
    # pixel size: the given one, with a warning about the header's
    assert float(optics["rlnImagePixelSize"].iloc[0]) == 5.0
    assert int(optics["rlnImageSize"].iloc[0]) == BOX
    assert "pixel size" in results["raw"].stderr
    (stack_name,) = stacks
    with mrcfile.open(outs["raw"] / stack_name, header_only=True) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(5.0)


def test_cleaner_boxes_equal_raw_windows(cleaner: tuple[dict, dict]) -> None:
    results, outs = cleaner
    _ok(results["raw"])
    xy, mic = _cleaner_inputs()
    kept = xy[_fits(xy, BOX, mic.shape)]
    _, particles, stacks, _ = _load(outs["raw"])
    for (cx, cy), name in zip(np.floor(kept).astype(int), particles["rlnImageName"], strict=True):
        expected = mic[cy - BOX // 2 : cy + BOX // 2, cx - BOX // 2 : cx + BOX // 2]
        np.testing.assert_array_equal(_image(stacks, name), expected)


def test_cleaner_ramp_normalisation(cleaner: tuple[dict, dict]) -> None:
    results, outs = cleaner
    _ok(results["ramp"])
    xy, mic = _cleaner_inputs()
    kept = xy[_fits(xy, BOX, mic.shape)]
    _, particles, stacks, summary = _load(outs["ramp"])
    assert summary["particles_kept"] == len(kept)
    o = np.arange(BOX) - BOX // 2
    bg = o[:, None] ** 2 + o[None, :] ** 2 > RADIUS**2
    yy, xx = np.nonzero(bg)
    design = np.stack([xx, yy, np.ones_like(xx)], axis=1).astype(np.float64)
    gy, gx = np.mgrid[0:BOX, 0:BOX]
    for (cx, cy), name in zip(np.floor(kept).astype(int), particles["rlnImageName"], strict=True):
        got = _image(stacks, name).astype(np.float64)
        v = got[bg]
        assert abs(v.mean()) < 1e-4
        assert abs(v.std() - 1) < 1e-4
        raw = mic[cy - BOX // 2 : cy + BOX // 2, cx - BOX // 2 : cx + BOX // 2].astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, raw[bg], rcond=None)
        flat = raw - (coef[0] * gx + coef[1] * gy + coef[2])
        expected = -(flat - flat[bg].mean()) / flat[bg].std()  # inverted by default
        assert np.max(np.abs(got - expected)) < 1e-3


# --------------------------------------------------------------------------- (b) FEI uint16
def _raw_fei(path: Path) -> tuple[np.ndarray, float]:
    raw = path.read_bytes()
    words = np.frombuffer(raw[:1024], dtype="<i4")
    floats = np.frombuffer(raw[:1024], dtype="<f4")
    nx, ny, _, mode = (int(v) for v in words[:4])
    assert mode == 6
    data = np.frombuffer(raw, dtype="<u2", count=nx * ny, offset=1024 + int(words[23]))
    return data.reshape(ny, nx), float(floats[10]) / int(words[7])


def test_fei_uint16_replicate_windows(tmp_path: Path) -> None:
    require_paths(FEI)
    mic_path = tmp_path / "fei-extended.mrc"
    shutil.copy(FEI, mic_path)
    mic, header_pixel = _raw_fei(mic_path)
    ny, nx = mic.shape
    assert (nx, ny) == (3710, 3838)
    assert header_pixel == pytest.approx(FEI_PIXEL, rel=1e-3)
    rng = np.random.default_rng(0)
    peak_y, peak_x = np.unravel_index(int(np.argmax(mic)), mic.shape)
    inside = [
        (peak_x + 0.4, peak_y + 0.6),  # the brightest pixel (above 32767 in this file)
        (0.0, 0.0),
        (0.5, 3837.9),
        (3709.99, 0.2),
        (3709.5, 3837.5),  # corners
        (3.3, 1900.7),
        (1855.2, 3835.9),
        (3700.1, 10.4),
        (15.0, 16.0),
        (3694.0, 3822.0),
    ]
    inside += [
        (float(x), float(y))
        for x, y in zip(rng.uniform(0, nx - 1, 40), rng.uniform(0, ny - 1, 40), strict=True)
    ]
    outside = [(3710.5, 100.0), (-0.5, 200.0)]
    picks = np.array(inside + outside)
    pick_file = tmp_path / "picks.txt"
    pick_file.write_text("# x y\n" + "".join(f"{x!r}, {y!r}\n" for x, y in picks.tolist()))
    out = tmp_path / "out"
    result = _run_many(
        {
            "fei": [
                "--micrographs",
                str(mic_path),
                "--coords",
                str(pick_file),
                "--pixel-size",
                str(FEI_PIXEL),
                "--box",
                str(FEI_BOX),
                "--norm",
                "none",
                "--no-invert",
                "--edge",
                "replicate",
                "--workers",
                "1",
                "--out",
                str(out),
            ]
        }
    )["fei"]
    _ok(result)
    # the header pixel size agrees with the given one: no warning
    assert "pixel size" not in result.stderr
    optics, particles, stacks, summary = _load(out)
    assert summary["particles_kept"] == len(inside) == len(particles)
    assert summary["particles_dropped"] == {"centre outside micrograph": len(outside)}
    assert float(optics["rlnImagePixelSize"].iloc[0]) == FEI_PIXEL
    (stack_name,) = stacks
    with mrcfile.open(out / stack_name, header_only=True) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(FEI_PIXEL, rel=1e-6)
        assert float(mrc.voxel_size.x) == pytest.approx(header_pixel, rel=1e-3)
        assert int(mrc.header.mode) == 2
    half = FEI_BOX // 2
    padded = np.pad(mic, half, mode="edge")
    centres = np.floor(np.array(inside)).astype(int)
    np.testing.assert_array_equal(particles["rlnCoordinateX"], centres[:, 0])
    for (cx, cy), name in zip(centres, particles["rlnImageName"], strict=True):
        expected = padded[cy : cy + FEI_BOX, cx : cx + FEI_BOX].astype(np.float32)
        np.testing.assert_array_equal(_image(stacks, name), expected)
    peak_box = _image(stacks, particles["rlnImageName"].iloc[0])
    assert float(peak_box.max()) == float(mic.max())
    assert float(peak_box[half, half]) == float(mic.max())
    if mic.max() > 32767:
        assert float(peak_box.max()) > 32767  # mode 6 read as unsigned
