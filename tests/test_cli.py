"""``cryoextract extract`` end to end, through ``python -m cryoextract`` in a subprocess.

Data are simulated into a temporary folder. Independent commands run concurrently
(module-scoped fixtures) to keep the suite fast. Expected values come from the inputs
(picks read with ``starfile``, micrographs with ``mrcfile``) and naive numpy, never from
our own code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

import cryoextract
from cryoextract import EdgeMode, ExtractParams, NormMode, ParameterError
from cryoextract.pipeline.extraction.outputs import ExtractionSummary
from cryoextract.sim.simulate import SimulatedDataset, simulate_dataset
from helpers import cli_env, one_line_error, stack_of

BOX = 64
HALF = BOX // 2
PIXEL = 1.5
SHAPE = (512, 512)
RADIUS = round(0.375 * BOX)  # default background radius


# --------------------------------------------------------------------------- running
@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    out: Path | None


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "cryoextract", "extract", *args]


def run_many(jobs: dict[str, list[str]], cwd: Path | None = None) -> dict[str, Run]:
    """Run several CLI invocations concurrently; ``--out`` is parsed for convenience."""
    procs = {
        name: subprocess.Popen(
            _command(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=cwd,
        )
        for name, args in jobs.items()
    }
    runs = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        args = jobs[name]
        out = Path(args[args.index("--out") + 1]) if "--out" in args else None
        runs[name] = Run(args, proc.returncode, stdout, stderr, out)
    return runs


def run_one(args: list[str]) -> Run:
    return run_many({"one": args})["one"]


def _ok(run: Run) -> None:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr + run.stdout


def _ok_output(run: Run) -> Output:
    """The outputs of a run that succeeded."""
    _ok(run)
    assert run.out is not None
    return load_output(run.out)


# --------------------------------------------------------------------------- oracles
def read_picks_star(path: Path) -> pd.DataFrame:
    table = starfile.read(path)
    if isinstance(table, dict):
        table = next(iter(table.values()))
    return table


def read_mrc(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.array(mrc.data)


def fits(xy: np.ndarray, box: int, shape_yx: tuple[int, int]) -> np.ndarray:
    """Boxes ``[floor - box//2, floor + box//2 - 1]`` inside the micrograph."""
    c = np.floor(xy).astype(int)
    ny, nx = shape_yx
    return (
        (c[:, 0] - box // 2 >= 0)
        & (c[:, 0] + box // 2 - 1 <= nx - 1)
        & (c[:, 1] - box // 2 >= 0)
        & (c[:, 1] + box // 2 - 1 <= ny - 1)
    )


def window(mic: np.ndarray, cx: int, cy: int, box: int = BOX) -> np.ndarray:
    return mic[cy - box // 2 : cy + box // 2, cx - box // 2 : cx + box // 2].astype(np.float64)


def padded_window(
    mic: np.ndarray, cx: int, cy: int, mode: str, box: int = BOX, **kw: float
) -> np.ndarray:
    padded = np.pad(mic.astype(np.float64), box, mode=mode, **kw)
    y0, x0 = cy - box // 2 + box, cx - box // 2 + box
    return padded[y0 : y0 + box, x0 : x0 + box]


def bg_mask(box: int, radius: float) -> np.ndarray:
    o = np.arange(box) - box // 2
    return o[:, None] ** 2 + o[None, :] ** 2 > radius**2


@dataclass
class Output:
    optics: pd.DataFrame
    particles: pd.DataFrame
    stacks: dict[str, np.ndarray]
    summary: dict
    rejected: pd.DataFrame

    def image(self, row: pd.Series) -> np.ndarray:
        index, name = str(row["rlnImageName"]).split("@")
        return self.stacks[name][int(index) - 1]

    def of(self, micrograph_name: str) -> pd.DataFrame:
        return self.particles[self.particles["rlnMicrographName"] == micrograph_name]


def load_output(out: Path) -> Output:
    """The run's outputs; image names rewritten relative to ``out`` (the STAR names them
    relative to where the command ran, or absolutely outside it)."""
    blocks = starfile.read(out / "particles.star", always_dict=True)
    particles = blocks["particles"]
    stacks = {}
    keys = {}
    for written in sorted({str(n).split("@")[1] for n in particles["rlnImageName"]}):
        path = stack_of(out / "particles.star", written)
        name = keys[written] = Path(os.path.relpath(path, out)).as_posix()
        stacks[name] = read_mrc(path)
        if stacks[name].ndim == 2:
            stacks[name] = stacks[name][None]
    particles["rlnImageName"] = [f"{n.split('@')[0]}@{keys[n.split('@')[1]]}"
                                 for n in particles["rlnImageName"].astype(str)]
    summary = json.loads((out / "summary.json").read_text())
    rejected = pd.read_csv(out / "rejected_particles.tsv", sep="\t")
    return Output(blocks["optics"], particles, stacks, summary, rejected)


# --------------------------------------------------------------------------- data
@dataclass
class Sim:
    ds: SimulatedDataset
    root: Path
    picks: dict[str, np.ndarray]  # micrograph name -> (n, 2) picks (x, y) as read from STAR
    mics: dict[str, np.ndarray]
    star: Path

    def base(
        self, out: Path, *extra: str, workers: int = 1, box: str | None = str(BOX)
    ) -> list[str]:
        box_args = [] if box is None else ["--box", box]
        return [
            "--micrographs",
            str(self.star),
            "--coords-dir",
            str(self.root / "Picks"),
            "--coords-suffix",
            "_autopick.star",
            *box_args,
            "--workers",
            str(workers),
            "--out",
            str(out),
            *extra,
        ]

    @property
    def n_total(self) -> int:
        return sum(len(p) for p in self.picks.values())

    @property
    def n_fit(self) -> int:
        return sum(int(fits(p, BOX, SHAPE).sum()) for p in self.picks.values())


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Sim:
    root = tmp_path_factory.mktemp("sim")
    ds = simulate_dataset(
        root,
        n_micrographs=2,
        shape_yx=SHAPE,
        pixel_size_angstrom=PIXEL,
        particles_per_micrograph=20,
        particle_diameter_angstrom=60.0,
        seed=5,
    )
    picks = {}
    mics = {}
    for name, pick_path, mic_path in zip(
        ds.micrograph_names, ds.pick_paths, ds.micrograph_paths, strict=True
    ):
        table = read_picks_star(pick_path)
        picks[name] = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
        mics[name] = read_mrc(mic_path)
    sim = Sim(ds, root, picks, mics, ds.micrographs_star)
    assert sim.n_fit < sim.n_total  # some boxes leave the micrographs
    return sim


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


# --- a project with per-micrograph problems
PROBLEM_NAMES = {
    "missing": "Micrographs/missing.mrc",
    "truncated": "Micrographs/truncated.mrc",
    "good": "Micrographs/good.mrc",
    "nan": "Micrographs/nan.mrc",
    "nocoords": "Micrographs/nocoords.mrc",
    "empty": "Micrographs/empty.mrc",
    "wrongpx": "Micrographs/wrongpx.mrc",
}


@dataclass
class Problems:
    root: Path
    star: Path
    picks: dict[str, np.ndarray]
    mics: dict[str, np.ndarray]
    nan_region: tuple[slice, slice]


def _make_problems(sim: Sim, root: Path) -> Problems:
    (root / "Micrographs").mkdir(parents=True)
    (root / "Picks").mkdir()
    n1, n2 = sim.ds.micrograph_names
    p1, p2 = sim.ds.pick_paths

    def put(key: str, data: np.ndarray, voxel: float, pick_file: Path | None) -> None:
        with mrcfile.new(root / PROBLEM_NAMES[key]) as mrc:
            mrc.set_data(data.astype(np.float32))
            mrc.voxel_size = voxel
        if pick_file is not None:
            shutil.copy(pick_file, root / "Picks" / f"{key}_autopick.star")

    put("good", sim.mics[n1], PIXEL, p1)
    put("truncated", sim.mics[n1], PIXEL, p1)
    raw = (root / PROBLEM_NAMES["truncated"]).read_bytes()
    (root / PROBLEM_NAMES["truncated"]).write_bytes(raw[: len(raw) - 5000])
    shutil.copy(p1, root / "Picks" / "missing_autopick.star")
    # NaNs around one fitting pick
    nan_mic = sim.mics[n2].astype(np.float32).copy()
    fitting = sim.picks[n2][fits(sim.picks[n2], BOX, SHAPE)]
    cx, cy = np.floor(fitting[0]).astype(int)
    region = (slice(cy - 2, cy + 3), slice(cx - 2, cx + 3))
    nan_mic[region] = np.nan
    put("nan", nan_mic, PIXEL, p2)
    put("nocoords", sim.mics[n1], PIXEL, None)
    put("empty", sim.mics[n2], PIXEL, None)
    (root / "Picks" / "empty_autopick.star").write_text(
        "# RELION; version 3.0\n\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
    )
    put("wrongpx", sim.mics[n2], 2.0, p2)
    names = list(PROBLEM_NAMES.values())
    star = root / "micrographs.star"
    starfile.write(
        {
            "optics": pd.DataFrame(
                {
                    "rlnOpticsGroupName": ["opticsGroup1"],
                    "rlnOpticsGroup": [1],
                    "rlnMicrographPixelSize": [PIXEL],
                    "rlnVoltage": [300.0],
                    "rlnSphericalAberration": [2.7],
                    "rlnAmplitudeContrast": [0.1],
                }
            ),
            "micrographs": pd.DataFrame(
                {"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names)}
            ),
        },
        star,
    )
    picks = {"good": sim.picks[n1], "nan": sim.picks[n2], "wrongpx": sim.picks[n2]}
    mics = {"good": sim.mics[n1], "nan": nan_mic, "wrongpx": sim.mics[n2]}
    return Problems(root, star, picks, mics, region)


# --- all successful runs, concurrently
@pytest.fixture(scope="module")
def runs(
    sim: Sim, blobs: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Run], Problems]:
    base = tmp_path_factory.mktemp("runs")
    problems = _make_problems(sim, base / "problems")
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
        "problems": [
            "--micrographs",
            str(problems.star),
            "--coords-dir",
            str(problems.root / "Picks"),
            "--coords-suffix",
            "_autopick.star",
            "--box",
            str(BOX),
            "--workers",
            "2",
            "--out",
            str(base / "problems_out"),
        ],
    }
    return run_many(jobs), problems


# --------------------------------------------------------------------------- success
def test_success_writes_outputs_and_summary(
    sim: Sim, runs: tuple[dict[str, Run], Problems]
) -> None:
    run = runs[0]["default"]
    _ok(run)
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
    sim: Sim, runs: tuple[dict[str, Run], Problems]
) -> None:
    run = runs[0]["replicate"]  # --norm none --no-invert; fitting boxes are plain windows
    res = _ok_output(run)
    checked = 0
    for name, mic in sim.mics.items():
        for _, row in res.of(name).iterrows():
            cx, cy = int(row["rlnCoordinateX"]), int(row["rlnCoordinateY"])
            if cx - HALF < 0 or cy - HALF < 0 or cx + HALF > SHAPE[1] or cy + HALF > SHAPE[0]:
                continue
            np.testing.assert_array_equal(res.image(row), window(mic, cx, cy).astype(np.float32))
            checked += 1
    assert checked == sim.n_fit


def test_float16_output_is_mode_12(runs: tuple[dict[str, Run], Problems]) -> None:
    f16, f32 = runs[0]["float16"], runs[0]["default"]
    _ok(f16)
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
def test_edge_modes(sim: Sim, runs: tuple[dict[str, Run], Problems], mode: str) -> None:
    run = runs[0][mode]
    res = _ok_output(run)
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


def test_seed_reproducibility(runs: tuple[dict[str, Run], Problems]) -> None:
    a, b, c = (runs[0][k] for k in ("seed3a", "seed3b", "seed4"))
    for run in (a, b, c):
        _ok(run)
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


def test_subpixel_shift_centres_the_pick(runs: tuple[dict[str, Run], Problems]) -> None:
    run = runs[0]["shift"]
    res = _ok_output(run)
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


def test_subpixel_origin_records_residual(runs: tuple[dict[str, Run], Problems]) -> None:
    run = runs[0]["origin"]
    res = _ok_output(run)
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


# ------------------------------------------------------------------ per-micrograph problems
def test_per_micrograph_problems_do_not_abort(runs: tuple[dict[str, Run], Problems]) -> None:
    run, problems = runs[0]["problems"], runs[1]
    res = _ok_output(run)
    s = res.summary
    skipped = s["micrographs_skipped"]
    assert set(skipped) == {PROBLEM_NAMES[k] for k in ("missing", "truncated", "nocoords")}
    assert "missing.mrc" in skipped[PROBLEM_NAMES["missing"]]
    assert "truncated.mrc" in skipped[PROBLEM_NAMES["truncated"]]
    assert "coordinate" in skipped[PROBLEM_NAMES["nocoords"]]
    assert s["micrographs_done"] == 4  # good, nan, empty (no particles), wrongpx
    assert "skipped micrographs" in run.stdout

    # NaN region: only boxes touching it are dropped, with the reason
    nan_picks = problems.picks["nan"]
    rows_sl, cols_sl = problems.nan_region
    c = np.floor(nan_picks).astype(int)
    touches = (
        (c[:, 0] - HALF <= cols_sl.stop - 1)
        & (c[:, 0] + HALF - 1 >= cols_sl.start)
        & (c[:, 1] - HALF <= rows_sl.stop - 1)
        & (c[:, 1] + HALF - 1 >= rows_sl.start)
    )
    nan_fit = fits(nan_picks, BOX, SHAPE)
    n_nan = int((touches & nan_fit).sum())
    assert n_nan >= 1
    expected_kept = (
        int(fits(problems.picks["good"], BOX, SHAPE).sum())
        + int((nan_fit & ~touches).sum())
        + int(fits(problems.picks["wrongpx"], BOX, SHAPE).sum())
    )
    assert s["particles_kept"] == expected_kept
    assert len(res.particles) == expected_kept
    assert s["particles_dropped"]["non-finite pixels"] == n_nan
    rejected = res.rejected[res.rejected["reason"] == "non-finite pixels"]
    assert set(rejected["rlnMicrographName"]) == {PROBLEM_NAMES["nan"]}
    np.testing.assert_allclose(
        rejected[["rlnCoordinateX", "rlnCoordinateY"]], nan_picks[touches & nan_fit], atol=1e-6
    )
    for stack in res.stacks.values():
        assert np.all(np.isfinite(stack))
    assert len(res.of(PROBLEM_NAMES["empty"])) == 0

    # header pixel size 2.0 vs STAR 1.5: a warning, the STAR wins
    warning_lines = [line for line in run.stderr.splitlines() if "wrongpx.mrc" in line]
    assert warning_lines and "pixel size" in warning_lines[0]
    assert not any("good.mrc" in line for line in run.stderr.splitlines())
    assert np.allclose(res.optics["rlnImagePixelSize"].astype(float), PIXEL)
    wrong = res.of(PROBLEM_NAMES["wrongpx"])
    assert len(wrong) == int(fits(problems.picks["wrongpx"], BOX, SHAPE).sum())
    with mrcfile.open(run.out / "Particles/wrongpx.mrcs", header_only=True) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(PIXEL)


# --------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def bad_runs(
    sim: Sim, runs: tuple[dict[str, Run], Problems], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Run, str | None]]:
    base = tmp_path_factory.mktemp("bad")
    no_name = base / "noname.star"
    no_name.write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n")
    xyz = base / "picks.xyz"
    xyz.write_text("10 10\n")
    bad_txt = base / "bad.txt"
    bad_txt.write_text("x y\n100 100\n120 1oo\n")
    existing = base / "existing"
    shutil.copytree(runs[0]["default"].out, existing)  # type: ignore[arg-type]
    # brackets in a path are text, not console markup
    bracket_txt = base / "w[bad]" / "picks.txt"
    closing_txt = base / "w[/bad]" / "picks.txt"
    for path in (bracket_txt, closing_txt):
        path.parent.mkdir(parents=True)
        path.write_text("100 100\n120 1oo\n")
    mic1 = str(sim.ds.micrograph_paths[0])
    single = ["--micrographs", mic1, "--pixel-size", str(PIXEL), "--box", str(BOX)]
    cases: dict[str, tuple[list[str], str | None]] = {
        "odd_box": (sim.base(base / "o1", box="63"), None),
        "zero_box": (sim.base(base / "o2", box="0"), None),
        "negative_box": (sim.base(base / "o3", "--box=-64", box=None), None),
        "box_too_large": (sim.base(base / "o4", box="600"), "mic_00"),
        "no_micrograph_name": (
            [
                "--micrographs",
                str(no_name),
                "--pixel-size",
                "1",
                "--coords",
                str(xyz),
                "--box",
                "64",
                "--out",
                str(base / "o6"),
            ],
            "noname.star",
        ),
        "unknown_format": ([*single, "--coords", str(xyz), "--out", str(base / "o7")], "picks.xyz"),
        "missing_star": (
            [
                "--micrographs",
                str(base / "nothere.star"),
                "--coords",
                str(xyz),
                "--box",
                "64",
                "--out",
                str(base / "o8"),
            ],
            "nothere.star",
        ),
        "bad_text_line": (
            [*single, "--coords", str(bad_txt), "--out", str(base / "o9")],
            f"{bad_txt}:3",
        ),
        "existing_out": (sim.base(existing), "--overwrite"),
        "bracket_path": (
            [*single, "--coords", str(bracket_txt), "--out", str(base / "o11")],
            f"{bracket_txt}:2",
        ),
        "closing_tag_path": (
            [*single, "--coords", str(closing_txt), "--out", str(base / "o12")],
            f"{closing_txt}:2",
        ),
    }
    runs_ = run_many({name: args for name, (args, _) in cases.items()})
    return {name: (runs_[name], needle) for name, (_, needle) in cases.items()}


BAD_CASES = [
    "odd_box",
    "zero_box",
    "negative_box",
    "box_too_large",
    "no_micrograph_name",
    "unknown_format",
    "missing_star",
    "bad_text_line",
    "existing_out",
    "bracket_path",
    "closing_tag_path",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exit_2_one_line(bad_runs: dict[str, tuple[Run, str | None]], case: str) -> None:
    run, needle = bad_runs[case]
    line = one_line_error(run.returncode, run.stdout, run.stderr)
    assert line.startswith("error:")
    if needle is not None:
        assert needle in line, line
    assert run.out is not None
    if case == "existing_out":
        # untouched
        assert (run.out / "particles.star").is_file()
        assert len(list((run.out / "Particles").iterdir())) == 2
    else:
        assert not (run.out / "particles.star").exists()


def test_box_errors_name_the_problem(bad_runs: dict[str, tuple[Run, str | None]]) -> None:
    assert "even" in bad_runs["odd_box"][0].stderr
    assert "63" in bad_runs["odd_box"][0].stderr
    assert "0" in bad_runs["zero_box"][0].stderr
    assert "-64" in bad_runs["negative_box"][0].stderr
    assert "600" in bad_runs["box_too_large"][0].stderr


def test_overwrite_leaves_no_stale_stacks(
    sim: Sim, runs: tuple[dict[str, Run], Problems], tmp_path: Path
) -> None:
    out = tmp_path / "again"
    shutil.copytree(runs[0]["default"].out, out)  # type: ignore[arg-type]
    assert (out / "Particles" / "mic_002.mrcs").is_file()
    name1 = sim.ds.micrograph_names[0]
    run = run_one(
        [
            "--micrographs",
            str(sim.ds.micrograph_paths[0]),
            "--pixel-size",
            str(PIXEL),
            "--coords",
            str(sim.ds.pick_paths[0]),
            "--box",
            str(BOX),
            "--workers",
            "1",
            "--out",
            str(out),
            "--overwrite",
        ]
    )
    _ok(run)
    assert sorted(p.name for p in (out / "Particles").iterdir()) == ["mic_001.mrcs"]
    res = load_output(out)
    n1 = int(fits(sim.picks[name1], BOX, SHAPE).sum())
    assert res.summary["micrographs_done"] == 1
    assert res.summary["particles_kept"] == n1 == len(res.particles)
    assert set(res.particles["rlnMicrographName"]) == {str(sim.ds.micrograph_paths[0])}
    assert len(res.rejected) == len(sim.picks[name1]) - n1


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


def test_console_entry_point_keeps_exit_codes_and_flushes_piped_output(tmp_path):
    """``main`` leaves without interpreter teardown: codes and buffered output must survive."""
    helped = subprocess.run([sys.executable, "-m", "cryoextract", "subtract", "--help"],
                            capture_output=True, text=True, timeout=120, env=cli_env())
    assert helped.returncode == 0 and "--mask-mode" in helped.stdout
    usage = subprocess.run([sys.executable, "-m", "cryoextract", "subtract", "--bogus"],
                           capture_output=True, text=True, timeout=120, env=cli_env())
    assert usage.returncode == 2 and "--bogus" in usage.stderr
    failed = subprocess.run([sys.executable, "-m", "cryoextract", "restack", "--particles",
                             str(tmp_path / "none.star"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120, env=cli_env())
    assert failed.returncode == 2 and "none.star" in failed.stderr
    # an atexit handler registered during the command still runs, after the output
    script = ("import atexit, sys\n"
              "from cryoextract.cli import app\n"
              "atexit.register(lambda: print('atexit ran'))\n"
              "sys.argv = ['cryoextract', 'subtract', '--help']\n"
              "app.main()\n")
    buffered = cli_env()
    buffered.pop("PYTHONUNBUFFERED", None)  # piped stdout is then block-buffered
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120, env=buffered)
    assert ended.returncode == 0
    assert ended.stdout.index("--mask-mode") < ended.stdout.index("atexit ran")
    # threads still running at the end (here an executor never shut down, whose idle
    # worker only the interpreter's exit wakes) end as in a normal exit, without a hang
    script = ("import sys, time\n"
              "from concurrent.futures import ThreadPoolExecutor\n"
              "from cryoextract.cli import app\n"
              "def late():\n"
              "    time.sleep(0.5)\n"
              "    print('thread done', flush=True)\n"
              "pool = ThreadPoolExecutor(1)\n"
              "pool.submit(late)\n"
              "sys.argv = ['cryoextract', 'subtract', '--bogus']\n"
              "app.main()\n")
    waited = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env=buffered)
    assert waited.returncode == 2 and "thread done" in waited.stdout


def test_help_shows_every_written_default():
    """Rich reads ``[...]`` in help texts as markup and drops it unless escaped."""
    import re

    from typer.testing import CliRunner

    from cryoextract.cli.app import app

    sources = sorted((Path(cryoextract.__file__).parent / "cli").glob("*.py"))
    written = set()
    for source in sources:
        text = re.sub(r'"\s*\n\s*"', "", source.read_text())  # join implicit concatenations
        written.update(re.findall(r"\[default: ([^\]]+)\]", text))
    assert len(written) >= 8
    shown = ""
    for command in ("extract", "subtract", "restack", "downsample", "select", "convert",
                    "report"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"},
                                    terminal_width=400)
        assert result.exit_code == 0, result.output
        shown += " ".join(result.output.replace("│", " ").split()) + "\n"
    missing = [d for d in written if f"[default: {' '.join(d.split())}]" not in shown]
    assert not missing, missing
