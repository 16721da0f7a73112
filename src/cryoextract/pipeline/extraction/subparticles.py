"""Symmetry expansion and sub-particles: one pass over the refined particles table before
planning, so that everything downstream (placement, edges, binning, CTF, stacks, resume)
treats each sub-particle as a particle (docs/conventions.md, "Sub-particles").

Each particle becomes one row per symmetry copy and vector, in that order (particle,
then copy as ``relion_particle_symmetry_expand`` writes them, then vector): the copy's
orientation ``A @ S_k`` as RELION's Euler angles (copy 1 keeps the particle's own angles,
as RELION copies that row), and the vector folded into the origins as
``relion_preprocess --recenter_x/y/z`` does (``origin - (A S_k v)[:2]``), so that the
ordinary re-centring boxes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError

#: trace columns: 1-based row of the particle in the input table, symmetry copy (1: the
#: particle itself, then RELION's order), vector (1-based, in the order given)
SOURCE_PARTICLE = "ceSourceParticle"
SYMMETRY_COPY = "ceSymmetryCopy"
SUBPARTICLE = "ceSubparticle"
TRACE_COLUMNS = (SOURCE_PARTICLE, SYMMETRY_COPY, SUBPARTICLE)

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_ORIGINS = ("rlnOriginXAngst", "rlnOriginYAngst")


@dataclass(frozen=True)
class SubparticleSpec:
    """What to expand each particle into.

    ``symmetry`` is a point group (``C1``: none; :data:`cryoextract.ops.symmetry.SUPPORTED`);
    ``vectors_angstrom`` the sub-particle vectors in the reference frame, Å from its
    centre (none: the expanded particles themselves); ``align`` rotates each
    sub-particle's orientation so that its vector points along z; ``min_distance_angstrom``
    drops a sub-particle whose projected centre is closer than this to an earlier kept
    one of the same particle. ``helical_twist_deg`` (with ``helical_rise_angstrom`` and
    ``helical_asu`` units) asks for RELION's helical expansion instead of a point group.
    """

    symmetry: str = "C1"
    vectors_angstrom: tuple[tuple[float, float, float], ...] = ()
    align: bool = False
    min_distance_angstrom: float | None = None
    helical_twist_deg: float | None = None
    helical_rise_angstrom: float | None = None
    helical_asu: int = 1

    def __post_init__(self) -> None:
        from cryoextract.ops.symmetry import symmetry_generators

        try:
            symmetry_generators(self.symmetry)
        except ValueError as exc:
            raise ParameterError(f"--symmetry-expand: {exc}") from None
        for vector in self.vectors_angstrom:
            if len(vector) != 3 or not all(np.isfinite(vector)):
                raise ParameterError(f"a sub-particle vector is three finite numbers (Å), "
                                     f"got {vector!r}")
        if self.align and (not self.vectors_angstrom
                           or any(not any(v) for v in self.vectors_angstrom)):
            raise ParameterError("--align-subparticles needs non-zero sub-particle vectors")
        if self.min_distance_angstrom is not None and not self.min_distance_angstrom > 0:
            raise ParameterError("the sub-particles' minimum distance must be > 0, got "
                                 f"{self.min_distance_angstrom}")
        self._check_helical()

    @property
    def helical(self) -> bool:
        """A helical expansion (RELION's ``--helix``) rather than a point group."""
        return self.helical_twist_deg is not None

    def _check_helical(self) -> None:
        if not self.helical:
            if self.helical_asu != 1:
                raise ParameterError("--helical-expand-asu needs --helical-twist-deg")
            return
        if self.symmetry.strip().upper() != "C1":
            raise ParameterError("give --symmetry-expand or --helical-twist-deg, not both")
        values = (self.helical_twist_deg, self.helical_rise_angstrom)
        if self.helical_rise_angstrom is None or not all(np.isfinite(values)):
            raise ParameterError("a helical expansion needs a finite --helical-twist-deg "
                                 "and --helical-rise-angstrom")
        if isinstance(self.helical_asu, bool) or int(self.helical_asu) != self.helical_asu \
                or self.helical_asu < 2:
            raise ParameterError("--helical-expand-asu must be an integer >= 2, got "
                                 f"{self.helical_asu}")


@dataclass(frozen=True)
class Expansion:
    """The expanded table and what was dropped on the way (for the job's warnings)."""

    picks: pd.DataFrame
    overlapping: int = 0

    @property
    def warnings(self) -> list[str]:
        if not self.overlapping:
            return []
        return [f"{self.overlapping} sub-particles dropped: closer than the minimum "
                "distance to another of their particle"]


def expand_subparticles(picks: pd.DataFrame, spec: SubparticleSpec, source: str) -> Expansion:
    """One row per particle, symmetry copy and vector (module docstring).

    Parameters
    ----------
    picks : pandas.DataFrame
        The refined particles (``rlnAngleRot/Tilt/Psi`` needed; ``rlnOriginX/YAngst``
        taken as 0 when absent).
    spec : SubparticleSpec
        What to expand into.
    source : str
        The file the picks come from, for error messages.

    Raises
    ------
    InputError
        Particles without orientations (one line naming ``source``).
    """
    from cryoextract.ops.rotations import euler_to_matrix, matrix_to_euler
    from cryoextract.ops.subparticles import aligned_orientations, separated
    from cryoextract.ops.symmetry import (
        expand_orientations,
        helical_operators,
        helical_steps,
        symmetry_operators,
    )

    missing = [c for c in _ANGLES if c not in picks.columns]
    if missing:
        raise InputError("symmetry expansion and sub-particles need particle orientations; "
                         f"missing {', '.join(missing)}", source)
    angles = picks[list(_ANGLES)].to_numpy(np.float64)
    if not np.all(np.isfinite(angles)):
        row = int(np.flatnonzero(~np.all(np.isfinite(angles), axis=1))[0]) + 1
        raise InputError(f"particle {row}: orientation is not a number", source)
    if spec.helical:
        steps = helical_steps(spec.helical_asu)
        operators, shifts = helical_operators(steps, float(spec.helical_twist_deg or 0.0),
                                              float(spec.helical_rise_angstrom or 0.0))
    else:
        operators = symmetry_operators(spec.symmetry)  # (m, 3, 3)
        shifts = np.zeros((len(operators), 3))  # (m, 3) Å, along the helical axis
    vectors = np.asarray(spec.vectors_angstrom or [(0.0, 0.0, 0.0)], dtype=np.float64)
    n, m, k = len(picks), len(operators), len(vectors)
    composed = expand_orientations(euler_to_matrix(*angles.T), operators)  # (n, m, 3, 3)
    if spec.helical:  # RELION: rot - z * twist, written as it comes
        copy_angles = np.repeat(angles[:, None, :], m, axis=1)
        copy_angles[..., 0] -= steps * float(spec.helical_twist_deg or 0.0)
    else:
        copy_angles = matrix_to_euler(composed)
        copy_angles[:, 0] = angles  # copy 1 is the particle's own row, angles as written
    # rows: particle, then copy, then vector
    source_row = np.repeat(np.arange(n), m * k)
    copy = np.tile(np.repeat(np.arange(m), k), n)
    vector = np.tile(np.arange(k), n * m)
    matrices = composed[source_row, copy]  # (n*m*k, 3, 3)
    # the centre: the copy's shift along the helix (S leaves z alone) and its vector
    projected = (matrices @ (vectors[vector] + shifts[copy])[..., None])[:, :2, 0]  # Å
    table = picks.iloc[source_row].reset_index(drop=True)
    origins = np.zeros((len(table), 2))
    if all(c in table.columns for c in _ORIGINS):
        origins = np.nan_to_num(table[list(_ORIGINS)].to_numpy(np.float64))
    final = copy_angles[source_row, copy]
    if spec.align:
        final = matrix_to_euler(aligned_orientations(matrices, vectors[vector]))
    for column, values in zip(_ANGLES, final.T, strict=True):
        table[column] = values
    if spec.vectors_angstrom or spec.helical:
        for column, values in zip(_ORIGINS, (origins - projected).T, strict=True):
            table[column] = values
    table[SOURCE_PARTICLE] = source_row + 1
    table[SYMMETRY_COPY] = copy + 1
    table[SUBPARTICLE] = vector + 1
    dropped = 0
    if spec.min_distance_angstrom is not None:
        keep = separated(source_row, projected, spec.min_distance_angstrom)
        dropped = int(np.count_nonzero(~keep))
        table = table[keep].reset_index(drop=True)
    return Expansion(table, dropped)


def subparticle_options(
    symmetry: str | None,
    recenter_xyz: Sequence[Sequence[float | str]] | None,
    vectors_file: str | None,
    align: bool,
    min_distance_angstrom: float | None,
    *,
    helical_twist_deg: float | None = None,
    helical_rise_angstrom: float | None = None,
    helical_asu: int = 1,
) -> tuple[SubparticleSpec | None, tuple[float, float, float] | None]:
    """The extract command's sub-particle options as ``(spec, recenter_xyz_angstrom)``.

    One ``--recenter-xyz`` alone is today's re-centring on a point (no expansion, no
    trace columns): ``(None, vector)``. Anything more gives a :class:`SubparticleSpec`.
    The rise counts for a helical expansion only with a twist.

    Raises
    ------
    ParameterError
        Vectors given both ways, or a bad option value.
    InputError
        A vector file that cannot be read (one line naming it).
    """
    try:
        vectors = [tuple(float(x) for x in v) for v in (recenter_xyz or [])]
    except (TypeError, ValueError):
        raise ParameterError(f"--recenter-xyz takes three numbers (X Y Z in Å), got "
                             f"{' '.join(str(x) for v in recenter_xyz or [] for x in v)}"
                             ) from None
    if vectors_file is not None:
        if vectors:
            raise ParameterError("give the sub-particle vectors with --recenter-xyz or "
                                 "--subparticles, not both")
        from cryoextract.io.subparticles import read_subparticle_vectors

        vectors = list(read_subparticle_vectors(vectors_file))
    if (symmetry is None and vectors_file is None and not align and helical_asu == 1
            and helical_twist_deg is None and min_distance_angstrom is None
            and len(vectors) <= 1):
        return None, (vectors[0] if vectors else None)  # type: ignore[return-value]
    helical = helical_twist_deg is not None
    spec = SubparticleSpec(symmetry or "C1", tuple(vectors),  # type: ignore[arg-type]
                           align, min_distance_angstrom, helical_twist_deg,
                           helical_rise_angstrom if helical else None, helical_asu)
    return spec, None
