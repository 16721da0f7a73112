"""``cryoextract subtract`` (``cryoextract.pipeline.stacks.subtract``) on simulated
particles of two domains (``subtract_sim.py``): domain A removed leaves domain B, in noise
too; ``--scale none`` under- or over-subtracts scaled particles; each half-set uses its
own half map.

The other oracles: ``test_subtract_relion.py`` (RELION 3.1.3 and real data); options and
I/O in ``test_subtract_options.py``; checks, errors and the CLI in
``test_subtract_checks.py``.
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd

from cryoextract.pipeline.stacks.subtract import subtract_particles
from subtract_sim import (
    CENTRE_B,
    corr,
    domain,
    read_output,
    removed,
    simulate,
    write_mrc,
    write_star,
)


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
