"""``cryoextract subtract --revert``: the original particles of a subtraction back, with
the origins and coordinates they had before re-centring (docs/conventions.md, "Particle
subtraction").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.images import locate_images
from cryoextract.io.particles import base_dirs
from cryoextract.io.paths import PathNamer, PathStyle, rebase_found_names
from cryoextract.io.star import find_block, read_star, write_star
from cryoextract.pipeline.frame import check_output_free, claim_output
from cryoextract.pipeline.stacks.subtract_inputs import ORIGINAL_COLUMNS, SCALE_COLUMN


@dataclass
class RevertSummary:
    """What :func:`revert_subtraction` did."""

    particles_star: str
    particles: int = 0
    origins_restored: int = 0
    coordinates_restored: int = 0
    image_size_px: dict[str, int] = field(default_factory=dict)
    originals_missing: int = 0
    warnings: list[str] = field(default_factory=list)


def revert_subtraction(
    star: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    base_dir: str | os.PathLike[str] | None = None,
    path_style: PathStyle | str = PathStyle.CWD,
) -> RevertSummary:
    """Give the original particles of a subtraction back, with their origins.

    ``rlnImageName`` and ``rlnImageOriginalName`` are swapped (as
    ``relion_particle_subtract --revert``), and unlike RELION (relion#690) the origins and
    coordinates the particles had before recentring are restored from the
    ``cryoextractOriginal*`` columns; ``rlnImageSize`` becomes the original images' size
    (relion#531). Every other column (e.g. classes, poses refined since) is kept.

    Parameters
    ----------
    star : path-like
        A particles STAR written by :func:`subtract_particles` (possibly selected or
        refined since: RELION 3.1 keeps the extra columns).
    out_dir : path-like
        Gets ``particles.star``.
    overwrite : bool
        Use a folder that is not empty (replacing its ``particles.star``, never ``star``).
    base_dir : path-like, optional
        Where relative original image names are looked up (default: the working
        directory, then the STAR's directory), to read their size.
    path_style : PathStyle or str
        How the new STAR names both images (docs/conventions.md, "Paths"); a name whose
        stack is not found is kept as written.

    Returns
    -------
    RevertSummary
    """
    path = Path(star)
    tables = read_star(path)
    particles = find_block(tables, path, ("rlnImageName",), preferred=("particles",)).copy()
    if "rlnImageOriginalName" not in particles.columns:
        raise InputError("no rlnImageOriginalName column: not a subtracted particles STAR", path)
    optics = tables.get("optics")
    out = Path(out_dir)
    check_output_free(out, overwrite)  # a folder in use first, then what is usable
    target = out / "particles.star"
    summary = RevertSummary(particles_star=str(target), particles=len(particles))
    dirs = base_dirs(path, base_dir)
    namer = PathNamer.for_star(target, PathStyle(path_style))
    current = rebase_found_names(particles["rlnImageName"].astype(str), dirs, namer)
    particles["rlnImageName"] = rebase_found_names(
        particles["rlnImageOriginalName"].astype(str), dirs, namer)
    particles["rlnImageOriginalName"] = current
    for column, keep in ORIGINAL_COLUMNS.items():
        if keep in particles.columns:
            values = pd.to_numeric(particles[keep], errors="coerce")
            if column.startswith("rlnOrigin"):
                summary.origins_restored = int(values.notna().sum())
            else:
                summary.coordinates_restored = int(values.notna().sum())
            particles[column] = values.where(values.notna(), particles.get(column))
    if not summary.origins_restored:
        summary.warnings.append("no cryoextractOriginalOrigin* columns: origins kept as they "
                                "are (they fit the originals only if there was no recentring)")
    particles = particles.drop(columns=[c for c in (*ORIGINAL_COLUMNS.values(), SCALE_COLUMN)
                                        if c in particles.columns])
    blocks = {"particles": particles}
    if optics is not None and optics is not particles:
        blocks = {"optics": _reverted_optics(optics, particles, target, base_dir, summary,
                                             path), **blocks}
    with claim_output(out, overwrite=overwrite, outputs=[target], inputs=[path]):
        write_star(target, blocks)
    return summary


def _reverted_optics(
    optics: pd.DataFrame, particles: pd.DataFrame, star: Path,
    base_dir: str | os.PathLike[str] | None, summary: RevertSummary, source: Path,
) -> pd.DataFrame:
    """Optics with ``rlnImageSize`` of each group's first readable original image
    (names as ``star``, the STAR being written, gives them). InputError naming
    ``source`` when no original image is found: nothing usable would be written."""
    dirs = base_dirs(star, base_dir)
    locations = locate_images(particles["rlnImageName"].astype(str), dirs)
    summary.originals_missing = int((~locations.ok).sum())
    if summary.originals_missing:
        first = locations.detail[int(np.argmin(locations.ok))]
        if summary.originals_missing == len(particles):
            raise InputError(f"none of the {len(particles)} original images can be found "
                             f"(first: {first})", source)
        summary.warnings.append(f"{summary.originals_missing} original images not found "
                                f"(first: {first})")
    optics = optics.copy()
    groups = (particles["rlnOpticsGroup"].astype(int).to_numpy()
              if "rlnOpticsGroup" in particles.columns else np.ones(len(particles), int))
    for index, group in enumerate(optics["rlnOpticsGroup"].astype(int)):
        rows = np.flatnonzero((groups == group) & locations.ok)
        name = str(optics["rlnOpticsGroupName"].iloc[index]) if (
            "rlnOpticsGroupName" in optics.columns) else f"opticsGroup{group}"
        if not len(rows):
            summary.warnings.append(f"optics group {name}: size of the originals unknown, "
                                    "rlnImageSize kept")
            continue
        size = locations.shape_of(int(rows[0]))[1]
        optics.loc[optics.index[index], "rlnImageSize"] = size
        summary.image_size_px[name] = int(size)
    return optics
