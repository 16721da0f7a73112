"""The ``.cs`` file as a numpy structured array, and its fields as typed columns.

Loading and saving the file (numpy format; CSDAT through ``cryosparc-tools``), reading a
field as numbers, 0-based indices or text with one-line errors naming the file, packing
columns back into a structured array, and the field <-> RELION column names shared by
:mod:`.read` and :mod:`.write` (the mapping is in :mod:`cryoextract.io.cryosparc`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from cryoextract.errors import InputError, first_line
from cryoextract.io.atomic import atomic_file

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
CTF_TYPE = b"imported"  # what cryoSPARC's Import Particle Stack writes (real .cs files)

MicrographShapes = Mapping[str, tuple[int, int]] | tuple[int, int] | None


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


def is_set(data: np.ndarray, field: str) -> bool:
    """Whether a numeric field is present and not all zeros (cryoSPARC's "unset")."""
    if field not in (data.dtype.names or ()) or data[field].dtype.kind not in "biuf":
        return False
    values = np.asarray(data[field], dtype=np.float64)
    return bool(np.any(values[np.isfinite(values)] != 0))


def field_values(data: np.ndarray, field: str, path: str | os.PathLike[str]) -> np.ndarray:
    """``data[field]``; InputError naming the file when the field is missing."""
    if field not in (data.dtype.names or ()):
        raise InputError(f"no {field} in .cs file", path)
    return np.asarray(data[field])


def numbers(
    data: np.ndarray, field: str, path: str | os.PathLike[str], shape: tuple[int, ...] = (),
) -> np.ndarray:
    """``data[field]`` as float64 of shape ``(n, *shape)``; InputError when it cannot be.

    A field of the right number of values per particle in another layout (``(n, 1)`` for
    a scalar, say) is reshaped; text, complex numbers or another count are refused.
    """
    values = field_values(data, field, path)
    if values.dtype.kind not in "biuf":
        raise InputError(f"{field} holds {values.dtype} values, not numbers", path)
    expected = (len(data), *shape)
    if values.size != int(np.prod(expected)):
        got, want = int(np.prod(values.shape[1:])), int(np.prod(shape))
        raise InputError(f"{field} has {got} value{'s' * (got != 1)} per particle, "
                         f"expected {want}", path)
    return values.astype(np.float64).reshape(expected)


def indices(data: np.ndarray, field: str, path: str | os.PathLike[str]) -> np.ndarray:
    """A 0-based index or class field as int64; InputError unless whole numbers >= 0."""
    values = numbers(data, field, path)
    if not np.all(np.isfinite(values) & (values >= 0) & (values == np.round(values))):
        raise InputError(f"{field} must hold whole numbers >= 0", path)
    return values.astype(np.int64)


def strings(data: np.ndarray, field: str, path: str | os.PathLike[str]) -> np.ndarray:
    """A text field (fixed bytes, unicode or bytes/str objects) as ``str`` objects, with
    cryoSPARC export's ``>`` dropped; InputError for other values or bytes not UTF-8.

    cryoSPARC's "Export" marks paths with a ``>`` that pyem removes
    (``pyem/metadata/cryosparc2.py``: ``x.replace('>', '', 1)``); we do the same.
    """
    values = field_values(data, field, path)
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


def fixed_bytes(values: Iterable[object]) -> np.ndarray:
    """UTF-8 strings as fixed-width bytes ``S<n>`` (what real .cs files and
    ``Dataset.save`` use; ``Dataset.load`` refuses pickled ``object`` columns)."""
    encoded = [str(v).encode("utf-8") for v in values]
    width = max((len(b) for b in encoded), default=1) or 1
    return np.array(encoded, dtype=f"S{width}")


def structured(fields: list[tuple[str, np.ndarray]], n: int) -> np.ndarray:
    dtype = np.dtype([(name, values.dtype, values.shape[1:]) for name, values in fields])
    array = np.zeros(n, dtype=dtype)
    for name, values in fields:
        array[name] = values
    return array


def save_cs(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save a structured array as a ``.cs`` file (NumPy ``.npy`` format), atomically."""
    with atomic_file(path) as stream:  # a handle: np.save would append ".npy" to a name
        np.save(stream, array, allow_pickle=False)
