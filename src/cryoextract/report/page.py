"""``OUT/report/index.html``: a static page about one extraction.

Histograms are inline SVG; micrograph thumbnails and particle galleries are PNGs
(:mod:`cryoextract.report.png`) under ``OUT/report``, linked relatively (``<img
src="gallery_random.png">`` or, with picks or labels drawn over them, an inline
``<svg>`` holding ``<image href="micrograph_1.png">``). The page has no script, so it
opens as a plain file in any browser and can be copied or zipped along with its folder.
Nothing here imports matplotlib.

The report is written into an extraction's folder, whose ``OUT/summary.json`` is the
extraction's own (and what the report shows): the report's summary is therefore
``OUT/report/summary.json`` (:func:`cryoextract.pipeline.frame.write_summary`), never
``OUT/summary.json``.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cryoextract.errors import CryoExtractError
from cryoextract.io.atomic import write_text_atomic
from cryoextract.io.mrc_micrograph import open_micrograph
from cryoextract.io.names import unique_components
from cryoextract.ops.thumbnail import Thumbnail, micrograph_thumbnail
from cryoextract.pipeline.frame import write_summary
from cryoextract.report import figures
from cryoextract.report.histogram import histogram_svg
from cryoextract.report.run import (
    Run,
    choose_micrographs,
    descriptor_columns,
    find_micrograph,
    picks_of,
    read_particle_images,
    read_run,
    tubes_of,
)

REPORT_DIR = "report"
#: the PNGs the report writes (a fresh report removes the last one's, no others)
_OUR_PNG = re.compile(r"(?:gallery_.+|micrograph_\d+)\.png")
#: descriptor columns whose worst values are the lowest (others: the highest)
WORST_IS_LOW = frozenset({"ceEdgeDistanceAngstrom", "ceBackgroundMean"})
#: descriptor columns with one value per micrograph (histogram over micrographs, no gallery)
PER_MICROGRAPH = frozenset({"ceScoreByGini"})
MAX_WARNINGS = 20
_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }
img, svg.figure { max-width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em 0; }
.hists { display: flex; flex-wrap: wrap; gap: 0.5em; }
.note { color: #a33; }
"""


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    micrograph_dirs: Sequence[str | os.PathLike[str]] = (),
    thumbnails: Mapping[str, Thumbnail] | None = None,
    n_random: int = 40,
    n_worst: int = 16,
    max_micrographs: int = 4,
    seed: int = 0,
) -> Path:
    """Write ``OUT/report/index.html`` and its PNGs for an extraction folder.

    Contents: the run summary (``summary.json``); histograms of every descriptor column
    (numeric columns named ``ce...``) and of particles per micrograph; thumbnails of a
    few micrographs with kept picks (``particles.star``) and dropped picks by reason
    (``rejected_particles.tsv``); a gallery of random particles and one of the worst
    particles by each per-particle descriptor (highest, or lowest for
    ``ceEdgeDistanceAngstrom`` and ``ceBackgroundMean``). Missing pieces are skipped
    with a note on the page.

    Parameters
    ----------
    out_dir : path-like
        Extraction output (``particles.star``, ``Particles/``, optional
        ``summary.json``, ``rejected_particles.tsv``).
    micrograph_dirs : sequence of path-like
        Extra folders where relative ``rlnMicrographName`` paths are looked up, after
        the working directory (absolute names are used as they are).
    thumbnails : mapping, optional
        ``rlnMicrographName`` to its :class:`Thumbnail` (from
        :func:`~cryoextract.ops.thumbnail.micrograph_thumbnail`, made by the job
        while it held the micrograph). A chosen micrograph found here is not read
        again; the others are read and made into thumbnails here.
    n_random, n_worst : int
        Particles in the random gallery and in each worst-by-descriptor gallery.
    max_micrographs : int
        Micrograph thumbnails (those with the most dropped picks first).
    seed : int
        Seed of the random gallery.

    Returns
    -------
    Path
        ``OUT/report/index.html``.

    Raises
    ------
    InputError
        No readable ``particles.star`` in ``out_dir``.
    """
    started = time.perf_counter()
    run = read_run(Path(out_dir))
    report_dir = run.out_dir / REPORT_DIR
    if report_dir.is_symlink():  # the report's own folder: never written through a link
        report_dir.unlink()
    report_dir.mkdir(parents=True, exist_ok=True)
    for stale in report_dir.glob("*.png"):  # ours only: a user's own picture stays
        if _OUR_PNG.fullmatch(stale.name):
            stale.unlink()
    sections = [
        _summary_section(run),
        _histogram_section(run),
        _micrograph_section(run, report_dir, micrograph_dirs, thumbnails or {},
                            max_micrographs),
        _gallery_section(run, report_dir, n_random, n_worst, seed),
        _notes_section(run),
    ]
    page = report_dir / "index.html"
    write_text_atomic(page, _page(run, sections, time.perf_counter() - started))
    inputs = [run.out_dir / name for name in ("particles.star", "summary.json",
                                              "rejected_particles.tsv")]
    write_summary(report_dir / "summary.json", "report",
                  inputs=[p for p in inputs if p.is_file()],
                  parameters={"micrograph_dirs": [str(d) for d in micrograph_dirs],
                              "n_random": n_random, "n_worst": n_worst,
                              "max_micrographs": max_micrographs, "seed": seed},
                  counts={"particles_in": len(run.particles),
                          "rejected_in": len(run.rejected),
                          "images_out": sum(1 for p in report_dir.glob("*.png")
                                            if _OUR_PNG.fullmatch(p.name))},
                  warnings=run.notes, outputs=[str(page)])
    return page


