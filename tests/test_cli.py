"""``cryoextract extract`` end to end, through ``python -m cryoextract`` in a subprocess:
what a successful run writes (outputs and summary, raw windows, float16, edge modes,
seeds, sub-pixel placement).

Data are simulated into a temporary folder (the ``sim`` fixture). Independent commands
run concurrently (module-scoped fixtures) to keep the suite fast. Expected values come
from the inputs and naive numpy (``extract_cli.py``), never from our own code.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from extract_cli import (
    BOX,
    HALF,
    PIXEL,
    RADIUS,
    SHAPE,
    Run,
    Sim,
    bg_mask,
    fits,
    load_output,
    ok,
    ok_output,
    padded_window,
    run_many,
    window,
)

BLOBS_XY = np.array(
    [[40.37, 50.81], [100.92, 60.08], [70.5, 110.25], [120.13, 119.66], [30.0, 130.999]]
)
BLOB_PIXEL = 2.0
BLOB_BOX = 32


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micrograph of Gaussian blobs at known sub-pixel positions, and their picks."""
    root = tmp_path_factory.mktemp("blobs")
    y, x = np.mgrid[0:170, 0:160].astype(np.float64)
    image = np.zeros_like(x)
    for bx, by in BLOBS_XY:
        image += 100.0 * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * 1.5**2))
    with mrcfile.new(root / "blobs.mrc") as mrc:
        mrc.set_data(image.astype(np.float32))
        mrc.voxel_size = BLOB_PIXEL
    lines = [f"{float(bx)!r} {float(by)!r}\n" for bx, by in BLOBS_XY]
    (root / "blobs.txt").write_text("".join(lines))
    return root


def _blob_args(root: Path, out: Path, subpixel: str) -> list[str]:
    return [
        "--micrographs",
        str(root / "blobs.mrc"),
        "--pixel-size",
        str(BLOB_PIXEL),
        "--coords",
        str(root / "blobs.txt"),
        "--box",
        str(BLOB_BOX),
        "--norm",
        "none",
        "--no-invert",
        "--subpixel",
        subpixel,
        "--workers",
        "1",
        "--out",
        str(out),
    ]


