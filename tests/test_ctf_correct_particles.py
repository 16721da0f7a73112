"""CTF phase flipping at extraction (``--ctf-correct``) on particles:

(b) Noise-free particles projected by ``relion_project --ctf`` from a volume of point-like
    blobs, pasted into otherwise empty micrographs: the phase-flipped particle must be the
    no-CTF projection filtered by ``|CTF|`` (as ``relion_project --ctf --ctf_phase_flip``
    writes it).
(c) Real particles with real CTFs (``../shared/data/real``): their Thon rings, which sit
    where the STAR's defocus puts them, survive flipping; flipping twice is the identity.

The CTF oracle is ``ctf_oracle.py``; RELION's own extraction is compared in
``test_ctf_correct_relion.py``.
"""

from __future__ import annotations

import subprocess
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import scipy.fft
import starfile
from scipy.ndimage import gaussian_filter1d
from scipy.signal import argrelmin

from cryoextract import ExtractParams, NormMode, SubpixelMode, extract
from cryoextract.ops.ctf import CtfParams, ctf_2d
from cryoextract.ops.ctf_correct import (
    CtfCorrection,
    correct_boxes,
    window_centre,
)
from ctf_oracle import (
    BOX,
    CS,
    Q0,
    VOLTAGE,
    ctf_params,
    oracle_ctf,
)
from relion_oracle import (
    Particles,
    load_particles,
    pearson,
    require_relion,
)
from shared_data import SHARED_DATA, require_paths

# --------------------------------------------------------------------------- (b) simulation
SIM_APIX = 2.0
SIM_VOL = 128  # projection box: holds the delocalised signal up to Nyquist
SIM_MIC = 512
# per particle: rot, tilt, psi, U, V, angle
SIM_PARTICLES = [
    (10.0, 30.0, 0.0, 12000.0, 10800.0, 20.0),
    (80.0, 90.0, 45.0, 20000.0, 18000.0, -50.0),
    (200.0, 140.0, 300.0, 30000.0, 27000.0, 100.0),
]
SIM_CENTRES = [(256, 256), (200, 300), (300, 220)]


@dataclass
class Simulation:
    plain: np.ndarray  # (3, 128, 128) relion_project without CTF
    with_ctf: np.ndarray  # relion_project --ctf
    abs_ctf: np.ndarray  # relion_project --ctf --ctf_phase_flip (= |CTF| filter)
    ctfs: list[CtfParams]
    ours: dict[str, Particles]


def _write_volume(path: Path) -> None:
    """60 point-like Gaussian blobs (sigma 1 px) within 12 px of the centre."""
    rng = np.random.default_rng(1)
    points = rng.uniform(-12, 12, (400, 3))
    points = points[np.linalg.norm(points, axis=1) < 12][:60]
    grid = np.arange(SIM_VOL, dtype=np.float32) - SIM_VOL // 2
    vol = np.zeros((SIM_VOL,) * 3, np.float32)
    for x, y, z in points:
        gz = np.exp(-(grid - z) ** 2 / 2)[:, None, None]
        gy = np.exp(-(grid - y) ** 2 / 2)[None, :, None]
        gx = np.exp(-(grid - x) ** 2 / 2)[None, None, :]
        vol += gz * gy * gx
    with mrcfile.new(path) as m:
        m.set_data(vol)
        m.voxel_size = SIM_APIX


