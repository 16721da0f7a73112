"""Writing RELION particle tables as a cryoSPARC ``.cs`` file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.cryosparc.fields import (
    ANGLE_COLUMNS,
    CTF_TYPE,
    ORIGIN_COLUMNS,
    MicrographShapes,
    fixed_bytes,
    save_cs,
    structured,
)
from cryoextract.io.pickformats.filaments import cs_filament_fields
from cryoextract.ops.rotations import euler_to_pose


def write_cs(
    path: str | os.PathLike[str], optics_df: pd.DataFrame | None, particles_df: pd.DataFrame,
    *, micrograph_shapes: MicrographShapes = None, blob_sign: float = 1.0,
    flip_y: bool = False, seed: int | None = None,
) -> np.ndarray:
    """Write RELION particle tables as a cryoSPARC ``.cs`` file (numpy format), atomically.

    Parameters
    ----------
    path
        Output file (written under a temporary name in the same folder, then renamed).
    optics_df
        RELION 3.1 ``data_optics`` (``rlnOpticsGroup``, ``rlnImagePixelSize``,
        ``rlnImageSize``, ``rlnVoltage``, ``rlnSphericalAberration``,
        ``rlnAmplitudeContrast``); ``None`` when these are particle columns (RELION 3.0;
        pixel size then also from ``rlnDetectorPixelSize * 1e4 / rlnMagnification``).
    particles_df
        ``rlnImageName`` (``NNNNNN@stack``, 1-based), optional ``rlnMicrographName`` +
        ``rlnCoordinateX/Y``, CTF, ``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst``,
        ``rlnClassNumber``, ``rlnRandomSubset``.
    micrograph_shapes
        ``(ny, nx)`` for every micrograph, or a mapping from ``rlnMicrographName`` to it.
        ``location/*`` fields are written only when it is given (fractions need it).
    blob_sign
        ``blob/sign``: ``+1`` for particles that are bright on a dark background (our
        default, inverted contrast), ``-1`` for dark particles (raw contrast, what cryoSPARC's
        own extraction writes). See docs/conventions.md.
    flip_y
        Store ``y_frac = 1 - y / ny`` (micrographs upside down with respect to cryoSPARC's).
    seed
        Seed for the random 64-bit ``uid`` column (unique within the file); ``None`` draws
        from the OS.

    Returns
    -------
    numpy.ndarray
        The structured array written.

    Notes
    -----
    ``location/center_*_frac`` is the box centre (``rlnCoordinateX/Y``), as cryoSPARC's
    location is the point the blob was cut at; the particle's offset inside the blob goes
    to ``alignments*/shift`` (blob pixels, ``rlnOriginXAngst / rlnImagePixelSize``), so the
    particle position ``coordinate - origin`` is kept without being counted twice. With
    angles, an ``alignments3D`` block is written; with origins or psi only, ``alignments2D``.
    """
    table = _merge_optics(optics_df, particles_df)
    n = len(table)
    fields: list[tuple[str, np.ndarray]] = [("uid", _uids(n, seed))]
    fields += _blob_fields(table, blob_sign)
    if "rlnDefocusU" in table.columns:
        fields += _ctf_fields(table)
    if micrograph_shapes is not None:
        fields += _location_fields(table, micrograph_shapes, flip_y)
    fields += _alignment_fields(table)
    fields += cs_filament_fields(table, flip_y=flip_y)
    array = structured(fields, n)
    save_cs(path, array)
    return array


def _merge_optics(optics: pd.DataFrame | None, particles: pd.DataFrame) -> pd.DataFrame:
    """One table with the optics columns on every particle row (RELION 3.0 shape)."""
    table = particles.reset_index(drop=True)
    if optics is not None and len(optics) and "rlnOpticsGroup" in table.columns:
        extra = [c for c in optics.columns if c not in table.columns or c == "rlnOpticsGroup"]
        groups = optics[extra].astype({"rlnOpticsGroup": np.int64})
        table = table.astype({"rlnOpticsGroup": np.int64}).merge(
            groups, on="rlnOpticsGroup", how="left", validate="many_to_one")
    elif optics is not None and len(optics) == 1:
        for column in optics.columns:
            table[column] = optics[column].iloc[0]
    if "rlnImagePixelSize" not in table.columns and {
            "rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
        table["rlnImagePixelSize"] = (table["rlnDetectorPixelSize"].astype(float) * 1e4
                                      / table["rlnMagnification"].astype(float))
    for column in ("rlnImageName", "rlnImagePixelSize", "rlnImageSize"):
        if column not in table.columns and table.empty:
            table[column] = pd.Series(dtype=object if column == "rlnImageName" else float)
        if column not in table.columns or table[column].isna().any():
            raise InputError(f"cannot write .cs: {column} missing for some particles")
    return table


def _uids(n: int, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    while True:
        uids = rng.integers(1, np.iinfo(np.uint64).max, size=n, dtype=np.uint64,
                            endpoint=True)
        if len(np.unique(uids)) == n:
            return uids


def _blob_fields(table: pd.DataFrame, sign: float) -> list[tuple[str, np.ndarray]]:
    names = table["rlnImageName"].astype(str)
    split = names.str.split("@", n=1, expand=True)
    if table.empty:
        split = pd.DataFrame({0: pd.Series(dtype=object), 1: pd.Series(dtype=object)})
    if split.shape[1] != 2 or split[1].isna().any():
        raise InputError("cannot write .cs: rlnImageName must be NNNNNN@stack for every particle")
    index = pd.to_numeric(split[0], errors="coerce")
    if index.isna().any() or (index < 1).any():
        raise InputError("cannot write .cs: rlnImageName index must be an integer >= 1")
    box = table["rlnImageSize"].astype(np.int64).to_numpy()
    return [
        ("blob/path", fixed_bytes(split[1])),
        ("blob/idx", (index.to_numpy() - 1).astype(np.uint32)),
        ("blob/shape", np.stack([box, box], axis=1).astype(np.uint32)),
        ("blob/psize_A", table["rlnImagePixelSize"].to_numpy(np.float32)),
        ("blob/sign", np.full(len(table), sign, dtype=np.float32)),
    ]


def _ctf_fields(table: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    n = len(table)

    def column(name: str, default: float) -> np.ndarray:
        if name not in table.columns:
            return np.full(n, default, dtype=np.float32)
        return table[name].astype(np.float64).fillna(default).to_numpy()

    group = column("rlnOpticsGroup", 1).astype(np.int64)
    zeros = np.zeros
    return [
        ("ctf/type", np.full(n, CTF_TYPE, dtype=f"S{len(CTF_TYPE)}")),
        ("ctf/exp_group_id", np.maximum(group - 1, 0).astype(np.uint32)),
        ("ctf/accel_kv", column("rlnVoltage", 300.0).astype(np.float32)),
        ("ctf/cs_mm", column("rlnSphericalAberration", 2.7).astype(np.float32)),
        ("ctf/amp_contrast", column("rlnAmplitudeContrast", 0.1).astype(np.float32)),
        ("ctf/df1_A", column("rlnDefocusU", 0.0).astype(np.float32)),
        ("ctf/df2_A", column("rlnDefocusV", 0.0).astype(np.float32)),
        ("ctf/df_angle_rad", np.deg2rad(column("rlnDefocusAngle", 0.0)).astype(np.float32)),
        ("ctf/phase_shift_rad", np.deg2rad(column("rlnPhaseShift", 0.0)).astype(np.float32)),
        ("ctf/scale", column("rlnCtfScalefactor", 1.0).astype(np.float32)),
        ("ctf/scale_const", zeros(n, np.float32)),
        ("ctf/shift_A", zeros((n, 2), np.float32)),
        ("ctf/tilt_A", zeros((n, 2), np.float32)),
        ("ctf/trefoil_A", zeros((n, 2), np.float32)),
        ("ctf/tetra_A", zeros((n, 4), np.float32)),
        ("ctf/anisomag", zeros((n, 4), np.float32)),
        ("ctf/bfactor", column("rlnCtfBfactor", 0.0).astype(np.float32)),
    ]


def _location_fields(
    table: pd.DataFrame, shapes: MicrographShapes, flip_y: bool
) -> list[tuple[str, np.ndarray]]:
    for column in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"):
        if column not in table.columns:
            raise InputError(f"cannot write .cs locations: no {column} column")
    names = table["rlnMicrographName"].astype(str)
    shape = _shapes_per_row(names, shapes)
    x = table["rlnCoordinateX"].to_numpy(np.float64) / shape[:, 1]
    y = table["rlnCoordinateY"].to_numpy(np.float64) / shape[:, 0]
    if flip_y:
        y = 1.0 - y
    return [
        ("location/micrograph_uid", np.array([_name_uid(m) for m in names], dtype=np.uint64)),
        ("location/micrograph_path", fixed_bytes(names)),
        ("location/micrograph_shape", shape.astype(np.uint32)),
        ("location/center_x_frac", x.astype(np.float32)),
        ("location/center_y_frac", y.astype(np.float32)),
    ]


def _shapes_per_row(names: pd.Series, shapes: MicrographShapes) -> np.ndarray:
    """``(n, 2)`` ``[ny, nx]`` per particle from one shape or a mapping by micrograph name."""
    if isinstance(shapes, Mapping):
        missing = sorted(set(names) - set(shapes))
        if missing:
            raise InputError(f"cannot write .cs locations: no micrograph shape for {missing[0]}"
                             + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        return np.array([tuple(shapes[m]) for m in names], dtype=np.int64).reshape(-1, 2)
    shape = np.asarray(shapes, dtype=np.int64)
    if shape.shape != (2,) or np.any(shape <= 0):
        raise InputError(f"micrograph shape must be (ny, nx) > 0, got {shapes}")
    return np.broadcast_to(shape, (len(names), 2))


def _name_uid(name: str) -> int:
    """A stable 64-bit uid per micrograph name (same name, same uid, in every file)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def _alignment_fields(table: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    has_angles = all(c in table.columns for c in ANGLE_COLUMNS)
    has_2d = "rlnAnglePsi" in table.columns or all(c in table.columns for c in ORIGIN_COLUMNS)
    if not (has_angles or has_2d):
        return []
    n = len(table)
    prefix = "alignments3D/" if has_angles else "alignments2D/"
    psize = table["rlnImagePixelSize"].to_numpy(np.float64)
    origins = np.stack([table[c].astype(np.float64).fillna(0.0).to_numpy() if c in table.columns
                        else np.zeros(n) for c in ORIGIN_COLUMNS], axis=1)
    if has_angles:
        angles = [table[c].astype(np.float64).to_numpy() for c in ANGLE_COLUMNS]
        pose = euler_to_pose(*angles).astype(np.float32)
    else:
        psi = table["rlnAnglePsi"].astype(float) if "rlnAnglePsi" in table.columns else 0.0
        pose = np.deg2rad(np.broadcast_to(np.asarray(psi, dtype=np.float64), (n,)))
    fields = [
        (prefix + "pose", pose.astype(np.float32)),
        (prefix + "shift", (origins / psize[:, None]).astype(np.float32)),
        (prefix + "psize_A", psize.astype(np.float32)),
        (prefix + "class_posterior", np.ones(n, dtype=np.float32)),
        (prefix + "class", _one_based_to_zero(table, "rlnClassNumber")),
    ]
    if has_angles:
        fields.append((prefix + "split", _one_based_to_zero(table, "rlnRandomSubset")))
    return fields


def _one_based_to_zero(table: pd.DataFrame, column: str) -> np.ndarray:
    """RELION's 1-based numbers to cryoSPARC's 0-based ones (missing or < 1 -> 0)."""
    if column not in table.columns:
        return np.zeros(len(table), dtype=np.uint32)
    values = pd.to_numeric(table[column], errors="coerce").fillna(1).to_numpy(np.int64)
    return np.maximum(values - 1, 0).astype(np.uint32)