# --------------------------------------------------------------------------- sections


def _summary_section(run: Run) -> str:
    rows = []
    for key, value in run.summary.items():
        if key == "warnings":
            continue
        rows.append(f"<tr><th>{_e(key.replace('_', ' '))}</th><td>{_value(value)}</td></tr>")
    n_mics = run.particles["rlnMicrographName"].nunique() \
        if "rlnMicrographName" in run.particles.columns else 0
    rows.append(f"<tr><th>particles in particles.star</th><td>{len(run.particles)}</td></tr>")
    rows.append(f"<tr><th>micrographs with particles</th><td>{n_mics}</td></tr>")
    text = f"<h2>Run summary</h2>\n<table>\n{''.join(rows)}\n</table>\n"
    warnings = run.summary.get("warnings") or []
    if isinstance(warnings, list) and warnings:
        items = "".join(f"<li>{_e(str(w))}</li>" for w in warnings[:MAX_WARNINGS])
        more = len(warnings) - MAX_WARNINGS
        extra = f"<li>... and {more} more (summary.json)</li>" if more > 0 else ""
        text += f"<h3>Warnings ({len(warnings)})</h3>\n<ul>{items}{extra}</ul>\n"
    return text


def _value(value: object) -> str:
    if isinstance(value, dict):
        if not value:
            return "none"
        inner = "".join(f"<tr><td>{_e(str(k))}</td><td>{_e(str(v))}</td></tr>"
                        for k, v in value.items())
        return f"<table>{inner}</table>"
    if isinstance(value, list):
        return "none" if not value else "<br>".join(_e(str(v)) for v in value)
    return _e(str(value))


def _histogram_section(run: Run) -> str:
    particles = run.particles
    columns: dict[str, np.ndarray] = {}
    has_mics = "rlnMicrographName" in particles.columns
    for name in descriptor_columns(particles):
        if name in PER_MICROGRAPH and has_mics:
            per_mic = particles.groupby("rlnMicrographName")[name].first()
            columns[f"{name} (per micrograph)"] = per_mic.to_numpy(np.float64)
        else:
            columns[name] = particles[name].to_numpy(np.float64)
    if has_mics:
        counts = particles["rlnMicrographName"].value_counts()
        columns["particles per micrograph"] = counts.to_numpy(np.float64)
    if not columns:
        run.notes.append("no descriptor columns and no micrograph names: no histograms")
        return "<h2>Histograms</h2>\n<p>Nothing to plot.</p>\n"
    plots = "\n".join(histogram_svg(name, values) for name, values in columns.items())
    return f'<h2>Histograms</h2>\n<div class="hists">\n{plots}\n</div>\n'


