"""CTF phase flipping and premultiplication at extraction (``--ctf-correct``).

Oracles, never our own code:

(a) RELION 3.1.3 ``relion_preprocess --phase_flip`` / ``--premultiply_ctf`` with
    ``--premultiply_extract_size`` on generated micrographs whose micrographs STAR carries
    known, astigmatic CTFs (one micrograph with a B-factor and a scale factor, one with a
    phase shift), and a direct numpy computation of what RELION does, with the CTF written
    in its ``atan2`` form (RELION 3.0's ``getDeltaF``), not our bilinear one.
(b) Noise-free particles projected by ``relion_project --ctf`` from a volume of point-like
    blobs, pasted into otherwise empty micrographs: the phase-flipped particle must be the
    no-CTF projection filtered by ``|CTF|`` (as ``relion_project --ctf --ctf_phase_flip``
    writes it).
(c) Real particles with real CTFs (``../shared/data/real``): their Thon rings, which sit
    where the STAR's defocus puts them, survive flipping; flipping twice is the identity.
(d) The optics block records what was applied.

What RELION 3.1.3 does (``src/preprocessing.cpp``, ``Preprocessing::
extractParticlesFromOneMicrograph``; ``src/ctf.h``, ``CTF::getCTF``), confirmed below:

* flipping and premultiplication are done per particle, in a box of
  ``--premultiply_extract_size`` pixels (default ``--extract_size``) around the same
  centre, for ``--phase_flip`` too (despite the option's name); never on the whole
  micrograph. The box is transformed, multiplied by ``getFftwImage(..., do_damping=true)``
  at the micrograph pixel size and that box size, transformed back and windowed to
  ``--extract_size``; then ``--scale``, normalisation, inversion as without CTF;
* ``--premultiply_ctf`` multiplies by ``scale * exp(-B u²/4) * (-sin gamma)``;
  ``--phase_flip`` by ``scale * sign(-sin gamma)`` (B-factor irrelevant, but the scale
  factor *is* applied);
* pixels of the padded box outside the micrograph are the micrograph's mean (not replicated
  edges); after windowing, pixels of the final box outside the micrograph are replaced by
  the nearest inside pixel of the *corrected* box;
* the output optics gets ``rlnCtfDataAreCtfPremultiplied 1`` for ``--premultiply_ctf``, but
  *nothing* for ``--phase_flip`` (no ``rlnCtfDataArePhaseFlipped``).

So cryoextract equals RELION (up to float32 round-off) for particles whose padded box
lies inside the micrograph, with one deliberate exception: RELION's flip multiplies the
last rfft column (``kx = N/2``, which stands for ``+N/2`` and ``-N/2`` at once) by the
sign at ``+N/2`` only; with astigmatism the two rows of a conjugate pair then get opposite
signs and the inverse FFT cancels them, so RELION's flip is not invertible. Ours uses one
sign per pair (``ctf_multiplier``), flipping twice is the identity, and the particles
differ from RELION's only in the output's Nyquist column (gone after a Fourier crop).
With ``--edge mean`` we also equal RELION on every pixel of an edge particle that lies
inside the micrograph (premultiplication; the flip up to its Nyquist column, which spreads
along rows); the pixels outside differ (RELION replicates edges after flipping,
we keep the flipped mean fill), which is why whole-box correlations of edge particles are
lower (0.5-0.97) and not part of the 0.999 claim.
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

from cryoextract import EdgeMode, ExtractParams, NormMode, SubpixelMode, extract
from cryoextract.ops.ctf import CtfParams, ctf_2d
from cryoextract.ops.ctf_correct import (
    CtfCorrection,
    apply_fourier_multiplier,
    correct_boxes,
    ctf_multiplier,
    window_centre,
)
from relion_oracle import (
    Dataset,
    Particles,
    load_particles,
    make_dataset,
    match_particles,
    pearson,
    require_relion,
)
from shared_data import SHARED_DATA, require_paths

BOX = 64
PAD = 128
APIX = 1.25
MIC_SIZE = 320
# per micrograph: U, V, angle, B-factor, scale, phase shift (deg)
MIC_CTFS = [
    (21000.0, 18000.0, 30.0, 0.0, 1.0, 0.0),
    (14000.0, 13000.0, -60.0, 150.0, 2.0, 0.0),
    (30000.0, 26000.0, 115.0, 0.0, 1.0, 40.0),
]
VOLTAGE, CS, Q0 = 300.0, 2.7, 0.1


# --------------------------------------------------------------------------- oracle CTF
def _oracle_ctf(
    p: CtfParams, n: int | tuple[int, int], apix: float, *, damping: bool = True,
    rfft: bool = True,
) -> np.ndarray:
    """RELION's CTF with ``getDeltaF`` written out (atan2 form), float64, FFT layout.

    ``n`` is the square size or ``(ny, nx)``. The Nyquist row of an even size is at
    ``+1/(2 apix)`` (RELION's ``FOR_ALL_ELEMENTS_IN_FFTW_TRANSFORM2D``: ``ip = i`` for
    ``i < n/2 + 1``); with astigmatism ``CTF(kx, +N) != CTF(kx, -N)`` there.
    """
    ny, nx = (n, n) if isinstance(n, int) else n
    ky = np.fft.fftfreq(ny, apix)
    if ny % 2 == 0:
        ky[ny // 2] = 0.5 / apix
    ky = ky[:, None]
    kx = (np.fft.rfftfreq(nx, apix) if rfft else np.fft.fftfreq(nx, apix))[None, :]
    lam = 12.2643247 / np.sqrt(p.voltage_kv * 1e3 * (1 + p.voltage_kv * 1e3 * 0.978466e-6))
    u2 = kx**2 + ky**2
    azimuth = np.arctan2(ky, kx) - np.deg2rad(p.defocus_angle_degrees)
    deltaf = (-(p.defocus_u_angstrom + p.defocus_v_angstrom) / 2
              - (p.defocus_u_angstrom - p.defocus_v_angstrom) / 2 * np.cos(2 * azimuth))
    k3 = np.arctan(p.amplitude_contrast / np.sqrt(1 - p.amplitude_contrast**2))
    gamma = (np.pi * lam * deltaf * u2 + np.pi / 2 * p.spherical_aberration_mm * 1e7
             * lam**3 * u2**2 - np.deg2rad(p.phase_shift_degrees) - k3)
    ctf = -np.sin(gamma)
    if damping:
        ctf = ctf * np.exp(-p.bfactor_angstrom2 / 4 * u2)
    return p.scale * ctf


def _oracle_correct(box: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """float64 rfft2 -> multiply -> irfft2."""
    return np.fft.irfft2(np.fft.rfft2(np.asarray(box, np.float64)) * factor,
                         s=box.shape[-2:])


def _oracle_flip(p: CtfParams, n: int | tuple[int, int], apix: float) -> np.ndarray:
    """Our flip, rfft layout: ``scale * sign(-sin gamma)``, except on the column ``kx = nx/2``
    of an even width, which stands for ``+nx/2`` and ``-nx/2`` at once: there the sign of
    ``CTF(+nx/2, ky) + CTF(-nx/2, ky)`` (see ``ctf_multiplier``)."""
    ny, nx = (n, n) if isinstance(n, int) else n
    unit = replace(p, scale=1.0)
    ctf = _oracle_ctf(unit, (ny, nx), apix, damping=False)
    if nx % 2 == 0:
        ky = np.fft.fftfreq(ny, apix)
        if ny % 2 == 0:
            ky[ny // 2] = 0.5 / apix
        both = np.stack([_oracle_ctf_at(unit, ky, sign * 0.5 / apix) for sign in (1, -1)])
        ctf[:, -1] = both.sum(axis=0)
    return p.scale * np.where(ctf < 0, -1.0, 1.0)


def _oracle_ctf_at(p: CtfParams, ky: np.ndarray, kx: float) -> np.ndarray:
    """Undamped CTF at the frequencies ``(ky, kx)`` (atan2 form)."""
    lam = 12.2643247 / np.sqrt(p.voltage_kv * 1e3 * (1 + p.voltage_kv * 1e3 * 0.978466e-6))
    u2 = kx**2 + ky**2
    azimuth = np.arctan2(ky, kx) - np.deg2rad(p.defocus_angle_degrees)
    deltaf = (-(p.defocus_u_angstrom + p.defocus_v_angstrom) / 2
              - (p.defocus_u_angstrom - p.defocus_v_angstrom) / 2 * np.cos(2 * azimuth))
    k3 = np.arctan(p.amplitude_contrast / np.sqrt(1 - p.amplitude_contrast**2))
    gamma = (np.pi * lam * deltaf * u2 + np.pi / 2 * p.spherical_aberration_mm * 1e7
             * lam**3 * u2**2 - np.deg2rad(p.phase_shift_degrees) - k3)
    return -np.sin(gamma)


def _drop_nyquist_column(images: np.ndarray) -> np.ndarray:
    """Images without their ``kx = n/2`` Fourier column."""
    spectrum = np.fft.rfft2(np.asarray(images, np.float64))
    spectrum[..., -1] = 0
    return np.fft.irfft2(spectrum, s=images.shape[-2:])


def _params(u: float, v: float, angle: float, b: float = 0.0, scale: float = 1.0,
            phase: float = 0.0) -> CtfParams:
    return CtfParams(u, v, angle, VOLTAGE, CS, Q0, phase_shift_degrees=phase,
                     bfactor_angstrom2=b, scale=scale)


# --------------------------------------------------------------------------- unit checks
def test_flip_multiplier_is_scaled_sign_of_undamped_ctf() -> None:
    """RELION ``getCTF(do_only_flip_phases)``: ``scale * sign(-sin gamma)``, B ignored."""
    for b, apix, shape in ((0.0, 1.0, 128), (2000.0, 1.0, 128), (400.0, 0.5, (96, 128)),
                           (0.0, 1.3, (90, 81))):
        p = _params(20000.0, 17000.0, 25.0, b=b, scale=1.7)
        flip = ctf_multiplier(p, shape, apix, CtfCorrection.FLIP)
        oracle = _oracle_flip(p, shape, apix)
        assert flip.dtype == np.float32 and flip.shape == oracle.shape
        assert np.array_equal(flip, oracle.astype(np.float32))
        # RELION's plain sign everywhere but on the Nyquist column
        plain = np.where(_oracle_ctf(p, shape, apix, damping=False) < 0, -1.7, 1.7)
        assert np.array_equal(flip[:, :-1], plain[:, :-1].astype(np.float32))
    # the damped CTF underflows in float32 at this B-factor: its sign would be lost
    damped = ctf_2d(_params(20000.0, 17000.0, 25.0, b=2000.0), 128, 1.0)
    assert (damped == 0).mean() > 0.1


def test_flip_twice_is_identity_and_keeps_amplitudes() -> None:
    """With astigmatism RELION's plain sign breaks the Hermitian pairs of the Nyquist
    column; the flip used here does not."""
    rng = np.random.default_rng(5)
    images = rng.normal(size=(4, 96, 96)).astype(np.float32)
    p = _params(25000.0, 19000.0, 35.0, scale=1.0)
    plain = np.where(_oracle_ctf(p, 96, 1.0, damping=False) < 0, -1.0, 1.0)
    relion_twice = _oracle_correct(_oracle_correct(images, plain), plain)
    assert np.abs(relion_twice - images).max() > 0.01 * np.abs(images).max()
    once = correct_boxes(images, [p] * 4, 1.0, CtfCorrection.FLIP)
    twice = correct_boxes(once, [p] * 4, 1.0, CtfCorrection.FLIP)
    assert np.abs(twice - images).max() <= 1e-5 * np.abs(images).max()
    amp_in = np.abs(np.fft.rfft2(images.astype(np.float64)))
    amp_out = np.abs(np.fft.rfft2(once.astype(np.float64)))
    assert np.abs(amp_out - amp_in).max() <= 1e-5 * amp_in.max()


def test_premultiply_multiplier_is_damped_scaled_ctf() -> None:
    p = _params(15000.0, 12000.0, -40.0, b=80.0, scale=0.8, phase=20.0)
    for shape in (128, (96, 128), (128, 90)):
        got = ctf_multiplier(p, shape, 1.1, CtfCorrection.PREMULTIPLY)
        want = _oracle_ctf(p, shape, 1.1)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2e-6


def test_correct_boxes_per_box_ctf_and_window() -> None:
    rng = np.random.default_rng(0)
    boxes = rng.normal(size=(3, 96, 96)).astype(np.float32)
    params = [_params(12000.0, 11000.0, 10.0), _params(25000.0, 20000.0, 70.0),
              _params(12000.0, 11000.0, 10.0)]
    for mode in (CtfCorrection.FLIP, CtfCorrection.PREMULTIPLY):
        got = correct_boxes(boxes, params, 1.3, mode)
        for box, p, g in zip(boxes, params, got, strict=True):
            factor = _oracle_ctf(p, 96, 1.3, damping=True)
            if mode is CtfCorrection.FLIP:
                factor = _oracle_flip(p, 96, 1.3)
            want = _oracle_correct(box, factor)
            assert np.abs(g - want).max() <= 1e-5 * np.abs(want).max()
    windowed = window_centre(np.arange(36.0).reshape(1, 6, 6), 2)
    assert windowed.tolist() == [[[14.0, 15.0], [20.0, 21.0]]]  # index 3 -> index 1


# --------------------------------------------------------------------------- (a) RELION
@dataclass
class RelionCase:
    relion_args: list[str]
    mode: CtfCorrection
    ctf_box: int
    out_box: int | None = None
    norm: bool = False


CASES = {
    "flip": RelionCase(["--phase_flip"], CtfCorrection.FLIP, BOX),
    "flip_pad": RelionCase(["--phase_flip", "--premultiply_extract_size", str(PAD)],
                           CtfCorrection.FLIP, PAD),
    "premult_pad": RelionCase(["--premultiply_ctf", "--premultiply_extract_size", str(PAD)],
                              CtfCorrection.PREMULTIPLY, PAD),
    # flip before Fourier crop, normalisation and inversion
    "flip_pad_binned": RelionCase(
        ["--phase_flip", "--premultiply_extract_size", str(PAD), "--scale", "32", "--norm",
         "--bg_radius", "12", "--invert_contrast"], CtfCorrection.FLIP, PAD, 32, True),
}


@dataclass
class RelionRun:
    ds: Dataset
    relion: dict[str, Particles]
    ours: dict[str, Particles]
    ours_micrograph_flip: Particles


def _add_ctf_to_micrographs_star(ds: Dataset) -> None:
    blocks = starfile.read(ds.root / ds.micrographs_star, always_dict=True)
    mics = blocks["micrographs"]
    for k, label in enumerate(("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                               "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift")):
        mics[label] = [c[k] for c in MIC_CTFS]
    starfile.write(blocks, ds.root / ds.micrographs_star, overwrite=True)


def _ours(ds: Dataset, out: str, case: RelionCase, **extra: object) -> Particles:
    params = ExtractParams(
        box_px=BOX, out_box_px=case.out_box,
        norm=NormMode.RAMP if case.norm else NormMode.NONE,
        bg_radius_px=12 if case.norm else None, invert=case.norm, edge=EdgeMode.MEAN,
        subpixel=SubpixelMode.DROP, ctf_correct=case.mode, ctf_box_px=case.ctf_box,
        **extra)  # type: ignore[arg-type]
    extract(str(ds.root / ds.micrographs_star), ds.root / out, params,
            coords_dir=ds.root / ds.coords_dir, coords_suffix=ds.coords_suffix, workers=1)
    return load_particles(ds.root / out / "particles.star", ds.root / out)


@pytest.fixture(scope="module")
def relion_run(tmp_path_factory: pytest.TempPathFactory) -> RelionRun:
    require_relion("relion_preprocess")
    root = tmp_path_factory.mktemp("ctf_relion")
    # non-edge picks keep the whole PAD box inside; 2 edge picks per micrograph
    ds = make_dataset(root, shape=(MIC_SIZE, MIC_SIZE), n_picks=7, n_edge=2, box=PAD,
                      apix=APIX, dust=0, seed=4)
    _add_ctf_to_micrographs_star(ds)
    procs = {}
    for name, case in CASES.items():
        cmd = ["relion_preprocess", "--i", ds.micrographs_star, "--coord_dir", ds.coords_dir,
               "--coord_suffix", ds.coords_suffix, "--part_star", f"R_{name}/particles.star",
               "--part_dir", f"R_{name}/", "--extract", "--extract_size", str(BOX),
               *case.relion_args]
        procs[name] = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    ours = {name: _ours(ds, f"O_{name}", case) for name, case in CASES.items()}
    micrograph_flip = _ours(ds, "O_micrograph", CASES["flip_pad"], ctf_on_micrograph=True)
    relion = {}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"relion_preprocess {name}: {stderr[-3000:]}"
        relion[name] = load_particles(root / f"R_{name}" / "particles.star", root)
    return RelionRun(ds, relion, ours, micrograph_flip)


def _inside(parts: pd.DataFrame, size: int) -> np.ndarray:
    """Particles whose ``size`` box around the truncated pick lies inside the micrograph."""
    x = np.trunc(parts["rlnCoordinateX"].to_numpy(float)).astype(int)
    y = np.trunc(parts["rlnCoordinateY"].to_numpy(float)).astype(int)
    h = size // 2
    return (x - h >= 0) & (x + h <= MIC_SIZE) & (y - h >= 0) & (y + h <= MIC_SIZE)


def _compare(ref: Particles, test: Particles, *, drop_nyquist: bool = False,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per particle (reference order): Pearson, max |diff| / max |ref|, inside-PAD flag."""
    ri, ti = match_particles(ref.particles, test.particles)
    a, b = ref.images[ri], test.images[ti]
    if drop_nyquist:
        a, b = _drop_nyquist_column(a), _drop_nyquist_column(b)
    corr = np.array([pearson(x, y) for x, y in zip(a, b, strict=True)])
    rel = np.abs(a - b).max(axis=(1, 2)) / np.abs(a).max(axis=(1, 2))
    return corr, rel, _inside(ref.particles, PAD)


