"""Pick selection (duplicates, scores, caps) and ``cryoextract select --where``.

Expected values: hand-made layouts with a known answer, a brute-force greedy
suppression on random picks, and, for ``select``, the pixels of the original stacks read
back through the rewritten image names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import cli_app, simulated_extraction
from cryoextract.errors import InputError, ParameterError
from cryoextract.io.cryosparc import load_cs
from cryoextract.io.images import read_images
from cryoextract.io.star import read_star, write_star
from cryoextract.pipeline.selection import (
    evaluate_where,
    limit_per_micrograph,
    parse_where,
    reason_close,
    reason_max,
    reason_score,
    remove_close_picks,
    selection_reasons,
)
from cryoextract.pipeline.stacks.select import select_particles

FOM = "rlnAutopickFigureOfMerit"


def _picks(x: list[float], score: list[float] | None = None, mic: list[str] | None = None,
           y: list[float] | None = None) -> pd.DataFrame:
    table = pd.DataFrame({"rlnCoordinateX": np.asarray(x, float),
                          "rlnCoordinateY": np.zeros(len(x)) if y is None else np.asarray(y)})
    if score is not None:
        table[FOM] = score
    if mic is not None:
        table["rlnMicrographName"] = mic
    return table


# --------------------------------------------------------------------------- close picks


def test_close_picks_keep_the_best_and_count_the_rest() -> None:
    table = _picks([0, 5, 20, 100, 103, 0], [1, 2, 0.5, 3, 1, 9], ["a"] * 5 + ["b"])
    keep, removed = remove_close_picks(table, 10)
    np.testing.assert_array_equal(keep, [False, True, True, True, False, True])
    assert removed == 2


def test_close_picks_greedy_chain_and_strict_distance() -> None:
    # A(3) - B(2) - C(1), 6 px apart: A removes B; C is 12 px from A and stays
    keep, removed = remove_close_picks(_picks([0, 6, 12], [3, 2, 1]), 10)
    np.testing.assert_array_equal(keep, [True, False, True])
    assert removed == 1
    # exactly D apart is not "closer than D"
    keep, removed = remove_close_picks(_picks([0, 10], [1, 2]), 10)
    assert keep.all() and removed == 0


def test_close_picks_ties_missing_scores_and_inactive_rows() -> None:
    keep, _ = remove_close_picks(_picks([0, 3, 6]), 4)  # no score column: table order
    np.testing.assert_array_equal(keep, [True, False, True])
    keep, _ = remove_close_picks(_picks([0, 3], [np.nan, 0.1]), 4)  # NaN loses
    np.testing.assert_array_equal(keep, [False, True])
    keep, removed = remove_close_picks(_picks([0, 3, 6], [1, 9, 1]), 4,
                                       active=np.array([True, False, True]))
    np.testing.assert_array_equal(keep, [True, True, True])  # the inactive best removes none
    assert removed == 0
    with pytest.raises(ParameterError):
        remove_close_picks(_picks([0, 1]), 0)


def test_close_picks_equal_brute_force_greedy_on_random_picks() -> None:
    rng = np.random.default_rng(0)
    n = 400
    table = _picks(rng.uniform(0, 500, n), rng.uniform(0, 1, n),
                   list(rng.choice(["m1", "m2", "m3"], n)), rng.uniform(0, 500, n))
    distance = 25.0
    keep, removed = remove_close_picks(table, distance)
    expected = np.zeros(n, dtype=bool)
    xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    mics = table["rlnMicrographName"].to_numpy()
    for i in np.argsort(-table[FOM].to_numpy(), kind="stable"):
        kept = np.flatnonzero(expected & (mics == mics[i]))
        if not (np.hypot(*(xy[kept] - xy[i]).T) < distance).any():
            expected[i] = True
    np.testing.assert_array_equal(keep, expected)
    assert removed == n - expected.sum()
    for mic in ("m1", "m2", "m3"):  # kept picks are all at least D apart
        pts = xy[keep & (mics == mic)]
        gaps = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
        assert (gaps[~np.eye(len(pts), dtype=bool)] >= distance).all()


# --------------------------------------------------------------------------- scores and caps


def test_limit_per_micrograph_keeps_the_best_n() -> None:
    table = _picks(list(range(7)), [5, 1, 4, 2, 3, 9, 8], ["a"] * 5 + ["b"] * 2)
    keep = limit_per_micrograph(table, 2)
    np.testing.assert_array_equal(keep, [True, False, True, False, False, True, True])
    assert limit_per_micrograph(table, 0).sum() == 0


def test_selection_reasons_in_order_with_counts() -> None:
    table = _picks([0, 5, 20, 100, 103, 0], [1, 2, 0.5, 3, 1, 9], ["a"] * 5 + ["b"])
    reasons = selection_reasons(table, min_distance_px=10, min_score=0.8,
                                max_per_micrograph=1, pixel_size_angstrom=2.0)
    close = reason_close("20 A")
    assert close == "closer than 20 A to a better pick"
    assert list(reasons) == [close, reason_max(1), reason_score(0.8), "", close, ""]
    assert reason_score(0.8) == "score below 0.8" and reason_max(1) == "over 1 per micrograph"
    reasons = selection_reasons(table, min_distance_px=10)
    assert list(reasons).count(reason_close("10 px")) == 2
    with pytest.raises(ParameterError, match="rlnAutopickFigureOfMerit"):
        selection_reasons(_picks([0, 1]), min_score=0.5)


# --------------------------------------------------------------------------- --where


def test_where_valid_conditions() -> None:
    table = pd.DataFrame({"ceScoreByVar": [1.0, 2.0, np.nan, 0.5],
                          "ceEdgeDistanceAngstrom": [60.0, 100.0, 80.0, 10.0],
                          "rlnDefocusU": [1e4, 2e4, 3e4, -1.0]})
    cases = {
        "ceScoreByVar < 1.5 and ceEdgeDistanceAngstrom > 50": [True, False, False, False],
        "ScoreByVar < 1.5 and EdgeDistanceAngstrom > 50": [True, False, False, False],
        "not ScoreByVar >= 1.5": [True, False, True, True],  # NaN comparisons are False
        "0.6 < ScoreByVar <= 2 or DefocusU == -1": [True, True, False, True],
        "DefocusU >= 1.5e4 and (ceScoreByVar > 1 or ceEdgeDistanceAngstrom < 90)":
            [False, True, True, False],
        "rlnDefocusU != 2e4": [True, False, True, True],
        "ceScoreByVar > -1": [True, True, False, True],
    }
    for where, expected in cases.items():
        np.testing.assert_array_equal(evaluate_where(table, where), expected, err_msg=where)


@pytest.mark.parametrize("where", [
    "__import__('os').system('true')",
    "ceScoreByVar.real > 1",
    "ceScoreByVar + 1 > 2",
    "ceScoreByVar > 'a'",
    "ceScoreByVar in (1, 2)",
    "ceScoreByVar is None",
    "ceScoreByVar",
    "1 < 2",
    "ceScoreByVar > 1 &",
    "lambda: 1",
    "[ceScoreByVar > 1]",
    "ceScoreByVar > True",
    "",
])
def test_where_rejects_anything_else(where: str) -> None:
    with pytest.raises(InputError, match="--where"):
        parse_where(where)


def test_where_unknown_and_non_numeric_columns() -> None:
    table = pd.DataFrame({"ceScoreByVar": [1.0], "rlnMicrographName": ["a.mrc"]})
    with pytest.raises(InputError, match=r"unknown column 'Nope'.*ceScoreByVar"):
        evaluate_where(table, "Nope > 1")
    with pytest.raises(InputError, match="not numeric"):
        evaluate_where(table, "MicrographName > 1")


# --------------------------------------------------------------------------- select


@pytest.fixture(scope="module")
def extraction(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small extraction (with particles.cs) plus a made-up descriptor column."""
    _, out = simulated_extraction(
        tmp_path_factory.mktemp("select"), n_micrographs=2, shape_yx=(384, 384),
        particles_per_micrograph=12, particle_diameter_angstrom=90.0, seed=3, write_cs=True)
    blocks = read_star(out / "particles.star")
    particles = blocks["particles"]
    particles["ceScoreByVar"] = np.linspace(0.5, 2.5, len(particles))
    write_star(out / "particles.star", blocks)
    return out


