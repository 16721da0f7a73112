"""What the report reads from an extraction folder, and the questions it asks of it.

``particles.star`` (through :mod:`cryoextract.io.star`), ``summary.json`` and
``rejected_particles.tsv`` are read once; the columns the report needs per micrograph
(names, coordinates, reasons) are converted once, so that choosing micrographs and
finding their picks are array operations, not loops over rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.images import locate_images, read_images
from cryoextract.io.star import find_block, read_star

__all__ = ["Run", "choose_micrographs", "descriptor_columns", "find_micrograph", "picks_of",
           "read_particle_images", "read_run"]

_XY = ["rlnCoordinateX", "rlnCoordinateY"]


@dataclass
class Run:
    """What the report reads from an extraction folder."""

    out_dir: Path
    particles: pd.DataFrame
    summary: dict[str, object]
    rejected: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @cached_property
    def kept_names(self) -> pd.Series:
        """``(n_particles,)`` micrograph name of each particle (str; empty without names)."""
        if "rlnMicrographName" not in self.particles.columns:
            return pd.Series([], dtype=object)
        return self.particles["rlnMicrographName"].astype(str)

    @cached_property
    def kept_xy(self) -> np.ndarray:
        """``(n_particles, 2)`` pick coordinates ``(x, y)`` of the particles, float64."""
        if not all(c in self.particles.columns for c in _XY):
            return np.full((len(self.particles), 2), np.nan)
        return self.particles[_XY].to_numpy(np.float64)

    @cached_property
    def dropped_names(self) -> pd.Series:
        """``(n_rejected,)`` micrograph name of each dropped pick (str)."""
        if not len(self.rejected) or "rlnMicrographName" not in self.rejected.columns:
            return pd.Series([], dtype=object)
        return self.rejected["rlnMicrographName"].astype(str)

    @cached_property
    def dropped_xy(self) -> np.ndarray:
        """``(n_rejected, 2)`` coordinates ``(x, y)`` of the dropped picks (NaN if absent)."""
        if not all(c in self.rejected.columns for c in _XY):
            return np.full((len(self.rejected), 2), np.nan)
        return self.rejected[_XY].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)

    @cached_property
    def dropped_reasons(self) -> np.ndarray:
        """``(n_rejected,)`` why each pick was dropped (str)."""
        if "reason" not in self.rejected.columns:
            return np.full(len(self.rejected), "dropped", dtype=object)
        return self.rejected["reason"].astype(str).to_numpy()


def read_run(out_dir: Path) -> Run:
    """Read an extraction folder; what is missing or unreadable besides the STAR is noted.

    Raises
    ------
    InputError
        No readable ``particles.star`` (with an ``rlnImageName`` column) in ``out_dir``.
    """
    star = out_dir / "particles.star"
    if not star.is_file():
        raise InputError("no particles.star here (is this an extraction folder?)", out_dir)
    particles = find_block(read_star(star), star, ("rlnImageName",), preferred=("particles",))
    run = Run(out_dir, particles.reset_index(drop=True), {}, _empty_rejected())
    summary = out_dir / "summary.json"
    if summary.is_file():
        try:
            loaded = json.loads(summary.read_text())
        except (OSError, ValueError) as exc:
            run.notes.append(f"{summary}: unreadable ({exc})")
        else:
            if isinstance(loaded, dict):
                run.summary = loaded
            else:  # JSON, but not a run's summary
                run.notes.append(f"{summary}: not a run summary (a JSON object)")
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


#: ``ce`` columns that trace sub-particles to their source (pipeline/extraction/subparticles.py)
NOT_DESCRIPTORS = frozenset({"ceSourceParticle", "ceSymmetryCopy", "ceSubparticle"})


def descriptor_columns(particles: pd.DataFrame) -> list[str]:
    """Numeric columns named ``ce...`` (cryoextract descriptors), in table order."""
    return [c for c in particles.columns
            if str(c).startswith("ce") and c not in NOT_DESCRIPTORS
            and pd.api.types.is_numeric_dtype(particles[c])]


def choose_micrographs(run: Run, count: int) -> list[str]:
    """Micrograph names, most dropped picks first, then most kept, then by name."""
    counts = pd.DataFrame({"dropped": run.dropped_names.value_counts(),
                           "kept": run.kept_names.value_counts()}).fillna(0)
    counts["name"] = counts.index.astype(str)
    counts = counts.sort_values(["dropped", "kept", "name"], ascending=[False, False, True],
                                kind="stable")
    return counts["name"].head(max(0, count)).tolist()


def find_micrograph(name: str, dirs: Sequence[Path]) -> Path | None:
    """The micrograph file of ``name``: itself when absolute, else the first ``dir / name``."""
    if os.path.isabs(name):
        return Path(name) if os.path.isfile(name) else None
    for base in dirs:
        candidate = base / name
        if candidate.is_file():
            return candidate
    return None


def picks_of(run: Run, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(k, 2)`` kept and, per reason (sorted), ``(m, 2)`` dropped ``(x, y)`` of a micrograph."""
    kept = run.kept_xy[(run.kept_names == name).to_numpy()] if len(run.kept_names) \
        else np.zeros((0, 2))
    if not len(run.dropped_names):
        return kept, {}
    mine = (run.dropped_names == name).to_numpy()
    reasons, xy = run.dropped_reasons[mine], run.dropped_xy[mine]
    return kept, {str(r): xy[reasons == r] for r in np.unique(reasons)}


def tubes_of(run: Run, name: str) -> list[np.ndarray]:
    """Helical segments of a micrograph: one ``(k, 2)`` ``(x, y)`` polyline per tube, its
    kept segments in file order (none without ``rlnHelicalTubeID``)."""
    if "rlnHelicalTubeID" not in run.particles.columns or not len(run.kept_names):
        return []
    mine = (run.kept_names == name).to_numpy()
    tubes = run.particles.loc[mine, "rlnHelicalTubeID"].to_numpy()
    xy = run.kept_xy[mine]
    return [xy[tubes == tube] for tube in pd.unique(tubes)]


def read_particle_images(run: Run, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Images of the given particle rows only.

    Stacks are looked up relative to the working directory, to the folder of
    ``particles.star``, and to the directory the run named them from (its summary's
    ``paths_relative_to``), so the report finds them from anywhere.

    Parameters
    ----------
    rows : np.ndarray
        ``(k,)`` row numbers in ``run.particles``, unique.

    Returns
    -------
    dict
        Row number to its ``(h, w)`` float32 image; unreadable rows are left out (noted).
    """
    subset = run.particles.iloc[rows].reset_index(drop=True)
    bases = [Path.cwd(), run.out_dir]
    recorded = run.summary.get("paths_relative_to")
    if isinstance(recorded, str) and recorded:
        bases.append(Path(recorded))
    locations = locate_images(subset["rlnImageName"], bases)
    bad = [d for d in locations.detail if d]
    if bad:
        run.notes.append(f"{len(bad)} particle image(s) unreadable, e.g. {bad[0]}")
    images: dict[int, np.ndarray] = {}
    for positions, batch in read_images(subset, locations=locations):
        for position, image in zip(positions, batch, strict=True):
            images[int(rows[position])] = np.asarray(image, dtype=np.float32)
    return images
