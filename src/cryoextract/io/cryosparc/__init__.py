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

The package: :mod:`.fields` (the file as a structured array, its fields as typed columns,
the names shared by both directions), :mod:`.read` (``.cs`` -> RELION tables) and
:mod:`.write` (RELION tables -> ``.cs``). The poses go through
:mod:`cryoextract.ops.rotations`, the one import of ``ops/`` that ``io/`` has
(docs/conventions.md, "Layers").
"""

from cryoextract.io.cryosparc.fields import (
    CTF_FIELDS,
    HIGHER_ORDER_CTF_FIELDS,
    MicrographShapes,
    load_cs,
    save_cs,
)
from cryoextract.io.cryosparc.read import read_cs_particles, read_cs_picks
from cryoextract.io.cryosparc.write import write_cs

__all__ = [
    "CTF_FIELDS",
    "HIGHER_ORDER_CTF_FIELDS",
    "MicrographShapes",
    "load_cs",
    "read_cs_particles",
    "read_cs_picks",
    "save_cs",
    "write_cs",
]
