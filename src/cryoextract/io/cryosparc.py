"""cryoSPARC ``.cs`` particle files, converted to and from RELION-named tables.

A ``.cs`` file is a numpy structured array saved with ``np.save`` (magic ``\\x93NUMPY``) or,
from cryoSPARC v4.x on, the lz4 "CSDAT" stream format (magic ``\\x95CSDAT``), which is read
through ``cryosparc-tools`` (``cryosparc.dataset.Dataset.load``) when that is installed.
Every conversion below is described, with its evidence, in docs/conventions.md, section
"cryoSPARC and rotations". In short, for one particle row:

===============================  ==========================================================
cryoSPARC                        RELION column
===============================  ==========================================================
``blob/path``, ``blob/idx``      ``rlnImageName = f"{idx + 1:06d}@{path}"`` (idx 0-based)
``blob/psize_A``, ``blob/shape`` optics ``rlnImagePixelSize``, ``rlnImageSize``
``location/micrograph_path``     ``rlnMicrographName``
``location/center_x_frac``       ``rlnCoordinateX = x_frac * nx``, ``micrograph_shape =
                                 [ny, nx]``
``location/center_y_frac``       ``rlnCoordinateY = y_frac * ny`` (``flip_y``:
                                 ``(1 - y_frac) * ny``)
``ctf/df1_A``, ``df2_A``         ``rlnDefocusU``, ``rlnDefocusV``
``ctf/df_angle_rad``             ``rlnDefocusAngle`` (degrees)
``ctf/phase_shift_rad``          ``rlnPhaseShift`` (degrees)
``ctf/accel_kv``, ``cs_mm``,     optics ``rlnVoltage``, ``rlnSphericalAberration``,
``amp_contrast``                 ``rlnAmplitudeContrast``
``ctf/bfactor``, ``ctf/scale``   ``rlnCtfBfactor``, ``rlnCtfScalefactor``
``alignments3D/pose``            ``rlnAngleRot/Tilt/Psi`` with ``euler_to_matrix(rot, tilt,
                                 psi) == rodrigues_to_matrix(pose).T``
``alignments2D/pose``            ``rlnAnglePsi = degrees(pose)``
``alignments*/shift`` [x, y]     ``rlnOriginX/YAngst = shift * alignments*/psize_A``
``alignments*/split``            ``rlnRandomSubset = split + 1`` (3D only)
``alignments*/class``            ``rlnClassNumber = class + 1``
``filament/*``                   helical columns (``io/pickformats/filaments.py``)
===============================  ==========================================================
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, first_line
from cryoextract.io.atomic import atomic_file
from cryoextract.io.pickformats.filaments import cs_filament_columns, cs_filament_fields
from cryoextract.ops.rotations import euler_to_pose, pose_to_euler

NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"

#: ``ctf/*`` field -> (RELION column, factor from the .cs unit to RELION's)
CTF_FIELDS: dict[str, tuple[str, float]] = {
    "ctf/df1_A": ("rlnDefocusU", 1.0),
    "ctf/df2_A": ("rlnDefocusV", 1.0),
    "ctf/df_angle_rad": ("rlnDefocusAngle", 180.0 / np.pi),
    "ctf/phase_shift_rad": ("rlnPhaseShift", 180.0 / np.pi),
    "ctf/bfactor": ("rlnCtfBfactor", 1.0),
    "ctf/scale": ("rlnCtfScalefactor", 1.0),
    "ctf/accel_kv": ("rlnVoltage", 1.0),
    "ctf/cs_mm": ("rlnSphericalAberration", 1.0),
    "ctf/amp_contrast": ("rlnAmplitudeContrast", 1.0),
}
#: cryoSPARC's higher-order CTF terms (Global CTF Refinement); their conventions have no
#: oracle here, so they are not converted, only reported when set
HIGHER_ORDER_CTF_FIELDS = ("ctf/tilt_A", "ctf/trefoil_A", "ctf/tetra_A", "ctf/shift_A",
                           "ctf/anisomag")
#: CTF columns that RELION 3.1 keeps in the optics table
OPTICS_CTF_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_CTF_TYPE = b"imported"  # what cryoSPARC's Import Particle Stack writes (real .cs files)

MicrographShapes = Mapping[str, tuple[int, int]] | tuple[int, int] | None


# --------------------------------------------------------------------------- reading


def load_cs(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``.cs`` file into a numpy structured array.

    Parameters
    ----------
    path
        ``.cs`` file, numpy format or (with ``cryosparc-tools`` installed) CSDAT.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` structured array, one field per ``.cs`` column (``"blob/path"`` ...);
        strings as fixed-width bytes.

    Raises
    ------
    InputError
        Missing, unreadable or not a ``.cs`` file; CSDAT without ``cryosparc-tools``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("cryoSPARC .cs file not found", path)
    try:
        with open(path, "rb") as stream:
            magic = stream.read(6)
    except OSError as exc:
        raise InputError(f"cannot read .cs file ({exc})", path) from exc
    if magic == NUMPY_MAGIC:
        data = _load_numpy(path)
    elif magic == CSDAT_MAGIC:
        data = _load_csdat(path)
    else:
        raise InputError("not a cryoSPARC .cs file (neither numpy nor CSDAT format)", path)
    if data.dtype.names is None or data.ndim != 1:
        raise InputError("not a cryoSPARC .cs file (not a 1-D table of named fields)", path)
    return data


def _load_numpy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, max_header_size=2**30)
    except MemoryError:
        raise
    except Exception as exc:  # numpy raises SyntaxError, tokenize.TokenError... on a bad header
        raise InputError(f"unreadable .cs file ({_summary(exc)})", path) from exc


def _summary(exc: BaseException) -> str:
    """One line about ``exc``, its type first."""
    line = first_line(exc)
    return type(exc).__name__ if line == type(exc).__name__ else f"{type(exc).__name__}: {line}"


def _load_csdat(path: Path) -> np.ndarray:
    try:
        from cryosparc.dataset import Dataset
    except ImportError as exc:
        raise InputError(
            "this .cs file is in cryoSPARC's CSDAT format, which needs cryosparc-tools "
            "(pip install cryosparc-tools)", path,
        ) from exc
    try:
        return Dataset.load(path).to_records(fixed=True)
    except Exception as exc:  # cryosparc-tools wraps every failure in DatasetLoadError
        raise InputError(f"unreadable CSDAT .cs file ({_summary(exc)})", path) from exc


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
    unconverted = [f for f in HIGHER_ORDER_CTF_FIELDS if _is_set(data, f)]
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
        columns["rlnMicrographName"] = _strings(data, "location/micrograph_path", path)
    if "location/center_x_frac" in names or "location/center_y_frac" in names:
        columns.update(_coordinates(data, path, micrograph_shape, flip_y))
    for field, (column, factor) in CTF_FIELDS.items():
        if field in names:
            columns[column] = _numbers(data, field, path) * factor
    columns.update(_alignments(data, path))
    columns.update(cs_filament_columns(data, flip_y=flip_y))
    table = pd.DataFrame(columns, index=pd.RangeIndex(len(data)))
    if "blob/psize_A" in names:
        table["rlnImagePixelSize"] = _numbers(data, "blob/psize_A", path)
    if "blob/shape" in names:
        table["rlnImageSize"] = _box_sizes(data, path)
    return _assign_optics_groups(table, data, path)


def _is_set(data: np.ndarray, field: str) -> bool:
    """Whether a numeric field is present and not all zeros (cryoSPARC's "unset")."""
    if field not in (data.dtype.names or ()) or data[field].dtype.kind not in "biuf":
        return False
    values = np.asarray(data[field], dtype=np.float64)
    return bool(np.any(values[np.isfinite(values)] != 0))


def _field(data: np.ndarray, field: str, path: str | os.PathLike[str]) -> np.ndarray:
    """``data[field]``; InputError naming the file when the field is missing."""
    if field not in (data.dtype.names or ()):
        raise InputError(f"no {field} in .cs file", path)
    return np.asarray(data[field])


def _numbers(
    data: np.ndarray, field: str, path: str | os.PathLike[str], shape: tuple[int, ...] = (),
) -> np.ndarray:
    """``data[field]`` as float64 of shape ``(n, *shape)``; InputError when it cannot be.

    A field of the right number of values per particle in another layout (``(n, 1)`` for
    a scalar, say) is reshaped; text, complex numbers or another count are refused.
    """
    values = _field(data, field, path)
    if values.dtype.kind not in "biuf":
        raise InputError(f"{field} holds {values.dtype} values, not numbers", path)
    expected = (len(data), *shape)
    if values.size != int(np.prod(expected)):
        got, want = int(np.prod(values.shape[1:])), int(np.prod(shape))
        raise InputError(f"{field} has {got} value{'s' * (got != 1)} per particle, "
                         f"expected {want}", path)
    return values.astype(np.float64).reshape(expected)


def _indices(data: np.ndarray, field: str, path: str | os.PathLike[str]) -> np.ndarray:
    """A 0-based index or class field as int64; InputError unless whole numbers >= 0."""
    values = _numbers(data, field, path)
    if not np.all(np.isfinite(values) & (values >= 0) & (values == np.round(values))):
        raise InputError(f"{field} must hold whole numbers >= 0", path)
    return values.astype(np.int64)


def _strings(data: np.ndarray, field: str, path: str | os.PathLike[str]) -> np.ndarray:
    """A text field (fixed bytes, unicode or bytes/str objects) as ``str`` objects, with
    cryoSPARC export's ``>`` dropped; InputError for other values or bytes not UTF-8.

    cryoSPARC's "Export" marks paths with a ``>`` that pyem removes
    (``pyem/metadata/cryosparc2.py``: ``x.replace('>', '', 1)``); we do the same.
    """
    values = _field(data, field, path)
    if values.dtype.kind not in "SUO" or values.shape != (len(data),):
        raise InputError(f"{field} is not one text value per particle ({values.dtype}, "
                         f"shape {values.shape})", path)
    out = []
    for value in values:
        if isinstance(value, bytes | np.bytes_):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{field} {bytes(value)!r} is not UTF-8 text", path) from exc
        elif not isinstance(value, str):
            raise InputError(f"{field} holds a {type(value).__name__}, not text", path)
        out.append(value.replace(">", "", 1))
    return np.array(out, dtype=object)


def _image_names(data: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    paths = _strings(data, "blob/path", path)
    indices = _indices(data, "blob/idx", path) + 1
    return np.array([f"{i:06d}@{p}" for i, p in zip(indices, paths, strict=True)], dtype=object)


def _box_sizes(data: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    shape = _numbers(data, "blob/shape", path, (2,))
    if np.any(shape[:, 0] != shape[:, 1]) or not np.all(np.isfinite(shape)):
        raise InputError("blob/shape is not square [n, n] for every particle", path)
    return shape[:, 0].astype(np.int64)


def _coordinates(
    data: np.ndarray, path: str | os.PathLike[str], micrograph_shape: tuple[int, int] | None,
    flip_y: bool,
) -> dict[str, np.ndarray]:
    """``rlnCoordinateX/Y`` (micrograph pixels) from the fractional locations."""
    shape = _micrograph_shapes(data, path, micrograph_shape)
    x_frac = _numbers(data, "location/center_x_frac", path)
    y_frac = _numbers(data, "location/center_y_frac", path)
    if flip_y:
        y_frac = 1.0 - y_frac
    return {"rlnCoordinateX": x_frac * shape[:, 1], "rlnCoordinateY": y_frac * shape[:, 0]}


def _micrograph_shapes(
    data: np.ndarray, path: str | os.PathLike[str], micrograph_shape: tuple[int, int] | None,
) -> np.ndarray:
    """``(n, 2)`` float ``[ny, nx]`` per particle: the given shape, else the file's."""
    if "location/micrograph_shape" in data.dtype.names:
        stored = _numbers(data, "location/micrograph_shape", path, (2,))
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
            euler = pose_to_euler(_numbers(data, prefix + "pose", path, (3,)))
            out.update(zip(ANGLE_COLUMNS, euler.T, strict=True))
        else:
            out["rlnAnglePsi"] = np.rad2deg(_numbers(data, prefix + "pose", path))
    if prefix + "shift" in names:
        psize_field = prefix + "psize_A" if prefix + "psize_A" in names else "blob/psize_A"
        if psize_field in names:
            shift = _numbers(data, prefix + "shift", path, (2,))
            shift_a = shift * _numbers(data, psize_field, path)[:, None]
            out.update(zip(ORIGIN_COLUMNS, shift_a.T, strict=True))
    if prefix + "class" in names:
        out["rlnClassNumber"] = _indices(data, prefix + "class", path) + 1
    if prefix == "alignments3D/" and "alignments3D/split" in names:
        out["rlnRandomSubset"] = _indices(data, "alignments3D/split", path) + 1
    return out


def _assign_optics_groups(
    table: pd.DataFrame, data: np.ndarray, path: str | os.PathLike[str],
) -> pd.DataFrame:
    """``rlnOpticsGroup`` 1.. (first appearance) and ``rlnOpticsGroupName`` per row."""
    group_id = (_indices(data, "ctf/exp_group_id", path) if "ctf/exp_group_id" in
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


# --------------------------------------------------------------------------- writing


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
    array = _structured(fields, n)
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
        ("blob/path", _fixed_bytes(split[1])),
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
        ("ctf/type", np.full(n, _CTF_TYPE, dtype=f"S{len(_CTF_TYPE)}")),
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
        ("location/micrograph_path", _fixed_bytes(names)),
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


def _fixed_bytes(values: pd.Series) -> np.ndarray:
    """UTF-8 strings as fixed-width bytes ``S<n>`` (what real .cs files and
    ``Dataset.save`` use; ``Dataset.load`` refuses pickled ``object`` columns)."""
    encoded = [str(v).encode("utf-8") for v in values]
    width = max((len(b) for b in encoded), default=1) or 1
    return np.array(encoded, dtype=f"S{width}")


def _structured(fields: list[tuple[str, np.ndarray]], n: int) -> np.ndarray:
    dtype = np.dtype([(name, values.dtype, values.shape[1:]) for name, values in fields])
    array = np.zeros(n, dtype=dtype)
    for name, values in fields:
        array[name] = values
    return array


def save_cs(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save a structured array as a ``.cs`` file (NumPy ``.npy`` format), atomically."""
    with atomic_file(path) as stream:  # a handle: np.save would append ".npy" to a name
        np.save(stream, array, allow_pickle=False)
