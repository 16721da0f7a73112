"""Shared by the helical tests (test_helix.py, test_helix_formats.py): generated tubes,
the dataset RELION and we extract from, and our extraction run in it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryoextract.pipeline.extraction.extract import extract
from cryoextract.pipeline.extraction.params import ExtractParams, HelixParams
from relion_oracle import Dataset, Particles, coordinate_file, load_particles, make_dataset

BOX = 96
APIX = 1.5
BG_RADIUS = 30
NR_ASU, RISE = 3, 4.75  # step 9.5 px
DIAMETER = 100.0  # A: 66.7 px of the 96 px box
EMAN_WIDTH = 40  # box side written in the EMAN helix .box files


def tube_ends(seed: int = 1) -> pd.DataFrame:
    """Start/end rows of 9 tubes at random angles (some leaving the micrograph) plus a
    vertical and a horizontal one near the left and top edges; integer coordinates."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int]] = []
    for _ in range(9):
        angle = math.radians(rng.uniform(-180, 180))
        cx, cy, half = rng.integers(60, 700), rng.integers(60, 580), rng.uniform(80, 200)
        rows += [(int(cx - half * math.cos(angle)), int(cy - half * math.sin(angle))),
                 (int(cx + half * math.cos(angle)), int(cy + half * math.sin(angle)))]
    rows += [(50, 300), (50, 520), (200, 49), (600, 49)]
    return pd.DataFrame(rows, columns=["rlnCoordinateX", "rlnCoordinateY"]).astype(float)


def eman_tube_box(tubes: pd.DataFrame) -> str:
    """EMAN helix ``.box``: ``corner_x corner_y w h tag``, tags -1 (start) and -2 (end)."""
    lines = []
    for k, (x, y) in enumerate(tubes.to_numpy()):
        lines.append(f"{int(x) - EMAN_WIDTH // 2}\t{int(y) - EMAN_WIDTH // 2}\t"
                     f"{EMAN_WIDTH}\t{EMAN_WIDTH}\t{-1 - k % 2}")
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    ds: Dataset
    relion: Particles
    ours: Particles
    dropped: dict[str, int]


def tubes_dataset(root: Path, suffix: str) -> Dataset:
    ds = make_dataset(root, kinds=("float32",), shape=(640, 768), n_picks=1, n_edge=0,
                      box=BOX, apix=APIX, dust=0, coords_suffix=suffix)
    path = coordinate_file(ds, ds.micrographs[0].name)
    if suffix.endswith(".box"):
        path.write_text(eman_tube_box(tube_ends()))
    else:  # tube IDs of the user's and a pitch per tube, on the start rows (RELION's)
        tubes = tube_ends()
        tubes["rlnHelicalTubeID"] = 10 * (np.arange(len(tubes)) // 2) + 7
        tubes["rlnHelicalTubePitch"] = 300.0 + np.arange(len(tubes)) // 2
        starfile.write(tubes, path, overwrite=True)
    return ds


def extract_ours(ds: Dataset, out: str, helix: HelixParams, picks: str | None = None,
                 **params: object) -> tuple[Particles, dict[str, int]]:
    """Our extraction in the dataset folder (names relative to it, as RELION's), from the
    RELION coordinate files or from one ``picks`` file."""
    where = {"coords": picks} if picks else {"coords_dir": ds.coords_dir,
                                              "coords_suffix": ds.coords_suffix}
    cwd = os.getcwd()
    os.chdir(ds.root)
    try:
        summary = extract(ds.micrographs_star, out,
                          ExtractParams(**{"box_px": BOX, "invert": False, "descriptors": False,
                                           "helix": helix, **params}),  # type: ignore[arg-type]
                          workers=1, **where)  # type: ignore[arg-type]
    finally:
        os.chdir(cwd)
    return load_particles(ds.root / out / "particles.star", ds.root), summary.particles_dropped


def relion_helix_args(bimodal: bool) -> list[str]:
    return ["--helix", "--helical_tubes", "--helical_cut_into_segments", "--helical_nr_asu",
            str(NR_ASU), "--helical_rise", str(RISE), "--helical_outer_diameter", str(DIAMETER),
            *(["--helical_bimodal_angular_priors"] if bimodal else [])]


def positions(parts: pd.DataFrame) -> np.ndarray:
    """Where each segment is: coordinates less origins (docs/conventions.md, "Origins")."""
    xy = parts[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    if "rlnOriginXAngst" in parts.columns:
        xy = xy - parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64) / APIX
    return xy


def angle_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((np.asarray(a, np.float64) - np.asarray(b, np.float64) + 180) % 360 - 180)
