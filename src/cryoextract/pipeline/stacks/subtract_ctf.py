"""The CTFs and optics of a subtraction, as typed records from the STAR to the cache.

Each particle's CTF is one record of :data:`CTF_RECORD` (a structured array: the fields
of :class:`~cryoextract.ops.ctf.CtfParams` by name, then how the data were written and
which optics group's aberrations change it), built once for the job from the STAR with
RELION's defaults, as :meth:`CtfParams.from_star_row` (what extraction uses) reads a row.
The records of a batch are made distinct with ``np.unique`` (vectorised), and each
distinct one becomes a :class:`ParticleCtf` value, under which its image is computed
and cached (:class:`CtfCache`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.particles import ParticleTable
from cryoextract.ops.aberrations import OpticalAberrations, even_gamma_offset, odd_phase_factors
from cryoextract.ops.ctf import CtfParams, ctf_2d_batch

__all__ = [
    "CTF_CACHE_BYTES",
    "CTF_RECORD",
    "CtfCache",
    "GroupOptics",
    "ParticleCtf",
    "batch_ctf_images",
    "ctf_records",
    "star_ctf_records",
]

#: bytes of CTF images a process keeps for later tasks
CTF_CACHE_BYTES = 64 * 2**20
#: the :class:`CtfParams` fields, in order
CTF_FIELDS = tuple(f.name for f in dataclasses.fields(CtfParams))
#: one particle's CTF: the :class:`CtfParams` fields (float64), ``power`` 1 (plain images)
#: or 2 (CTF-premultiplied: CTF²), ``phase_flipped`` (|CTF|), and ``ctf_group``: the
#: optics group whose aberrations change the CTF (0 for the plain model, which groups
#: without such aberrations share)
CTF_RECORD = np.dtype([*((name, np.float64) for name in CTF_FIELDS),
                       ("power", np.int8), ("phase_flipped", np.bool_), ("ctf_group", np.int64)])
#: the STAR label of each field and its value when absent (None: required); as
#: :meth:`CtfParams.from_star_row` (``rlnDefocusV`` defaults to ``rlnDefocusU``)
STAR_LABELS: dict[str, tuple[str, float | None]] = {
    "defocus_u_angstrom": ("rlnDefocusU", None),
    "defocus_v_angstrom": ("rlnDefocusV", None),
    "defocus_angle_degrees": ("rlnDefocusAngle", 0.0),
    "voltage_kv": ("rlnVoltage", None),
    "spherical_aberration_mm": ("rlnSphericalAberration", None),
    "amplitude_contrast": ("rlnAmplitudeContrast", None),
    "phase_shift_degrees": ("rlnPhaseShift", 0.0),
    "bfactor_angstrom2": ("rlnCtfBfactor", 0.0),
    "scale": ("rlnCtfScalefactor", 1.0),
}
#: the reason a particle whose CTF cannot be computed is skipped
BAD_CTF = "CTF parameters not usable"


@dataclass(frozen=True)
class GroupOptics:
    """What RELION's ``ObservationModel`` adds to a prediction, per optics group (docs
    "Optical aberrations"); groups that are not keys get the plain model.

    Attributes
    ----------
    aberrations : mapping of int to OpticalAberrations
        Beam tilt, Zernike terms and magnification of the groups that have any.
    mtf_ratios : mapping of int to np.ndarray
        ``(N, N // 2 + 1)`` float32 MTF of each group over the groups' average, when they
        have different MTFs.
    """

    aberrations: Mapping[int, OpticalAberrations] = field(default_factory=dict)
    mtf_ratios: Mapping[int, np.ndarray] = field(default_factory=dict)

    def applies_to(self, group: int) -> bool:
        """Whether the group's projections differ from the plain model."""
        return group in self.aberrations or group in self.mtf_ratios

    def magnification(self, group: int) -> np.ndarray | None:
        """``(2, 2)`` ``M`` of the group, None for the identity."""
        optics = self.aberrations.get(group)
        return None if optics is None else optics.matrix

    def spectrum_factor(self, group: int, box_px: int,
                        pixel_size_angstrom: float) -> np.ndarray | None:
        """``(N, N // 2 + 1)`` factor on the group's projected spectra: the odd
        aberrations' phase times the relative MTF; None when there is neither."""
        optics = self.aberrations.get(group)
        factor = None
        if optics is not None and optics.has_odd:
            factor = _odd_phases(optics, box_px, pixel_size_angstrom)
        ratio = self.mtf_ratios.get(group)
        if ratio is not None:
            factor = ratio if factor is None else factor * ratio
        return factor

    def ctf_groups(self, groups: np.ndarray) -> np.ndarray:
        """``groups`` where the group's CTF differs from the plain model, else 0 (groups
        with plain CTFs share their cache entries)."""
        changed = [g for g, a in self.aberrations.items() if a.changes_ctf]
        return np.where(np.isin(groups, changed), groups, 0)


@dataclass(frozen=True)
class ParticleCtf:
    """A CTF as the prediction applies it; also the value its image is cached under.

    ``power`` 2 squares the CTF (CTF-premultiplied data), ``phase_flipped`` takes its
    magnitude; ``aberrations`` (those of the optics group, when they change the CTF)
    magnify it and add the even Zernike terms.
    """

    params: CtfParams
    power: int = 1
    phase_flipped: bool = False
    aberrations: OpticalAberrations | None = None

    @classmethod
    def of(cls, record: np.void, aberrations: Mapping[int, OpticalAberrations]
           ) -> ParticleCtf:
        """The value of one :data:`CTF_RECORD`."""
        params = CtfParams(**{name: float(record[name]) for name in CTF_FIELDS})
        return cls(params, int(record["power"]), bool(record["phase_flipped"]),
                   aberrations.get(int(record["ctf_group"])))


def ctf_records(params: Sequence[CtfParams], *, power: int = 1, phase_flipped: bool = False,
                ctf_group: int = 0) -> np.ndarray:
    """``(n,)`` :data:`CTF_RECORD` of given CTFs (all written the same way)."""
    records = np.zeros(len(params), dtype=CTF_RECORD)
    for name in CTF_FIELDS:
        records[name] = [getattr(p, name) for p in params]
    records["power"], records["phase_flipped"], records["ctf_group"] = (
        power, phase_flipped, ctf_group)
    return records


def star_ctf_records(table: ParticleTable, particles: pd.DataFrame, optics: GroupOptics
                     ) -> tuple[np.ndarray, dict[int, str]]:
    """Each particle's CTF record, from its row or else its optics group's.

    Returns
    -------
    records : np.ndarray
        ``(n,)`` :data:`CTF_RECORD`.
    bad : dict of int to str
        Rows whose CTF cannot be computed (a value that is not a number, a voltage that
        is not positive, an amplitude contrast outside [0, 1]) and why; their record
        holds placeholder values.

    Raises
    ------
    InputError
        A required column is missing from both the particles and the optics table.
    """
    records = np.zeros(len(particles), dtype=CTF_RECORD)
    bad: dict[int, str] = {}
    for name, (label, default) in STAR_LABELS.items():
        if name == "defocus_v_angstrom" and label not in particles.columns:
            values, text = records["defocus_u_angstrom"].copy(), None
        else:
            values, text = _row_column(table, particles, label, default)
        wrong = ~np.isfinite(values)
        if name == "voltage_kv":
            wrong |= ~(values > 0)
        elif name == "amplitude_contrast":
            wrong |= ~((values >= 0) & (values <= 1))
        for row in np.flatnonzero(wrong):
            shown = values[row] if text is None else text[row]
            bad.setdefault(int(row), f"{label} = {shown!r}")
        records[name] = np.where(wrong, _PLACEHOLDER.get(name, 0.0), values)
    premultiplied = _row_column(table, particles, "rlnCtfDataAreCtfPremultiplied", 0.0)[0]
    flipped = _row_column(table, particles, "rlnCtfDataArePhaseFlipped", 0.0)[0]
    records["power"] = np.where(premultiplied > 0, 2, 1)
    records["phase_flipped"] = flipped > 0
    records["ctf_group"] = optics.ctf_groups(particles["rlnOpticsGroup"].to_numpy(np.int64))
    return records, bad


#: values a record gets where the STAR's cannot be used (the row is skipped)
_PLACEHOLDER = {"voltage_kv": 300.0, "amplitude_contrast": 0.1, "scale": 1.0}


def _row_column(table: ParticleTable, particles: pd.DataFrame, column: str,
                default: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric column per particle row (the particle's, else its optics group's) and,
    where it came from text, that text (to name a value that is not a number)."""
    if column in particles.columns:
        raw = particles[column]
    else:
        optics = table.optics.set_index("rlnOpticsGroup")
        if column not in optics.columns:
            if default is None:
                raise InputError(f"particles have no {column} (needed for the CTF)",
                                 table.source)
            return np.full(len(particles), default, dtype=np.float64), None
        raw = particles["rlnOpticsGroup"].map(optics[column])
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    return values, raw.to_numpy(dtype=object)


def batch_ctf_images(records: np.ndarray, box_px: int, pixel_size_angstrom: float,
                     aberrations: Mapping[int, OpticalAberrations]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """CTF images of some particles, once per distinct record (and kept for later
    batches of this process, see :class:`CtfCache`).

    Returns
    -------
    table : np.ndarray
        ``(U, N, N // 2 + 1)`` float32 CTFs (``|CTF|`` for phase-flipped data, ``CTF²``
        for CTF-premultiplied data).
    which : np.ndarray
        ``(len(records),)`` index of each particle's CTF in ``table``.
    """
    unique, which = np.unique(records, return_inverse=True)
    ctfs = [ParticleCtf.of(record, aberrations) for record in unique]
    return _ctf_cache.table(ctfs, box_px, pixel_size_angstrom), which.ravel()


class CtfCache:
    """CTF images by value (:class:`ParticleCtf`, box, pixel size), least recently used
    dropped beyond a byte budget.

    The particles of a task come from many micrographs (they are grouped by viewing
    direction, not by micrograph), so the same CTFs recur from task to task.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[tuple[ParticleCtf, int, float], np.ndarray] = OrderedDict()
        self._bytes = 0

    def table(self, ctfs: Sequence[ParticleCtf], box_px: int, pixel_size_angstrom: float
              ) -> np.ndarray:
        """``(U, N, N // 2 + 1)`` float32 images of the ``ctfs``."""
        table = np.empty((len(ctfs), box_px, box_px // 2 + 1), dtype=np.float32)
        wanted = [(ctf, int(box_px), float(pixel_size_angstrom)) for ctf in ctfs]
        missing = []
        for k, key in enumerate(wanted):  # every hit copied before a store can drop it
            image = self._items.get(key)
            if image is None:
                missing.append(k)
            else:
                table[k] = image
                self._items.move_to_end(key)
        if missing:
            table[missing] = _ctf_images([ctfs[k] for k in missing], box_px,
                                         pixel_size_angstrom)
            for k in missing:
                self._store(wanted[k], table[k].copy())
        return table

    def _store(self, key: tuple[ParticleCtf, int, float], image: np.ndarray) -> None:
        self._items[key] = image
        self._bytes += image.nbytes
        while self._bytes > self.budget_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.nbytes


def _ctf_images(ctfs: Sequence[ParticleCtf], box_px: int, pixel_size_angstrom: float
                ) -> np.ndarray:
    table = np.empty((len(ctfs), box_px, box_px // 2 + 1), dtype=np.float32)
    by_optics: dict[OpticalAberrations | None, list[int]] = {}
    for k, ctf in enumerate(ctfs):
        by_optics.setdefault(ctf.aberrations, []).append(k)
    for optics, which in by_optics.items():
        extra = {}
        if optics is not None and optics.changes_ctf:
            extra = {"magnification": optics.matrix,
                     "gamma_offset": _gamma_offset(optics, box_px, pixel_size_angstrom)}
        table[which] = ctf_2d_batch([ctfs[k].params for k in which], box_px,
                                    pixel_size_angstrom, **extra)
    flipped = [k for k, ctf in enumerate(ctfs) if ctf.phase_flipped]
    if flipped:
        table[flipped] = np.abs(table[flipped])
    squared = [k for k, ctf in enumerate(ctfs) if ctf.power == 2]
    if squared:
        table[squared] *= table[squared]
    return table


@lru_cache(maxsize=32)
def _odd_phases(aberrations: OpticalAberrations, box_px: int,
                pixel_size_angstrom: float) -> np.ndarray:
    return odd_phase_factors(aberrations, box_px, pixel_size_angstrom)


@lru_cache(maxsize=32)
def _gamma_offset(aberrations: OpticalAberrations, box_px: int,
                  pixel_size_angstrom: float) -> np.ndarray:
    return even_gamma_offset(aberrations, box_px, pixel_size_angstrom)


#: this process's CTFs (each worker process has its own)
_ctf_cache = CtfCache(CTF_CACHE_BYTES)