# --- all successful runs, concurrently
@pytest.fixture(scope="module")
def runs(
    sim: Sim, blobs: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("runs")
    dust = ["--white-dust", "2", "--black-dust", "2", "--edge", "noise"]
    raw = ["--norm", "none", "--no-invert"]
    jobs = {
        "default": sim.base(base / "default", workers=2),
        "float16": sim.base(base / "float16", "--float16"),
        "replicate": sim.base(base / "replicate", *raw, "--edge", "replicate"),
        "mean": sim.base(base / "mean", *raw, "--edge", "mean"),
        "noise": sim.base(base / "noise", *raw, "--edge", "noise"),
        "reflect": sim.base(base / "reflect", *raw, "--edge", "reflect"),
        "seed3a": sim.base(base / "seed3a", *dust, "--seed", "3"),
        "seed3b": sim.base(base / "seed3b", *dust, "--seed", "3"),
        "seed4": sim.base(base / "seed4", *dust, "--seed", "4"),
        "shift": _blob_args(blobs, base / "shift", "shift"),
        "origin": _blob_args(blobs, base / "origin", "origin"),
    }
    return run_many(jobs)


# --------------------------------------------------------------------------- success
def test_success_writes_outputs_and_summary(
    sim: Sim, runs: dict[str, Run]
) -> None:
    run = runs["default"]
    ok(run)
    out = run.out
    assert out is not None
    assert "particles kept" in run.stdout
    assert str(sim.n_fit) in run.stdout
    for name in (
        "particles.star",
        "summary.json",
        "rejected_particles.tsv",
        "Particles/mic_001.mrcs",
        "Particles/mic_002.mrcs",
    ):
        assert (out / name).is_file(), name
    res = load_output(out)
    s = res.summary
    assert s["micrographs_done"] == 2
    assert s["micrographs_skipped"] == {}
    assert s["particles_kept"] == sim.n_fit
    assert s["particles_dropped"] == {"box leaves micrograph": sim.n_total - sim.n_fit}
    assert s["box_px"] == BOX and s["output_box_px"] == BOX
    assert s["output_pixel_size_angstrom"] == {"opticsGroup1": PIXEL}
    # optics
    assert len(res.optics) == 1
    assert float(res.optics["rlnImagePixelSize"].iloc[0]) == PIXEL
    assert int(res.optics["rlnImageSize"].iloc[0]) == BOX
    assert int(res.optics["rlnImageDimensionality"].iloc[0]) == 2
    assert float(res.optics["rlnVoltage"].iloc[0]) == 300.0
    # particles: one per fitting pick, in pick order, with carried CTF columns
    assert len(res.particles) == sim.n_fit
    mic_table = starfile.read(sim.star, always_dict=True)["micrographs"].set_index(
        "rlnMicrographName"
    )
    for name, picks in sim.picks.items():
        rows = res.of(name)
        kept = picks[fits(picks, BOX, SHAPE)]
        assert len(rows) == len(kept)
        stack_name = f"Particles/{Path(name).stem}.mrcs"
        assert list(rows["rlnImageName"]) == [
            f"{i:06d}@{stack_name}" for i in range(1, len(kept) + 1)
        ]
        assert res.stacks[stack_name].shape == (len(kept), BOX, BOX)
        centres = np.floor(kept)
        np.testing.assert_array_equal(rows["rlnCoordinateX"], centres[:, 0])
        np.testing.assert_array_equal(rows["rlnCoordinateY"], centres[:, 1])
        # default --subpixel origin: true position = coordinate - origin / apix
        np.testing.assert_allclose(
            rows["rlnOriginXAngst"], -(kept[:, 0] - centres[:, 0]) * PIXEL, atol=2e-6
        )
        np.testing.assert_allclose(
            rows["rlnOriginYAngst"], -(kept[:, 1] - centres[:, 1]) * PIXEL, atol=2e-6
        )
        np.testing.assert_allclose(
            rows["rlnCoordinateX"] - rows["rlnOriginXAngst"] / PIXEL, kept[:, 0], atol=1e-5
        )
        np.testing.assert_allclose(rows["rlnDefocusU"], mic_table.loc[name, "rlnDefocusU"])
        assert "rlnAutopickFigureOfMerit" in rows.columns
        # rejected picks: the others, with the reason
        rejected = res.rejected[res.rejected["rlnMicrographName"] == name]
        dropped = picks[~fits(picks, BOX, SHAPE)]
        np.testing.assert_allclose(
            rejected[["rlnCoordinateX", "rlnCoordinateY"]], dropped, atol=1e-6
        )
        assert set(rejected["reason"]) <= {"box leaves micrograph"}
    # stack headers
    for stack_name in res.stacks:
        with mrcfile.open(out / stack_name, header_only=True) as mrc:
            assert int(mrc.header.mode) == 2
            assert float(mrc.voxel_size.x) == pytest.approx(PIXEL)
    # ramp-normalised: background mean 0, std 1; inverted
    bg = bg_mask(BOX, RADIUS)
    for stack in res.stacks.values():
        v = stack[:, bg].astype(np.float64)
        np.testing.assert_allclose(v.mean(axis=1), 0.0, atol=1e-4)
        np.testing.assert_allclose(v.std(axis=1), 1.0, atol=1e-4)


def test_raw_boxes_equal_micrograph_windows(
    sim: Sim, runs: dict[str, Run]
) -> None:
    run = runs["replicate"]  # --norm none --no-invert; fitting boxes are plain windows
    res = ok_output(run)
    checked = 0
    for name, mic in sim.mics.items():
        for _, row in res.of(name).iterrows():
            cx, cy = int(row["rlnCoordinateX"]), int(row["rlnCoordinateY"])
            if cx - HALF < 0 or cy - HALF < 0 or cx + HALF > SHAPE[1] or cy + HALF > SHAPE[0]:
                continue
            np.testing.assert_array_equal(res.image(row), window(mic, cx, cy).astype(np.float32))
            checked += 1
    assert checked == sim.n_fit


def test_float16_output_is_mode_12(runs: dict[str, Run]) -> None:
    f16, f32 = runs["float16"], runs["default"]
    ok(f16)
    assert f16.out is not None and f32.out is not None
    a, b = load_output(f16.out), load_output(f32.out)
    assert a.stacks.keys() == b.stacks.keys()
    for name in a.stacks:
        with mrcfile.open(f16.out / name, header_only=True) as mrc:
            assert int(mrc.header.mode) == 12
        assert a.stacks[name].dtype == np.float16
        np.testing.assert_array_equal(a.stacks[name], b.stacks[name].astype(np.float16))
    assert list(a.particles["rlnImageName"]) == list(b.particles["rlnImageName"])


@pytest.mark.parametrize("mode", ["replicate", "mean", "noise", "reflect"])
def test_edge_modes(sim: Sim, runs: dict[str, Run], mode: str) -> None:
    run = runs[mode]
    res = ok_output(run)
    # every centre is inside the micrographs: nothing is dropped
    assert res.summary["particles_kept"] == sim.n_total
    assert res.summary["particles_dropped"] == {}
    assert len(res.particles) == sim.n_total > sim.n_fit
    n_edge = 0
    for name, mic in sim.mics.items():
        fill = float(mic.mean(dtype=np.float64))
        for _, row in res.of(name).iterrows():
            cx, cy = int(row["rlnCoordinateX"]), int(row["rlnCoordinateY"])
            got = res.image(row).astype(np.float64)
            nan_padded = padded_window(mic, cx, cy, "constant", constant_values=np.nan)
            outside = np.isnan(nan_padded)
            np.testing.assert_allclose(got[~outside], nan_padded[~outside], rtol=1e-6)
            if not outside.any():
                continue
            n_edge += 1
            if mode == "replicate":
                np.testing.assert_allclose(got, padded_window(mic, cx, cy, "edge"), rtol=1e-6)
            elif mode == "reflect":
                np.testing.assert_allclose(got, padded_window(mic, cx, cy, "reflect"), rtol=1e-6)
            elif mode == "mean":
                np.testing.assert_allclose(got[outside], fill, rtol=1e-6)
            else:
                inside = nan_padded[~outside]
                values = got[outside]
                assert np.all(np.isfinite(values))
                if values.size >= 200:
                    assert abs(values.mean() - inside.mean()) < 5 * inside.std() / np.sqrt(
                        values.size
                    )
                    assert abs(values.std() / inside.std() - 1) < 0.2
    assert n_edge == sim.n_total - sim.n_fit


def test_seed_reproducibility(runs: dict[str, Run]) -> None:
    a, b, c = (runs[k] for k in ("seed3a", "seed3b", "seed4"))
    for run in (a, b, c):
        ok(run)
        assert "dust" in run.stderr
    ra, rb, rc = (load_output(r.out) for r in (a, b, c))  # type: ignore[arg-type]
    assert ra.stacks.keys() == rb.stacks.keys() == rc.stacks.keys()
    n_pixels_differ = 0
    for name in ra.stacks:
        np.testing.assert_array_equal(ra.stacks[name], rb.stacks[name])
        n_pixels_differ += int((ra.stacks[name] != rc.stacks[name]).sum())
    assert n_pixels_differ > 100
    assert len(ra.particles) == len(rc.particles)


def _centroid(img: np.ndarray) -> tuple[float, float]:
    w = img.astype(np.float64)
    y, x = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    return float((w * x).sum() / w.sum()), float((w * y).sum() / w.sum())


def test_subpixel_shift_centres_the_pick(runs: dict[str, Run]) -> None:
    run = runs["shift"]
    res = ok_output(run)
    assert len(res.particles) == len(BLOBS_XY)
    for (_, row), (bx, by) in zip(res.particles.iterrows(), BLOBS_XY, strict=True):
        cx, cy = _centroid(res.image(row))
        assert abs(cx - BLOB_BOX // 2) < 0.02, (bx, by, cx, cy)
        assert abs(cy - BLOB_BOX // 2) < 0.02, (bx, by, cx, cy)
        assert float(row["rlnOriginXAngst"]) == 0.0
        assert float(row["rlnOriginYAngst"]) == 0.0
        # the coordinate is the pick itself, so the true position is unchanged
        assert float(row["rlnCoordinateX"]) == pytest.approx(bx, abs=1e-5)
        assert float(row["rlnCoordinateY"]) == pytest.approx(by, abs=1e-5)


def test_subpixel_origin_records_residual(runs: dict[str, Run]) -> None:
    run = runs["origin"]
    res = ok_output(run)
    assert len(res.particles) == len(BLOBS_XY)
    for (_, row), (bx, by) in zip(res.particles.iterrows(), BLOBS_XY, strict=True):
        fx, fy = bx - np.floor(bx), by - np.floor(by)
        assert float(row["rlnCoordinateX"]) == np.floor(bx)
        assert float(row["rlnCoordinateY"]) == np.floor(by)
        assert float(row["rlnOriginXAngst"]) == pytest.approx(-fx * BLOB_PIXEL, abs=2e-6)
        assert float(row["rlnOriginYAngst"]) == pytest.approx(-fy * BLOB_PIXEL, abs=2e-6)
        # the box is not shifted: the blob sits at box//2 + residual
        cx, cy = _centroid(res.image(row))
        assert abs(cx - (BLOB_BOX // 2 + fx)) < 0.02
        assert abs(cy - (BLOB_BOX // 2 + fy)) < 0.02
    assert float(res.optics["rlnImagePixelSize"].iloc[0]) == BLOB_PIXEL