def _read(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float32)


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    require_relion("relion_project")
    root = tmp_path_factory.mktemp("ctf_sim")
    _write_volume(root / "vol.mrc")
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnVoltage": [VOLTAGE],
        "rlnSphericalAberration": [CS], "rlnAmplitudeContrast": [Q0],
        "rlnImagePixelSize": [SIM_APIX], "rlnImageSize": [SIM_VOL],
        "rlnImageDimensionality": [2]})
    table = pd.DataFrame(SIM_PARTICLES, columns=[
        "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnDefocusU", "rlnDefocusV",
        "rlnDefocusAngle"])
    table["rlnOriginXAngst"] = 0.0
    table["rlnOriginYAngst"] = 0.0
    table["rlnOpticsGroup"] = 1
    table["rlnImageName"] = [f"{i}@none.mrcs" for i in range(1, len(table) + 1)]
    starfile.write({"optics": optics, "particles": table}, root / "angles.star")
    jobs = {"plain": [], "with_ctf": ["--ctf"], "abs_ctf": ["--ctf", "--ctf_phase_flip"]}
    procs = {
        name: subprocess.Popen(["relion_project", "--i", "vol.mrc", "--o", name, "--ang",
                                "angles.star", *args], cwd=root, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name, args in jobs.items()
    }
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"relion_project {name}: {stderr[-3000:]}"
    stacks = {name: _read(root / f"{name}.mrcs") for name in jobs}
    ctfs = [ctf_params(u, v, a) for *_, u, v, a in SIM_PARTICLES]

    # one particle per micrograph, empty elsewhere; raw micrographs show particles dark
    (root / "Mics").mkdir()
    (root / "Picks" / "Mics").mkdir(parents=True)
    rows = []
    half = SIM_VOL // 2
    for i, (cx, cy) in enumerate(SIM_CENTRES):
        mic = np.zeros((SIM_MIC, SIM_MIC), np.float32)
        mic[cy - half:cy + half, cx - half:cx + half] = -stacks["with_ctf"][i]
        with mrcfile.new(root / "Mics" / f"m{i}.mrc") as m:
            m.set_data(mic)
            m.voxel_size = SIM_APIX
        starfile.write(pd.DataFrame({"rlnCoordinateX": [float(cx)],
                                     "rlnCoordinateY": [float(cy)]}),
                       root / "Picks" / "Mics" / f"m{i}_pick.star")
        u, v, a = SIM_PARTICLES[i][3:]
        rows.append({"rlnMicrographName": f"Mics/m{i}.mrc", "rlnOpticsGroup": 1,
                     "rlnDefocusU": u, "rlnDefocusV": v, "rlnDefocusAngle": a,
                     "rlnCtfBfactor": 0.0, "rlnPhaseShift": 0.0})
    mic_optics = optics[["rlnOpticsGroupName", "rlnOpticsGroup", "rlnVoltage",
                         "rlnSphericalAberration", "rlnAmplitudeContrast"]].copy()
    mic_optics["rlnMicrographPixelSize"] = SIM_APIX
    starfile.write({"optics": mic_optics, "micrographs": pd.DataFrame(rows)},
                   root / "mics.star")

    runs = {
        "tight": {"ctf_box_px": BOX},
        "padded": {"ctf_box_px": 256},
        "auto": {},
        "micrograph": {"ctf_on_micrograph": True},
        "no_invert": {"ctf_box_px": 256, "invert": False},
        "none": {"ctf_correct": CtfCorrection.NONE},
        "premultiply": {"ctf_correct": CtfCorrection.PREMULTIPLY, "ctf_box_px": 256},
    }
    ours = {}
    for name, extra in runs.items():
        settings = {"ctf_correct": CtfCorrection.FLIP, "invert": True, **extra}
        params = ExtractParams(box_px=BOX, norm=NormMode.NONE, subpixel=SubpixelMode.DROP,
                               **settings)  # type: ignore[arg-type]
        extract(str(root / "mics.star"), root / name, params, coords_dir=root / "Picks",
                coords_suffix="_pick.star", workers=1)
        ours[name] = load_particles(root / name / "particles.star", root / name)
    return Simulation(stacks["plain"], stacks["with_ctf"], stacks["abs_ctf"], ctfs, ours)


def _filter(images: np.ndarray, factors: list[np.ndarray]) -> np.ndarray:
    n = images.shape[-1]
    return np.stack([np.fft.irfft2(np.fft.rfft2(im.astype(np.float64)) * f, s=(n, n))
                     for im, f in zip(images, factors, strict=True)])


def test_relion_project_ctf_sign_is_ours(simulation: Simulation) -> None:
    """relion_project --ctf multiplies by ctf_2d (+Q0 at the origin); --ctf_phase_flip
    actually multiplies by |CTF| (it is passed as getFftwImage's do_abs)."""
    ctf = [ctf_2d(c, SIM_VOL, SIM_APIX).astype(np.float64) for c in simulation.ctfs]
    for i in range(len(ctf)):
        # low frequency is positive: the mean is Q0 times the projection's
        assert simulation.with_ctf[i].sum() == pytest.approx(Q0 * simulation.plain[i].sum(),
                                                             rel=1e-4)
    pred = _filter(simulation.plain, ctf)
    pred_abs = _filter(simulation.plain, [np.abs(c) for c in ctf])
    for i in range(len(ctf)):
        assert pearson(pred[i], simulation.with_ctf[i]) >= 1 - 1e-9
        assert pearson(pred_abs[i], simulation.abs_ctf[i]) >= 1 - 1e-9
        assert np.abs(pred_abs[i] - simulation.abs_ctf[i]).max() <= (
            1e-5 * np.abs(simulation.abs_ctf[i]).max())


def _truth(simulation: Simulation) -> np.ndarray:
    """The no-CTF projections filtered by |CTF| (ctf_2d at the projection's box and pixel
    size), windowed to the particle box."""
    factors = [np.abs(ctf_2d(c, SIM_VOL, SIM_APIX)).astype(np.float64) for c in simulation.ctfs]
    return window_centre(_filter(simulation.plain, factors), BOX)


def _residual(image: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sum((image - truth) ** 2) / np.sum(truth**2))


@pytest.mark.parametrize("name", ["padded", "auto", "micrograph"])
def test_flipped_particle_is_projection_filtered_by_abs_ctf(
    simulation: Simulation, name: str,
) -> None:
    """Measured: Pearson >= 0.9991 (padded 256, auto), residual energy <= 0.2 %."""
    truth = _truth(simulation)
    images = simulation.ours[name].images
    for i in range(len(truth)):
        assert pearson(images[i], truth[i]) >= 0.99
        assert _residual(images[i], truth[i]) <= 0.01
    # the extracted particle is the RELION --ctf_phase_flip projection itself
    relion_abs = window_centre(simulation.abs_ctf, BOX)
    for i in range(len(truth)):
        assert pearson(images[i], relion_abs[i]) >= 0.99


def test_sign_conventions_of_the_simulation(simulation: Simulation) -> None:
    """Raw micrographs hold -CTF*P: without inversion the flipped particle is -|CTF|*P; an
    uncorrected particle is far from the truth, a premultiplied one is CTF²-filtered."""
    truth = _truth(simulation)
    ours = simulation.ours
    ctf = [ctf_2d(c, SIM_VOL, SIM_APIX).astype(np.float64) for c in simulation.ctfs]
    ctf_squared = window_centre(_filter(simulation.plain, [c * c for c in ctf]), BOX)
    for i in range(len(truth)):
        assert pearson(ours["no_invert"].images[i], truth[i]) <= -0.99
        assert np.allclose(ours["no_invert"].images[i], -ours["padded"].images[i], atol=1e-6)
        assert pearson(ours["none"].images[i], truth[i]) < 0.6
        assert pearson(ours["premultiply"].images[i], ctf_squared[i]) >= 0.99


def test_padded_box_loses_less_than_a_tight_one(simulation: Simulation) -> None:
    """Measured (defocus 1.2 / 2.0 / 3.0 µm): tight box Pearson 0.994 / 0.971 / 0.926,
    residual 1.2 / 5.8 / 14.5 %; padded 256: 0.99994 / 0.9998 / 0.9991, <= 0.2 %."""
    truth = _truth(simulation)
    tight, padded = simulation.ours["tight"].images, simulation.ours["padded"].images
    res_tight = np.array([_residual(tight[i], truth[i]) for i in range(len(truth))])
    res_padded = np.array([_residual(padded[i], truth[i]) for i in range(len(truth))])
    assert np.all(res_padded < res_tight)
    assert np.all(res_tight >= 5 * res_padded)
    assert res_tight[-1] >= 0.05  # 3 µm: the tight box misses several percent of the signal
    # more defocus, more loss in the tight box
    assert np.all(np.diff(res_tight) > 0)
    assert min(pearson(tight[i], truth[i]) for i in range(len(truth))) < 0.95


# --------------------------------------------------------------------------- (c) real data
REAL_SETS = {
    # name: (STAR, stack); pixel size from the STAR
    "empiar_10076_7": ("real/cryodrgn_4.3.1_sdist/empiar_10076_7.star",
                       "real/cryodrgn_4.3.1_sdist/empiar_10076_7.mrc"),
    "relion31": ("real/cryodrgn_4.3.1_sdist/relion31.star",
                 "real/cryodrgn_4.3.1_sdist/relion31.mrcs"),
    # the gallery STAR is the original one; tests/saved_test_data/sample_particles_relion31
    # .star has optics edited by ASPIRE for tests (a 200 kV group), which is not the data's
    "aspire_sample": ("real/aspire_python/gallery/tutorials/data/sample_relion_data.star",
                      "real/aspire_python/tests/saved_test_data/sample.mrcs"),
}


@dataclass
class RealSet:
    images: np.ndarray
    ctfs: list[CtfParams]
    apix: float


def _load_real(name: str) -> RealSet:
    star, stack = (SHARED_DATA / p for p in REAL_SETS[name])
    require_paths(star, stack)
    blocks = starfile.read(star, always_dict=True)
    parts = blocks["particles"] if "particles" in blocks else next(iter(blocks.values()))
    if "optics" in blocks:
        parts = parts.merge(blocks["optics"], on="rlnOpticsGroup", how="left")
        apix = parts["rlnImagePixelSize"].to_numpy(float)
    else:
        apix = (1e4 * parts["rlnDetectorPixelSize"].to_numpy(float)
                / parts["rlnMagnification"].to_numpy(float))
    assert np.ptp(apix) < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # header without map ID
        with mrcfile.open(stack, permissive=True) as m:
            data = np.asarray(m.data, dtype=np.float32)
    index = [int(str(n).split("@")[0]) - 1 for n in parts["rlnImageName"]]
    ctfs = [CtfParams.from_star_row(row) for row in parts.to_dict("records")]
    return RealSet(data[index], ctfs, float(apix[0]))


def _radial_profile(half_plane: np.ndarray, n: int) -> np.ndarray:
    """Rotational average of an rfft2-layout array (full-plane weights), radii 0..n/2-1."""
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    radius = np.round(np.hypot(kx, ky) * n).astype(int)
    weight = np.ones(half_plane.shape)
    weight[:, 1:(n + 1) // 2] = 2.0
    num = np.bincount(radius.ravel(), (weight * half_plane).ravel())
    den = np.bincount(radius.ravel(), weight.ravel())
    return (num / den)[: n // 2]


def _thon_score(power: np.ndarray, ctfs: list[CtfParams], apix: float,
                defocus_factor: float) -> float:
    """Pearson of the detrended log profiles of the data and of the mean CTF² (radii
    15-85 % of Nyquist) for the STAR's defoci times ``defocus_factor``."""
    n = power.shape[-2]
    scaled = [replace(c, defocus_u_angstrom=c.defocus_u_angstrom * defocus_factor,
                      defocus_v_angstrom=c.defocus_v_angstrom * defocus_factor)
              for c in ctfs]
    model = np.mean([oracle_ctf(c, n, apix) ** 2 for c in scaled], axis=0)

    def detrend(profile: np.ndarray) -> np.ndarray:
        log = np.log(profile + 1e-3 * profile.max())
        return log - gaussian_filter1d(log, 3.0, mode="nearest")

    band = slice(int(0.15 * n / 2), int(0.85 * n / 2))
    data = detrend(_radial_profile(power, n))[band]
    expected = detrend(_radial_profile(model, n))[band]
    return float(np.corrcoef(data, expected)[0, 1])


@pytest.mark.parametrize("name", list(REAL_SETS))
def test_real_flip_twice_is_identity(name: str) -> None:
    real = _load_real(name)
    once = correct_boxes(real.images, real.ctfs, real.apix, CtfCorrection.FLIP)
    twice = correct_boxes(once, real.ctfs, real.apix, CtfCorrection.FLIP)
    scale2 = np.array([c.scale**2 for c in real.ctfs], np.float32)[:, None, None]
    peak = np.abs(real.images).max()
    assert np.abs(twice / scale2 - real.images).max() <= 1e-5 * peak
    assert np.abs(once - real.images).max() >= 0.05 * peak  # the flip did change them


@pytest.mark.parametrize("name", list(REAL_SETS))
def test_real_flip_keeps_thon_rings(name: str) -> None:
    """The Thon rings of the data sit where the STAR's CTF puts them (the fit score of the
    rotationally averaged power spectrum peaks at the STAR's defocus, measured 0.64-0.80
    against < 0.1 at ±10 %), and flipping changes neither the power spectrum nor its
    minima: flipping only changes signs in Fourier space."""
    real = _load_real(name)
    n = real.images.shape[-1]
    flipped = correct_boxes(real.images, real.ctfs, real.apix, CtfCorrection.FLIP)
    f_orig = scipy.fft.rfft2(real.images.astype(np.float64))
    f_flip = scipy.fft.rfft2(flipped.astype(np.float64))
    assert np.abs(np.abs(f_flip) - np.abs(f_orig)).max() <= 1e-5 * np.abs(f_orig).max()
    power = (np.abs(f_orig) ** 2).mean(axis=0)
    power_flipped = (np.abs(f_flip) ** 2).mean(axis=0)

    minima = argrelmin(np.log(_radial_profile(power, n)), order=2)[0]
    minima_flipped = argrelmin(np.log(_radial_profile(power_flipped, n)), order=2)[0]
    assert len(minima) >= 5
    assert np.array_equal(minima, minima_flipped)

    factors = np.round(np.arange(0.80, 1.2001, 0.02), 2)
    scores = np.array([_thon_score(power, real.ctfs, real.apix, f) for f in factors])
    best = factors[np.argmax(scores)]
    assert abs(best - 1.0) <= 0.02, (best, scores)
    at_star = scores[factors == 1.0][0]
    assert at_star >= 0.5
    assert scores[np.isin(factors, (0.9, 1.1))].max() < at_star - 0.3
    # the same fit on the flipped particles
    assert _thon_score(power_flipped, real.ctfs, real.apix, 1.0) == pytest.approx(
        at_star, abs=1e-6)
