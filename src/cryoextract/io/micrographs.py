"""The list of micrographs to extract from: a RELION micrographs STAR or a glob of MRC files."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.star import find_block, read_star

OPTICS_COLUMNS = (
    "rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
    "rlnBeamTiltX", "rlnBeamTiltY",
)
# Per-micrograph columns handed to each of its particles (RELION does the same).
PARTICLE_CARRIED_COLUMNS = (
    "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor",
    "rlnCtfScalefactor", "rlnPhaseShift", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit",
    "rlnCtfAstigmatism",
)
#: columns that must hold numbers (a CTF from a value that is not one is an error)
NUMERIC_COLUMNS = (*PARTICLE_CARRIED_COLUMNS[1:], *OPTICS_COLUMNS[2:])


@dataclass(frozen=True)
class MicrographSet:
    """Micrographs and their optics.

    ``micrographs`` has one row per micrograph with ``rlnMicrographName`` (as written
    in the input), ``path`` (where to read it), ``rlnOpticsGroup`` and any per-micrograph
    columns (CTF). ``optics`` has one row per optics group with at least
    ``rlnOpticsGroup``, ``rlnOpticsGroupName`` and ``rlnMicrographPixelSize`` (Å).
    """

    micrographs: pd.DataFrame
    optics: pd.DataFrame
    source: str


def read_micrograph_set(
    spec: str, *, pixel_size_angstrom: float | None = None, base_dir: Path | None = None
) -> MicrographSet:
    """Read micrographs from a STAR file (RELION 3.0 or 3.1+) or a glob of MRC files.

    Parameters
    ----------
    spec : str
        A ``.star`` path, or a glob pattern / single path of MRC files.
    pixel_size_angstrom : float, optional
        Pixel size; required for a glob, overrides a STAR's when given.
    base_dir : Path, optional
        Relative micrograph names in a STAR are looked up here first (default: the
        working directory, as RELION), then beside the STAR file.
    """
    if spec.endswith(".star"):
        return _from_star(Path(spec), pixel_size_angstrom, base_dir or Path.cwd())
    return _from_glob(spec, pixel_size_angstrom)


def _from_glob(pattern: str, pixel_size_angstrom: float | None) -> MicrographSet:
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    paths = [p for p in paths if Path(p).suffix.lower() in (".mrc", ".mrcs", ".st", ".map")]
    if not paths:
        raise InputError("no MRC micrographs match", pattern)
    if pixel_size_angstrom is None:
        raise InputError("a glob of micrographs needs --pixel-size", pattern)
    if not (np.isfinite(pixel_size_angstrom) and pixel_size_angstrom > 0):
        raise InputError(f"pixel size (--pixel-size) must be > 0, got {pixel_size_angstrom}",
                         pattern)
    micrographs = pd.DataFrame({"rlnMicrographName": paths, "path": paths, "rlnOpticsGroup": 1})
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnMicrographPixelSize": [float(pixel_size_angstrom)],
    })
    return MicrographSet(micrographs, optics, pattern)


def _from_star(path: Path, pixel_size_angstrom: float | None, base_dir: Path) -> MicrographSet:
    tables = read_star(path)
    micrographs = find_block(tables, path, ("rlnMicrographName",), preferred=("micrographs",))
    micrographs = micrographs.copy()
    duplicated = micrographs["rlnMicrographName"].duplicated()
    if duplicated.any():
        name = micrographs["rlnMicrographName"][duplicated].iloc[0]
        raise InputError(f"micrograph {name} is listed more than once", path)
    if "optics" in tables and "rlnOpticsGroup" in micrographs.columns:
        optics = tables["optics"].copy()
        if "rlnOpticsGroup" not in optics.columns:
            raise InputError("data_optics has no rlnOpticsGroup column", path)
    else:
        micrographs, optics = _optics_from_rows(micrographs, path)
    if pixel_size_angstrom is not None:
        if not (np.isfinite(pixel_size_angstrom) and pixel_size_angstrom > 0):
            raise InputError(f"pixel size (--pixel-size) must be > 0, got {pixel_size_angstrom}",
                             path)
        optics["rlnMicrographPixelSize"] = float(pixel_size_angstrom)
    elif "rlnMicrographPixelSize" not in optics.columns:
        if "rlnImagePixelSize" in optics.columns:
            optics["rlnMicrographPixelSize"] = optics["rlnImagePixelSize"]
        else:
            raise InputError("no pixel size (rlnMicrographPixelSize); give --pixel-size", path)
    if "rlnOpticsGroupName" not in optics.columns:
        optics["rlnOpticsGroupName"] = [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]]
    twice = optics["rlnOpticsGroup"][optics["rlnOpticsGroup"].duplicated()]
    if len(twice):
        raise InputError(f"optics group {twice.iloc[0]} is listed more than once in "
                         "data_optics", path)
    for table in (micrographs, optics):
        for column in NUMERIC_COLUMNS:
            if column in table.columns:
                table[column] = _numbers(table, column, path)
    unknown = set(micrographs["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
    if unknown:
        raise InputError(f"optics groups {sorted(unknown, key=str)} are not in data_optics",
                         path)
    sizes = pd.to_numeric(optics["rlnMicrographPixelSize"], errors="coerce")
    if not (np.isfinite(sizes) & (sizes > 0)).all():
        raise InputError("pixel size (rlnMicrographPixelSize) must be a number > 0", path)
    optics["rlnMicrographPixelSize"] = sizes.astype(np.float64)
    micrographs["path"] = [
        _locate(str(name), base_dir, path.parent) for name in micrographs["rlnMicrographName"]
    ]
    return MicrographSet(micrographs.reset_index(drop=True), optics, str(path))


def _optics_from_rows(micrographs: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.0 style: optics columns on every row; make one group per distinct set."""
    micrographs = micrographs.copy()
    if "rlnMicrographPixelSize" not in micrographs.columns and {
        "rlnDetectorPixelSize", "rlnMagnification"
    } <= set(micrographs.columns):
        detector = _numbers(micrographs, "rlnDetectorPixelSize", path)
        magnification = _numbers(micrographs, "rlnMagnification", path)
        with np.errstate(divide="ignore", invalid="ignore"):
            micrographs["rlnMicrographPixelSize"] = 1e4 * detector / magnification
    if "rlnMicrographPixelSize" in micrographs.columns:
        sizes = _numbers(micrographs, "rlnMicrographPixelSize", path)
        micrographs["rlnMicrographPixelSize"] = sizes
        short = micrographs["rlnMicrographName"][sizes.isna()]
        if len(short):  # a row cut short: its optics group would have no pixel size
            raise InputError(f"no pixel size for micrograph {short.iloc[0]} (row cut short?)",
                             path)
    keys = [c for c in OPTICS_COLUMNS[2:] if c in micrographs.columns]
    if keys:
        groups = micrographs.groupby(keys, sort=False, dropna=False).ngroup() + 1
    else:
        groups = pd.Series(1, index=micrographs.index)
    micrographs["rlnOpticsGroup"] = groups.to_numpy()
    optics = micrographs.drop_duplicates("rlnOpticsGroup")[["rlnOpticsGroup", *keys]]
    micrographs = micrographs.drop(columns=keys)
    return micrographs, optics.reset_index(drop=True)


