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
    one of the same particle.
    """

    symmetry: str = "C1"
    vectors_angstrom: tuple[tuple[float, float, float], ...] = ()
    align: bool = False
    min_distance_angstrom: float | None = None

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
            raise ParameterError("--subparticle-min-distance must be > 0, got "
                                 f"{self.min_distance_angstrom}")

    @property
    def expands(self) -> bool:
        """Whether the table changes at all."""
        return bool(self.vectors_angstrom) or self.symmetry.strip().upper() != "C1"


@dataclass(frozen=True)
class Expansion:
    """The expanded table and what was dropped on the way (for the job's warnings)."""

    picks: pd.DataFrame
    overlapping: int = 0

    @property
    def warnings(self) -> list[str]:
        if not self.overlapping:
            return []
        return [f"{self.overlapping} sub-particles dropped: closer than "
                "--subparticle-min-distance to another of their particle"]


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
    from cryoextract.ops.symmetry import expand_orientations, symmetry_operators

    missing = [c for c in _ANGLES if c not in picks.columns]
    if missing:
        raise InputError("symmetry expansion and sub-particles need particle orientations; "
                         f"missing {', '.join(missing)}", source)
    angles = picks[list(_ANGLES)].to_numpy(np.float64)
    if not np.all(np.isfinite(angles)):
        row = int(np.flatnonzero(~np.all(np.isfinite(angles), axis=1))[0]) + 1
        raise InputError(f"particle {row}: orientation is not a number", source)
    operators = symmetry_operators(spec.symmetry)  # (m, 3, 3)
    vectors = np.asarray(spec.vectors_angstrom or [(0.0, 0.0, 0.0)], dtype=np.float64)
    n, m, k = len(picks), len(operators), len(vectors)
    composed = expand_orientations(euler_to_matrix(*angles.T), operators)  # (n, m, 3, 3)
    copy_angles = matrix_to_euler(composed)
    copy_angles[:, 0] = angles  # copy 1 is the particle's own row, angles as written
    # rows: particle, then copy, then vector
    source_row = np.repeat(np.arange(n), m * k)
    copy = np.tile(np.repeat(np.arange(m), k), n)
    vector = np.tile(np.arange(k), n * m)
    matrices = composed[source_row, copy]  # (n*m*k, 3, 3)
    projected = (matrices @ vectors[vector][..., None])[:, :2, 0]  # (rows, 2) Å
    table = picks.iloc[source_row].reset_index(drop=True)
    origins = np.zeros((len(table), 2))
    if all(c in table.columns for c in _ORIGINS):
        origins = np.nan_to_num(table[list(_ORIGINS)].to_numpy(np.float64))
    final = copy_angles[source_row, copy]
    if spec.align:
        final = matrix_to_euler(aligned_orientations(matrices, vectors[vector]))
    for column, values in zip(_ANGLES, final.T, strict=True):
        table[column] = values
    if spec.vectors_angstrom:
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
) -> tuple[SubparticleSpec | None, tuple[float, float, float] | None]:
    """The extract command's sub-particle options as ``(spec, recenter_xyz_angstrom)``.

    One ``--recenter-xyz`` alone is today's re-centring on a point (no expansion, no
    trace columns): ``(None, vector)``. Anything more gives a :class:`SubparticleSpec`.

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
    if (symmetry is None and vectors_file is None and not align
            and min_distance_angstrom is None and len(vectors) <= 1):
        return None, (vectors[0] if vectors else None)  # type: ignore[return-value]
    spec = SubparticleSpec(symmetry or "C1", tuple(vectors),  # type: ignore[arg-type]
                           align, min_distance_angstrom)
    return spec, None