def _micrograph_section(
    run: Run, report_dir: Path, micrograph_dirs: Sequence[str | os.PathLike[str]],
    thumbnails: Mapping[str, Thumbnail], max_micrographs: int,
) -> str:
    text = "<h2>Micrographs</h2>\n"
    chosen = choose_micrographs(run, max_micrographs)
    if not chosen:
        return text + "<p>No micrograph names in the particles or rejected picks.</p>\n"
    box = run.summary.get("box_px")
    box_px = int(box) if isinstance(box, int | float) and box > 0 else None
    dirs = [Path.cwd(), *(Path(d) for d in micrograph_dirs)]
    for i, name in enumerate(chosen, start=1):
        thumbnail = thumbnails[name] if name in thumbnails else _read_thumbnail(run, name, dirs)
        if thumbnail is None:
            continue
        kept, dropped = picks_of(run, name)
        figure = figures.micrograph_overlay(thumbnail, kept, dropped, box_px,
                                            report_dir / f"micrograph_{i}.png",
                                            tubes=tubes_of(run, name))
        n_dropped = sum(len(v) for v in dropped.values())
        text += f"<h3>{_e(name)}: {len(kept)} kept, {n_dropped} dropped</h3>\n{figure}\n"
    return text


def _read_thumbnail(run: Run, name: str, dirs: Sequence[Path]) -> Thumbnail | None:
    """The thumbnail of a micrograph read from disk; None (with a note) when unreadable."""
    path = find_micrograph(name, dirs)
    if path is None:
        run.notes.append(f"micrograph {name} not found (looked in "
                         f"{', '.join(str(d) for d in dirs)}): no thumbnail")
        return None
    try:
        with open_micrograph(path) as (image, _):
            return micrograph_thumbnail(image)
    except CryoExtractError as exc:
        run.notes.append(f"micrograph {name}: {exc}")
        return None


def _gallery_section(run: Run, report_dir: Path, n_random: int, n_worst: int, seed: int) -> str:
    particles = run.particles
    text = "<h2>Particles</h2>\n"
    if not len(particles):
        return text + "<p>No particles.</p>\n"
    rng = np.random.default_rng(seed)
    galleries: list[tuple[str, str, np.ndarray, list[str]]] = []
    count = min(n_random, len(particles))
    random_rows = np.sort(rng.choice(len(particles), size=count, replace=False))
    galleries.append(("gallery_random.png", f"{count} random particles", random_rows,
                      [""] * count))
    columns = [c for c in descriptor_columns(particles) if c not in PER_MICROGRAPH]
    # file names from column names: one safe component each, unique in the folder
    stems = unique_components(["gallery_random", *(f"gallery_worst_{c}" for c in columns)])
    for name, stem in zip(columns, stems[1:], strict=True):
        values = particles[name].to_numpy(np.float64)
        finite = np.flatnonzero(np.isfinite(values))
        if not len(finite):
            continue
        low = name in WORST_IS_LOW
        order = finite[np.argsort(values[finite] if low else -values[finite], kind="stable")]
        rows = order[: min(n_worst, len(order))]
        which = "lowest" if low else "highest"
        galleries.append((f"{stem}.png", f"{len(rows)} particles with the "
                          f"{which} {name}", rows, [f"{values[r]:.3g}" for r in rows]))
    images = read_particle_images(run, np.unique(np.concatenate([g[2] for g in galleries])))
    for file_name, title, rows, labels in galleries:
        present = [i for i, r in enumerate(rows) if int(r) in images]
        if not present:
            run.notes.append(f"{title}: images not readable")
            continue
        stack = np.stack([images[int(rows[i])] for i in present])
        figure = figures.gallery(stack, [labels[i] for i in present], report_dir / file_name)
        text += f"<h3>{_e(title)}</h3>\n{figure}\n"
    return text


def _notes_section(run: Run) -> str:
    if not run.notes:
        return ""
    items = "".join(f'<li class="note">{_e(n)}</li>' for n in run.notes)
    return f"<h2>Notes</h2>\n<ul>{items}</ul>\n"


# --------------------------------------------------------------------------- page


def _page(run: Run, sections: list[str], seconds: float) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>cryoextract report: {_e(run.out_dir.name)}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>cryoextract report</h1>\n<p>{_e(str(run.out_dir.resolve()))}, "
        f"written {when} in {seconds:.2f} s</p>\n" + "".join(sections) + "</body>\n</html>\n"
    )


def _e(text: str) -> str:
    return html.escape(text, quote=True)


