"""CTF phase flipping and premultiplication at extraction (``--ctf-correct``): the
multipliers against an independent CTF (``ctf_oracle.py``), and (d) the optics block
records what was applied.

The other oracles: (a) RELION 3.1.3 ``relion_preprocess`` in
``test_ctf_correct_relion.py`` (with what RELION does, confirmed there); (b) particles
projected by ``relion_project --ctf`` and (c) real particles with real CTFs in
``test_ctf_correct_particles.py``.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryoextract import ExtractParams, NormMode, SubpixelMode, extract
from cryoextract.ops.ctf import ctf_2d
from cryoextract.ops.ctf_correct import (
    CtfCorrection,
    apply_fourier_multiplier,
    correct_boxes,
    ctf_multiplier,
    window_centre,
)
from ctf_oracle import (
    APIX,
    BOX,
    CS,
    MIC_CTFS,
    Q0,
    VOLTAGE,
    ctf_params,
    oracle_correct,
    oracle_ctf,
    oracle_flip,
)
from relion_oracle import (
    load_particles,
)


# --------------------------------------------------------------------------- unit checks
def test_flip_multiplier_is_scaled_sign_of_undamped_ctf() -> None:
    """RELION ``getCTF(do_only_flip_phases)``: ``scale * sign(-sin gamma)``, B ignored."""
    for b, apix, shape in ((0.0, 1.0, 128), (2000.0, 1.0, 128), (400.0, 0.5, (96, 128)),
                           (0.0, 1.3, (90, 81))):
        p = ctf_params(20000.0, 17000.0, 25.0, b=b, scale=1.7)
        flip = ctf_multiplier(p, shape, apix, CtfCorrection.FLIP)
        oracle = oracle_flip(p, shape, apix)
        assert flip.dtype == np.float32 and flip.shape == oracle.shape
        assert np.array_equal(flip, oracle.astype(np.float32))
        # RELION's plain sign everywhere but on the Nyquist column
        plain = np.where(oracle_ctf(p, shape, apix, damping=False) < 0, -1.7, 1.7)
        assert np.array_equal(flip[:, :-1], plain[:, :-1].astype(np.float32))
    # the damped CTF underflows in float32 at this B-factor: its sign would be lost
    damped = ctf_2d(ctf_params(20000.0, 17000.0, 25.0, b=2000.0), 128, 1.0)
    assert (damped == 0).mean() > 0.1


def test_flip_twice_is_identity_and_keeps_amplitudes() -> None:
    """With astigmatism RELION's plain sign breaks the Hermitian pairs of the Nyquist
    column; the flip used here does not."""
    rng = np.random.default_rng(5)
    images = rng.normal(size=(4, 96, 96)).astype(np.float32)
    p = ctf_params(25000.0, 19000.0, 35.0, scale=1.0)
    plain = np.where(oracle_ctf(p, 96, 1.0, damping=False) < 0, -1.0, 1.0)
    relion_twice = oracle_correct(oracle_correct(images, plain), plain)
    assert np.abs(relion_twice - images).max() > 0.01 * np.abs(images).max()
    once = correct_boxes(images, [p] * 4, 1.0, CtfCorrection.FLIP)
    twice = correct_boxes(once, [p] * 4, 1.0, CtfCorrection.FLIP)
    assert np.abs(twice - images).max() <= 1e-5 * np.abs(images).max()
    amp_in = np.abs(np.fft.rfft2(images.astype(np.float64)))
    amp_out = np.abs(np.fft.rfft2(once.astype(np.float64)))
    assert np.abs(amp_out - amp_in).max() <= 1e-5 * amp_in.max()


def test_premultiply_multiplier_is_damped_scaled_ctf() -> None:
    p = ctf_params(15000.0, 12000.0, -40.0, b=80.0, scale=0.8, phase=20.0)
    for shape in (128, (96, 128), (128, 90)):
        got = ctf_multiplier(p, shape, 1.1, CtfCorrection.PREMULTIPLY)
        want = oracle_ctf(p, shape, 1.1)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2e-6


def test_correct_boxes_per_box_ctf_and_window() -> None:
    rng = np.random.default_rng(0)
    boxes = rng.normal(size=(3, 96, 96)).astype(np.float32)
    params = [ctf_params(12000.0, 11000.0, 10.0), ctf_params(25000.0, 20000.0, 70.0),
              ctf_params(12000.0, 11000.0, 10.0)]
    for mode in (CtfCorrection.FLIP, CtfCorrection.PREMULTIPLY):
        got = correct_boxes(boxes, params, 1.3, mode)
        for box, p, g in zip(boxes, params, got, strict=True):
            factor = oracle_ctf(p, 96, 1.3, damping=True)
            if mode is CtfCorrection.FLIP:
                factor = oracle_flip(p, 96, 1.3)
            want = oracle_correct(box, factor)
            assert np.abs(g - want).max() <= 1e-5 * np.abs(want).max()
    windowed = window_centre(np.arange(36.0).reshape(1, 6, 6), 2)
    assert windowed.tolist() == [[[14.0, 15.0], [20.0, 21.0]]]  # index 3 -> index 1



# --------------------------------------------------------------------------- (d) flags
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 192² noise micrograph with a CTF in its STAR and three picks (no RELION)."""
    root = tmp_path_factory.mktemp("ctf_flags")
    rng = np.random.default_rng(7)
    (root / "Mics").mkdir()
    (root / "Picks" / "Mics").mkdir(parents=True)
    with mrcfile.new(root / "Mics" / "m1.mrc") as m:
        m.set_data((5 + rng.normal(size=(192, 192))).astype(np.float32))
        m.voxel_size = APIX
    starfile.write(pd.DataFrame({"rlnCoordinateX": [60.0, 100.0, 130.0],
                                 "rlnCoordinateY": [70.0, 96.0, 120.0]}),
                   root / "Picks" / "Mics" / "m1_pick.star")
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnMicrographPixelSize": [APIX], "rlnVoltage": [VOLTAGE],
        "rlnSphericalAberration": [CS], "rlnAmplitudeContrast": [Q0]})
    u, v, a, b, s, ph = MIC_CTFS[1]
    mics = pd.DataFrame({
        "rlnMicrographName": ["Mics/m1.mrc"], "rlnOpticsGroup": [1], "rlnDefocusU": [u],
        "rlnDefocusV": [v], "rlnDefocusAngle": [a], "rlnCtfBfactor": [b],
        "rlnCtfScalefactor": [s], "rlnPhaseShift": [ph]})
    starfile.write({"optics": optics, "micrographs": mics}, root / "mics.star")
    return root


