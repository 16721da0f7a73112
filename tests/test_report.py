"""``cryoextract report``: the page of a real (small, simulated) extraction.

Every image the page references must exist, decode (Pillow, independently of the
report's own encoder) and not be blank; each SVG histogram's bars must give back
``numpy.histogram``'s counts of its column; the picks drawn on a micrograph and the
labels of a gallery must match the tables; and a headless browser (Debian's
``chromium``) must render the page with its images loaded: the screenshot shows
matplotlib's default histogram blue (only the SVG histograms hold it), the green of the
kept picks and the grey of a micrograph thumbnail (only its PNG holds it). Writing the
report never imports matplotlib.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from conftest import simulated_extraction
from cryoextract import ExtractParams, extract
from cryoextract.errors import InputError
from cryoextract.io.mrc_micrograph import open_micrograph
from cryoextract.io.star import read_star, write_star
from cryoextract.ops import descriptors as D
from cryoextract.pipeline.extraction.thumbnail_gate import ThumbnailShortlist
from cryoextract.report import micrograph_thumbnail, write_report
from cryoextract.report.histogram import histogram_bins
from cryoextract.sim.simulate import SimulatedDataset, simulate_dataset
from prereq import require

HISTOGRAM_BLUE = np.array([31, 119, 180])  # matplotlib "C0" (#1f77b4)
KEPT_GREEN = np.array([44, 160, 44])  # #2ca02c


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedDataset, Path]:
    """A small extraction with edge drops, and descriptor columns added as extract would."""
    ds, out = simulated_extraction(
        tmp_path_factory.mktemp("report"), n_micrographs=3, shape_yx=(512, 512),
        particles_per_micrograph=16, particle_diameter_angstrom=100.0, seed=5)
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
    """Every image the page links: ``<img src>`` and inline SVG ``<image href>``."""
    found = re.findall(r'<img src="([^"]+)"|<image href="([^"]+)"', page.read_text())
    return [page.parent / (img or image) for img, image in found]


def _decode(path: Path) -> np.ndarray:
    """Pixels of a PNG by Pillow (not the report's code), uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L") if image.mode not in ("L", "RGB") else image)


def _particles(out: Path) -> pd.DataFrame:
    return read_star(out / "particles.star")["particles"]


def test_report_images_exist_and_are_not_blank(
    run: tuple[SimulatedDataset, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, out = run
    monkeypatch.chdir(ds.out_dir)  # micrograph names are relative to the data set
    page = write_report(out, n_random=20, n_worst=8, max_micrographs=2)
    assert page == out / "report" / "index.html"
    images = _images_of(page)
    names = {p.name for p in images}
    assert {"micrograph_1.png", "micrograph_2.png", "gallery_random.png",
            "gallery_worst_ceScoreByVar.png", "gallery_worst_ceGiniPatch.png",
            "gallery_worst_ceEdgeDistanceAngstrom.png"} <= names
    assert "gallery_worst_ceScoreByGini.png" not in names  # per micrograph: histogram only
    for image in images:
        assert image.is_file(), image
        pixels = _decode(image)
        assert pixels.size > 1000 and pixels.std() > 10, image
        assert len(np.unique(pixels)) > 50, image  # a picture, not a few flat levels
        assert np.array_equal(matplotlib.image.imread(image).shape[:2], pixels.shape[:2])
    text = page.read_text()
    assert "particles kept" in text and "box leaves micrograph" in text
    assert "Notes" not in text  # everything was found
    assert not re.search(r'(src|href)="(/|file:|http)', text)  # relative links only
    # the page states how long it took (the extraction benchmark reads it)
    assert re.search(r"written [^<]* in [0-9]+\.[0-9]{2} s</p>", text)
    assert "<script" not in text.lower()
    columns = [c for c in _particles(out).columns if c.startswith("ce")]
    assert len(columns) >= 7 and text.count('<svg class="hist"') == len(columns) + 1


def test_histograms_give_back_the_counts_of_their_columns(
    run: tuple[SimulatedDataset, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, out = run
    monkeypatch.chdir(ds.out_dir)
    text = write_report(out, n_random=4, n_worst=2, max_micrographs=1).read_text()
    particles = _particles(out)
    expected = {name: particles[name].to_numpy(np.float64) for name in particles.columns
                if name.startswith("ce") and name != D.SCORE_BY_GINI}
    expected[f"{D.SCORE_BY_GINI} (per micrograph)"] = \
        particles.groupby("rlnMicrographName")[D.SCORE_BY_GINI].first().to_numpy(np.float64)
    expected["particles per micrograph"] = \
        particles["rlnMicrographName"].value_counts().to_numpy(np.float64)
    plots = re.findall(r'<svg class="hist".*?</svg>', text, re.S)
    titles = [html.unescape(re.search(r"<text[^>]*>([^<]*)</text>", p).group(1)) for p in plots]
    assert sorted(titles) == sorted(expected)
    for title, plot in zip(titles, plots, strict=True):
        values = expected[title][np.isfinite(expected[title])]
        counts, edges = np.histogram(values, bins=histogram_bins(values.size))
        assert 'fill="#1f77b4"' in plot and ">count</text>" in plot
        bars = np.array(re.findall(r'<rect class="bar" x="([^"]+)" y="([^"]+)" '
                                   r'width="([^"]+)" height="([^"]+)"/>', plot), float)
        assert len(bars) == len(counts), title
        x, y, w, h = bars.T
        assert np.allclose(x[1:], x[:-1] + w[:-1], atol=0.01)  # side by side, in bin order
        assert np.allclose(y + h, y[0] + h[0], atol=0.01)  # on one baseline
        per_count = h.max() / counts.max()  # drawing units per particle
        assert np.array_equal(np.rint(h / per_count), counts), title
        # x tick labels sit where their values fall on the bins' scale
        ticks = re.findall(r'<text x="([^"]+)" y="[^"]+" text-anchor="middle">([^<]+)</text>',
                           plot)
        assert len(ticks) >= 2, title
        span = x[-1] + w[-1] - x[0]
        for position, label in ticks:
            value = edges[0] + (float(position) - x[0]) / span * (edges[-1] - edges[0])
            assert abs(value - float(label)) <= 0.01 * (edges[-1] - edges[0]), (title, label)
        # y tick labels are counts on the bars' scale
        y_ticks = np.array(re.findall(r'<text x="[^"]+" y="([^"]+)" text-anchor="end">(\d+)<',
                                      plot), float)
        assert len(y_ticks) >= 2, title
        assert np.allclose(-np.diff(y_ticks[:, 0]) / per_count, np.diff(y_ticks[:, 1]),
                           rtol=0.01)


def test_micrographs_show_every_pick(
    run: tuple[SimulatedDataset, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, out = run
    monkeypatch.chdir(ds.out_dir)
    text = write_report(out, n_random=4, n_worst=2, max_micrographs=3).read_text()
    particles = _particles(out)
    rejected = pd.read_csv(out / "rejected_particles.tsv", sep="\t")
    box = ds.box_px
    shown = re.findall(r"<h3>([^<]*): (\d+) kept, (\d+) dropped</h3>\n(<svg.*?</svg>)", text,
                       re.S)
    assert len(shown) == 3
    drops = [int(d) for _, _, d, _ in shown]
    assert drops == sorted(drops, reverse=True) and sum(drops) == len(rejected) > 0
    for i, (name, n_kept, n_dropped, svg) in enumerate(shown, start=1):
        name = html.unescape(name)
        mine = particles[particles["rlnMicrographName"] == name]
        dropped = rejected[rejected["rlnMicrographName"] == name]
        assert (int(n_kept), int(n_dropped)) == (len(mine), len(dropped))
        assert f'<image href="micrograph_{i}.png"' in svg
        boxes = re.search(r'<path class="boxes" d="([^"]+)"[^>]*stroke="#2ca02c"', svg).group(1)
        corners = np.array(re.findall(r"M([-\d.]+) ([-\d.]+)h([\d.]+)v([\d.]+)", boxes), float)
        assert len(corners) == len(mine)
        assert np.all(corners[:, 2:] == box)
        centres = corners[:, :2] + box / 2
        assert np.allclose(np.sort(centres, axis=0),
                           np.sort(mine[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(),
                                   axis=0), atol=0.06)
        assert f"kept ({len(mine)})" in svg
        if len(dropped):
            assert f"box leaves micrograph ({len(dropped)})" in svg
            crosses = re.search(r'<path class="picks" d="([^"]+)"[^>]*stroke="#d62728"', svg)
            assert crosses.group(1).count("M") == len(dropped)
        with open_micrograph(ds.out_dir / name) as (image, _):
            expected = micrograph_thumbnail(image).pixels
        assert np.array_equal(_decode(out / "report" / f"micrograph_{i}.png"), expected)


def test_report_uses_the_thumbnails_it_is_given(
    run: tuple[SimulatedDataset, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a job would: a thumbnail per micrograph, the shortlist keeps those to show."""
    ds, out = run
    monkeypatch.chdir(tmp_path)  # micrographs not reachable from here: no reading them
    kept = _particles(out)["rlnMicrographName"].value_counts()
    dropped = pd.read_csv(out / "rejected_particles.tsv", sep="\t")["rlnMicrographName"] \
        .value_counts()
    shortlist = ThumbnailShortlist(2)
    made = {}
    for name, path in zip(ds.micrograph_names, ds.micrograph_paths, strict=True):
        with open_micrograph(path) as (image, _):
            made[name] = micrograph_thumbnail(image[::-1])  # flipped: tells it from a re-read
        shortlist.offer(name, kept.get(name, 0), dropped.get(name, 0), made[name])
    assert len(shortlist.thumbnails) == 2
    page = write_report(out, thumbnails=shortlist.thumbnails, max_micrographs=2)
    text = page.read_text()
    assert "Notes" not in text
    names = [html.unescape(n) for n in re.findall(r"<h3>([^<]*): \d+ kept", text)]
    assert names == list(shortlist.thumbnails)  # the report shows what the job kept
    for i, name in enumerate(names, start=1):
        assert np.array_equal(_decode(out / "report" / f"micrograph_{i}.png"),
                              made[name].pixels)
    page = write_report(out, thumbnails=made, max_micrographs=3)  # more than shown: fine
    assert "Notes" not in page.read_text()


def test_worst_galleries_label_each_particle_with_its_value(
    run: tuple[SimulatedDataset, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, out = run
    monkeypatch.chdir(ds.out_dir)
    n_worst = 6
    text = write_report(out, n_random=10, n_worst=n_worst, max_micrographs=1).read_text()
    particles = _particles(out)
    for column, lowest in (("ceScoreByVar", False), ("ceEdgeDistanceAngstrom", True)):
        svg = re.search(rf'<svg [^>]*><image href="gallery_worst_{column}.png".*?</svg>', text,
                        re.S).group(0)
        values = np.sort(particles[column].dropna().to_numpy())
        worst = values[:n_worst] if lowest else values[::-1][:n_worst]
        assert re.findall(r'fill="yellow">([^<]+)</text>', svg) == [f"{v:.3g}" for v in worst]
        canvas = _decode(out / "report" / f"gallery_worst_{column}.png")
        tile = ds.box_px // -(-ds.box_px // 96)  # binned to at most 96 px
        assert canvas.shape == (tile + 4, n_worst * (tile + 2) + 2)
        assert (canvas[:2] == 255).all() and (canvas[:, :2] == 255).all()  # white gaps
    assert '<img src="gallery_random.png"' in text
    assert _decode(out / "report" / "gallery_random.png").shape[1] == 8 * (tile + 2) + 2


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


def test_writing_the_report_does_not_import_matplotlib(
    run: tuple[SimulatedDataset, Path]
) -> None:
    ds, out = run
    code = ("import sys\n"
            "import cryoextract.report\n"
            "assert 'matplotlib' not in sys.modules\n"
            "from cryoextract.report import write_report\n"
            f"write_report({str(out)!r}, micrograph_dirs=[{str(ds.out_dir)!r}])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    assert (out / "report" / "micrograph_1.png").is_file()


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
    assert blue > 500, "histogram SVG not rendered"
    green = (np.abs(pixels - KEPT_GREEN).max(axis=-1) <= 40).sum()
    assert green > 200, "kept picks not drawn"
    grey = (np.ptp(pixels, axis=-1) <= 2) & (pixels.mean(axis=-1) > 30) & \
        (pixels.mean(axis=-1) < 225)
    assert grey.sum() > 100_000, "micrograph thumbnail (PNG inside the SVG) not rendered"


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


def test_extraction_report_draws_the_workers_thumbnails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``extract(report=True)``: the workers' thumbnails reach the page; no micrograph is
    read again (reading one fails here), and what is drawn is each micrograph's own."""
    import cryoextract.report.page as page

    ds = simulate_dataset(tmp_path / "data", n_micrographs=6, shape_yx=(384, 384),
                          particles_per_micrograph=10, particle_diameter_angstrom=100.0,
                          seed=9)
    monkeypatch.chdir(ds.out_dir)

    def no_reading(path: object) -> None:
        raise AssertionError(f"the report read {path} again")

    monkeypatch.setattr(page, "open_micrograph", no_reading)
    out = tmp_path / "out"
    summary = extract("micrographs.star", out, ExtractParams(box_px=ds.box_px),
                      coords_dir="Picks", coords_suffix="_autopick.star", workers=2,
                      report=True)
    assert not [w for w in summary.warnings if "report" in w], summary.warnings
    index = out / "report" / "index.html"
    text = index.read_text()
    assert "Notes" not in text
    shown = re.findall(r"<h3>([^<:]+\.mrc): \d+ kept", text)
    assert len(shown) == 4, shown
    for i, name in enumerate(shown, start=1):
        with open_micrograph(ds.out_dir / html.unescape(name)) as (image, _):
            expected = micrograph_thumbnail(image).pixels
        drawn = _decode(out / "report" / f"micrograph_{i}.png")
        np.testing.assert_array_equal(drawn if drawn.ndim == 2 else drawn[..., 0], expected)
