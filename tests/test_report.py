"""``cryoextract report``: the page of a real (small, simulated) extraction.

Every image the page references must exist and not be blank, and a headless browser
(Debian's ``chromium``, where installed) must render the page with its images loaded:
the screenshot shows matplotlib's default histogram blue, which only the PNGs contain.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cryoextract import ExtractParams, extract
from cryoextract.errors import InputError
from cryoextract.io.mrc import open_micrograph
from cryoextract.io.star import read_star, write_star
from cryoextract.ops import descriptors as D
from cryoextract.report import write_report
from cryoextract.sim.simulate import SimulatedDataset, simulate_dataset
from prereq import require

HISTOGRAM_BLUE = np.array([31, 119, 180])  # matplotlib "C0" (#1f77b4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedDataset, Path]:
    """A small extraction with edge drops, and descriptor columns added as extract would."""
    root = tmp_path_factory.mktemp("report")
    ds = simulate_dataset(root / "data", n_micrographs=3, shape_yx=(512, 512),
                          particles_per_micrograph=16, particle_diameter_angstrom=100.0,
                          seed=5)
    out = root / "out"
    cwd = os.getcwd()
    os.chdir(ds.out_dir)
    try:
        extract("micrographs.star", out, ExtractParams(box_px=ds.box_px), coords_dir="Picks",
                coords_suffix="_autopick.star", workers=1)
    finally:
        os.chdir(cwd)
    _add_descriptors(ds, out)
    return ds, out


def _add_descriptors(ds: SimulatedDataset, out: Path) -> None:
    blocks = read_star(out / "particles.star")
    particles = blocks["particles"]
    patch = int(1.5 * ds.box_px)
    for name, path in zip(ds.micrograph_names, ds.micrograph_paths, strict=True):
        rows = (particles["rlnMicrographName"] == name).to_numpy()
        centres = np.floor(particles.loc[rows, ["rlnCoordinateX", "rlnCoordinateY"]]
                           .to_numpy()).astype(np.int64)
        with open_micrograph(path) as (image, _):
            std_map = D.local_std_map(image, patch)
            values = D.particle_descriptors(image, centres, ds.box_px, patch,
                                            ds.pixel_size_angstrom, std_map=std_map,
                                            bg_radius_px=0.375 * ds.box_px)
            values[D.SCORE_BY_GINI] = np.full(rows.sum(), D.micrograph_gini(std_map))
        for column, value in values.items():
            particles.loc[rows, column] = value
    write_star(out / "particles.star", blocks)


def _images_of(page: Path) -> list[Path]:
    return [page.parent / src for src in re.findall(r'<img src="([^"]+)"', page.read_text())]


def test_report_images_exist_and_are_not_blank(
    run: tuple[SimulatedDataset, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, out = run
    monkeypatch.chdir(ds.out_dir)  # micrograph names are relative to the data set
    page = write_report(out, n_random=20, n_worst=8, max_micrographs=2)
    assert page == out / "report" / "index.html"
    images = _images_of(page)
    names = {p.name for p in images}
    assert {"histograms.png", "micrograph_1.png", "micrograph_2.png", "gallery_random.png",
            "gallery_worst_ceScoreByVar.png", "gallery_worst_ceGiniPatch.png",
            "gallery_worst_ceEdgeDistanceAngstrom.png"} <= names
    assert "gallery_worst_ceScoreByGini.png" not in names  # per micrograph: histogram only
    for image in images:
        assert image.is_file(), image
        pixels = matplotlib.image.imread(image)
        assert pixels.ndim == 3 and pixels[..., :3].std() > 0, image
    text = page.read_text()
    assert "particles kept" in text and "box leaves micrograph" in text
    assert "Notes" not in text  # everything was found
    assert not re.search(r'src="(/|file:|http)', text)  # relative links only


def test_report_notes_what_it_cannot_find(
    run: tuple[SimulatedDataset, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = run
    monkeypatch.chdir(tmp_path)  # micrographs not reachable from here
    page = write_report(out, max_micrographs=1)
    text = page.read_text()
    assert "Notes" in text and "not found" in text
    assert not any(p.name.startswith("micrograph_") for p in _images_of(page))
    assert all(p.is_file() for p in _images_of(page))
    with pytest.raises(InputError, match=r"particles\.star"):
        write_report(tmp_path)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    require(found, "chromium not installed (Debian: apt-get install chromium)")
    return str(found)


def test_report_renders_in_headless_chromium(
    run: tuple[SimulatedDataset, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = _chromium()
    ds, out = run
    monkeypatch.chdir(ds.out_dir)
    page = write_report(out, n_random=8, n_worst=4, max_micrographs=1)
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
             "--window-size=1200,3000", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round()
    assert pixels.std() > 0
    blue = (np.abs(pixels - HISTOGRAM_BLUE).max(axis=-1) <= 3).sum()
    assert blue > 500, "histogram PNG not rendered"


def test_report_command(run: tuple[SimulatedDataset, Path], tmp_path: Path) -> None:
    from cryoextract.cli.qc import report_command

    ds, out = run
    app = typer.Typer()
    app.command("report")(report_command)
    app.command("other")(lambda: None)
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(out), "--micrograph-dir", str(ds.out_dir),
                                 "--particles", "4", "--worst", "2", "--micrographs", "1"])
    assert result.exit_code == 0, result.output
    assert "index.html" in result.output
    assert (out / "report" / "micrograph_1.png").is_file()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "particles.star" in result.output