# measured minimum Pearson against RELION of the particles whose PAD box is inside
# (flip: white noise puts 1/33 of a 64 px box's energy on its Nyquist column)
MIN_CORRELATION = {"flip": 0.998, "flip_pad": 0.999, "premult_pad": 1 - 1e-9,
                   "flip_pad_binned": 1 - 1e-9}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_relion_for_particles_inside(relion_run: RelionRun, name: str) -> None:
    """Identical to RELION but for the flip's ``kx = N/2`` column (see ``ctf_multiplier``).

    Measured: premultiplied and binned-flipped particles: Pearson 1 - 5e-13, max |diff|
    7e-7 of the particle's max (float32). Flipped unbinned ones: Pearson >= 0.9992
    (padded) / 0.9984 (tight), max |diff| 0.8 %, all of it in the output's Nyquist column:
    RELION's plain sign averages to 0 on Nyquist-column pairs whose astigmatic CTF signs
    disagree (the flip then is not invertible); ours keeps them. Without that column the
    particles agree to float32 round-off.
    """
    corr, rel, inside = _compare(relion_run.relion[name], relion_run.ours[name])
    assert inside.sum() >= 12 and (~inside).sum() == 6
    assert corr[inside].min() >= MIN_CORRELATION[name], corr[inside].min()
    if name in ("flip", "flip_pad"):
        assert rel[inside].max() > 1e-4  # the Nyquist-column difference is real ...
        corr, rel, inside = _compare(relion_run.relion[name], relion_run.ours[name],
                                     drop_nyquist=True)
    # ... and the only one
    assert corr[inside].min() >= 1 - 1e-9, corr[inside].min()
    assert rel[inside].max() <= 1e-5, rel[inside].max()


