"""``cryoextract subtract`` (``cryoextract.pipeline.stacks.subtract``) against oracles.

Oracles:

- RELION 3.1.3: ``relion_project --mask M --ctf --subtract_exp`` (removes the projection
  of map·M: our ``--mask-mode subtract``) and ``relion_particle_subtract --mask M``
  (removes map·(1 - M): our ``keep``), both with scale 1 (``--scale none``).
  ``relion_particle_subtract`` reads an ``optimiser.star``; we make one with a tiny
  ``relion_refine`` run (3D classification, K = 1, one iteration, ``--skip_align``, so the
  poses are the input's), then point its model at our map (``run_it001_class001.mrc``
  replaced) and set ``rlnCurrentImageSize`` to the full box (RELION projects only up to
  the model's current size). Without MPI, 3D auto-refine optimisers cannot be used
  ("needs at least 2 MPI processes" for split half-sets), hence classification.
- Simulated particles: projections computed here in real space (the map resampled at
  ``A.T @ r`` and summed), shifted by ``-origin / apix``, CTF-modulated, scaled.
- Real TRPV1 particles (``../shared/data/real/cryojax_trpv1``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import tracemalloc
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import typer
from scipy import ndimage
from typer.testing import CliRunner

from conftest import OPTICS_300KV, posed_particles
from conftest import optics_table as conftest_optics_table
from conftest import write_mrc as conftest_write_mrc
from cryoextract.cli.subtract import print_subtract_summary, subtract_command
from cryoextract.errors import CryoExtractError, InputError, ParameterError
from cryoextract.io.cryosparc import read_cs_particles, write_cs
from cryoextract.io.particles import read_particles
from cryoextract.ops.ctf import CtfParams, ctf_2d, ctf_2d_batch
from cryoextract.ops.recenter import recentre
from cryoextract.ops.rotations import euler_to_matrix, viewing_direction_order
from cryoextract.ops.subtract import inspect_mask, suggested_edge_px
from cryoextract.pipeline.frame import JobLock, JobLockedError
from cryoextract.pipeline.stacks import subtract_ctf
from cryoextract.pipeline.stacks import subtract_tasks as tasks
from cryoextract.pipeline.stacks.revert import revert_subtraction
from cryoextract.pipeline.stacks.subtract import subtract_particles
from relion_oracle import require_relion
from shared_data import SHARED_DATA, require_paths

N = 48
APIX = 2.0
CENTRE_A = np.array([16.0, 24.0, 24.0])  # domain centres, voxel indices (x, y, z)
CENTRE_B = np.array([32.0, 25.0, 23.0])
OPTICS = OPTICS_300KV


# --------------------------------------------------------------------------- helpers
def corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def domain(centre_xyz: np.ndarray, seed: int, n: int = N, count: int = 25,
           sigma_px: float = 1.3) -> np.ndarray:
    """Gaussian blobs within 5 voxels of ``centre_xyz``."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(count):
        x, y, z = np.round(centre_xyz + rng.uniform(-5, 5, 3)).astype(int)
        vol[z, y, x] += rng.uniform(0.5, 1.5)
    return ndimage.gaussian_filter(vol, sigma_px).astype(np.float32)


