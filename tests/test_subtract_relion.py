"""``cryoextract subtract`` against RELION 3.1.3 and real data.

- RELION 3.1.3: ``relion_project --mask M --ctf --subtract_exp`` (removes the projection
  of map·M: our ``--mask-mode subtract``) and ``relion_particle_subtract --mask M``
  (removes map·(1 - M): our ``keep``), both with scale 1 (``--scale none``).
  ``relion_particle_subtract`` reads an ``optimiser.star``; we make one with a tiny
  ``relion_refine`` run (3D classification, K = 1, one iteration, ``--skip_align``, so the
  poses are the input's), then point its model at our map (``run_it001_class001.mrc``
  replaced) and set ``rlnCurrentImageSize`` to the full box (RELION projects only up to
  the model's current size). Without MPI, 3D auto-refine optimisers cannot be used
  ("needs at least 2 MPI processes" for split half-sets), hence classification.
- Real TRPV1 particles (``../shared/data/real/cryojax_trpv1``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryoextract.cli.subtract import print_subtract_summary
from cryoextract.pipeline.stacks.revert import revert_subtraction
from cryoextract.pipeline.stacks.subtract import subtract_particles
from relion_oracle import require_relion
from shared_data import SHARED_DATA, require_paths
from subtract_sim import (
    CENTRE_A,
    CENTRE_B,
    N,
    corr,
    domain,
    optics_table,
    read_output,
    removed,
    write_mrc,
    write_star,
)


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
