"""The box-size advisor (``ops/boxsize.py``, ``cryoextract boxsize``) and ``extract``'s
delocalisation warning.

Oracles: the Rosenthal & Henderson worked example and the list of FFT-efficient sizes of
the reference pages in ``../shared/reference`` (004: "Selecting a box size", TRPV1: D =
100 Å, 2.2 µm, 3.4 Å, 300 kV -> R = 127 Å, box 354 Å; 000: "Box sizes that allow for
efficient processing"), the relativistic wavelength from CODATA constants, and brute force
over the reference list. Never our own code.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import constants

from cryoextract import ExtractParams, NormMode, extract
from cryoextract.errors import ParameterError
from cryoextract.ops.boxsize import (
    EFFICIENT_BOX_SIZES,
    advise_box,
    ctf_padding_box,
    smallest_efficient_box,
)
from cryoextract.ops.ctf import electron_wavelength_angstrom
from prereq import require
from shared_data import REFERENCE


@pytest.fixture(scope="module")
def reference_sizes() -> list[int]:
    """The efficient sizes as printed in the cryoSPARC page (000_*.txt)."""
    pages = sorted(REFERENCE.glob("000_*.txt"))
    require(pages, f"shared reference missing: {REFERENCE}/000_*.txt")
    text = pages[0].read_text(encoding="utf-8")
    start = text.index("Box sizes that allow for efficient processing")
    line = next(ln for ln in text[start:].splitlines() if ln.startswith("32, 36, 40"))
    return [int(v) for v in line.split(",")]


@pytest.fixture(scope="module")
def trpv1_page() -> str:
    pages = sorted(REFERENCE.glob("004_*.txt"))
    require(pages, f"shared reference missing: {REFERENCE}/004_*.txt")
    return pages[0].read_text(encoding="utf-8")


def _codata_wavelength_angstrom(kv: float) -> float:
    """lambda = h / sqrt(2 m e V (1 + e V / (2 m c^2))), CODATA constants."""
    m, e, c, h = (constants.m_e, constants.e, constants.c, constants.h)
    volts = kv * 1e3
    return h / math.sqrt(2 * m * e * volts * (1 + e * volts / (2 * m * c * c))) * 1e10


def _brute_smallest(sizes: list[int], at_least: float) -> int:
    return min(s for s in sizes if s >= at_least)


# --------------------------------------------------------------------------- wavelength
@pytest.mark.parametrize(("kv", "page_value"), [(300, 0.0197), (120, 0.0335)])
def test_wavelength_against_page_and_codata(kv: float, page_value: float) -> None:
    lam = electron_wavelength_angstrom(kv)
    assert lam == pytest.approx(page_value, abs=5e-5)
    assert lam == pytest.approx(_codata_wavelength_angstrom(kv), rel=2e-5)


def test_wavelength_200kv_page_value_is_a_typo(trpv1_page: str) -> None:
    """The page lists 0.0257 Å at 200 kV; physics (and RELION's formula) give 0.0251 Å."""
    assert "200 kV = 0.0257" in trpv1_page
    lam = electron_wavelength_angstrom(200)
    assert lam == pytest.approx(0.02508, abs=2e-5)
    assert lam == pytest.approx(_codata_wavelength_angstrom(200), rel=2e-5)


# --------------------------------------------------------------------------- sizes
def test_efficient_list_is_the_reference_list(reference_sizes: list[int]) -> None:
    assert list(EFFICIENT_BOX_SIZES) == reference_sizes
    assert all(s % 2 == 0 for s in reference_sizes)


@pytest.mark.parametrize("size", [1.0, 31.2, 32, 32.01, 101, 353.7, 354.8, 4095.5, 4096])
def test_smallest_efficient_box_brute_force(reference_sizes: list[int], size: float) -> None:
    assert smallest_efficient_box(size) == _brute_smallest(reference_sizes, size)


def test_smallest_efficient_box_past_the_list_is_even() -> None:
    assert smallest_efficient_box(4097) == 4098
    assert smallest_efficient_box(5000.2) == 5002


# --------------------------------------------------------------------------- advisor
def test_trpv1_example(trpv1_page: str, reference_sizes: list[int]) -> None:
    # the page's numbers, read from the page itself
    assert "R = ( 0.0197Å * 22,000 Å ) / 3.4Å = 127Å" in trpv1_page
    assert "Box size = 100 Å diameter + 2 * 127 Å = 354 Å" in trpv1_page
    apix = 1.06
    advice = advise_box(100.0, apix, 22000.0, 3.4, 300.0)
    assert advice.wavelength_angstrom == pytest.approx(0.0197, abs=5e-5)
    assert advice.delocalisation_angstrom == pytest.approx(127.0, abs=0.5)
    # 100 + 2 * 0.0196876 * 22000 / 3.4 = 354.8 (the page rounds R to 127 first)
    assert advice.box_angstrom == pytest.approx(354.0, abs=1.0)
    assert advice.box_angstrom == pytest.approx(
        100 + 2 * _codata_wavelength_angstrom(300) * 22000 / 3.4, rel=1e-4)
    expected_px = _brute_smallest(reference_sizes, advice.box_angstrom / apix)
    assert advice.box_px == expected_px == 336  # 354.8 / 1.06 = 334.7 -> 336
    assert advice.box_px * apix >= advice.box_angstrom


@pytest.mark.parametrize(("apix", "box_px", "crop_px"), [
    (1.0, 384, 96),     # 354.8 px -> 384; 384 px * 1 Å / 4 Å = 96 -> Nyquist exactly 8 Å
    (0.83, 432, 90),    # 427.4 px -> 432; 432 * 0.83 / 4 = 89.6 -> 90 (3.98 Å/px)
    (1.5, 240, 90),     # 236.5 px -> 240; 240 * 1.5 / 4 = 90
    (4.5, 80, 80),      # already coarser than 4 Å/px: no crop
])
def test_box_and_crop_box(
    reference_sizes: list[int], apix: float, box_px: int, crop_px: int
) -> None:
    advice = advise_box(100.0, apix, 22000.0, 3.4, 300.0, crop_resolution_angstrom=8.0)
    box_angstrom = 100 + 2 * _codata_wavelength_angstrom(300) * 22000 / 3.4
    assert advice.box_px == _brute_smallest(reference_sizes, box_angstrom / apix) == box_px
    # crop: smallest listed size whose pixel size gives a Nyquist of at most 8 Å
    if apix * 2 <= 8.0:
        brute = _brute_smallest(reference_sizes, box_px * apix / 4.0)
    else:
        brute = box_px
    assert advice.crop_box_px == min(brute, box_px) == crop_px
    assert advice.crop_pixel_size_angstrom == pytest.approx(apix * box_px / crop_px)
    assert 2 * advice.crop_pixel_size_angstrom <= 8.0 + 1e-9 or crop_px == box_px


@pytest.mark.parametrize(("box", "defocus", "kv", "apix", "apix_out"), [
    (384, 22000.0, 300.0, 1.0, None),   # shift 216.6 px each side -> 817 -> 864
    (384, 22000.0, 300.0, 1.0, 2.0),    # Nyquist 4 Å: 108.3 px -> 600.6 -> 640
    (64, 15000.0, 200.0, 1.25, None),   # 120.4 px -> 304.8 -> 320
    (256, 0.0, 300.0, 1.0, None),       # no defocus: no padding
])
def test_ctf_padding_box_analytic(
    reference_sizes: list[int], box: int, defocus: float, kv: float, apix: float,
    apix_out: float | None,
) -> None:
    nyquist = 2 * (apix_out or apix)
    shift_px = _codata_wavelength_angstrom(kv) * defocus / nyquist / apix
    expected = max(box, _brute_smallest(reference_sizes, box + 2 * shift_px))
    assert ctf_padding_box(box, defocus, kv, apix, apix_out) == expected
    advice_box = advise_box(10.0, apix, defocus, 3.0, kv)  # its ctf box: own Nyquist
    own = advice_box.box_px + 2 * _codata_wavelength_angstrom(kv) * defocus / (2 * apix) / apix
    assert advice_box.ctf_box_px == max(advice_box.box_px, _brute_smallest(reference_sizes, own))


@pytest.mark.parametrize("kwargs", [
    {"diameter_angstrom": 0.0}, {"pixel_size_angstrom": -1.0}, {"resolution_angstrom": 0.0},
    {"defocus_angstrom": -1.0}, {"voltage_kv": 0.0}, {"diameter_angstrom": float("nan")},
])
def test_advise_box_rejects_bad_values(kwargs: dict[str, float]) -> None:
    args = {"diameter_angstrom": 100.0, "pixel_size_angstrom": 1.0, "defocus_angstrom": 2e4,
            "resolution_angstrom": 3.4, "voltage_kv": 300.0, **kwargs}
    with pytest.raises(ParameterError):
        advise_box(**args)


# --------------------------------------------------------------------------- CLI
TRPV1_ARGS = {"--diameter-angstrom": "100", "--pixel-size": "1.0", "--defocus-um": "2.2",
              "--resolution-angstrom": "3.4", "--voltage-kv": "300"}
BAD_VALUES = [
    ("--diameter-angstrom", "-5", "diameter must be > 0"),
    ("--pixel-size", "0", "pixel size must be > 0"),
    ("--voltage-kv", "0", "voltage must be > 0"),
    ("--defocus-um", "-1", "defocus must be >= 0"),
]


def _boxsize_args(**overrides: str) -> list[str]:
    args = {**TRPV1_ARGS, **overrides}
    return ["boxsize", *[x for item in args.items() for x in item]]


@pytest.fixture(scope="module")
def cli_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every ``cryoextract boxsize`` invocation of this module, run concurrently."""
    jobs = {"trpv1": _boxsize_args()}
    for option, value, _ in BAD_VALUES:
        jobs[option] = _boxsize_args(**{option: value})
    env = {**os.environ, "COLUMNS": "200"}
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "cryoextract", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in jobs.items()
    }
    runs = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        runs[name] = subprocess.CompletedProcess(jobs[name], proc.returncode, stdout, stderr)
    return runs


def test_boxsize_cli_prints_the_table(
    cli_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    proc = cli_runs["trpv1"]
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lam = _codata_wavelength_angstrom(300)
    rows = {
        "electron wavelength": f"{lam:.5f} A",
        "delocalisation": f"{lam * 22000 / 3.4:.1f} A",          # 127.4
        "box D + 2R": f"{100 + 2 * lam * 22000 / 3.4:.1f} A",    # 354.8
        "extraction box": "384 px",
        "Fourier-crop box": "96 px (4 A/px)",
        "CTF padding box": "864 px",
    }
    for label, value in rows.items():
        line = next((ln for ln in out.splitlines() if label in ln), None)
        assert line is not None, f"no row {label!r} in\n{out}"
        assert value in line, f"{label}: expected {value!r} in {line!r}"


@pytest.mark.parametrize(("option", "value", "message"), BAD_VALUES)
def test_boxsize_cli_bad_values_exit_2_with_one_line(
    cli_runs: dict[str, subprocess.CompletedProcess[str]], option: str, value: str,
    message: str,
) -> None:
    proc = cli_runs[option]
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and lines[0].startswith("error:")
    assert value in lines[0] or str(float(value) * 1e4) in lines[0]


# --------------------------------------------------------------------------- extract warning
APIX = 1.25
DEFOCUS = 5000.0  # Å; small so a binned output needs no more than the box


@pytest.fixture(scope="module")
def defocus_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deloc")
    rng = np.random.default_rng(3)
    (root / "Mics").mkdir()
    (root / "Picks" / "Mics").mkdir(parents=True)
    with mrcfile.new(root / "Mics" / "m1.mrc") as m:
        m.set_data(rng.normal(size=(192, 192)).astype(np.float32))
        m.voxel_size = APIX
    starfile.write(pd.DataFrame({"rlnCoordinateX": [96.0], "rlnCoordinateY": [90.0]}),
                   root / "Picks" / "Mics" / "m1_pick.star")
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnMicrographPixelSize": [APIX], "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    mics = pd.DataFrame({
        "rlnMicrographName": ["Mics/m1.mrc"], "rlnOpticsGroup": [1],
        "rlnDefocusU": [DEFOCUS], "rlnDefocusV": [DEFOCUS * 0.95], "rlnDefocusAngle": [10.0]})
    starfile.write({"optics": optics, "micrographs": mics}, root / "mics.star")
    return root


def _needed_angstrom(diameter: float, output_apix: float) -> float:
    return diameter + 2 * _codata_wavelength_angstrom(300) * DEFOCUS / (2 * output_apix)


def test_extract_warns_when_box_below_rosenthal_henderson(defocus_dataset: Path) -> None:
    root = defocus_dataset
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "cryoextract", "extract", "--micrographs", "mics.star",
         "--coords-dir", "Picks", "--coords-suffix", "_pick.star", "--box", "64",
         "--out", str(root / "warn"), "--particle-diameter", "50", "--workers", "1"],
        cwd=root, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    # 64 px * 1.25 = 80 Å < 50 + 2 * 0.01969 * 5000 / 2.5 = 128.75 Å
    needed = _needed_angstrom(50.0, APIX)
    assert 64 * APIX < needed
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    deloc = [w for w in warnings if "D + 2*lambda*dF/d" in w]
    assert len(deloc) == 1, proc.stderr
    assert "box 64 px" in deloc[0]
    assert f"= {needed:.0f} A" in deloc[0]
    suggested = int(re.search(r"about --box (\d+)", deloc[0]).group(1))
    assert suggested * APIX >= needed and suggested == smallest_efficient_box(needed / APIX)


@pytest.mark.parametrize(("diameter", "bin_to", "warns"), [
    (50.0, 16, False),   # output 5 Å/px: 50 + 2 * 0.01969 * 5000 / 10 = 69.7 Å <= 80 Å
    (None, None, False),  # D = 0: 78.75 Å <= 80 Å at full resolution
    (10.0, None, True),   # 88.75 Å > 80 Å
])
def test_extract_warning_depends_on_output_nyquist_and_diameter(
    defocus_dataset: Path, tmp_path: Path, diameter: float | None, bin_to: int | None,
    warns: bool,
) -> None:
    out_apix = APIX * 64 / (bin_to or 64)
    assert (64 * APIX < _needed_angstrom(diameter or 0.0, out_apix)) is warns
    params = ExtractParams(box_px=64, out_box_px=bin_to, norm=NormMode.NONE,
                           particle_diameter_angstrom=diameter)
    summary = extract(str(defocus_dataset / "mics.star"), tmp_path / "out", params,
                      coords_dir=defocus_dataset / "Picks", coords_suffix="_pick.star",
                      workers=1)
    assert summary.particles_kept == 1
    deloc = [w for w in summary.warnings if "D + 2*lambda*dF/d" in w]
    assert len(deloc) == int(warns), summary.warnings