def sphere_mask(centre_xyz: np.ndarray, radius: float, edge: float, n: int = N) -> np.ndarray:
    """1 within ``radius`` voxels, a cosine edge ``edge`` voxels wide, 0 beyond."""
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float64)
    r = np.sqrt((x - centre_xyz[0]) ** 2 + (y - centre_xyz[1]) ** 2 + (z - centre_xyz[2]) ** 2)
    if edge == 0:
        return (r <= radius).astype(np.float32)
    t = np.clip((r - radius) / edge, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


#: particles with poses, offsets up to 3 px, CTFs and half-sets, on one micrograph
random_particles = partial(posed_particles, apix=APIX, micrographs=1)
write_mrc = partial(conftest_write_mrc, apix=APIX)


def optics_table(box: int = N, apix: float = APIX, mic_apix: float | None = None) -> pd.DataFrame:
    return conftest_optics_table(box, apix, mic_apix)


def write_star(path: Path, particles: pd.DataFrame, **optics) -> None:
    starfile.write({"optics": optics_table(**optics), "particles": particles}, path,
                   overwrite=True)


def real_space_projection(vol: np.ndarray, rot: float, tilt: float, psi: float) -> np.ndarray:
    """Sum along z of the map sampled (trilinearly) at ``A.T @ (x, y, z)``."""
    n = vol.shape[0]
    a = euler_to_matrix(rot, tilt, psi)
    g = np.arange(n) - n // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    map_xyz = np.stack([x, y, z], -1).reshape(-1, 3) @ a
    coords = np.stack([map_xyz[:, 2], map_xyz[:, 1], map_xyz[:, 0]]) + n // 2
    values = ndimage.map_coordinates(vol, coords, order=1, mode="constant", prefilter=False)
    return values.reshape(n, n, n).sum(axis=0)


def observe(projection: np.ndarray, row: dict, apix: float = APIX) -> np.ndarray:
    """Move a centred projection to ``centre - origin / apix`` and apply the CTF."""
    n = projection.shape[0]
    dx, dy = -row["rlnOriginXAngst"] / apix, -row["rlnOriginYAngst"] / apix
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    ramp = np.exp(-2j * np.pi * (kx * dx + ky * dy))
    ctf = ctf_2d(CtfParams.from_star_row({**OPTICS, **row}), n, apix)
    return np.fft.irfft2(np.fft.rfft2(projection) * ramp * ctf, s=(n, n)).astype(np.float32)


def simulate(vol: np.ndarray, particles: pd.DataFrame) -> np.ndarray:
    """Noise-free particle images ``(n, N, N)`` of ``vol`` in the particles' poses."""
    return np.stack([
        observe(real_space_projection(vol, r["rlnAngleRot"], r["rlnAngleTilt"],
                                      r["rlnAnglePsi"]), r)
        for r in particles.to_dict("records")
    ])


def removed(inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    return np.asarray(inputs, np.float64) - np.asarray(outputs, np.float64)


def read_output(out: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Output particles and their images, in STAR order."""
    particles = starfile.read(out / "particles.star")["particles"]
    stacks: dict[str, np.ndarray] = {}
    images = []
    for name in particles["rlnImageName"]:
        index, path = name.split("@")
        if path not in stacks:
            stacks[path] = mrcfile.read(out / path)
            stacks[path] = stacks[path][None] if stacks[path].ndim == 2 else stacks[path]
        images.append(stacks[path][int(index) - 1])
    return particles, np.stack(images)


# --------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def two_domain(tmp_path_factory) -> dict:
    """Domains A and B, a soft mask on A, 16 noise-free particles with scales 0.5-2."""
    root = tmp_path_factory.mktemp("two_domain")
    vol_a, vol_b = domain(CENTRE_A, 1), domain(CENTRE_B, 2)
    particles = random_particles(16, seed=5)
    rng = np.random.default_rng(6)
    scales = rng.uniform(0.5, 2.0, len(particles))
    truth_a = simulate(vol_a, particles) * scales[:, None, None]
    truth_b = simulate(vol_b, particles) * scales[:, None, None]
    noise = rng.normal(size=truth_a.shape).astype(np.float32) * float(truth_a.std()) * 2.0
    write_mrc(root / "map.mrc", vol_a + vol_b)
    write_mrc(root / "mask_a.mrc", sphere_mask(CENTRE_A, 7.0, 5.0))
    write_mrc(root / "imgs.mrcs", truth_a + truth_b, stack=True)
    write_mrc(root / "noisy.mrcs", truth_a + truth_b + noise, stack=True)
    write_star(root / "particles.star", particles)
    noisy = particles.assign(rlnImageName=[n.replace("imgs", "noisy")
                                           for n in particles["rlnImageName"]])
    write_star(root / "noisy.star", noisy)
    return {"root": root, "particles": particles, "scales": scales, "truth_a": truth_a,
            "truth_b": truth_b, "noise": noise, "vol_a": vol_a, "vol_b": vol_b}


# --------------------------------------------------------------------------- simulated
def test_two_domain_subtraction_leaves_domain_b(two_domain, tmp_path):
    root = two_domain["root"]
    summary = subtract_particles(root / "particles.star", tmp_path / "a", map_path=root / "map.mrc",
                                 mask=root / "mask_a.mrc", mask_mode="subtract")
    particles, out = read_output(tmp_path / "a")
    scores = [corr(o, b) for o, b in zip(out, two_domain["truth_b"], strict=True)]
    assert min(scores) >= 0.95, scores
    before = [corr(i, b) for i, b in
              zip(two_domain["truth_a"] + two_domain["truth_b"], two_domain["truth_b"],
                  strict=True)]
    assert np.mean(scores) > np.mean(before) + 0.1
    # per-particle scale: the fitted factors are the simulated ones, up to a common 2-4 %
    # (the simulation's trilinear real-space projection blurs; the gridding correction, as
    # RELION's, over-corrects slightly at low frequency)
    ratio = particles["cryoextractSubtractScale"] / two_domain["scales"]
    np.testing.assert_allclose(ratio, 1.0, atol=0.05)
    assert ratio.std() < 0.01
    assert summary.scale["all"]["count"] == 16
    assert summary.scale["half1"]["count"] == summary.scale["half2"]["count"] == 8
    assert any("single map" in w for w in summary.warnings)
    # keep mode with the same mask removes B instead and leaves A
    subtract_particles(root / "particles.star", tmp_path / "k", map_path=root / "map.mrc",
                       mask=root / "mask_a.mrc", mask_mode="keep")
    _, kept = read_output(tmp_path / "k")
    assert min(corr(o, a) for o, a in zip(kept, two_domain["truth_a"], strict=True)) >= 0.95


def test_noisy_particles_lose_domain_a_signal(two_domain, tmp_path):
    root = two_domain["root"]
    truth_a = two_domain["truth_a"]
    noisy = mrcfile.read(root / "noisy.mrcs")
    subtract_particles(root / "noisy.star", tmp_path / "n", map_path=root / "map.mrc",
                       mask=root / "mask_a.mrc")
    particles, out = read_output(tmp_path / "n")
    # B and A may overlap in projection: compare with what B + noise alone give
    rest = two_domain["truth_b"] + two_domain["noise"]
    baseline = np.array([corr(r, a) for r, a in zip(rest, truth_a, strict=True)])
    before = np.array([corr(i, a) for i, a in zip(noisy, truth_a, strict=True)]) - baseline
    after = np.array([corr(o, a) for o, a in zip(out, truth_a, strict=True)]) - baseline
    assert before.min() > 0.1 and before.mean() > 0.2, before
    assert np.abs(after).max() < 0.05, after
    # what is left is B plus the noise, untouched
    left = out - two_domain["truth_b"] - two_domain["noise"]
    assert np.linalg.norm(left) < 0.15 * np.linalg.norm(truth_a)
    np.testing.assert_allclose(particles["cryoextractSubtractScale"], two_domain["scales"],
                               rtol=0.15)


def test_scale_none_leaves_scaled_particles_under_or_over_subtracted(two_domain, tmp_path):
    root = two_domain["root"]
    subtract_particles(root / "particles.star", tmp_path / "s", map_path=root / "map.mrc",
                       scale="none")
    particles, out = read_output(tmp_path / "s")
    assert "cryoextractSubtractScale" not in particles.columns
    inputs = two_domain["truth_a"] + two_domain["truth_b"]
    # scale 1 removes the map's projection, i.e. the input divided by its simulated scale
    gone = removed(inputs, out)
    for g, i in zip(gone, inputs, strict=True):
        assert corr(g, i) > 0.99
    ratio = np.linalg.norm(gone, axis=(1, 2)) / np.linalg.norm(inputs, axis=(1, 2))
    np.testing.assert_allclose(ratio * two_domain["scales"], 1.0, atol=0.05)
    subtract_particles(root / "particles.star", tmp_path / "p", map_path=root / "map.mrc")
    _, fitted = read_output(tmp_path / "p")
    assert np.linalg.norm(fitted) < 0.05 * np.linalg.norm(inputs)


def test_each_particle_uses_its_own_half_map(two_domain, tmp_path):
    """Half-map 2 differs (domain B moved): only the right half-map empties each image."""
    particles = two_domain["particles"]
    half1 = two_domain["vol_a"] + two_domain["vol_b"]
    half2 = two_domain["vol_a"] + domain(CENTRE_B + np.array([0.0, 6.0, 4.0]), 3)
    images = np.where((particles["rlnRandomSubset"].to_numpy() == 1)[:, None, None],
                      simulate(half1, particles), simulate(half2, particles))
    write_mrc(tmp_path / "h1.mrc", half1)
    write_mrc(tmp_path / "h2.mrc", half2)
    write_mrc(tmp_path / "imgs.mrcs", images, stack=True)
    write_star(tmp_path / "p.star", particles)
    right = subtract_particles(tmp_path / "p.star", tmp_path / "right",
                               half_maps=(tmp_path / "h1.mrc", tmp_path / "h2.mrc"))
    _, out = read_output(tmp_path / "right")
    left = np.linalg.norm(out, axis=(1, 2)) / np.linalg.norm(images, axis=(1, 2))
    assert left.max() < 0.05, left
    assert right.half_maps and not any("single map" in w for w in right.warnings)
    assert len(right.stacks) == 2  # one pass (and stack) per half-set
    subtract_particles(tmp_path / "p.star", tmp_path / "wrong",
                       half_maps=(tmp_path / "h2.mrc", tmp_path / "h1.mrc"))
    _, wrong = read_output(tmp_path / "wrong")
    assert (np.linalg.norm(wrong, axis=(1, 2)) / np.linalg.norm(images, axis=(1, 2))).min() > 0.3
    # a particle without a half-set is reported, not subtracted with some map
    bad = particles.assign(rlnRandomSubset=[3] + [1, 2] * 7 + [2])
    write_star(tmp_path / "bad.star", bad)
    summary = subtract_particles(tmp_path / "bad.star", tmp_path / "bad",
                                 half_maps=(tmp_path / "h1.mrc", tmp_path / "h2.mrc"))
    assert summary.particles_written == 15
    assert summary.particles_skipped == {"no half-set": 1}
    rejected = pd.read_csv(tmp_path / "bad" / "rejected_particles.tsv", sep="\t")
    assert rejected["row"].tolist() == [0]


# --------------------------------------------------------------------------- RELION
def test_subtract_mode_matches_relion_project_subtract_exp(two_domain, tmp_path):
    """``relion_project --subtract_exp`` removes the projection of map·M: our ``subtract``."""
    require_relion("relion_project")
    root = two_domain["root"]
    for name in ("map.mrc", "mask_a.mrc"):
        shutil.copy(root / name, tmp_path / name)
    write_star(tmp_path / "poses.star", two_domain["particles"])
    run = {"cwd": tmp_path, "check": True, "capture_output": True, "timeout": 120}
    # noise-free "experimental" images: RELION's own CTF-modulated projections of the map
    subprocess.run(["relion_project", "--i", "map.mrc", "--ang", "poses.star", "--ctf",
                    "--o", "exp"], **run)
    subprocess.run(["relion_project", "--i", "map.mrc", "--mask", "mask_a.mrc", "--ang",
                    "exp.star", "--ctf", "--subtract_exp", "--o", "relsub"], **run)
    write_mrc(tmp_path / "inverse.mrc", 1.0 - mrcfile.read(tmp_path / "mask_a.mrc"))
    subprocess.run(["relion_project", "--i", "map.mrc", "--mask", "inverse.mrc", "--ang",
                    "poses.star", "--ctf", "--o", "rest"], **run)
    exp, relion = mrcfile.read(tmp_path / "exp.mrcs"), mrcfile.read(tmp_path / "relsub.mrcs")
    rest = mrcfile.read(tmp_path / "rest.mrcs")
    relion_star = starfile.read(tmp_path / "relsub.star")["particles"]
    assert relion_star["rlnImageOriginalName"].iloc[0] == "000001@exp.mrcs"
    # RELION's output is the projection of map·(1 - M)
    assert min(corr(r, p) for r, p in zip(relion, rest, strict=True)) >= 0.999
    subtract_particles(tmp_path / "exp.star", tmp_path / "ours", map_path=tmp_path / "map.mrc",
                       mask=tmp_path / "mask_a.mrc", mask_mode="subtract", scale="none")
    _, ours = read_output(tmp_path / "ours")
    assert min(corr(o, r) for o, r in zip(ours, relion, strict=True)) >= 0.99
    assert min(corr(o, p) for o, p in zip(ours, rest, strict=True)) >= 0.99
    gone_ours, gone_relion = removed(exp, ours), removed(exp, relion)
    assert min(corr(a, b) for a, b in zip(gone_ours, gone_relion, strict=True)) >= 0.99
    assert np.abs(ours - relion).max() < 1e-3 * np.abs(exp).max()


def relion_optimiser(root: Path, star: str, map_name: str, diameter: float) -> str:
    """A RELION optimiser.star for ``star`` whose model is ``map_name`` (see module doc)."""
    (root / "C").mkdir()
    subprocess.run(
        ["relion_refine", "--i", star, "--o", "C/run", "--ref", map_name, "--ini_high", "60",
         "--K", "1", "--iter", "1", "--skip_align", "--ctf", "--particle_diameter",
         str(diameter), "--tau2_fudge", "1", "--j", "1", "--firstiter_cc"],
        cwd=root, check=True, capture_output=True, timeout=300)
    model = root / "C" / "run_it001_model.star"
    text = model.read_text().splitlines()
    text = [f"_rlnCurrentImageSize {N}" if line.startswith("_rlnCurrentImageSize") else line
            for line in text]
    model.write_text("\n".join(text) + "\n")
    shutil.copy(root / map_name, root / "C" / "run_it001_class001.mrc")
    return "C/run_it001_optimiser.star"


def test_keep_mode_recentre_and_revert_match_relion_particle_subtract(two_domain, tmp_path):
    """``relion_particle_subtract --mask M`` keeps M (our ``keep``); with
    ``--recenter_on_mask --new_box`` it moves by ``round(origin - A·com)`` and keeps the
    residual in the origins, as we do; its ``--revert`` loses the origins (relion#690),
    ours restores them."""
    require_relion("relion_refine", "relion_particle_subtract")
    root = two_domain["root"]
    for name in ("map.mrc", "mask_a.mrc", "noisy.mrcs"):
        shutil.copy(root / name, tmp_path / name)
    particles = two_domain["particles"].assign(
        rlnImageName=[n.replace("imgs", "noisy") for n in two_domain["particles"]["rlnImageName"]])
    write_star(tmp_path / "p.star", particles)
    optimiser = relion_optimiser(tmp_path, "p.star", "map.mrc", diameter=80)
    run = {"cwd": tmp_path, "check": True, "capture_output": True, "timeout": 120}
    subprocess.run(["relion_particle_subtract", "--i", optimiser, "--mask", "mask_a.mrc",
                    "--o", "S/"], **run)
    subprocess.run(["relion_particle_subtract", "--i", optimiser, "--mask", "mask_a.mrc",
                    "--o", "R/", "--recenter_on_mask", "--new_box", "32"], **run)
    inputs = mrcfile.read(tmp_path / "noisy.mrcs")
    for relion_dir, ours_dir, options in (("S", "ours", {}),
                                          ("R", "ours_rc", {"recenter_on_mask": True,
                                                            "new_box": 32})):
        relion_star = starfile.read(tmp_path / relion_dir / "particles_subtracted.star")
        relion_parts = relion_star["particles"]
        relion = mrcfile.read(tmp_path / relion_dir / "Particles" /
                              "subtracted_opticsgroup1.mrcs")
        assert relion_parts["rlnImageOriginalName"].tolist() == particles["rlnImageName"].tolist()
        summary = subtract_particles(tmp_path / "p.star", tmp_path / ours_dir,
                                     map_path=tmp_path / "map.mrc", mask=tmp_path / "mask_a.mrc",
                                     mask_mode="keep", scale="none", **options)
        ours_parts, ours = read_output(tmp_path / ours_dir)
        assert ours.shape == relion.shape
        if not options:
            gone = zip(removed(inputs, ours), removed(inputs, relion), strict=True)
            assert min(corr(a, b) for a, b in gone) >= 0.99
        assert min(corr(a, b) for a, b in zip(ours, relion, strict=True)) >= 0.99
        assert np.abs(ours - relion).max() < 1e-3 * np.abs(inputs).max()
        for column in ("rlnOriginXAngst", "rlnOriginYAngst"):
            np.testing.assert_allclose(ours_parts[column], relion_parts[column], atol=1e-4)
    assert summary.recentered == 16
    np.testing.assert_allclose(summary.recenter_xyz_px, CENTRE_A, atol=0.01)
    # revert: RELION swaps the names but keeps the residual origins; we restore them
    (tmp_path / "RV").mkdir()  # RELION 3.1.3 reports success but writes nothing without it
    subprocess.run(["relion_particle_subtract", "--revert", "R/particles_subtracted.star",
                    "--o", "RV/"], **run)
    relion_reverted = starfile.read(tmp_path / "RV" / "original.star")["particles"]
    assert not np.allclose(relion_reverted["rlnOriginXAngst"], particles["rlnOriginXAngst"],
                           atol=1e-3)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # as RELION: from the directory the inputs are named from
    try:
        reverted = revert_subtraction("ours_rc/particles.star", "rev")
    finally:
        os.chdir(cwd)
    back = starfile.read(tmp_path / "rev" / "particles.star")
    np.testing.assert_allclose(back["particles"]["rlnOriginXAngst"], particles["rlnOriginXAngst"],
                               atol=1e-5)
    np.testing.assert_allclose(back["particles"]["rlnOriginYAngst"], particles["rlnOriginYAngst"],
                               atol=1e-5)
    assert back["particles"]["rlnImageName"].tolist() == particles["rlnImageName"].tolist()
    assert int(back["optics"]["rlnImageSize"].iloc[0]) == N
    assert reverted.origins_restored == 16


#: CtfRefine's optics-group aberrations, strong enough to matter at 48 px and 2 Å/px:
#: beam tilt (mrad), trefoil (odd 2, 5), astigmatism and 4th order (even 1, 4, 8), and
#: an anisotropic magnification; the coma reaches 2 rad at Nyquist
ABERRATIONS = {
    "rlnBeamTiltX": 2.0, "rlnBeamTiltY": -1.5,
    "rlnOddZernike": "[0,0,40,0,0,-30]",
    "rlnEvenZernike": "[0,3,0,0,150,0,0,0,-100]",
    "rlnMagMat00": 1.015, "rlnMagMat01": 0.008, "rlnMagMat10": -0.004, "rlnMagMat11": 0.99,
}


@dataclass
class OpticsComparison:
    """What ``relion_particle_subtract`` and we removed (``input - output``, input order)
    with an optics table, and what we removed with the plain one."""

    relion: np.ndarray
    ours: np.ndarray
    plain: np.ndarray
    summary: object


def compare_optics_with_relion(two_domain: dict, root: Path, particles: pd.DataFrame,
                               optics: pd.DataFrame, plain_optics: pd.DataFrame
                               ) -> OpticsComparison:
    """The whole of a sharp two-domain map (detail up to Nyquist, where the optics
    matter) subtracted from the noise-free particles by RELION and by us, ``--scale
    none``."""
    require_relion("relion_refine", "relion_particle_subtract")
    shutil.copy(two_domain["root"] / "imgs.mrcs", root / "imgs.mrcs")
    write_mrc(root / "sharp.mrc", domain(CENTRE_A, 1, sigma_px=0.6)
              + domain(CENTRE_B, 2, sigma_px=0.6))
    for name, table in (("p.star", optics), ("plain.star", plain_optics)):
        starfile.write({"optics": table, "particles": particles}, root / name, overwrite=True)
    optimiser = relion_optimiser(root, "p.star", "sharp.mrc", diameter=80)
    subprocess.run(["relion_particle_subtract", "--i", optimiser, "--o", "S/"], cwd=root,
                   check=True, capture_output=True, timeout=120)
    inputs = mrcfile.read(root / "imgs.mrcs")
    table = starfile.read(root / "S" / "particles_subtracted.star")["particles"]
    relion = np.empty_like(inputs)
    for name, original in zip(table["rlnImageName"], table["rlnImageOriginalName"],
                              strict=True):  # one stack per optics group
        index, path = name.split("@")
        relion[int(original.split("@")[0]) - 1] = mrcfile.read(root / path)[int(index) - 1]
    summary = subtract_particles(root / "p.star", root / "ours", map_path=root / "sharp.mrc",
                                 scale="none")
    subtract_particles(root / "plain.star", root / "plain", map_path=root / "sharp.mrc",
                       scale="none")
    return OpticsComparison(relion=removed(inputs, relion),
                            ours=removed(inputs, read_output(root / "ours")[1]),
                            plain=removed(inputs, read_output(root / "plain")[1]),
                            summary=summary)


def test_optical_aberrations_match_relion_particle_subtract(two_domain, tmp_path, capsys):
    """RELION 3.1 applies each optics group's beam tilt, odd and even Zernike terms and
    anisotropic magnification (``ObservationModel``) to the projection it subtracts;
    ours matches it, and without them it would not."""
    run = compare_optics_with_relion(two_domain, tmp_path, two_domain["particles"],
                                     optics_table().assign(**ABERRATIONS), optics_table())
    # as close as without aberrations: on this sharp map the gridding corrections
    # (ours separable, RELION's radial) differ by up to 1 % of the range
    assert min(corr(a, b) for a, b in zip(run.ours, run.relion, strict=True)) >= 0.999
    assert np.abs(run.ours - run.relion).max() < 0.02 * np.abs(run.relion).max()
    # the aberrations matter: the plain model misses RELION's projection
    assert min(corr(a, b) for a, b in zip(run.plain, run.relion, strict=True)) < 0.95
    assert np.abs(run.plain - run.relion).max() > 0.1 * np.abs(run.relion).max()
    assert len(run.summary.aberrations["optics group 1"]) == 3
    print_subtract_summary(run.summary)
    shown = capsys.readouterr().out
    assert "optics group 1 aberrations" in shown and "anisotropic" in shown
    # the optics table, aberrations included, is passed on unchanged
    optics = starfile.read(tmp_path / "ours" / "particles.star")["optics"]
    assert optics["rlnOddZernike"].iloc[0] == ABERRATIONS["rlnOddZernike"]
    assert float(optics["rlnMagMat00"].iloc[0]) == ABERRATIONS["rlnMagMat00"]


def test_different_detector_mtfs_match_relion_particle_subtract(two_domain, tmp_path):
    """Optics groups with different MTF files: RELION multiplies each projection by its
    group's MTF over the groups' average; so do we (without it the amplitudes are off by
    about 10 % here)."""
    resolution = np.linspace(0.0, 0.5, 51)
    for name, decay in (("mtf_a.star", 1.0), ("mtf_b.star", 3.0)):
        starfile.write(pd.DataFrame({"rlnResolutionInversePixel": resolution,
                                     "rlnMtfValue": np.exp(-decay * resolution)}),
                       tmp_path / name, overwrite=True)
    particles = two_domain["particles"].assign(
        rlnOpticsGroup=np.arange(len(two_domain["particles"])) % 2 + 1)
    optics = pd.concat([optics_table(), optics_table()], ignore_index=True).assign(
        rlnOpticsGroup=[1, 2], rlnOpticsGroupName=["g1", "g2"],
        rlnMtfFileName=["mtf_a.star", "mtf_b.star"], rlnMicrographOriginalPixelSize=1.0)
    run = compare_optics_with_relion(two_domain, tmp_path, particles, optics,
                                     optics.drop(columns="rlnMtfFileName"))
    norm = np.linalg.norm(run.relion, axis=(1, 2))
    assert np.abs(np.linalg.norm(run.ours, axis=(1, 2)) / norm - 1).max() < 0.01
    assert min(corr(a, b) for a, b in zip(run.ours, run.relion, strict=True)) >= 0.999
    assert np.abs(run.ours - run.relion).max() < 0.02 * np.abs(run.relion).max()
    assert np.abs(np.linalg.norm(run.plain, axis=(1, 2)) / norm - 1).min() > 0.05
    assert "optics group 2" in run.summary.aberrations


# --------------------------------------------------------------------------- real data
def test_real_trpv1_whole_map_subtraction(tmp_path):
    source = SHARED_DATA / "real" / "cryojax_trpv1"
    require_paths(source / "trpv1_small_stack.star", source / "trpv1_small_stack.mrcs",
                  source / "trpv1_volume.mrc")
    shutil.copy(source / "trpv1_small_stack.mrcs", tmp_path / "trpv1_small_stack.mrcs")
    shutil.copy(source / "trpv1_volume.mrc", tmp_path / "trpv1_volume.mrc")
    text = (source / "trpv1_small_stack.star").read_text()
    (tmp_path / "p.star").write_text(text.replace("./batch_0_restacked.mrc",
                                                  "trpv1_small_stack.mrcs"))
    images = mrcfile.read(tmp_path / "trpv1_small_stack.mrcs")
    # our projections (with --scale none, the removed part is exactly the projection)
    subtract_particles(tmp_path / "p.star", tmp_path / "proj", map_path=tmp_path /
                       "trpv1_volume.mrc", scale="none")
    _, unscaled = read_output(tmp_path / "proj")
    projections = removed(images, unscaled)
    before = np.array([corr(i, p) for i, p in zip(images, projections, strict=True)])
    summary = subtract_particles(tmp_path / "p.star", tmp_path / "out",
                                 map_path=tmp_path / "trpv1_volume.mrc")
    particles, out = read_output(tmp_path / "out")
    after = np.array([corr(o, p) for o, p in zip(out, projections, strict=True)])
    assert 0.12 < before.mean() < 0.35 and before.min() > 0.1, before
    # default: scale fitted up to half Nyquist, the correlation drops to about 0
    assert np.abs(after).max() < 0.05, after
    # fitted over every frequency, the least-squares residual is orthogonal: exactly 0
    subtract_particles(tmp_path / "p.star", tmp_path / "full", scale_band=1.0,
                       map_path=tmp_path / "trpv1_volume.mrc")
    _, full = read_output(tmp_path / "full")
    assert max(abs(corr(o, p)) for o, p in zip(full, projections, strict=True)) < 1e-3
    scales = particles["cryoextractSubtractScale"].to_numpy()
    assert np.all(np.isfinite(scales)) and np.all(scales > 0)
    stats = json.loads((tmp_path / "out" / "summary.json").read_text())["scale"]["all"]
    assert stats["count"] == 10 and stats["median"] == pytest.approx(np.median(scales))
    assert summary.particles_written == 10


# --------------------------------------------------------------------------- options, I/O
def blob_dataset(root: Path, n: int = 12, seed: int = 0, mic_apix: float | None = 1.0
                 ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One compact blob off-centre at ``point`` (voxels); noise-free images."""
    point = np.array([30.0, 20.0, 27.0])
    vol = domain(point, seed + 11, count=6)
    particles = random_particles(n, seed=seed)
    images = simulate(vol, particles)
    write_mrc(root / "map.mrc", vol)
    write_mrc(root / "imgs.mrcs", images, stack=True)
    write_star(root / "p.star", particles, mic_apix=mic_apix)
    return particles, images, point


def test_recenter_xyz_new_box_coordinates_and_revert(tmp_path):
    particles, _, point = blob_dataset(tmp_path)
    write_mrc(tmp_path / "keep.mrc", sphere_mask(point, 8.0, 4.0))
    summary = subtract_particles(tmp_path / "p.star", tmp_path / "out", map_path=tmp_path /
                                 "map.mrc", mask=tmp_path / "keep.mrc", mask_mode="keep",
                                 recenter_xyz=point, new_box=32, scale="none")
    out_parts, out = read_output(tmp_path / "out")
    assert out.shape == (12, 32, 32)
    assert int(starfile.read(tmp_path / "out" / "particles.star")["optics"]
               ["rlnImageSize"].iloc[0]) == 32
    # the output is the particle of the map moved so that the point is at its centre,
    # seen with the new (sub-pixel) origins: simulated here independently, then cropped
    vol = mrcfile.read(tmp_path / "map.mrc")
    centred = ndimage.shift(vol, (N // 2 - point)[::-1], order=1)
    expected = simulate(centred, out_parts)[:, 8:40, 8:40]
    assert np.abs(out_parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).max() <= APIX / 2
    scores = [corr(o, e) for o, e in zip(out, expected, strict=True)]
    assert min(scores) >= 0.95, scores
    # the same with the scale fit (subtraction in Fourier space, then the same move)
    subtract_particles(tmp_path / "p.star", tmp_path / "fit", map_path=tmp_path / "map.mrc",
                       mask=tmp_path / "keep.mrc", mask_mode="keep", recenter_xyz=point,
                       new_box=32, scale="per-particle")
    _, fitted = read_output(tmp_path / "fit")
    scores = [corr(o, e) for o, e in zip(fitted, expected, strict=True)]
    assert min(scores) >= 0.95, scores
    # rlnCoordinateX/Y moved by the integer shift, so that the point's micrograph position
    # (before: coordinate + (A c - origin) / mic_apix; after: coordinate - origin / mic_apix,
    # docs/conventions.md "Origins"; micrograph pixel 1 A) is unchanged
    rotations = euler_to_matrix(*particles[["rlnAngleRot", "rlnAngleTilt",
                                            "rlnAnglePsi"]].to_numpy().T)
    projected = (rotations @ (point - N // 2))[:, :2] * APIX  # A c in Angstrom
    for axis, column in enumerate(("X", "Y")):
        before = (particles[f"rlnCoordinate{column}"] + projected[:, axis]
                  - particles[f"rlnOrigin{column}Angst"])
        after = out_parts[f"rlnCoordinate{column}"] - out_parts[f"rlnOrigin{column}Angst"]
        np.testing.assert_allclose(after, before, atol=1e-4)
    moved = (particles["rlnCoordinateX"] != out_parts["rlnCoordinateX"]) | (
        particles["rlnCoordinateY"] != out_parts["rlnCoordinateY"])
    assert summary.recentered == int(moved.sum()) > 0
    # original names are relative to the working directory (or the STAR's), as in RELION
    reverted = revert_subtraction(tmp_path / "out" / "particles.star", tmp_path / "rev",
                                  base_dir=tmp_path)
    back = starfile.read(tmp_path / "rev" / "particles.star")
    for column in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnCoordinateX", "rlnCoordinateY"):
        np.testing.assert_allclose(back["particles"][column], particles[column], atol=1e-5)
    assert not any(c.startswith("cryoextract") for c in back["particles"].columns)
    assert int(back["optics"]["rlnImageSize"].iloc[0]) == N
    assert reverted.coordinates_restored == 12 and reverted.image_size_px == {"opticsGroup1": N}
    with pytest.raises(ParameterError, match="exists"):
        revert_subtraction(tmp_path / "out" / "particles.star", tmp_path / "rev")
    with pytest.raises(InputError, match="rlnImageOriginalName"):
        revert_subtraction(tmp_path / "p.star", tmp_path / "rev2")


def test_cryosparc_cs_input_and_output(tmp_path):
    particles, images, _ = blob_dataset(tmp_path)
    write_cs(tmp_path / "p.cs", optics_table(), particles)
    from_star = subtract_particles(tmp_path / "p.star", tmp_path / "star", map_path=tmp_path /
                                   "map.mrc", scale="none")
    from_cs = subtract_particles(tmp_path / "p.cs", tmp_path / "cs", map_path=tmp_path /
                                 "map.mrc", scale="none", base_dir=tmp_path)
    assert from_star.particles_cs is None and from_cs.particles_cs is not None
    _, a = read_output(tmp_path / "star")
    _, b = read_output(tmp_path / "cs")
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(images).max())
    _, back = read_cs_particles(tmp_path / "cs" / "particles.cs")
    assert back["rlnRandomSubset"].tolist() == particles["rlnRandomSubset"].tolist()
    assert (back["rlnImageName"].str.split("@").str[1]
            == "Particles/subtracted_000000.mrcs").all()
    a_in = euler_to_matrix(*particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy().T)
    a_out = euler_to_matrix(*back[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy().T)
    np.testing.assert_allclose(a_out, a_in, atol=1e-5)
    assert not any("higher-order" in w for w in from_cs.warnings)
    # cryoSPARC's higher-order CTF terms are not converted: said, not silently dropped
    data = np.load(tmp_path / "p.cs")
    data["ctf/tilt_A"][:, 0] = 0.3
    with open(tmp_path / "tilted.cs", "wb") as stream:
        np.save(stream, data)
    tilted = subtract_particles(tmp_path / "tilted.cs", tmp_path / "tilted",
                                map_path=tmp_path / "map.mrc", scale="none", base_dir=tmp_path)
    assert any("ctf/tilt_A set in the .cs" in w for w in tilted.warnings)


def test_float16_small_batches_and_chunks_give_the_same_result(tmp_path, monkeypatch):
    blob_dataset(tmp_path)
    reference = subtract_particles(tmp_path / "p.star", tmp_path / "ref",
                                   map_path=tmp_path / "map.mrc")
    _, expected = read_output(tmp_path / "ref")
    monkeypatch.setattr(tasks, "TASK_BYTES", 3 * N * N * 4)
    monkeypatch.setattr(tasks, "CHUNK_PIXELS", 2 * N * N)
    small = subtract_particles(tmp_path / "p.star", tmp_path / "small", batch_size=5,
                               map_path=tmp_path / "map.mrc", workers=2)
    _, got = read_output(tmp_path / "small")
    assert len(small.stacks) == 3 and len(reference.stacks) == 1  # 5 + 5 + 2
    np.testing.assert_allclose(got, expected, atol=1e-6 * np.abs(expected).max())
    subtract_particles(tmp_path / "p.star", tmp_path / "f16", map_path=tmp_path / "map.mrc",
                       float16=True)
    with mrcfile.open(tmp_path / "f16" / "Particles" / "subtracted_000000.mrcs") as handle:
        assert handle.data.dtype == np.float16 and handle.header.mode == 12
    _, half = read_output(tmp_path / "f16")
    np.testing.assert_allclose(half, expected, atol=2e-3 * np.abs(expected).max())


def test_worker_processes_write_the_same_stacks_as_one_process(tmp_path, monkeypatch):
    """Tasks of 3 images spread over two forked workers, each writing its images at their
    place: the pixels equal the single-process run's, and each header's statistics are
    those of its pixels."""
    blob_dataset(tmp_path, n=17)
    monkeypatch.setattr(tasks, "TASK_BYTES", 3 * N * N * 4)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        runs[workers] = subtract_particles(tmp_path / "p.star", out, batch_size=7,
                                           map_path=tmp_path / "map.mrc", workers=workers)
        assert not list((out / "Particles").glob(".*"))  # no temporary file left
    assert [Path(s).name for s in runs[1].stacks] == [Path(s).name for s in runs[2].stacks]
    for name in (Path(s).name for s in runs[2].stacks):
        with mrcfile.open(tmp_path / "w1" / "Particles" / name) as one, \
                mrcfile.open(tmp_path / "w2" / "Particles" / name) as two:
            assert one.data.tobytes() == two.data.tobytes()
            values = two.data.astype(np.float64)
            header = two.header
            np.testing.assert_allclose(
                [header.dmin, header.dmax, header.dmean, header.rms],
                [values.min(), values.max(), values.mean(), values.std()], rtol=1e-5)
    star_one = starfile.read(tmp_path / "w1" / "particles.star")["particles"]
    star_two = starfile.read(tmp_path / "w2" / "particles.star")["particles"]
    # each names its own stacks
    star_two["rlnImageName"] = star_two["rlnImageName"].str.replace("/w2/", "/w1/")
    pd.testing.assert_frame_equal(star_one, star_two)


def test_a_worker_that_dies_fails_the_job_in_one_line_and_publishes_nothing(tmp_path,
                                                                           monkeypatch):
    blob_dataset(tmp_path)

    def killed(*_args: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(tasks, "_subtract_chunk", killed)  # inherited by the forked workers
    with pytest.raises(CryoExtractError, match="worker process died") as caught:
        subtract_particles(tmp_path / "p.star", tmp_path / "out", map_path=tmp_path / "map.mrc",
                           workers=2)
    assert "\n" not in str(caught.value)
    assert not list((tmp_path / "out" / "Particles").iterdir())
    assert not (tmp_path / "out" / "particles.star").exists()


def test_a_full_disk_in_a_worker_fails_the_job_in_one_line_naming_the_stack(tmp_path,
                                                                           monkeypatch):
    blob_dataset(tmp_path)

    def full(part_path: str, *_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), part_path)

    monkeypatch.setattr(tasks, "write_images_at", full)  # inherited by the forked workers
    with pytest.raises(CryoExtractError, match=r"subtracted_000000\.mrcs.*no space left") as caught:
        subtract_particles(tmp_path / "p.star", tmp_path / "out", map_path=tmp_path / "map.mrc",
                           workers=2)
    assert "\n" not in str(caught.value)
    assert not list((tmp_path / "out" / "Particles").iterdir())
    assert not (tmp_path / "out" / "particles.star").exists()


def test_memory_does_not_grow_with_the_number_of_particles(tmp_path, monkeypatch):
    """Images are streamed: the peak of traced allocations is that of one batch (the
    CTF cache, which has its own bound, is held to 40 CTFs here: every particle has its
    own defocus)."""
    n_box = 32
    point = np.array([16.0, 16.0, 16.0])
    write_mrc(tmp_path / "map.mrc", domain(point, 0, n=n_box, count=5))
    monkeypatch.setattr(tasks, "TASK_BYTES", 64 * n_box * n_box * 4)
    monkeypatch.setattr(subtract_ctf, "_ctf_cache",
                        subtract_ctf.CtfCache(40 * n_box * (n_box // 2 + 1) * 4))
    rng = np.random.default_rng(0)
    peaks = {}
    for count in (200, 1600):
        particles = random_particles(count, seed=count, stack=f"s{count}.mrcs")
        write_mrc(tmp_path / f"s{count}.mrcs",
                  rng.normal(size=(count, n_box, n_box)).astype(np.float32), stack=True)
        starfile.write({"optics": optics_table(box=n_box), "particles": particles},
                       tmp_path / f"p{count}.star", overwrite=True)
        tracemalloc.start()
        subtract_particles(tmp_path / f"p{count}.star", tmp_path / f"o{count}",
                           map_path=tmp_path / "map.mrc", workers=1, batch_size=400)
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    images_1600 = 1600 * n_box * n_box * 4
    assert peaks[1600] < 1.5 * peaks[200], peaks
    assert peaks[1600] < 0.8 * images_1600 + 40 * 2**20, peaks


def test_ctf_cache_gives_the_ctfs_it_was_asked_for_within_its_budget():
    box, apix = 24, 1.3
    # DefocusU, V, angle, kV, Cs, amplitude contrast; power, flipped
    keys = [(12000.0, 11000.0, 30.0, 300.0, 2.7, 0.1, 1, False),
            (20000.0, 20000.0, 0.0, 200.0, 2.0, 0.07, 2, False),
            (15000.0, 14000.0, 75.0, 300.0, 2.7, 0.1, 1, True)]
    params = [CtfParams(defocus_u_angstrom=k[0], defocus_v_angstrom=k[1],
                        defocus_angle_degrees=k[2], voltage_kv=k[3],
                        spherical_aberration_mm=k[4], amplitude_contrast=k[5]) for k in keys]
    ctfs = [subtract_ctf.ParticleCtf(p, power=k[6], phase_flipped=k[7])
            for p, k in zip(params, keys, strict=True)]
    plain = ctf_2d_batch(params, box, apix)
    expected = np.stack([plain[0], plain[1] ** 2, np.abs(plain[2])])
    one_image = box * (box // 2 + 1) * 4
    cache = subtract_ctf.CtfCache(2 * one_image)
    # [2, 0] after [0, 1]: storing 2 drops 0, which this call also asks for
    for order in ([0, 1], [2, 0], [0, 1, 2], [1, 2], [2, 1, 0]):
        np.testing.assert_allclose(cache.table([ctfs[k] for k in order], box, apix),
                                   expected[order], rtol=1e-6, atol=1e-7)
    assert len(cache._items) == 2 and cache._bytes == 2 * one_image


def test_ctf_records_are_read_as_extraction_reads_a_ctf(tmp_path):
    """The job's CTF records give the CtfParams that ``CtfParams.from_star_row`` (what
    extraction uses) reads from the same rows, RELION's defaults included; a value that
    is not a number skips its particle (a one-line error when it is every particle)."""
    particles, _, _ = blob_dataset(tmp_path)
    table = read_particles(tmp_path / "p.star")
    rows = table.particles.drop(columns=["rlnDefocusV"], errors="ignore").iloc[:5]
    records, bad = subtract_ctf.star_ctf_records(table, rows, subtract_ctf.GroupOptics())
    assert not bad
    optics = table.optics.set_index("rlnOpticsGroup")
    for k, (_, row) in enumerate(rows.iterrows()):
        merged = {**optics.loc[row["rlnOpticsGroup"]].to_dict(), **row.to_dict()}
        assert subtract_ctf.ParticleCtf.of(records[k], {}).params == \
            CtfParams.from_star_row(merged)
    broken = particles.assign(rlnDefocusU=particles["rlnDefocusU"].astype(object))
    broken.loc[1, "rlnDefocusU"] = "abc"
    write_star(tmp_path / "bad.star", broken)
    summary = subtract_particles(tmp_path / "bad.star", tmp_path / "o1",
                                 map_path=tmp_path / "map.mrc", workers=1)
    assert summary.particles_skipped == {subtract_ctf.BAD_CTF: 1}
    assert summary.particles_written == len(particles) - 1
    everything = particles.assign(rlnDefocusU="abc")
    write_star(tmp_path / "worse.star", everything)
    with pytest.raises(InputError, match=r"worse\.star.*rlnDefocusU = 'abc'"):
        subtract_particles(tmp_path / "worse.star", tmp_path / "o2",
                           map_path=tmp_path / "map.mrc", workers=1)
    assert not (tmp_path / "o2").exists()


def test_mask_checks_and_hard_edge_warning(tmp_path):
    blob_dataset(tmp_path)
    write_mrc(tmp_path / "hard.mrc", sphere_mask(CENTRE_A, 8.0, 0.0))
    write_mrc(tmp_path / "soft.mrc", sphere_mask(CENTRE_A, 6.0, 8.0))
    write_mrc(tmp_path / "bad.mrc", sphere_mask(CENTRE_A, 6.0, 8.0) * 1.5)
    assert inspect_mask(mrcfile.read(tmp_path / "hard.mrc")).hard
    soft = inspect_mask(mrcfile.read(tmp_path / "soft.mrc"))
    assert not soft.hard and 6.0 < soft.edge_width_px < 10.0
    assert suggested_edge_px(3.2, 1.6) == pytest.approx(10.0)
    hard = subtract_particles(tmp_path / "p.star", tmp_path / "h", map_path=tmp_path / "map.mrc",
                              mask=tmp_path / "hard.mrc")
    assert any("hard edge" in w for w in hard.warnings)
    ok = subtract_particles(tmp_path / "p.star", tmp_path / "s", map_path=tmp_path / "map.mrc",
                            mask=tmp_path / "soft.mrc", map_resolution_angstrom=2.5)
    assert not any("hard edge" in w for w in ok.warnings)
    assert ok.mask_suggested_edge_px == pytest.approx(6.25)
    strict = subtract_particles(tmp_path / "p.star", tmp_path / "r", map_path=tmp_path /
                                "map.mrc", mask=tmp_path / "soft.mrc",
                                map_resolution_angstrom=8.0)
    assert any("at least 20.0 px" in w for w in strict.warnings)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        subtract_particles(tmp_path / "p.star", tmp_path / "b", map_path=tmp_path / "map.mrc",
                           mask=tmp_path / "bad.mrc")


def test_clear_errors(tmp_path):
    particles, _, _ = blob_dataset(tmp_path)
    vol = mrcfile.read(tmp_path / "map.mrc")
    write_mrc(tmp_path / "small.mrc", vol[8:40, 8:40, 8:40])
    write_mrc(tmp_path / "apix.mrc", vol, apix=2.5)
    run = {"particles": tmp_path / "p.star"}
    with pytest.raises(InputError, match="map box 32 px differs"):
        subtract_particles(out_dir=tmp_path / "o1", map_path=tmp_path / "small.mrc", **run)
    with pytest.raises(InputError, match=r"pixel size 2\.5 A differs"):
        subtract_particles(out_dir=tmp_path / "o2", map_path=tmp_path / "apix.mrc", **run)
    with pytest.raises(ParameterError, match="exactly one"):
        subtract_particles(out_dir=tmp_path / "o3", **run)
    with pytest.raises(ParameterError, match="larger"):
        subtract_particles(out_dir=tmp_path / "o4", map_path=tmp_path / "map.mrc",
                           new_box=64, **run)
    write_star(tmp_path / "nosub.star", particles.drop(columns="rlnRandomSubset"))
    with pytest.raises(InputError, match="rlnRandomSubset"):
        subtract_particles(tmp_path / "nosub.star", tmp_path / "o5",
                           half_maps=(tmp_path / "map.mrc", tmp_path / "map.mrc"))
    write_star(tmp_path / "nopose.star", particles.drop(columns="rlnAngleTilt"))
    with pytest.raises(InputError, match="3D poses"):
        subtract_particles(tmp_path / "nopose.star", tmp_path / "o6",
                           map_path=tmp_path / "map.mrc")
    with pytest.raises(ParameterError, match="needs --mask"):
        subtract_particles(out_dir=tmp_path / "o7", map_path=tmp_path / "map.mrc",
                           recenter_on_mask=True, **run)
    subtract_particles(out_dir=tmp_path / "o8", map_path=tmp_path / "map.mrc", **run)
    with pytest.raises(ParameterError, match="not empty"):
        subtract_particles(out_dir=tmp_path / "o8", map_path=tmp_path / "map.mrc", **run)


def test_a_run_on_an_out_in_use_is_refused_and_changes_nothing(tmp_path):
    blob_dataset(tmp_path)
    out = tmp_path / "out"
    subtract_particles(tmp_path / "p.star", out, map_path=tmp_path / "map.mrc", workers=1)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with JobLock(out):  # the run in progress
        with pytest.raises(JobLockedError, match="in use"):
            subtract_particles(tmp_path / "p.star", out, map_path=tmp_path / "map.mrc",
                               workers=1, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --revert never writes over its input
    with pytest.raises(ParameterError, match="would replace"):
        revert_subtraction(out / "particles.star", out, overwrite=True)


def test_cli_subtract_and_revert(tmp_path, monkeypatch):
    particles, _, point = blob_dataset(tmp_path)
    write_mrc(tmp_path / "keep.mrc", sphere_mask(point, 8.0, 4.0))
    app = typer.Typer()
    app.command("subtract")(subtract_command)

    @app.callback()
    def _root() -> None:
        """Test app."""

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, [
        "subtract", "--particles", "p.star", "--half-maps", "map.mrc", "map.mrc", "--mask",
        "keep.mrc", "--mask-mode", "keep", "--recenter-xyz", "30", "20", "27", "--new-box",
        "40", "--float16", "--out", "out", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "scale half1" in result.output and "(keep)" in result.output
    with mrcfile.open(tmp_path / "out" / "Particles" / "subtracted_000000.mrcs") as handle:
        assert handle.data.shape == (6, 40, 40) and handle.header.mode == 12
    result = runner.invoke(app, ["subtract", "--revert", "out/particles.star", "--out", "rev"])
    assert result.exit_code == 0, result.output
    back = starfile.read(tmp_path / "rev" / "particles.star")["particles"]
    np.testing.assert_allclose(back["rlnOriginXAngst"], particles["rlnOriginXAngst"], atol=1e-5)
    result = runner.invoke(app, ["subtract", "--particles", "p.star", "--map", "missing.mrc",
                                 "--out", "x"])
    assert result.exit_code == 2
    assert "missing.mrc: map not found" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["subtract", "--out", "x"])
    assert result.exit_code == 2 and "--particles" in result.output


def test_viewing_direction_order_groups_planes_and_recenter_shifts():
    rng = np.random.default_rng(3)
    angles = np.column_stack([rng.uniform(-180, 180, 300), rng.uniform(0, 180, 300),
                              rng.uniform(-180, 180, 300)])
    order = viewing_direction_order(angles)
    assert sorted(order.tolist()) == list(range(300))
    # psi turns the slice within its plane; tilt 180 - t with rot + 180 is the same plane
    same_plane = np.array([[10.0, 40.0, 0.0], [10.0, 40.0, 123.0], [190.0, 140.0, -50.0],
                           [-100.0, 150.0, 0.0]])
    direction = euler_to_matrix(*same_plane.T)[:, 2, :]
    assert abs(abs(direction[0] @ direction[2]) - 1.0) < 1e-9
    ranked = np.argsort(viewing_direction_order(same_plane))
    assert abs(ranked[0] - ranked[1]) == 1 and abs(ranked[0] - ranked[2]) <= 2
    # recentring: integer shifts round(origin - A c), residual origins in [-0.5, 0.5]
    origins = rng.uniform(-5, 5, (300, 2))
    point = np.array([4.0, -3.0, 2.5])
    moves = recentre(origins, angles, point)
    shifts, residual = moves.shifts_px, moves.residual_px
    projected = (euler_to_matrix(*angles.T) @ point)[:, :2]
    np.testing.assert_allclose(shifts + residual, origins - projected, atol=1e-12)
    assert np.abs(residual).max() <= 0.5 and shifts.dtype == np.int64


def test_kernel_loading_meanwhile_runs_the_body_and_raises_a_load_failure_after(monkeypatch):
    loads = []

    def broken() -> None:
        loads.append(threading.current_thread().name)
        raise ImportError("numba is broken")

    monkeypatch.setattr(tasks, "load_kernel", broken)
    ran = []
    with pytest.raises(ImportError, match="numba is broken"):
        with tasks.kernel_loading_meanwhile(2):
            ran.append(True)
    assert ran == [True] and loads == ["cryoextract-kernel-load"]
    with tasks.kernel_loading_meanwhile(1):  # one worker: loaded when used
        ran.append(True)
    assert len(loads) == 1
