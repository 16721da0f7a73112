"""Particle tables: RELION 1.x to 5 particles STAR and cryoSPARC ``.cs`` in RELION 3.1 form.

Read by every command that takes particles (restack, downsample, subtract, re-extraction
of refined particles), with the selections they accept (a STAR of image names, a file of
row numbers). Conventions: docs/conventions.md, "Restack and downsample".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.images import image_key
from cryoextract.io.star import find_block, read_star

__all__ = [
    "PIXEL_TO_ANGSTROM",
    "ParticleTable",
    "base_dirs",
    "convert_relion30",
    "offsets_to_angstrom",
    "read_particles",
    "select_rows",
]

# RELION 3.0 columns that became the optics table in 3.1 (StarConverter, in its order).
_OPTICS_30 = (
    "rlnAmplitudeContrast", "rlnBeamTiltX", "rlnBeamTiltY", "rlnSphericalAberration",
    "rlnVoltage", "rlnDetectorPixelSize", "rlnMagnification",
)
# RELION 3.0 offsets in pixels and their 3.1 names in Angstrom.
PIXEL_TO_ANGSTROM = {
    "rlnOriginX": "rlnOriginXAngst", "rlnOriginY": "rlnOriginYAngst",
    "rlnOriginZ": "rlnOriginZAngst", "rlnOriginXPrior": "rlnOriginXPriorAngst",
    "rlnOriginYPrior": "rlnOriginYPriorAngst", "rlnOriginZPrior": "rlnOriginZPriorAngst",
    "rlnHelicalTrackLength": "rlnHelicalTrackLengthAngst",
}


@dataclass(frozen=True)
class ParticleTable:
    """A particles file in RELION 3.1 form.

    ``optics`` has one row per optics group (``rlnOpticsGroup``, ``rlnOpticsGroupName``,
    ``rlnImagePixelSize`` when known); ``particles`` one row per particle with
    ``rlnImageName`` and ``rlnOpticsGroup``. ``base_dirs`` are where relative image
    names are looked up, in order.
    """

    optics: pd.DataFrame
    particles: pd.DataFrame
    source: str
    base_dirs: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    relion30: bool = False


# --------------------------------------------------------------------------- input
def read_particles(
    path: str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None = None
) -> ParticleTable:
    """Read a particles STAR (RELION 3.0 or 3.1+) or cryoSPARC ``.cs`` into 3.1 form.

    RELION 3.0 files are converted as RELION 3.1's ``StarConverter`` does: one optics
    group per distinct (Q0, beam tilt, Cs, voltage, detector pixel, magnification) in
    order of appearance, ``rlnImagePixelSize = 1e4 * rlnDetectorPixelSize /
    rlnMagnification``, offsets in pixels turned into Å.

    Parameters
    ----------
    path : path-like
        ``.star`` or ``.cs`` file.
    base_dir : path-like, optional
        Looked up first for relative image names; default the working directory (as
        RELION), then the file's own directory.

    Raises
    ------
    InputError
        Unreadable file, no ``rlnImageName``, optics groups missing from the optics table.
    """
    path = Path(path)
    dirs = base_dirs(path, base_dir)
    if path.suffix.lower() == ".cs":
        notes: list[str] = []
        optics, particles = _read_cs(path, notes)
        return _checked(ParticleTable(optics, particles, str(path), dirs, tuple(notes)), path)
    tables = read_star(path)
    particles = find_block(tables, path, ("rlnImageName",), preferred=("particles",))
    particles = particles.reset_index(drop=True)
    warnings: list[str] = []
    relion30 = not ("optics" in tables and tables["optics"] is not particles)
    if not relion30:
        optics = tables["optics"].reset_index(drop=True)
        if "rlnOpticsGroup" not in particles.columns:
            if len(optics) != 1:
                raise InputError("particles have no rlnOpticsGroup column", path)
            particles = particles.assign(rlnOpticsGroup=int(optics["rlnOpticsGroup"].iloc[0]))
    else:
        optics, particles = convert_relion30(particles)
        if "rlnImagePixelSize" in optics.columns:
            optics, particles = offsets_to_angstrom(optics, particles)
        elif any(c in particles.columns for c in PIXEL_TO_ANGSTROM):
            warnings.append("no pixel size in the STAR to turn pixel offsets into A")
    if "rlnOpticsGroupName" not in optics.columns:
        optics = optics.copy()
        names = [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]]
        optics.insert(1, "rlnOpticsGroupName", names)
    table = ParticleTable(optics, particles, str(path), dirs, tuple(warnings), relion30)
    return _checked(table, path)


def convert_relion30(particles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a RELION 3.0 particles table into 3.1 ``(optics, particles)``.

    Groups as RELION 3.1's ``StarConverter``; ``rlnImagePixelSize`` replaces
    ``rlnDetectorPixelSize``/``rlnMagnification``. Offsets are left in pixels here
    (:func:`read_particles` converts them once the pixel size is known).
    """
    keys = [c for c in _OPTICS_30 if c in particles.columns]
    if keys:
        groups = particles.groupby(keys, sort=False, dropna=False).ngroup().to_numpy() + 1
    else:
        groups = np.ones(len(particles), dtype=np.int64)
    first = np.unique(groups, return_index=True)[1]
    optics = particles.iloc[first][keys].reset_index(drop=True)
    optics.insert(0, "rlnOpticsGroup", groups[first])
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in groups[first]])
    if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(keys):
        optics["rlnImagePixelSize"] = (
            1e4 * optics["rlnDetectorPixelSize"].astype(float)
            / optics["rlnMagnification"].astype(float)
        )
        optics = optics.drop(columns=["rlnDetectorPixelSize", "rlnMagnification"])
    return optics, particles.drop(columns=keys).assign(rlnOpticsGroup=groups)


