"""Point-group symmetry operators as RELION 3.1 builds them (``src/symmetries.cpp``).

Pure numpy, float64. Only the proper point groups (rotations only): ``C<n>``, ``D<n>``,
``T``, ``O``, ``I`` and its settings ``I1`` .. ``I4`` (``I`` is ``I2``). The conventions
(axes of each group, the order of the operators) are RELION's, so that a symmetry
expansion gives the rows ``relion_particle_symmetry_expand --sym`` writes, in its order:

- each group is written as generators ``rot_axis FOLD X Y Z`` (``fill_symmetry_class``);
  a generator contributes ``R(k * 360 / FOLD, axis).T`` for ``k = 1 .. FOLD - 1``, with
  ``R(a, axis)`` the right-handed rotation by ``a`` degrees about ``axis``
  (``rotation3DMatrix``; RELION stores its transpose), entries below 1e-6 set to 0;
- the list is closed under products (``compute_subgroup``): the pairs ``(i, j)`` of the
  list are visited shell by shell (``found_not_tried``: for ``n = 0, 1, ...``, first
  ``(0, n) .. (n, n)``, then ``(n, n-1) .. (n, 0)``), ``M_i @ M_j`` appended when it is
  neither the identity nor already listed (entries within 1e-6);
- copy 0 of a particle is the particle itself, copy ``k >= 1`` has the matrix
  ``A @ M_{k-1}`` (``Euler_apply_transf`` with ``L`` the identity), ``A`` its RELION
  Euler matrix (:func:`cryoextract.ops.rotations.euler_to_matrix`).

Copy ``k`` sees the reference rotated by ``S_k = M_{k-1}``: a point ``v`` of the
reference projects for that copy where ``S_k @ v`` projects for the particle itself.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

from cryoextract.ops.rotations import euler_to_matrix

#: RELION's XMIPP_EQUAL_ACCURACY (double precision build)
_ACCURACY = 1e-6

#: the generators of each group, as RELION's ``fill_symmetry_class`` writes them
_ICOSAHEDRAL = {
    "I1": ((2, (1.0, 0.0, 0.0)), (5, (0.85065080702670, 0.0, -0.5257311142635)),
           (3, (0.9341723640, 0.3568220765, 0.0))),
    "I2": ((2, (0.0, 0.0, 1.0)), (5, (0.525731114, 0.0, 0.850650807)),
           (3, (0.0, 0.356822076, 0.934172364))),
    "I3": ((2, (-0.5257311143, 0.0, 0.8506508070)), (5, (0.0, 0.0, 1.0)),
           (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428))),
    "I4": ((2, (0.5257311143, 0.0, 0.8506508070)),
           (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
           (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428))),
}

#: the names :func:`symmetry_operators` accepts (n >= 1)
SUPPORTED = "C<n>, D<n>, T, O, I, I1, I2, I3, I4"


def symmetry_generators(name: str) -> tuple[tuple[int, tuple[float, float, float]], ...]:
    """``(fold, axis)`` generators of a proper point group, as RELION writes them.

    Raises
    ------
    ValueError
        For a name that is not one of :data:`SUPPORTED` (letter case is ignored, as
        RELION does); the message says which groups are supported.
    """
    key = name.strip().upper()
    match = re.fullmatch(r"([CD])(\d{1,2})", key)
    if match:
        order = int(match.group(2))
        if order < 1:
            raise ValueError(f"symmetry {name!r}: the order must be at least 1")
        if match.group(1) == "C":
            return ((order, (0.0, 0.0, 1.0)),)
        dihedral = ((2, (1.0, 0.0, 0.0)),)
        return (((order, (0.0, 0.0, 1.0)),) if order > 1 else ()) + dihedral
    if key == "T":
        return ((3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350)))
    if key == "O":
        return ((3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0)))
    if key in ("I", *_ICOSAHEDRAL):
        return _ICOSAHEDRAL["I2" if key == "I" else key]
    raise ValueError(f"unknown or unsupported symmetry {name!r} (supported: {SUPPORTED}; "
                     "groups with mirrors or an inversion are not)")


def axis_rotation(angle_deg: float, axis: tuple[float, float, float]) -> NDArray:
    """``(3, 3)`` right-handed rotation by ``angle_deg`` about ``axis`` (any length).

    RELION's ``rotation3DMatrix(ang, axis)``: ``A.T @ R_z(ang) @ A`` with ``A`` taking the
    axis to +z; the result does not depend on which such ``A``.
    """
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    theta = np.deg2rad(angle_deg)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(theta) * k + (1.0 - np.cos(theta)) * (k @ k)


def symmetry_operators(name: str) -> NDArray:
    """The operators of a point group, identity first, in RELION's order.

    Parameters
    ----------
    name : str
        ``C4``, ``D7``, ``I`` ... (:data:`SUPPORTED`).

    Returns
    -------
    numpy.ndarray
        ``(order, 3, 3)`` float64 rotations ``S_k``: ``S_0`` the identity, ``S_k`` for
        ``k >= 1`` RELION's ``SymList`` matrix ``k - 1`` (module docstring). ``C1`` gives
        the identity alone.

    Raises
    ------
    ValueError
        Unknown or unsupported group (:func:`symmetry_generators`).
    """
    listed: list[NDArray] = []
    for fold, axis in symmetry_generators(name):
        for k in range(1, fold):
            matrix = axis_rotation(k * 360.0 / fold, axis).T
            listed.append(np.where(np.abs(matrix) < _ACCURACY, 0.0, matrix))
    _close(listed)
    return np.stack([np.eye(3), *listed])


def _close(listed: list[NDArray]) -> None:
    """RELION's ``compute_subgroup``: append products until the list is a group."""
    for i, j in _shell_pairs(listed):
        product = listed[i] @ listed[j]
        if np.all(np.abs(product - np.eye(3)) <= _ACCURACY):
            continue
        if any(np.all(np.abs(product - m) <= _ACCURACY) for m in listed):
            continue
        listed.append(np.where(np.abs(product) < _ACCURACY, 0.0, product))
        if len(listed) > 120:  # no finite rotation group of ours is larger
            raise ValueError("symmetry generators do not close into a finite group")


