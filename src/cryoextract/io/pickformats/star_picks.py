"""RELION STAR picks: coordinate files (``data_``), particles STARs, writers.

Read the same way whoever wrote them: RELION 1.x-5 (``data_`` / ``data_images`` /
``data_particles``, optics first or last), Scipion and cryoSPARC exports (csparc2star).
The picks are the first block with ``rlnCoordinateX/Y`` (``data_particles`` first);
blocks of motion-correction STARs (``data_hot_pixels`` also holds ``rlnCoordinateX/Y``)
are never taken for picks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.pickformats.common import MICROGRAPH, X, Y, format_number
from cryoextract.io.star import find_block, read_star, write_star

_NOT_PICKS = ("hot_pixels", "local_shift", "global_shift", "local_motion_model", "general")
_PARTICLE_KEYS = (("rlnImageName",), (X, Y))


def read_star_picks(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Picks of a RELION coordinate or particles STAR (every column carried).

    Raises
    ------
    InputError
        No block with ``rlnCoordinateX/Y``, a motion-correction STAR, or a RELION
        coordinate-file list (``rlnMicrographCoordinates``).
    """
    tables = read_star(path)
    picks_blocks = {k: v for k, v in tables.items() if k not in _NOT_PICKS}
    if not any(X in t.columns and Y in t.columns for t in picks_blocks.values()):
        raise InputError(_why_not_picks(tables), path)
    return find_block(picks_blocks, path, (X, Y), preferred=("particles",)).copy()


def _why_not_picks(tables: dict[str, pd.DataFrame]) -> str:
    if "hot_pixels" in tables:
        return "a RELION motion-correction STAR (hot pixels), not picks"
    if any("rlnMicrographCoordinates" in t.columns for t in tables.values()):
        return ("a RELION list of coordinate files (rlnMicrographCoordinates): give the "
                "listed files or --coords-dir/--coords-suffix")
    return f"no data block with columns {X}, {Y}"


def read_particles_star(
    path: str | os.PathLike[str],
) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """Read a particles STAR keeping its optics and particles tables apart.

    Returns
    -------
    optics : pandas.DataFrame or None
        ``data_optics`` (one row per optics group), or None for RELION 1.x-3.0 files
        whose optics columns sit on every particle row.
    particles : pandas.DataFrame
        ``data_particles`` (RELION 3.1+) or the first block with ``rlnImageName`` or
        ``rlnCoordinateX/Y``; every column as in the file (``rlnImageName`` as text,
        6- or 8-digit indices alike).
    """
    tables = read_star(path)
    particles = None
    if "particles" in tables:
        particles = tables["particles"]
    else:
        for required in _PARTICLE_KEYS:
            candidates = {k: v for k, v in tables.items() if k not in ("optics", *_NOT_PICKS)}
            if any(all(c in t.columns for c in required) for t in candidates.values()):
                particles = find_block(candidates, path, required)
                break
    if particles is None:
        raise InputError("no particles block (data_particles, rlnImageName or "
                         "rlnCoordinateX/Y)", path)
    optics = tables.get("optics")
    if optics is not None:
        _check_optics(optics, particles, path)
    return (None if optics is None else optics.copy()), particles.copy()


def _check_optics(optics: pd.DataFrame, particles: pd.DataFrame, path: str | os.PathLike[str]
                  ) -> None:
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError("data_optics has no rlnOpticsGroup", path)
    if "rlnOpticsGroup" not in particles.columns:
        raise InputError("particles have no rlnOpticsGroup but the file has data_optics", path)
    unknown = set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
    if unknown:
        raise InputError(f"optics groups {sorted(unknown)} are not in data_optics", path)


def merge_optics(
    optics: pd.DataFrame | None, particles: pd.DataFrame, columns: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Particles with their optics group's columns added (RELION 3.0 style rows).

    Parameters
    ----------
    optics, particles : pandas.DataFrame
        As returned by :func:`read_particles_star`; ``optics=None`` returns a copy.
    columns : tuple of str, optional
        Optics columns to add (default: all but ``rlnOpticsGroup``); columns the
        particles already have are kept as they are.
    """
    merged = particles.copy()
    if optics is None:
        return merged
    wanted = columns or tuple(c for c in optics.columns if c != "rlnOpticsGroup")
    table = optics.set_index("rlnOpticsGroup")
    for column in wanted:
        if column in merged.columns or column not in table.columns:
            continue
        merged[column] = merged["rlnOpticsGroup"].map(table[column]).to_numpy()
    return merged


def write_star_picks(path: str | os.PathLike[str], picks: pd.DataFrame) -> None:
    """Write picks as a RELION coordinate STAR.

    One micrograph (no ``rlnMicrographName``): a ``data_`` block, as RELION's autopick
    files. Many micrographs: a ``data_particles`` block with ``rlnMicrographName``.
    Coordinates first, then every other column; coordinates with 6 decimals; missing
    values are written ``nan``.
    """
    ordered = [X, Y, *[c for c in picks.columns if c not in (X, Y)]]
    table = picks[ordered].reset_index(drop=True).copy()
    for column in table.columns:
        if pd.api.types.is_float_dtype(table[column]) and table[column].isna().any():
            table[column] = [format_number(v, 6) for v in table[column]]
    block = "particles" if MICROGRAPH in table.columns else ""
    write_star(Path(path), {block: table})