def _numbers(table: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """``table[column]`` as float64; InputError naming a value that is not a number."""
    values = table[column]
    numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
    text = values[numbers.isna() & values.notna()]
    text = text[~text.astype(str).str.strip().str.lower().isin(("nan", "<na>", ""))]
    if len(text):
        row = text.index[0]
        where = (f" (micrograph {table.at[row, 'rlnMicrographName']})"
                 if "rlnMicrographName" in table.columns else "")
        raise InputError(f"{column} must be a number, got {str(text.iloc[0])!r}{where}", path)
    return numbers


def _locate(name: str, *dirs: Path) -> str:
    if os.path.isabs(name):
        return name
    for directory in dirs:
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    return str(dirs[0] / name)


def with_ctffind(mic_set: MicrographSet, ctf_dir: str | os.PathLike[str]) -> tuple[
    MicrographSet, list[str]
]:
    """Take each micrograph's CTF from its CTFFIND4 results under ``ctf_dir``.

    Defocus, astigmatism angle, phase shift and fit quality replace the STAR's; voltage,
    Cs and amplitude contrast fill optics groups that lack them. Returns the new set and
    the micrographs without results (they keep what the STAR had).
    """
    from cryoextract.io.ctffind import ctffind_for_micrographs

    table = mic_set.micrographs.copy()
    names = [str(n) for n in table["rlnMicrographName"]]
    ctf = ctffind_for_micrographs(names, ctf_dir, missing="skip").set_index("rlnMicrographName")
    per_micrograph = [c for c in PARTICLE_CARRIED_COLUMNS if c in ctf.columns]
    for column in per_micrograph:
        values = table["rlnMicrographName"].map(ctf[column])
        table[column] = values.where(values.notna(), table.get(column))
    optics = mic_set.optics.copy()
    for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if column not in optics.columns and column in ctf.columns and len(ctf):
            optics[column] = float(ctf[column].iloc[0])
    missing = [n for n in names if n not in ctf.index]
    return MicrographSet(table, optics, mic_set.source), missing