def _shell_pairs(listed: list[NDArray]):
    """``(i, j)`` in ``found_not_tried``'s order over a list that may grow meanwhile."""
    n = 0
    while n < len(listed):
        for i in range(n + 1):
            yield i, n
        for j in range(n - 1, -1, -1):
            yield n, j
        n += 1


def expand_orientations(matrices: NDArray, operators: NDArray) -> NDArray:
    """Every particle's orientation under every symmetry copy.

    Parameters
    ----------
    matrices : numpy.ndarray
        ``(n, 3, 3)`` particle orientations (RELION Euler matrices ``A``).
    operators : numpy.ndarray
        ``(m, 3, 3)`` from :func:`symmetry_operators`.

    Returns
    -------
    numpy.ndarray
        ``(n, m, 3, 3)``: ``A_i @ S_k``, RELION's composed orientation of copy ``k``.
    """
    return np.asarray(matrices)[:, None] @ np.asarray(operators)[None]


def helical_steps(nr_asu: int) -> NDArray:
    """The asymmetric units of a helical expansion, in units of the rise (float64).

    ``relion_particle_symmetry_expand --helix --asu N``: from ``-((N - 1) // 2)`` to
    ``N // 2`` (C's division, here of non-negative numbers), e.g. ``-1, 0, 1, 2`` for 4.
    """
    if nr_asu < 2:
        raise ValueError(f"a helical expansion needs at least 2 asymmetric units, got {nr_asu}")
    return np.arange(-((nr_asu - 1) // 2), nr_asu // 2 + 1, dtype=np.float64)


def helical_operators(steps: NDArray, twist_deg: float, rise_angstrom: float
                      ) -> tuple[NDArray, NDArray]:
    """Rotations and translations of the helical copies (RELION's ``--helix`` expansion).

    Copy ``z`` (a step of :func:`helical_steps`) has ``rot - z * twist`` (RELION subtracts
    the twist from rlnAngleRot), i.e. ``A @ S`` with ``S = euler_to_matrix(-z * twist, 0,
    0)``, and its centre ``z * rise`` along the reference's z axis (RELION adds
    ``sin(tilt) * z * rise * (cos(-psi), sin(-psi))`` to the origins: the projection of
    ``(0, 0, z * rise)`` taken off them).

    Returns
    -------
    tuple of numpy.ndarray
        ``(m, 3, 3)`` operators ``S`` and ``(m, 3)`` translations in Å.
    """
    steps = np.asarray(steps, dtype=np.float64)
    operators = euler_to_matrix(-steps * twist_deg, np.zeros_like(steps), np.zeros_like(steps))
    translations = np.zeros((len(steps), 3))
    translations[:, 2] = steps * rise_angstrom
    return operators, translations
