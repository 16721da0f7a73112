"""``OUT/report/index.html``: a static page of PNGs about one extraction.

The page links its images relatively (``<img src="histograms.png">``) and has no
script, so it opens as a plain file in any browser and can be copied or zipped along
with its folder.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import CryoExtractError, InputError
from cryoextract.io.atomic import write_text_atomic
from cryoextract.io.images import locate_images, read_images
from cryoextract.io.mrc import open_micrograph
from cryoextract.io.star import find_block, read_star
from cryoextract.report import figures

REPORT_DIR = "report"
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
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em 0; }
.note { color: #a33; }
"""


@dataclass
class _Run:
    """What the report reads from an extraction folder."""

    out_dir: Path
    particles: pd.DataFrame
    summary: dict[str, object]
    rejected: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    micrograph_dirs: Sequence[str | os.PathLike[str]] = (),
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
    run = _read_run(Path(out_dir))
    report_dir = run.out_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    for stale in report_dir.glob("*.png"):
        stale.unlink()
    sections = [
        _summary_section(run),
        _histogram_section(run, report_dir),
        _micrograph_section(run, report_dir, micrograph_dirs, max_micrographs),
        _gallery_section(run, report_dir, n_random, n_worst, seed),
        _notes_section(run),
    ]
    page = report_dir / "index.html"
    write_text_atomic(page, _page(run, sections))
    return page


# --------------------------------------------------------------------------- input


def _read_run(out_dir: Path) -> _Run:
    star = out_dir / "particles.star"
    if not star.is_file():
        raise InputError("no particles.star here (is this an extraction folder?)", out_dir)
    particles = find_block(read_star(star), star, ("rlnImageName",), preferred=("particles",))
    run = _Run(out_dir, particles.reset_index(drop=True), {}, _empty_rejected())
    summary = out_dir / "summary.json"
    if summary.is_file():
        try:
            run.summary = json.loads(summary.read_text())
        except (OSError, ValueError) as exc:
            run.notes.append(f"{summary}: unreadable ({exc})")
    else:
        run.notes.append(f"{summary} not found: no run summary")
    rejected = out_dir / "rejected_particles.tsv"
    if rejected.is_file():
        try:
            run.rejected = pd.read_csv(rejected, sep="\t")
        except (OSError, ValueError) as exc:
            run.notes.append(f"{rejected}: unreadable ({exc})")
    return run


def _empty_rejected() -> pd.DataFrame:
    return pd.DataFrame({"rlnMicrographName": [], "rlnCoordinateX": [], "rlnCoordinateY": [],
                         "reason": []})


def descriptor_columns(particles: pd.DataFrame) -> list[str]:
    """Numeric columns named ``ce...`` (cryoextract descriptors), in table order."""
    return [c for c in particles.columns
            if str(c).startswith("ce") and pd.api.types.is_numeric_dtype(particles[c])]


# --------------------------------------------------------------------------- sections


def _summary_section(run: _Run) -> str:
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


def _histogram_section(run: _Run, report_dir: Path) -> str:
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
    figures.histograms(columns, report_dir / "histograms.png")
    return ('<h2>Histograms</h2>\n<img src="histograms.png" '
            'alt="histograms of the descriptors and of particles per micrograph">\n')


def _micrograph_section(
    run: _Run, report_dir: Path, micrograph_dirs: Sequence[str | os.PathLike[str]],
    max_micrographs: int,
) -> str:
    text = "<h2>Micrographs</h2>\n"
    chosen = _choose_micrographs(run, max_micrographs)
    if not chosen:
        return text + "<p>No micrograph names in the particles or rejected picks.</p>\n"
    box = run.summary.get("box_px")
    box_px = int(box) if isinstance(box, int | float) and box > 0 else None
    dirs = [Path.cwd(), *(Path(d) for d in micrograph_dirs)]
    for i, name in enumerate(chosen, start=1):
        path = _find_micrograph(name, dirs)
        if path is None:
            run.notes.append(f"micrograph {name} not found (looked in "
                             f"{', '.join(str(d) for d in dirs)}): no thumbnail")
            continue
        try:
            with open_micrograph(path) as (image, _):
                kept, dropped = _picks_of(run, name)
                figures.micrograph_overlay(
                    image, kept, dropped, box_px,
                    f"{name}: {len(kept)} kept, {sum(len(v) for v in dropped.values())} dropped",
                    report_dir / f"micrograph_{i}.png")
        except CryoExtractError as exc:
            run.notes.append(f"micrograph {name}: {exc}")
            continue
        text += f'<h3>{_e(name)}</h3>\n<img src="micrograph_{i}.png" alt="{_e(name)}">\n'
    return text


