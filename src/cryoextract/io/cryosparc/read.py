"""Reading ``.cs`` files as RELION-named picks, optics and particle tables."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.cryosparc.fields import (
    ANGLE_COLUMNS,
    CTF_FIELDS,
    HIGHER_ORDER_CTF_FIELDS,
    OPTICS_CTF_COLUMNS,
    ORIGIN_COLUMNS,
    indices,
    is_set,
    load_cs,
    numbers,
    strings,
)
from cryoextract.io.pickformats.filaments import cs_filament_columns
from cryoextract.ops.rotations import pose_to_euler


def read_cs_picks(
    path: str | os.PathLike[str], *, micrograph_shape: tuple[int, int] | None = None,
    flip_y: bool = False,
) -> pd.DataFrame:
    """Particle locations of a ``.cs`` file as a RELION picks table.

    Parameters
    ----------
    path
        ``.cs`` file with ``location/center_x_frac``, ``location/center_y_frac`` and
        ``location/micrograph_path`` (a particle, passthrough or picker output).
    micrograph_shape
        ``(ny, nx)`` in pixels of the micrographs the picks are for. Needed when the file
        has no ``location/micrograph_shape``; otherwise it replaces it, which rescales the
        picks to micrographs of another size (the fractions stay); a warning is issued
        when its aspect ratio differs from the file's (swapped axes?).
    flip_y
        Mirror y (``y = (1 - y_frac) * ny``), for micrographs that are upside down with
        respect to cryoSPARC's (docs/conventions.md).

    Returns
    -------
    pandas.DataFrame
        One row per particle: ``rlnMicrographName``, ``rlnCoordinateX/Y`` (0-based pixels
        of the micrograph), every CTF column present (``rlnVoltage`` etc. included),
        ``rlnImageName`` when the file has ``blob/*``, poses, origins, classes, subsets.
    """
    data = load_cs(path)
    missing = [f for f in ("location/center_x_frac", "location/center_y_frac")
               if f not in data.dtype.names]
    if missing:
        raise InputError(f"no particle locations ({', '.join(missing)}) in .cs file", path)
    table = _particle_table(data, path, micrograph_shape, flip_y)
    drop = [c for c in ("rlnImagePixelSize", "rlnImageSize", "rlnOpticsGroup",
                        "rlnOpticsGroupName") if c in table.columns]
    return table.drop(columns=drop)


def read_cs_particles(
    path: str | os.PathLike[str], *, micrograph_shape: tuple[int, int] | None = None,
    flip_y: bool = False, notes: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A ``.cs`` particle file as RELION 3.1 optics and particles tables.

    Parameters
    ----------
    path
        ``.cs`` file with ``blob/path``, ``blob/idx``, ``blob/shape``, ``blob/psize_A``.
    micrograph_shape, flip_y
        As :func:`read_cs_picks` (used only where the file has locations).
    notes
        Gets one line when the file sets cryoSPARC's higher-order CTF terms
        (:data:`HIGHER_ORDER_CTF_FIELDS`), which are not converted.

    Returns
    -------
    optics : pandas.DataFrame
        One row per distinct (exposure group, pixel size, box, voltage, Cs, Q0):
        ``rlnOpticsGroupName`` (``exp_group_<id>``), ``rlnOpticsGroup`` (1, 2, ... in order
        of first appearance), ``rlnVoltage``, ``rlnSphericalAberration``,
        ``rlnAmplitudeContrast`` (when the file has CTF fields), ``rlnImagePixelSize`` (Å),
        ``rlnImageSize`` (px), ``rlnImageDimensionality`` (2).
    particles : pandas.DataFrame
        ``rlnImageName``, ``rlnOpticsGroup`` and whatever the file holds of
        ``rlnMicrographName``, ``rlnCoordinateX/Y``, per-particle CTF, poses, origins (Å),
        ``rlnClassNumber``, ``rlnRandomSubset``.
    """
    data = load_cs(path)
    missing = [f for f in ("blob/path", "blob/idx", "blob/shape", "blob/psize_A")
               if f not in data.dtype.names]
    if missing:
        raise InputError(f"not a particle .cs file (no {', '.join(missing)})", path)
    table = _particle_table(data, path, micrograph_shape, flip_y)
    unconverted = [f for f in HIGHER_ORDER_CTF_FIELDS if is_set(data, f)]
    if unconverted and notes is not None:
        notes.append(f"{', '.join(unconverted)} set in the .cs: cryoSPARC's higher-order CTF "
                     "terms are not converted, so they are not applied")
    optics_columns = ["rlnOpticsGroupName", "rlnOpticsGroup",
                      *[c for c in OPTICS_CTF_COLUMNS if c in table.columns],
                      "rlnImagePixelSize", "rlnImageSize"]
    optics = table[optics_columns].drop_duplicates("rlnOpticsGroup").reset_index(drop=True)
    optics["rlnImageDimensionality"] = 2
    particles = table.drop(columns=[c for c in optics_columns if c != "rlnOpticsGroup"])
    return optics, particles


def _particle_table(
    data: np.ndarray, path: str | os.PathLike[str], micrograph_shape: tuple[int, int] | None,
    flip_y: bool,
) -> pd.DataFrame:
    """Every convertible field of a ``.cs`` table as RELION columns, one row per particle."""
    columns: dict[str, np.ndarray] = {}
    names = data.dtype.names
    if "blob/path" in names and "blob/idx" in names:
        columns["rlnImageName"] = _image_names(data, path)
    if "location/micrograph_path" in names:
        columns["rlnMicrographName"] = strings(data, "location/micrograph_path", path)
    if "location/center_x_frac" in names or "location/center_y_frac" in names:
        columns.update(_coordinates(data, path, micrograph_shape, flip_y))
    for field, (column, factor) in CTF_FIELDS.items():
        if field in names:
            columns[column] = numbers(data, field, path) * factor
    columns.update(_alignments(data, path))
    columns.update(cs_filament_columns(data, flip_y=flip_y))
    table = pd.DataFrame(columns, index=pd.RangeIndex(len(data)))
    if "blob/psize_A" in names:
        table["rlnImagePixelSize"] = numbers(data, "blob/psize_A", path)
    if "blob/shape" in names:
        table["rlnImageSize"] = _box_sizes(data, path)
    return _assign_optics_groups(table, data, path)


def _image_names(data: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    paths = strings(data, "blob/path", path)
    one_based = indices(data, "blob/idx", path) + 1
    return np.array([f"{i:06d}@{p}" for i, p in zip(one_based, paths, strict=True)], dtype=object)


def _box_sizes(data: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    shape = numbers(data, "blob/shape", path, (2,))
    if np.any(shape[:, 0] != shape[:, 1]) or not np.all(np.isfinite(shape)):
        raise InputError("blob/shape is not square [n, n] for every particle", path)
    return shape[:, 0].astype(np.int64)


def _coordinates(
    data: np.ndarray, path: str | os.PathLike[str], micrograph_shape: tuple[int, int] | None,
    flip_y: bool,
) -> dict[str, np.ndarray]:
    """``rlnCoordinateX/Y`` (micrograph pixels) from the fractional locations."""
    shape = _micrograph_shapes(data, path, micrograph_shape)
    x_frac = numbers(data, "location/center_x_frac", path)
    y_frac = numbers(data, "location/center_y_frac", path)
    if flip_y:
        y_frac = 1.0 - y_frac
    return {"rlnCoordinateX": x_frac * shape[:, 1], "rlnCoordinateY": y_frac * shape[:, 0]}


def _micrograph_shapes(
    data: np.ndarray, path: str | os.PathLike[str], micrograph_shape: tuple[int, int] | None,
) -> np.ndarray:
    """``(n, 2)`` float ``[ny, nx]`` per particle: the given shape, else the file's."""
    if "location/micrograph_shape" in data.dtype.names:
        stored = numbers(data, "location/micrograph_shape", path, (2,))
    elif micrograph_shape is None:
        raise InputError(
            "no location/micrograph_shape in .cs file: give the micrograph shape (ny, nx)", path
        )
    else:
        stored = None
    if micrograph_shape is None:
        return stored
    given = np.asarray(micrograph_shape, dtype=np.float64)
    if given.shape != (2,) or np.any(given <= 0):
        raise InputError(f"micrograph shape must be (ny, nx) > 0, got {micrograph_shape}", path)
    if stored is not None and len(stored):
        ratio = stored[:, 0] / stored[:, 1]
        if np.any(np.abs(ratio / (given[0] / given[1]) - 1) > 0.01):
            warnings.warn(
                f"{path}: given micrograph shape (ny, nx) = {tuple(micrograph_shape)} has "
                f"another aspect ratio than the file's location/micrograph_shape "
                f"{tuple(int(v) for v in stored[0])}; are x and y swapped?", stacklevel=4,
            )
    return np.broadcast_to(given, (len(data), 2))


def _alignments(data: np.ndarray, path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Poses, origins (Å), class and half-set from ``alignments3D/*`` (else ``2D``)."""
    names = data.dtype.names
    prefix = next((p for p in ("alignments3D/", "alignments2D/") if p + "pose" in names
                   or p + "shift" in names), None)
    if prefix is None:
        return {}
    out: dict[str, np.ndarray] = {}
    if prefix + "pose" in names:
        if prefix == "alignments3D/":
            euler = pose_to_euler(numbers(data, prefix + "pose", path, (3,)))
            out.update(zip(ANGLE_COLUMNS, euler.T, strict=True))
        else:
            out["rlnAnglePsi"] = np.rad2deg(numbers(data, prefix + "pose", path))
    if prefix + "shift" in names:
        psize_field = prefix + "psize_A" if prefix + "psize_A" in names else "blob/psize_A"
        if psize_field in names:
            shift = numbers(data, prefix + "shift", path, (2,))
            shift_a = shift * numbers(data, psize_field, path)[:, None]
            out.update(zip(ORIGIN_COLUMNS, shift_a.T, strict=True))
    if prefix + "class" in names:
        out["rlnClassNumber"] = indices(data, prefix + "class", path) + 1
    if prefix == "alignments3D/" and "alignments3D/split" in names:
        out["rlnRandomSubset"] = indices(data, "alignments3D/split", path) + 1
    return out


def _assign_optics_groups(
    table: pd.DataFrame, data: np.ndarray, path: str | os.PathLike[str],
) -> pd.DataFrame:
    """``rlnOpticsGroup`` 1.. (first appearance) and ``rlnOpticsGroupName`` per row."""
    group_id = (indices(data, "ctf/exp_group_id", path) if "ctf/exp_group_id" in
                data.dtype.names else np.zeros(len(data), dtype=np.int64))
    keys = [pd.Series(group_id)] + [
        table[c].reset_index(drop=True) for c in
        (*OPTICS_CTF_COLUMNS, "rlnImagePixelSize", "rlnImageSize") if c in table.columns
    ]
    codes = pd.MultiIndex.from_arrays(keys).factorize()[0] if len(table) else np.zeros(0, int)
    table = table.copy()
    table["rlnOpticsGroup"] = codes + 1
    first = pd.Series(group_id).groupby(codes).transform("first") if len(table) else group_id
    table["rlnOpticsGroupName"] = [f"exp_group_{g}" for g in np.asarray(first)]
    return table