def _pixels(star: Path) -> np.ndarray:
    blocks = read_star(star)
    batches = list(read_images(blocks["particles"], (star.parent,)))
    return np.concatenate([images for _, images in batches])


def test_select_writes_star_and_cs_pointing_at_the_same_stacks(extraction: Path) -> None:
    before = read_star(extraction / "particles.star")["particles"]
    # relative to the STAR's folder (Warp's way): ../Particles from selected/
    summary = select_particles(extraction, "ScoreByVar < 1.5", path_style="relative-to-star")
    expected = before["ceScoreByVar"].to_numpy() < 1.5
    out_star = extraction / "selected" / "particles.star"
    assert summary.particles_star == str(out_star)
    assert (summary.particles_in, summary.particles_selected) == (len(before), expected.sum())
    after = read_star(out_star)
    assert "optics" in after
    selected = after["particles"]
    assert len(selected) == expected.sum()
    assert all(name.split("@")[1].startswith("../Particles/") for name in selected["rlnImageName"])
    original = _pixels(extraction / "particles.star")
    np.testing.assert_array_equal(_pixels(out_star), original[expected])
    assert not list((extraction / "selected").glob("*.mrcs"))  # stacks are not copied
    # .cs: the selected rows of the input .cs, paths rewritten, uids kept
    cs_in, cs_out = load_cs(extraction / "particles.cs"), load_cs(summary.particles_cs)
    assert len(cs_out) == expected.sum()
    np.testing.assert_array_equal(cs_out["uid"], cs_in["uid"][expected])
    np.testing.assert_array_equal(cs_out["blob/idx"], cs_in["blob/idx"][expected])
    assert {p.decode() for p in cs_out["blob/path"]} == {
        n.split("@")[1] for n in selected["rlnImageName"]}
    with pytest.raises(ParameterError, match="--overwrite"):
        select_particles(extraction, "ScoreByVar < 1.5")
    again = select_particles(extraction, "ScoreByVar >= 1.5", overwrite=True)
    assert again.particles_selected == len(before) - expected.sum()
    # by default relative to the working directory (RELION's way), absolute outside it
    names = read_star(out_star)["particles"]["rlnImageName"]
    base = os.path.abspath(os.getcwd())
    for name in names:
        path = name.split("@")[1]
        assert (Path(path).is_absolute() and not path.startswith(base + os.sep)) or \
            (not Path(path).is_absolute() and Path(path).is_file())


