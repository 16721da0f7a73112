"""CTFFIND4/5 results (``<micrograph>.txt``) as RELION CTF columns.

A results file is a few ``#`` header lines, among them::

    # Pixel size: 1.400 Angstroms ; acceleration voltage: 200.0 keV ; spherical aberration: 1.40 mm ; amplitude contrast: 0.10
    # Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully

then one line of values per micrograph. Mapped as RELION's ``CtffindRunner::
getCtffind4Results`` does: defocus 1 -> ``rlnDefocusU``, defocus 2 -> ``rlnDefocusV`` (Å),
azimuth -> ``rlnDefocusAngle`` (degrees, as written), phase shift (rad) ->
``rlnPhaseShift`` (degrees), cross correlation -> ``rlnCtfFigureOfMerit``, fit spacing
-> ``rlnCtfMaxResolution`` (Å; ``inf`` -> 999 as RELION) and ``rlnCtfAstigmatism =
|U - V|``. ``<mic>_avrot.txt`` (rotational averages) are never read as results.
"""  # noqa: E501

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.coords import coordinate_file_candidates
from cryoextract.io.pickformats.common import read_text

CTF_COLUMNS = (
    "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfFigureOfMerit",
    "rlnCtfMaxResolution", "rlnCtfAstigmatism", "rlnVoltage", "rlnSphericalAberration",
    "rlnAmplitudeContrast", "ctffindPixelSize", "ctffindMicrographNumber",
)
"""Columns of :func:`read_ctffind` (``ctffindPixelSize``: Å/px of the image CTFFIND saw)."""
AVROT_SUFFIX = "_avrot.txt"
DEFAULT_SUFFIXES = (".txt", "_PS.txt")
"""RELION's names: ``<mic>.txt``, or ``<mic>_PS.txt`` when run on power spectra."""
_UNRESOLVED_MAX_RESOLUTION = 999.0
_HEADER = {
    "ctffindPixelSize": r"pixel size:\s*([^\s;]+)",
    "rlnVoltage": r"acceleration voltage:\s*([^\s;]+)",
    "rlnSphericalAberration": r"spherical aberration:\s*([^\s;]+)",
    "rlnAmplitudeContrast": r"amplitude contrast:\s*([^\s;]+)",
}


def read_ctffind(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CTFFIND4/5 results file.

    Returns
    -------
    pandas.DataFrame
        One row per micrograph of the file (usually one) with :data:`CTF_COLUMNS`
        (defocus and resolution in Å, angles in degrees, voltage in kV, Cs in mm) and
        CTFFIND 5's extra values as ``ctffindColumn8``, ...

    Raises
    ------
    InputError
        An ``_avrot.txt`` file, no CTFFIND header, or a values line with fewer than 7
        numbers (naming the line).
    """
    path = Path(path)
    if path.name.endswith(AVROT_SUFFIX):
        raise InputError("a CTFFIND rotational average (_avrot.txt), not the results", path)
    lines = read_text(path, "CTFFIND file").splitlines()
    header = " ".join(line for line in lines if line.startswith("#"))
    if "columns:" not in header.lower() or "defocus 1" not in header.lower():
        raise InputError("not a CTFFIND4 results file (no '# Columns: ... defocus 1' line)",
                         path)
    constants = _header_constants(header, path)
    rows = [_values(line, number, path) for number, line in enumerate(lines, start=1)
            if line.strip() and not line.startswith("#")]
    if not rows:
        raise InputError("no values line in CTFFIND file", path)
    return pd.DataFrame([_ctf_row(values, constants) for values in rows])


def _header_constants(header: str, path: Path) -> dict[str, float]:
    constants = {}
    for column, pattern in _HEADER.items():
        match = re.search(pattern, header, flags=re.IGNORECASE)
        try:
            constants[column] = float(match.group(1)) if match else float("nan")
        except ValueError:
            constants[column] = float("nan")
        if not np.isfinite(constants[column]):
            name = pattern.split(":")[0].replace("\\", "")
            raise InputError(f"no {name} in the CTFFIND header", path)
    return constants


def _values(line: str, number: int, path: Path) -> list[float]:
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise InputError(f"not a number in {line.strip()!r}", path, number) from None
    if len(values) < 7:
        raise InputError(f"expected at least 7 values, got {len(values)}", path, number)
    return values


def _ctf_row(values: list[float], constants: dict[str, float]) -> dict[str, float]:
    max_resolution = values[6] if np.isfinite(values[6]) else _UNRESOLVED_MAX_RESOLUTION
    row = {
        "rlnDefocusU": values[1], "rlnDefocusV": values[2], "rlnDefocusAngle": values[3],
        "rlnPhaseShift": float(np.degrees(values[4])), "rlnCtfFigureOfMerit": values[5],
        "rlnCtfMaxResolution": max_resolution,
        "rlnCtfAstigmatism": abs(values[1] - values[2]), **constants,
        "ctffindMicrographNumber": int(values[0]),
    }
    for index, value in enumerate(values[7:], start=8):
        row[f"ctffindColumn{index}"] = value
    return row


def ctffind_for_micrographs(
    names: Iterable[str],
    ctf_dir: str | os.PathLike[str],
    *,
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES,
    missing: str = "error",
) -> pd.DataFrame:
    """CTFFIND results of many micrographs, found as RELION lays them out.

    For micrograph ``Job/jobNNN/sub/mic.mrc`` the results are looked for at
    ``ctf_dir/sub/mic<suffix>``, then ``ctf_dir/<whole path>``, then ``ctf_dir/mic<suffix>``
    (as ``coordinate_file_candidates``), for each suffix in turn; ``_avrot.txt`` files
    are skipped.

    Parameters
    ----------
    names : iterable of str
        ``rlnMicrographName`` values.
    ctf_dir : path-like
        The CTFFIND job directory (e.g. ``CtfFind/job005``).
    suffixes : tuple of str
        File name endings replacing the micrograph extension.
    missing : {"error", "skip"}
        A micrograph without results raises InputError, or is left out.

    Returns
    -------
    pandas.DataFrame
        ``rlnMicrographName`` and :data:`CTF_COLUMNS`, one row per micrograph found.
    """
    if missing not in ("error", "skip"):
        raise ParameterError(f"missing must be 'error' or 'skip', got {missing!r}")
    ctf_dir = Path(ctf_dir)
    rows = []
    for name in names:
        found = _results_file(str(name), ctf_dir, suffixes)
        if found is None:
            if missing == "error":
                first = coordinate_file_candidates(str(name), ctf_dir, suffixes[0])[0]
                raise InputError(f"no CTFFIND results for {name} (looked for {first})", ctf_dir)
            continue
        table = read_ctffind(found)
        if len(table) != 1:
            raise InputError(f"{len(table)} micrographs in one CTFFIND file, expected 1", found)
        rows.append({"rlnMicrographName": str(name), **table.iloc[0].to_dict()})
    return pd.DataFrame(rows, columns=None if rows else ["rlnMicrographName", *CTF_COLUMNS])


def _results_file(name: str, ctf_dir: Path, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for candidate in coordinate_file_candidates(name, ctf_dir, suffix):
            if candidate.name.endswith(AVROT_SUFFIX):
                continue
            if candidate.is_file():
                return candidate
    return None