@pytest.mark.parametrize(("mode", "on_micrograph", "flags"), [
    (CtfCorrection.NONE, False, (0, 0)),
    (CtfCorrection.FLIP, False, (1, 0)),
    (CtfCorrection.FLIP, True, (1, 0)),
    (CtfCorrection.PREMULTIPLY, False, (0, 1)),
])
def test_optics_block_records_the_correction(
    tiny_dataset: Path, tmp_path: Path, mode: CtfCorrection, on_micrograph: bool,
    flags: tuple[int, int],
) -> None:
    params = ExtractParams(box_px=BOX, norm=NormMode.NONE, invert=False,
                           subpixel=SubpixelMode.DROP, ctf_correct=mode, ctf_box_px=BOX,
                           ctf_on_micrograph=on_micrograph)
    summary = extract(str(tiny_dataset / "mics.star"), tmp_path / "out", params,
                      coords_dir=tiny_dataset / "Picks", coords_suffix="_pick.star",
                      workers=1)
    assert summary.particles_kept == 3
    out = load_particles(tmp_path / "out" / "particles.star", tmp_path / "out")
    assert out.optics["rlnCtfDataArePhaseFlipped"].tolist() == [flags[0]]
    assert out.optics["rlnCtfDataAreCtfPremultiplied"].tolist() == [flags[1]]
    assert out.particles["rlnCtfScalefactor"].tolist() == [MIC_CTFS[1][4]] * 3

    # pixel values, from the micrograph and the oracle CTF alone (no RELION needed)
    with mrcfile.open(tiny_dataset / "Mics" / "m1.mrc") as m:
        image = np.asarray(m.data, np.float64)
    p = ctf_params(*MIC_CTFS[1])
    flip_factor = oracle_flip(p, BOX, APIX)
    if on_micrograph:
        image = oracle_correct(image, oracle_flip(p, image.shape, APIX))
    for k, (x, y) in enumerate(((60, 70), (100, 96), (130, 120))):
        box = image[y - BOX // 2:y + BOX // 2, x - BOX // 2:x + BOX // 2]
        if mode is CtfCorrection.FLIP and not on_micrograph:
            box = oracle_correct(box, flip_factor)
        elif mode is CtfCorrection.PREMULTIPLY:
            box = oracle_correct(box, oracle_ctf(p, BOX, APIX))
        assert np.abs(out.images[k] - box).max() <= 1e-5 * np.abs(box).max()


def test_whole_micrograph_flip_of_a_rectangle() -> None:
    """Non-square micrographs: the flip multiplier has the micrograph's shape."""
    rng = np.random.default_rng(2)
    image = rng.normal(size=(96, 160)).astype(np.float32)
    p = ctf_params(18000.0, 15000.0, 35.0)
    got = apply_fourier_multiplier(image, ctf_multiplier(p, image.shape, 1.5,
                                                         CtfCorrection.FLIP))
    want = oracle_correct(image, oracle_flip(p, image.shape, 1.5))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