def test_select_from_cs_and_to_another_folder(extraction: Path, tmp_path: Path) -> None:
    summary = select_particles(extraction / "particles.cs", "CoordinateX > 150",
                               tmp_path / "sub")
    out_star = tmp_path / "sub" / "particles.star"
    selected = read_star(out_star)["particles"]
    before = read_star(extraction / "particles.star")["particles"]
    keep = before["rlnCoordinateX"].to_numpy() > 150
    assert summary.particles_selected == len(selected) == keep.sum()
    np.testing.assert_array_equal(_pixels(out_star), _pixels(extraction / "particles.star")[keep])
    assert len(load_cs(tmp_path / "sub" / "particles.cs")) == keep.sum()


def test_select_command_errors_are_one_line_exit_2(extraction: Path, tmp_path: Path) -> None:
    from cryoextract.cli.qc import select_command

    runner = CliRunner()
    app = cli_app({"select": select_command})
    result = runner.invoke(app, ["select", str(extraction), "--where",
                                 "ceScoreByVar < 1 and os.system('x')", "--out",
                                 str(tmp_path / "x.star")])
    assert result.exit_code == 2
    assert "--where" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["select", str(tmp_path / "missing"), "--where", "x > 1"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["select", str(extraction), "--where", "ScoreByVar > 2",
                                 "--out", str(tmp_path / "ok.star")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ok.star").is_file() and (tmp_path / "ok.cs").is_file()


@pytest.mark.parametrize("where", [
    "ScoreByVar > 1e9",  # matches nothing: no STAR a later step would trust
    "not " * 5000 + "ScoreByVar > 1",  # nested thousands deep
    "(" * 5000 + "ScoreByVar > 1" + ")" * 5000,
])
def test_select_that_selects_nothing_or_nests_too_deep_is_one_line_exit_2(
        extraction: Path, tmp_path: Path, where: str, cli) -> None:
    from cryoextract.cli.qc import select_command

    result = cli({"select": select_command}, ["select", str(extraction), "--where", where,
                                              "--out", str(tmp_path / "x.star")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and len(result.output) < 400
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_report_counts_must_not_be_negative(extraction: Path, cli) -> None:
    from cryoextract.cli.qc import report_command

    for option in ("--particles", "--worst", "--micrographs"):
        result = cli({"report": report_command}, ["report", str(extraction), option, "-5"])
        assert result.exit_code == 2, result.output
        assert option in result.output and "Traceback" not in result.output
    assert not (extraction / "report").exists()
