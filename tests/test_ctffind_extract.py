"""Extraction takes each micrograph's CTF from its real CTFFIND4 results (--ctf-dir)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from shared_data import REAL, require_paths

CTFFIND = REAL / "relion5_betagal_tutorial_sppractice" / "CtfFind" / "job005" / "Movies"


def _values_line(path: Path) -> list[float]:
    """The first non-comment line of a CTFFIND results file, read independently."""
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            return [float(v) for v in line.split()]
    raise AssertionError(f"no values in {path}")


def test_extract_takes_ctf_from_ctffind_results(tmp_path):
    require_paths(CTFFIND)
    results = sorted(p for p in CTFFIND.glob("*_PS.txt"))[:2]
    names = []
    for i, result in enumerate(results):
        stem = result.name.removesuffix("_PS.txt")
        (tmp_path / "Movies").mkdir(exist_ok=True)
        mrcfile.write(tmp_path / "Movies" / f"{stem}.mrc",
                      np.random.default_rng(i).normal(size=(256, 256)).astype(np.float32),
                      overwrite=True, voxel_size=0.885)
        shutil.copy(result, tmp_path / "Movies" / result.name)
        np.savetxt(tmp_path / "Movies" / f"{stem}_pick.txt", [[100.0, 120.0], [150.0, 90.0]])
        names.append(f"MotionCorr/job002/Movies/{stem}.mrc")
    # RELION layout: micrographs under a job directory, CTFFIND under another
    (tmp_path / "MotionCorr" / "job002").mkdir(parents=True)
    (tmp_path / "MotionCorr" / "job002" / "Movies").symlink_to(tmp_path / "Movies")
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [0.885]})
    micrographs = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1})
    starfile.write({"optics": optics, "micrographs": micrographs}, tmp_path / "mics.star",
                   overwrite=True)
    proc = subprocess.run(
        [sys.executable, "-m", "cryoextract", "extract", "--micrographs", "mics.star",
         "--coords-dir", ".", "--coords-suffix", "_pick.txt", "--ctf-dir", ".",
         "--box", "64", "--ctf-correct", "flip", "--out", "out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    star = starfile.read(tmp_path / "out" / "particles.star")
    particles, optics_out = star["particles"], star["optics"]
    assert len(particles) == 4
    for name, result in zip(names, results, strict=True):
        values = _values_line(result)
        rows = particles[particles["rlnMicrographName"] == name]
        np.testing.assert_allclose(rows["rlnDefocusU"], values[1], rtol=1e-6)
        np.testing.assert_allclose(rows["rlnDefocusV"], values[2], rtol=1e-6)
        np.testing.assert_allclose(rows["rlnDefocusAngle"], values[3], atol=1e-4)
    # voltage, Cs and amplitude contrast come from the CTFFIND header (200 kV, K2 data)
    assert float(optics_out["rlnVoltage"][0]) == pytest.approx(200.0)
    assert int(optics_out["rlnCtfDataArePhaseFlipped"][0]) == 1