@pytest.mark.parametrize("name", ["flip", "flip_pad", "premult_pad"])
def test_matches_relion_inside_the_micrograph_for_edge_particles(
    relion_run: RelionRun, name: str,
) -> None:
    """``--edge mean`` pads like RELION; only pixels beyond the micrograph differ (and, for
    the flip, the Nyquist column, which spreads along rows)."""
    ref, test = relion_run.relion[name], relion_run.ours[name]
    ri, ti = match_particles(ref.particles, test.particles)
    edge = ~_inside(ref.particles, BOX)
    assert edge.sum() == 6
    worst, worst_corr = 0.0, 1.0
    for a, b in zip(ri[edge], ti[edge], strict=True):
        x0 = int(np.trunc(float(ref.particles["rlnCoordinateX"].iloc[a]))) - BOX // 2
        y0 = int(np.trunc(float(ref.particles["rlnCoordinateY"].iloc[a]))) - BOX // 2
        cols = np.arange(BOX) + x0
        rows = np.arange(BOX) + y0
        m = ((rows >= 0) & (rows < MIC_SIZE))[:, None] & ((cols >= 0) & (cols < MIC_SIZE))[None]
        assert 0 < m.sum() < BOX * BOX
        scale = np.abs(ref.images[a][m]).max()
        worst = max(worst, float(np.abs(ref.images[a][m] - test.images[b][m]).max() / scale))
        worst_corr = min(worst_corr, pearson(ref.images[a][m], test.images[b][m]))
    if name == "premult_pad":
        assert worst <= 1e-5
    else:
        assert worst_corr >= 0.99, worst_corr


