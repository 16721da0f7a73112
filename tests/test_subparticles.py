"""Symmetry expansion and sub-particle extraction (issue 17).

Oracles: RELION 3.1.3's ``relion_particle_symmetry_expand --sym`` (rows, their order and
orientations) and ``relion_preprocess --reextract_data_star --recenter --recenter_x/y/z``
on the expanded STAR (coordinates, origins, pixels); analytic geometry for
``--align-subparticles`` and the overlap filter; hand-written vector files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoextract.ops.rotations import euler_to_matrix
from cryoextract.ops.symmetry import symmetry_operators
from cryoextract.pipeline.subparticles import SubparticleSpec, expand_subparticles
from relion_oracle import require_relion

BOX = 64
ANGLES = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


def _optics(apix: float) -> pd.DataFrame:
    return pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnImagePixelSize": [apix], "rlnImageSize": [BOX], "rlnImageDimensionality": [2],
        "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
    })


def _posed(n: int, seed: int) -> pd.DataFrame:
    """Random poses, one of them at tilt 0 (RELION's gimbal-lock branch)."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({
        "rlnCoordinateX": rng.integers(100, 200, n).astype(float),
        "rlnCoordinateY": rng.integers(100, 200, n).astype(float),
        "rlnAngleRot": np.round(rng.uniform(-180, 180, n), 3),
        "rlnAngleTilt": np.round(rng.uniform(0, 180, n), 3),
        "rlnAnglePsi": np.round(rng.uniform(-180, 180, n), 3),
        "rlnOriginXAngst": np.round(rng.uniform(-5, 5, n), 3),
        "rlnOriginYAngst": np.round(rng.uniform(-5, 5, n), 3),
        "rlnImageName": [f"{k + 1:06d}@Old/p.mrcs" for k in range(n)],
        "rlnOpticsGroup": 1,
    })
    table.loc[0, "rlnAngleTilt"] = 0.0
    return table


def _relion_expand(tmp: Path, table: pd.DataFrame, sym: str) -> pd.DataFrame:
    require_relion("relion_particle_symmetry_expand")
    starfile.write({"optics": _optics(1.0), "particles": table}, tmp / "in.star",
                   overwrite=True)
    done = subprocess.run(["relion_particle_symmetry_expand", "--i", "in.star", "--o",
                           f"{sym}.star", "--sym", sym], cwd=tmp, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return starfile.read(tmp / f"{sym}.star")["particles"]


@pytest.mark.parametrize(("sym", "order"), [("C4", 4), ("D2", 4), ("D7", 14), ("T", 12),
                                            ("O", 24), ("I", 60), ("I3", 60)])
def test_symmetry_expansion_matches_relion(tmp_path, sym, order):
    table = _posed(5, seed=order)
    relion = _relion_expand(tmp_path, table, sym)
    ours = expand_subparticles(table, SubparticleSpec(symmetry=sym), "in.star").picks
    assert len(symmetry_operators(sym)) == order
    assert len(ours) == len(relion) == order * len(table)
    # the same rows in the same order: orientation matrices agree to the STAR's 6 decimals
    ours_m = euler_to_matrix(*ours[ANGLES].to_numpy().T)
    relion_m = euler_to_matrix(*relion[ANGLES].to_numpy().T)
    assert np.abs(ours_m - relion_m).max() < 1e-6
    # angles as RELION writes them (copy 1: the input row verbatim, tilt 0 included)
    difference = (ours[ANGLES].to_numpy() - relion[ANGLES].to_numpy() + 180) % 360 - 180
    assert np.abs(difference).max() < 2e-5
    # every other column as in the source row; trace columns
    for column in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnCoordinateX", "rlnImageName"):
        assert (ours[column].to_numpy() == relion[column].to_numpy()).all()
    np.testing.assert_array_equal(ours["ceSourceParticle"], np.repeat(np.arange(1, 6), order))
    np.testing.assert_array_equal(ours["ceSymmetryCopy"], np.tile(np.arange(1, order + 1), 5))
