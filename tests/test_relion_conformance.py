"""``cryoextract extract`` against RELION 3.1 ``relion_preprocess`` on generated data.

Both tools run on the same dataset directory (paths in the STAR files are relative to it):
RELION writes to ``Relion_*/``, we write to ``Ours_*/``. Particles are matched by
micrograph name + truncated (= integer box centre) coordinates, never by order. See
``relion_oracle.py`` for what was established about RELION's behaviour.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from relion_oracle import (
    SRC_DIR,
    Dataset,
    Particles,
    background_mask,
    load_particles,
    make_dataset,
    match_particles,
    particle_keys,
    pearson,
    read_stack,
    relion_extract,
    relion_stack_create,
    require_relion,
    run_relion_preprocess,
)

BOX = 64
BIN = 32
BG_RADIUS = 12  # output pixels (RELION applies it after --scale)
DUST_BG_RADIUS = 24
DUST_SIGMA = 2


# --------------------------------------------------------------------------- running ours
def run_ours(ds: Dataset, outdir: str, *opts: str, check: bool = True):
    """``python -m cryoextract extract ...`` with cwd = the dataset root."""
    cmd = [
        sys.executable, "-m", "cryoextract", "extract",
        "--micrographs", ds.micrographs_star,
        "--coords-dir", ds.coords_dir,
        "--coords-suffix", ds.coords_suffix,
        *opts,
        "--out", outdir,
        "--overwrite",
    ]  # fmt: skip
    env = dict(os.environ)
    if SRC_DIR.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SRC_DIR), env.get("PYTHONPATH", "")) if p
        )
    proc = subprocess.run(
        cmd, cwd=ds.root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"cryoextract failed (rc {proc.returncode}): {' '.join(cmd[1:])}\n"
            f"--- stderr ---\n{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-2000:]}"
        )
    return proc


def ours_extract(ds: Dataset, outdir: str, *opts: str) -> Particles:
    run_ours(ds, outdir, *opts)
    out = ds.root / outdir
    star = out / "particles.star"
    assert star.is_file(), f"no {star}"
    return load_particles(star, ds.root)  # ran in ds.root: names relative to it (RELION)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Dataset:
    require_relion()
    return make_dataset(tmp_path_factory.mktemp("relion_conformance"))


@pytest.fixture(scope="module")
def relion_raw(ds) -> Particles:
    return relion_extract(ds, "Relion_raw", box=BOX)


@pytest.fixture(scope="module")
def ours_raw(ds) -> Particles:
    return ours_extract(
        ds, "Ours_raw",
        "--box", str(BOX), "--norm", "none", "--no-invert",
        "--edge", "replicate", "--subpixel", "origin",
    )  # fmt: skip


@pytest.fixture(scope="module")
def relion_ramp(ds) -> Particles:
    return relion_extract(
        ds, "Relion_ramp", box=BOX, scale=BIN, norm=True, bg_radius=BG_RADIUS, invert=True
    )


@pytest.fixture(scope="module")
def ours_ramp(ds) -> Particles:
    return ours_extract(
        ds, "Ours_ramp",
        "--box", str(BOX), "--bin-to", str(BIN), "--norm", "ramp",
        "--bg-radius", str(BG_RADIUS), "--invert", "--edge", "replicate",
        "--subpixel", "origin", "--workers", "2",
    )  # fmt: skip


@pytest.fixture(scope="module")
def relion_mean(ds) -> Particles:
    return relion_extract(
        ds,
        "Relion_mean",
        box=BOX,
        scale=BIN,
        norm=True,
        bg_radius=BG_RADIUS,
        ramp=False,
        invert=True,
    )


@pytest.fixture(scope="module")
def ours_mean(ds) -> Particles:
    return ours_extract(
        ds, "Ours_mean",
        "--box", str(BOX), "--bin-to", str(BIN), "--norm", "mean",
        "--bg-radius", str(BG_RADIUS), "--invert", "--edge", "replicate",
        "--subpixel", "origin",
    )  # fmt: skip


# --------------------------------------------------------------------------- helpers
def _is_edge_key(ds: Dataset, key: tuple[str, int, int]) -> bool:
    name, x, y = key
    ny, nx = next(m.shape for m in ds.micrographs if m.name == name)
    h = BOX // 2
    return x - h < 0 or y - h < 0 or x + h - 1 >= nx or y + h - 1 >= ny


def _kind_of(ds: Dataset) -> dict[str, str]:
    return {m.name: m.kind for m in ds.micrographs}


def _assert_close_normalised(ref: Particles, test: Particles, label: str) -> None:
    assert test.images.shape[1:] == ref.images.shape[1:] == (BIN, BIN), (
        f"{label}: box shapes ours {test.images.shape[1:]} vs RELION {ref.images.shape[1:]}"
    )
    ri, ti = match_particles(ref.particles, test.particles)
    keys = particle_keys(ref.particles)
    corrs = np.array([pearson(ref.images[i], test.images[j]) for i, j in zip(ri, ti, strict=True)])
    diffs = np.array(
        [np.abs(ref.images[i] - test.images[j]).max() for i, j in zip(ri, ti, strict=True)]
    )
    worst_c, worst_d = int(np.argmin(corrs)), int(np.argmax(diffs))
    assert corrs.min() >= 0.9999, (
        f"{label}: min Pearson r {corrs.min():.6f} at {keys[ri[worst_c]]} "
        f"(median {np.median(corrs):.6f}, {int((corrs < 0.9999).sum())}/{len(corrs)} below 0.9999)"
    )
    assert diffs.max() <= 1e-3, (
        f"{label}: max |ours - RELION| = {diffs.max():.3g} at {keys[ri[worst_d]]} "
        f"(median per-particle max {np.median(diffs):.3g}, "
        f"{int((diffs > 1e-3).sum())}/{len(diffs)} particles above 1e-3)"
    )


# --------------------------------------------------------------------------- 1. raw boxes
@pytest.mark.parametrize("kind", ["float32", "uint16"])
def test_raw_boxes_identical_to_relion(ds, relion_raw, ours_raw, kind):
    """No normalisation, no inversion, edge replication: the very same pixels."""
    assert len(relion_raw.particles) == ds.n_picks
    assert len(ours_raw.particles) == ds.n_picks, (
        f"ours extracted {len(ours_raw.particles)} of {ds.n_picks} picks with --edge replicate"
    )
    assert ours_raw.images.shape[1:] == (BOX, BOX)
    ri, ti = match_particles(relion_raw.particles, ours_raw.particles)
    kinds = _kind_of(ds)
    keys = particle_keys(relion_raw.particles)
    sel = [(i, j) for i, j in zip(ri, ti, strict=True) if kinds[keys[i][0]] == kind]
    assert len(sel) >= 20
    assert any(_is_edge_key(ds, keys[i]) for i, _ in sel), "dataset has no edge picks"
    ref = relion_raw.images[[i for i, _ in sel]]
    got = ours_raw.images[[j for _, j in sel]]
    if kind == "uint16":
        bad = [
            keys[i] for (i, _), a, b in zip(sel, ref, got, strict=True) if not np.array_equal(a, b)
        ]
        assert not bad, (
            f"uint16: {len(bad)}/{len(sel)} boxes differ from RELION (e.g. {bad[:3]}); "
            f"max |diff| {np.abs(ref - got).max()}"
        )
    else:
        scale = max(1.0, float(np.abs(ref).max()))
        per = np.abs(ref - got).reshape(len(sel), -1).max(axis=1)
        worst = int(np.argmax(per))
        assert per.max() <= 1e-5 * scale, (
            f"float32: max |ours - RELION| = {per.max():.3g} (data scale {scale:.3g}) at "
            f"{keys[sel[worst][0]]}, edge={_is_edge_key(ds, keys[sel[worst][0]])}; "
            f"{int((per > 1e-5 * scale).sum())}/{len(sel)} boxes differ"
        )


# --------------------------------------------------------------------------- 2./3. normalised
def test_binned_ramp_norm_inverted_matches_relion(relion_ramp, ours_ramp):
    """--box 64 --bin-to 32 --norm ramp --bg-radius 12 --invert vs
    --extract_size 64 --scale 32 --norm --bg_radius 12 --invert_contrast."""
    _assert_close_normalised(relion_ramp, ours_ramp, "ramp")


def test_binned_mean_norm_inverted_matches_relion(relion_mean, ours_mean):
    """--norm mean vs RELION --no_ramp."""
    _assert_close_normalised(relion_mean, ours_mean, "mean")


# --------------------------------------------------------------------------- 4. STAR contents
OPTICS_COLUMNS = (
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)


@pytest.mark.parametrize("which", ["raw", "ramp"])
def test_optics_match_relion(request, ds, which):
    rel: Particles = request.getfixturevalue(f"relion_{which}")
    our: Particles = request.getfixturevalue(f"ours_{which}")
    expected_size = BOX if which == "raw" else BIN
    expected_apix = ds.apix * BOX / expected_size
    assert len(rel.optics) == 1 and len(our.optics) == 1, our.optics
    r, o = rel.optics.iloc[0], our.optics.iloc[0]
    assert float(r["rlnImagePixelSize"]) == pytest.approx(expected_apix, abs=1e-6)
    missing = [c for c in OPTICS_COLUMNS if c not in our.optics.columns]
    assert not missing, f"optics block lacks {missing}; has {list(our.optics.columns)}"
    for col in OPTICS_COLUMNS:
        assert float(o[col]) == pytest.approx(float(r[col]), abs=1e-6), (
            f"{col}: ours {o[col]} vs RELION {r[col]}"
        )
    assert int(o["rlnImageSize"]) == expected_size == our.images.shape[-1]
    # the stacks' MRC headers carry the output pixel size, as RELION's do
    stacks = sorted((ds.root / f"Ours_{which}" / "Particles").glob("*.mrcs"))
    assert len(stacks) == len(ds.micrographs)
    for path in stacks:
        with mrcfile.open(path, header_only=True) as m:
            assert float(m.voxel_size.x) == pytest.approx(expected_apix, abs=1e-3), path.name


def test_particle_columns_match_relion(ds, relion_ramp, ours_ramp):
    rel, our = relion_ramp.particles, ours_ramp.particles
    ri, ti = match_particles(rel, our)
    # image names: NNNNNN@Ours_ramp/Particles/<stem>.mrcs, relative to the directory the
    # command ran in (as RELION's own Relion_ramp/...), 1-based, unique
    stems = {m.stem for m in ds.micrographs}
    pat = re.compile(r"(\d{6})@Ours_ramp/Particles/([^/]+)\.mrcs")
    seen = set()
    for name, mic in zip(our["rlnImageName"], our["rlnMicrographName"], strict=True):
        m = pat.fullmatch(str(name))
        assert m, f"bad rlnImageName {name!r}"
        assert int(m.group(1)) >= 1 and m.group(2) in stems and m.group(2) == Path(mic).stem
        seen.add(str(name))
    assert len(seen) == len(our)
    # coordinates are the integer box centres (RELION's truncation)
    for x, y in zip(our["rlnCoordinateX"], our["rlnCoordinateY"], strict=True):
        assert float(x).is_integer() and float(y).is_integer(), (x, y)
    # carried pick columns, per matched particle
    for col in ("rlnAutopickFigureOfMerit", "rlnClassNumber"):
        assert col in rel.columns
        assert col in our.columns, f"{col} not carried; ours has {list(our.columns)}"
        np.testing.assert_allclose(
            our[col].to_numpy(float)[ti], rel[col].to_numpy(float)[ri], atol=1e-4, err_msg=col
        )
    # --subpixel origin: the pick is at rlnCoordinateX - rlnOriginXAngst / mic_apix (RELION's
    # re-extraction convention, relion_oracle (g)); RELION keeps the raw pick in its coords
    for ax in "XY":
        col = f"rlnOrigin{ax}Angst"
        assert col in our.columns, f"{col} missing"
        pick = rel[f"rlnCoordinate{ax}"].to_numpy(float)[ri]
        centre = our[f"rlnCoordinate{ax}"].to_numpy(float)[ti]
        origin = our[col].to_numpy(float)[ti]
        recon = centre - origin / ds.apix
        err = np.abs(recon - pick)
        assert err.max() < 2e-3, (
            f"{col}: coord - origin/apix differs from the pick by up to {err.max():.4f} px "
            f"(e.g. pick {pick[np.argmax(err)]}, centre {centre[np.argmax(err)]}, "
            f"origin {origin[np.argmax(err)]} A)"
        )


# --------------------------------------------------------------------------- 5. dust
def test_dust_removal_statistics_like_relion(ds):
    """Replacements are random, so compare statistics, not pixels."""
    common = {"box": BOX, "norm": True, "bg_radius": DUST_BG_RADIUS, "invert": True}
    nodust = relion_extract(ds, "Relion_nodust", **common)
    rel = relion_extract(ds, "Relion_dust", white_dust=DUST_SIGMA, black_dust=DUST_SIGMA, **common)
    our = ours_extract(
        ds, "Ours_dust",
        "--box", str(BOX), "--norm", "ramp", "--bg-radius", str(DUST_BG_RADIUS), "--invert",
        "--white-dust", str(DUST_SIGMA), "--black-dust", str(DUST_SIGMA),
        "--edge", "replicate", "--seed", "7",
    )  # fmt: skip
    ri, ti = match_particles(rel.particles, our.particles)
    ref, got, raw = rel.images[ri], our.images[ti], nodust.images[ri]
    bg = background_mask(BOX, DUST_BG_RADIUS)

    def stats(a):
        return {
            "bg_mean": float(np.abs(a[:, bg].mean(axis=1)).max()),
            "bg_std_dev": float(np.abs(a[:, bg].std(axis=1) - 1).max()),
            "f2": float((np.abs(a) > 2).mean()),
            "f3": float((np.abs(a) > 3).mean()),
            "maxabs": float(np.abs(a).max()),
        }

    sr, so, sn = stats(ref), stats(got), stats(raw)
    msg = f"ours {so}\nRELION {sr}\nRELION without dust removal {sn}"
    # the dataset has hot/cold pixels: dust removal must visibly change RELION's output
    assert sn["maxabs"] > 2 * sr["maxabs"] and sn["f3"] > 2 * sr["f3"], msg
    for s in (sr, so):
        assert s["bg_mean"] < 0.05 and s["bg_std_dev"] < 0.05, msg
    assert so["maxabs"] < 0.5 * sn["maxabs"], "hot/cold pixels survived\n" + msg
    assert abs(so["f2"] - sr["f2"]) <= 0.2 * sr["f2"], msg
    assert so["f3"] <= 2 * sr["f3"] + 5e-4, msg
    # apart from the replaced pixels the boxes are RELION's
    corr = np.array([pearson(a, b) for a, b in zip(ref, got, strict=True)])
    assert np.median(corr) >= 0.85 and corr.min() >= 0.5, (
        f"Pearson r ours vs RELION (both with dust removal): median {np.median(corr):.3f}, "
        f"min {corr.min():.3f}\n{msg}"
    )


# --------------------------------------------------------------------------- 6. RELION reads ours
def test_relion_reads_our_output(ds, ours_ramp, tmp_path):
    require_relion("relion_stack_create", "relion_image_handler")
    outdir = ds.root / "Ours_ramp"
    # from the directory the extraction ran in, as RELION runs its programs
    parts, stack = relion_stack_create(outdir / "particles.star", tmp_path / "restacked",
                                       ds.root)
    assert len(parts) == len(ours_ramp.particles) == stack.shape[0]
    assert stack.shape[1:] == (BIN, BIN)
    np.testing.assert_array_equal(stack, ours_ramp.images.astype(np.float32))
    # and one stack through relion_image_handler
    src = sorted((outdir / "Particles").glob("*.mrcs"))[0]
    dst = tmp_path / "handled.mrcs"
    proc = subprocess.run(
        ["relion_image_handler", "--i", str(src.relative_to(outdir)), "--o", str(dst)],
        cwd=outdir, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and dst.is_file(), proc.stderr[-2000:]
    np.testing.assert_array_equal(read_stack(dst), read_stack(src))


# --------------------------------------------------------------------------- 7. pick outside
_DROP_KEY = re.compile(r"drop|outside|skip|reject|discard|exclu|out_of", re.I)


def _drop_counts(obj, under: bool = False) -> list[int]:
    """Integers, and lengths of lists, found under summary keys that talk about drops."""
    found: list[int] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).lower().startswith("micrograph"):
                continue  # per-micrograph bookkeeping (micrographs_skipped, ...), not picks
            hit = under or bool(_DROP_KEY.search(str(k)))
            if hit and isinstance(v, int) and not isinstance(v, bool):
                found.append(v)
            elif hit and isinstance(v, list):
                found.append(len(v))
            found += _drop_counts(v, hit)
    elif isinstance(obj, list):
        for v in obj:
            found += _drop_counts(v, under)
    return found


def test_pick_fully_outside(tmp_path):
    require_relion()
    ds = make_dataset(
        tmp_path / "outside",
        kinds=("float32", "float32"),
        n_picks=10,
        n_edge=3,
        outside_pick=True,
        seed=3,
    )
    proc = run_relion_preprocess(ds, "Relion/", box=BOX, check=False)
    assert proc.returncode != 0, "RELION was expected to abort on a box fully outside"
    assert "completely outside" in proc.stdout + proc.stderr

    proc = run_ours(ds, "Ours", "--box", str(BOX), "--norm", "none", "--no-invert",
                    "--edge", "replicate")  # fmt: skip
    assert proc.returncode == 0
    out = load_particles(ds.root / "Ours" / "particles.star", ds.root)
    expected = {
        (m.name, math.trunc(x), math.trunc(y))
        for m in ds.micrographs
        for x, y in zip(m.picks["rlnCoordinateX"], m.picks["rlnCoordinateY"], strict=True)
        if x >= 0
    }
    assert len(expected) == ds.n_picks - 1
    assert set(particle_keys(out.particles)) == expected
    assert out.images.shape == (ds.n_picks - 1, BOX, BOX)
    summary_path = ds.root / "Ours" / "summary.json"
    assert summary_path.is_file()
    summary = json.loads(summary_path.read_text())
    counts = _drop_counts(summary)
    assert 1 in counts, f"summary.json does not report the dropped pick: {summary}"