def _choose_micrographs(run: _Run, count: int) -> list[str]:
    """Micrograph names, most dropped picks first, then most kept, then by name."""
    kept = run.particles["rlnMicrographName"].astype(str).value_counts() \
        if "rlnMicrographName" in run.particles.columns else pd.Series(dtype=np.int64)
    dropped = run.rejected["rlnMicrographName"].astype(str).value_counts() \
        if len(run.rejected) else pd.Series(dtype=np.int64)
    names = sorted(set(kept.index) | set(dropped.index),
                   key=lambda n: (-int(dropped.get(n, 0)), -int(kept.get(n, 0)), n))
    return names[: max(0, count)]


def _find_micrograph(name: str, dirs: Sequence[Path]) -> Path | None:
    if os.path.isabs(name):
        return Path(name) if os.path.isfile(name) else None
    for base in dirs:
        candidate = base / name
        if candidate.is_file():
            return candidate
    return None


def _picks_of(run: _Run, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    xy = ["rlnCoordinateX", "rlnCoordinateY"]
    particles = run.particles
    mine = particles[particles["rlnMicrographName"].astype(str) == name] \
        if "rlnMicrographName" in particles.columns else particles.iloc[:0]
    kept = mine[xy].to_numpy(np.float64) if len(mine) else np.zeros((0, 2))
    rejected = run.rejected
    rejected = rejected[rejected["rlnMicrographName"].astype(str) == name]
    dropped = {str(reason): group[xy].to_numpy(np.float64)
               for reason, group in rejected.groupby("reason", sort=True)}
    return kept, dropped


def _gallery_section(run: _Run, report_dir: Path, n_random: int, n_worst: int, seed: int) -> str:
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
    for name in descriptor_columns(particles):
        if name in PER_MICROGRAPH:
            continue
        values = particles[name].to_numpy(np.float64)
        finite = np.flatnonzero(np.isfinite(values))
        if not len(finite):
            continue
        low = name in WORST_IS_LOW
        order = finite[np.argsort(values[finite] if low else -values[finite], kind="stable")]
        rows = order[: min(n_worst, len(order))]
        which = "lowest" if low else "highest"
        galleries.append((f"gallery_worst_{name}.png", f"{len(rows)} particles with the "
                          f"{which} {name}", rows, [f"{values[r]:.3g}" for r in rows]))
    images = _read_particle_images(run, np.unique(np.concatenate([g[2] for g in galleries])))
    for file_name, title, rows, labels in galleries:
        present = [i for i, r in enumerate(rows) if int(r) in images]
        if not present:
            run.notes.append(f"{title}: images not readable")
            continue
        stack = np.stack([images[int(rows[i])] for i in present])
        figures.gallery(stack, [labels[i] for i in present], title, report_dir / file_name)
        text += f'<h3>{_e(title)}</h3>\n<img src="{_e(file_name)}" alt="{_e(title)}">\n'
    return text


def _read_particle_images(run: _Run, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Images of the given particle rows (stacks beside particles.star, then the cwd)."""
    subset = run.particles.iloc[rows].reset_index(drop=True)
    locations = locate_images(subset["rlnImageName"], (run.out_dir, Path.cwd()))
    bad = [d for d in locations.detail if d]
    if bad:
        run.notes.append(f"{len(bad)} particle image(s) unreadable, e.g. {bad[0]}")
    images: dict[int, np.ndarray] = {}
    for positions, batch in read_images(subset, locations=locations):
        for position, image in zip(positions, batch, strict=True):
            images[int(rows[position])] = np.asarray(image, dtype=np.float32)
    return images


def _notes_section(run: _Run) -> str:
    if not run.notes:
        return ""
    items = "".join(f'<li class="note">{_e(n)}</li>' for n in run.notes)
    return f"<h2>Notes</h2>\n<ul>{items}</ul>\n"


# --------------------------------------------------------------------------- page


def _page(run: _Run, sections: list[str]) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>cryoextract report: {_e(run.out_dir.name)}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>cryoextract report</h1>\n<p>{_e(str(run.out_dir.resolve()))}, "
        f"written {when}</p>\n" + "".join(sections) + "</body>\n</html>\n"
    )


def _e(text: str) -> str:
    return html.escape(text, quote=True)


