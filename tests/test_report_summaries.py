"""Issue 14: ``report`` on a folder whose ``summary.json`` is JSON but no run summary (a
list, a number, a string, null; values of other types) writes its page with a note,
never a traceback (a list was an AttributeError)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cryoextract.cli.app import app
from cryoextract.report import write_report
from cryoextract.sim.simulate import simulate_dataset


@pytest.fixture(scope="module")
def extraction(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("summaries")
    simulate_dataset(root / "data", n_micrographs=1, shape_yx=(256, 256),
                     particles_per_micrograph=4, pixel_size_angstrom=2.0,
                     particle_diameter_angstrom=60.0, seed=5)
    result = CliRunner().invoke(app, [
        "extract", "--micrographs", str(root / "data" / "micrographs.star"), "--coords-dir",
        str(root / "data" / "Picks"), "--coords-suffix", "_autopick.star", "--box", "48",
        "--out", str(root / "ext"), "--workers", "1", "--quiet", "--no-report"])
    assert result.exit_code == 0, result.output
    return root / "ext"


@pytest.mark.parametrize("summary", [
    [1, 2], "text", 5, None,
    {"micrographs_skipped": {"a": [1]}, "particles_dropped": {"x": None},
     "warnings": ["a", 1, None], "micrographs_done": "x", "particles_kept": "many",
     "paths_relative_to": 3, "output_pixel_size_angstrom": "x", "box_px": "y"},
], ids=["list", "string", "number", "null", "odd-values"])
def test_a_summary_that_is_no_run_summary_is_a_note(extraction: Path, tmp_path: Path,
                                                     summary: object) -> None:
    folder = tmp_path / "ext"
    shutil.copytree(extraction, folder)
    (folder / "summary.json").write_text(json.dumps(summary))
    page = write_report(folder)
    assert page == folder / "report" / "index.html" and page.is_file()
    if not isinstance(summary, dict):
        assert "not a run summary" in page.read_text()
