"""``cryoextract extract`` end to end when something is wrong: per-micrograph problems
(missing, truncated, NaN pixels, no picks, a header pixel size that disagrees) do not
abort the job; bad inputs and parameters are one line, exit 2, nothing written;
``--overwrite`` leaves no stale stacks.

Through ``python -m cryoextract`` in subprocesses, several at once; expected values from
the inputs and naive numpy (``extract_cli.py``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from extract_cli import (
    BOX,
    HALF,
    PIXEL,
    SHAPE,
    Run,
    Sim,
    fits,
    load_output,
    ok,
    ok_output,
    run_many,
    run_one,
)
from helpers import one_line_error

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


# --- the problems project and a clean run, concurrently
@pytest.fixture(scope="module")
def runs(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Run], Problems]:
    base = tmp_path_factory.mktemp("runs")
    problems = _make_problems(sim, base / "problems")
    jobs = {
        "default": sim.base(base / "default", workers=2),
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


# ------------------------------------------------------------------ per-micrograph problems
def test_per_micrograph_problems_do_not_abort(runs: tuple[dict[str, Run], Problems]) -> None:
    run, problems = runs[0]["problems"], runs[1]
    res = ok_output(run)
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
    ok(run)
    assert sorted(p.name for p in (out / "Particles").iterdir()) == ["mic_001.mrcs"]
    res = load_output(out)
    n1 = int(fits(sim.picks[name1], BOX, SHAPE).sum())
    assert res.summary["micrographs_done"] == 1
    assert res.summary["particles_kept"] == n1 == len(res.particles)
    assert set(res.particles["rlnMicrographName"]) == {str(sim.ds.micrograph_paths[0])}
    assert len(res.rejected) == len(sim.picks[name1]) - n1