def _read_micrograph(ds: Dataset, k: int) -> np.ndarray:
    with mrcfile.open(ds.root / ds.micrographs[k].name, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float64)


def test_relion_flips_in_the_padded_box_with_scale_and_damped_premultiply(
    relion_run: RelionRun,
) -> None:
    """RELION's particles are numpy's: cut PAD box, rfft, x factor, irfft, window."""
    ds = relion_run.ds
    for case_name in ("flip_pad", "premult_pad", "flip"):
        ref = relion_run.relion[case_name]
        size = CASES[case_name].ctf_box
        parts = ref.particles
        inside = _inside(parts, PAD)
        for k, mic in enumerate(ds.micrographs):
            rows = np.flatnonzero(inside & (parts["rlnMicrographName"] == mic.name).to_numpy())
            assert len(rows) >= 3
            image = _read_micrograph(ds, k)
            p = _params(*MIC_CTFS[k])
            if CASES[case_name].mode is CtfCorrection.FLIP:
                factor = p.scale * np.where(_oracle_ctf(replace(p, scale=1.0), size, APIX,
                                                        damping=False) < 0, -1.0, 1.0)
            else:
                factor = _oracle_ctf(p, size, APIX, damping=True)
            for i in rows[:3]:
                x = int(np.trunc(float(parts["rlnCoordinateX"].iloc[i])))
                y = int(np.trunc(float(parts["rlnCoordinateY"].iloc[i])))
                box = image[y - size // 2:y + size // 2, x - size // 2:x + size // 2]
                want = window_centre(_oracle_correct(box, factor), BOX)
                err = np.abs(ref.images[i] - want).max() / np.abs(want).max()
                assert err <= 1e-5, (case_name, k, err)
                if p.scale != 1.0 and CASES[case_name].mode is CtfCorrection.FLIP:
                    # a plain +-1 flip is off by exactly the scale factor
                    plain = window_centre(_oracle_correct(box, factor / p.scale), BOX)
                    assert np.std(ref.images[i]) / np.std(plain) == pytest.approx(p.scale,
                                                                                rel=1e-5)


def test_relion_padding_matters_and_is_not_a_whole_micrograph_flip(
    relion_run: RelionRun,
) -> None:
    """--premultiply_extract_size changes --phase_flip's result; our whole-micrograph flip
    (Xmipp's way) is a different operation from RELION's."""
    tight, padded = relion_run.relion["flip"], relion_run.relion["flip_pad"]
    corr, _, inside = _compare(padded, tight)
    assert corr[inside].min() < 0.99, corr[inside].min()
    corr_mic, _, _ = _compare(padded, relion_run.ours_micrograph_flip)
    assert corr_mic[inside].min() < 0.99, corr_mic[inside].min()


def test_optics_flags_ours_and_relion(relion_run: RelionRun) -> None:
    for name, case in CASES.items():
        optics = relion_run.ours[name].optics
        assert optics["rlnCtfDataArePhaseFlipped"].tolist() == [
            int(case.mode is CtfCorrection.FLIP)]
        assert optics["rlnCtfDataAreCtfPremultiplied"].tolist() == [
            int(case.mode is CtfCorrection.PREMULTIPLY)]
        # CTF parameters travel with every particle
        parts = relion_run.ours[name].particles
        assert {"rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfBfactor",
                "rlnCtfScalefactor", "rlnPhaseShift"} <= set(parts.columns)
    # RELION 3.1.3 records premultiplication only; phase flipping leaves no trace
    assert relion_run.relion["premult_pad"].optics["rlnCtfDataAreCtfPremultiplied"].tolist() \
        == [1]
    for name in ("flip", "flip_pad"):
        assert "rlnCtfDataArePhaseFlipped" not in relion_run.relion[name].optics.columns
        assert "rlnCtfDataAreCtfPremultiplied" not in relion_run.relion[name].optics.columns


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
    ctfs = [_params(u, v, a) for *_, u, v, a in SIM_PARTICLES]

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
    model = np.mean([_oracle_ctf(c, n, apix) ** 2 for c in scaled], axis=0)

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
    p = _params(*MIC_CTFS[1])
    flip_factor = _oracle_flip(p, BOX, APIX)
    if on_micrograph:
        image = _oracle_correct(image, _oracle_flip(p, image.shape, APIX))
    for k, (x, y) in enumerate(((60, 70), (100, 96), (130, 120))):
        box = image[y - BOX // 2:y + BOX // 2, x - BOX // 2:x + BOX // 2]
        if mode is CtfCorrection.FLIP and not on_micrograph:
            box = _oracle_correct(box, flip_factor)
        elif mode is CtfCorrection.PREMULTIPLY:
            box = _oracle_correct(box, _oracle_ctf(p, BOX, APIX))
        assert np.abs(out.images[k] - box).max() <= 1e-5 * np.abs(box).max()


def test_whole_micrograph_flip_of_a_rectangle() -> None:
    """Non-square micrographs: the flip multiplier has the micrograph's shape."""
    rng = np.random.default_rng(2)
    image = rng.normal(size=(96, 160)).astype(np.float32)
    p = _params(18000.0, 15000.0, 35.0)
    got = apply_fourier_multiplier(image, ctf_multiplier(p, image.shape, 1.5,
                                                         CtfCorrection.FLIP))
    want = _oracle_correct(image, _oracle_flip(p, image.shape, 1.5))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