def base_dirs(path: Path, base_dir: str | os.PathLike[str] | None) -> tuple[Path, ...]:
    """Where relative image names of the file ``path`` are looked up, in order: ``base_dir``
    (default the working directory, as RELION), then the file's own directory."""
    dirs = [Path(base_dir) if base_dir is not None else Path.cwd(), path.parent]
    unique: list[Path] = []
    for d in dirs:
        if not any(_same_dir(d, u) for u in unique):
            unique.append(d)
    return tuple(unique)


def _same_dir(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _read_cs(path: Path, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        from cryoextract.io.cryosparc import read_cs_particles  # type: ignore[import-not-found]
    except ImportError as exc:
        raise InputError(
            "cryoSPARC .cs input needs cryoextract.io.cryosparc, which this build lacks; "
            "export the particles to a RELION STAR (e.g. with csparc2star.py)", path
        ) from exc
    optics, particles = read_cs_particles(path, notes=notes)
    return optics.reset_index(drop=True), particles.reset_index(drop=True)


def offsets_to_angstrom(
    optics: pd.DataFrame, particles: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.0 pixel offsets to Å with each particle's optics-group pixel size.

    As RELION 3.1's ``StarConverter::translateOffsets``; a pixel column whose Å
    counterpart already exists is left alone.
    """
    present = [c for c in PIXEL_TO_ANGSTROM if c in particles.columns]
    if not present:
        return optics, particles
    apix = optics.set_index("rlnOpticsGroup")["rlnImagePixelSize"].astype(float)
    scale = particles["rlnOpticsGroup"].map(apix).to_numpy(dtype=float)
    particles = particles.copy()
    for column in present:
        target = PIXEL_TO_ANGSTROM[column]
        if target not in particles.columns:
            particles[column] = particles[column].astype(float) * scale
            particles = particles.rename(columns={column: target})
    return optics, particles


def _checked(table: ParticleTable, path: Path) -> ParticleTable:
    particles, optics = table.particles, table.optics
    for column in ("rlnImageName", "rlnOpticsGroup"):
        if column not in particles.columns:
            raise InputError(f"particles have no {column} column", path)
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError("optics table has no rlnOpticsGroup column", path)
    listed = pd.to_numeric(optics["rlnOpticsGroup"], errors="coerce")
    if listed.isna().any():
        raise InputError("data_optics: rlnOpticsGroup is not a number "
                         f"({optics['rlnOpticsGroup'][listed.isna()].iloc[0]!r})", path)
    twice = listed[listed.duplicated()]
    if len(twice):
        raise InputError(f"data_optics lists optics group {int(twice.iloc[0])} twice", path)
    groups = pd.to_numeric(particles["rlnOpticsGroup"], errors="coerce")
    if groups.isna().any():
        row = int(np.flatnonzero(groups.isna().to_numpy())[0])
        raise InputError(f"particle {row + 1}: rlnOpticsGroup "
                         f"{particles['rlnOpticsGroup'].iloc[row]!r} is not a number", path)
    unknown = set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
    if unknown:
        raise InputError(f"optics groups {sorted(unknown)} are not in data_optics", path)
    if particles["rlnImageName"].isna().any():
        raise InputError("some particles have no rlnImageName", path)
    return table


# --------------------------------------------------------------------------- selection
def select_rows(
    particles: pd.DataFrame,
    *,
    select: str | os.PathLike[str] | None = None,
    indices: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Positions of the particles to keep, in table order.

    Parameters
    ----------
    particles : pd.DataFrame
        The input particles table.
    select : path-like, optional
        A STAR file: keep particles whose ``rlnImageName`` appears in it (compared as
        ``(image number, normalised path)``, so ``12@./a.mrcs`` matches ``000012@a.mrcs``).
    indices : path-like, optional
        0-based row numbers: a ``.npy`` integer array, or text with integers separated by
        whitespace or commas (``#`` starts a comment).

    Returns
    -------
    rows : np.ndarray
        ``(k,)`` int64 sorted positions.
    warnings : list of str
    """
    if select is not None and indices is not None:
        raise ParameterError("give at most one of --select and --indices")
    every = np.arange(len(particles), dtype=np.int64)
    if select is not None:
        return _select_by_star(particles, Path(select))
    if indices is not None:
        return _select_by_indices(len(particles), Path(indices)), []
    return every, []


def _select_by_star(particles: pd.DataFrame, path: Path) -> tuple[np.ndarray, list[str]]:
    tables = read_star(path)
    chosen = find_block(tables, path, ("rlnImageName",), preferred=("particles",))
    wanted = {image_key(n) for n in chosen["rlnImageName"].astype(str)} - {None}
    keys = [image_key(n) for n in particles["rlnImageName"].astype(str)]
    rows = np.array([i for i, k in enumerate(keys) if k in wanted], dtype=np.int64)
    missing = len(wanted - set(keys))
    warnings = []
    if missing:
        warnings.append(f"{missing} image names of {path} are not in the input particles")
    return rows, warnings


def _select_by_indices(count: int, path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError("index file not found", path)
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False).ravel()
        else:
            text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
            values = np.array(text.replace(",", " ").split(), dtype=float)
    except (ValueError, OSError) as exc:
        raise InputError(f"not a list of integers ({exc})", path) from exc
    if len(values) and not np.all(np.asarray(values, dtype=float) % 1 == 0):
        raise InputError("indices must be integers", path)
    rows = np.unique(np.asarray(values, dtype=np.int64))
    bad = rows[(rows < 0) | (rows >= count)]
    if len(bad):
        raise InputError(
            f"{len(bad)} indices outside 0..{count - 1} (0-based), e.g. {int(bad[0])}", path
        )
    return rows
