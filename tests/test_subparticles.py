"""Symmetry expansion and sub-particle extraction (issue 17).

Oracles: RELION 3.1.3's ``relion_particle_symmetry_expand --sym`` (rows, their order and
orientations) and ``relion_preprocess --reextract_data_star --recenter --recenter_x/y/z``
on the expanded STAR (coordinates, origins, pixels); analytic geometry for
``--align-subparticles`` and the overlap filter; hand-written vector files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoextract.io.subparticles import read_subparticle_vectors
from cryoextract.ops.rotations import euler_to_matrix
from cryoextract.ops.subparticles import aligned_orientations, separated, vector_to_z
from cryoextract.ops.symmetry import symmetry_operators
from cryoextract.pipeline.extraction.subparticles import SubparticleSpec, expand_subparticles
from helpers import cli_env, one_line_error, refused, written
from prereq import require_module
from relion_oracle import load_particles, make_dataset, pearson, require_relion
from test_reextract import refined_particles, relion_reextract, write_particles_star

BOX = 64
ANGLES = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


def particle_optics(apix: float) -> pd.DataFrame:
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


def _relion_expand(tmp: Path, table: pd.DataFrame, *how: str) -> pd.DataFrame:
    """``relion_particle_symmetry_expand`` of ``table`` (``--sym C4``, ``--helix ...``)."""
    require_relion("relion_particle_symmetry_expand")
    starfile.write({"optics": particle_optics(1.0), "particles": table}, tmp / "in.star",
                   overwrite=True)
    done = subprocess.run(["relion_particle_symmetry_expand", "--i", "in.star", "--o",
                           "expanded.star", *how], cwd=tmp, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return starfile.read(tmp / "expanded.star")["particles"]


@pytest.mark.parametrize(("sym", "order"), [("C4", 4), ("D2", 4), ("D7", 14), ("T", 12),
                                            ("O", 24), ("I", 60), ("I3", 60)])
def test_symmetry_expansion_matches_relion(tmp_path, sym, order):
    table = _posed(5, seed=order)
    relion = _relion_expand(tmp_path, table, "--sym", sym)
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


@pytest.mark.parametrize("asu", [2, 3, 4])
def test_helical_expansion_matches_relion(tmp_path, asu):
    """relion_particle_symmetry_expand --helix: rot - z * twist, origins moved along the
    projected helical axis, z from -((asu - 1) // 2) to asu // 2."""
    table = _posed(4, seed=asu)
    twist, rise = 33.7, 4.8
    relion = _relion_expand(tmp_path, table, "--helix", "--twist", str(twist), "--rise",
                            str(rise), "--asu", str(asu))
    spec = SubparticleSpec(helical_twist_deg=twist, helical_rise_angstrom=rise,
                           helical_asu=asu)
    ours = expand_subparticles(table, spec, "in.star").picks
    assert len(ours) == len(relion) == asu * len(table)
    columns = [*ANGLES, "rlnOriginXAngst", "rlnOriginYAngst"]
    # RELION prints 12 characters: 5 decimals for -6.68654
    np.testing.assert_allclose(ours[columns].to_numpy(), relion[columns].to_numpy(),
                               atol=1e-5)
    np.testing.assert_array_equal(ours["ceSymmetryCopy"], np.tile(np.arange(1, asu + 1), 4))


# --------------------------------------------------------------------------- vs RELION
def extract_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cryoextract", "extract", *args], cwd=root,
                          capture_output=True, text=True, timeout=300, env=cli_env(),
                          check=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("subparticles")
    return make_dataset(root, kinds=("float32", "float32"), shape=(320, 320), n_picks=8,
                        n_edge=0, box=BOX, dust=0)


def _copy_order(particles: pd.DataFrame) -> np.ndarray:
    """Rows sorted by source particle (unique class number), copies in their order."""
    return np.lexsort((particles.groupby("rlnClassNumber").cumcount().to_numpy(),
                       particles["rlnClassNumber"].to_numpy()))


HELIX = ("-22.5", "4.75", "3")  # twist (deg), rise (Å), asymmetric units


@pytest.mark.parametrize(("ours_args", "relion_args", "copies"), [
    (("--symmetry-expand", "C4"), ("--sym", "C4"), 4),
    (("--helical-twist-deg", HELIX[0], "--helical-rise-angstrom", HELIX[1],
      "--helical-expand-asu", HELIX[2]),
     ("--helix", "--twist", HELIX[0], "--rise", HELIX[1], "--asu", HELIX[2]), 3),
], ids=["C4", "helix"])
def test_subparticles_match_relion_expand_then_reextract(dataset, ours_args, relion_args,
                                                         copies):
    require_relion("relion_particle_symmetry_expand", "relion_preprocess")
    root, apix = dataset.root, dataset.apix
    star = write_particles_star(dataset, refined_particles(dataset, seed=3, with_poses=True),
                                "posed.star")
    out = f"Sub{copies}"
    done = subprocess.run(["relion_particle_symmetry_expand", "--i", star, "--o",
                           f"{out}.star", *relion_args], cwd=root, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    point_px = (7.0, -3.0, 9.0)
    relion = relion_reextract(dataset, f"{out}.star", f"Relion{out}", "--recenter_x",
                              str(point_px[0]), "--recenter_y", str(point_px[1]),
                              "--recenter_z", str(point_px[2]))
    done = extract_cli(root, "--micrographs", dataset.micrographs_star, "--coords", star,
                       "--box", str(BOX), "--norm", "none", "--no-invert", "--no-report",
                       *ours_args, "--recenter-xyz", *(str(v * apix) for v in point_px),
                       "--out", f"Ours{out}")
    assert done.returncode == 0, done.stderr
    ours = load_particles(root / f"Ours{out}" / "particles.star", root)
    n_source = len(starfile.read(root / star)["particles"])
    assert len(ours.particles) == len(relion.particles) == copies * n_source
    r, o = _copy_order(relion.particles), _copy_order(ours.particles)
    rp, op = relion.particles.iloc[r], ours.particles.iloc[o]
    np.testing.assert_array_equal(op["ceSymmetryCopy"],
                                  np.tile(np.arange(1, copies + 1), n_source))
    # orientations: the same rotation matrices
    difference = (euler_to_matrix(*op[ANGLES].to_numpy().T)
                  - euler_to_matrix(*rp[ANGLES].to_numpy().T))
    assert np.abs(difference).max() < 1e-5
    # effective centres (coordinate - origin / apix) within 0.05 px
    for axis in ("X", "Y"):
        ours_centre = op[f"rlnCoordinate{axis}"] - op[f"rlnOrigin{axis}Angst"] / apix
        relion_centre = rp[f"rlnCoordinate{axis}"] - rp[f"rlnOrigin{axis}Angst"] / apix
        assert np.abs(ours_centre.to_numpy() - relion_centre.to_numpy()).max() < 0.05
    # pixels where both boxed the same integer centre
    same = ((op["rlnCoordinateX"].to_numpy() == rp["rlnCoordinateX"].to_numpy())
            & (op["rlnCoordinateY"].to_numpy() == rp["rlnCoordinateY"].to_numpy()))
    assert same.mean() > 0.9
    for a, b in zip(ours.images[o][same], relion.images[r][same], strict=True):
        assert pearson(a, b) >= 0.9999


def _one_particle_star(dataset, name: str, x: float, y: float, angles=(0.0, 0.0, 0.0),
                       **extra) -> str:
    table = pd.DataFrame({
        "rlnCoordinateX": [x], "rlnCoordinateY": [y],
        "rlnMicrographName": [dataset.micrographs[0].name], "rlnOpticsGroup": [1],
        "rlnAngleRot": [angles[0]], "rlnAngleTilt": [angles[1]], "rlnAnglePsi": [angles[2]],
        "rlnOriginXAngst": [0.0], "rlnOriginYAngst": [0.0], **extra})
    return write_particles_star(dataset, table, name)


def test_off_micrograph_subparticles_are_dropped_and_reported(dataset):
    """Identity pose, C4 about z, vector 24 px along x: copies at x +/- 24 and y +/- 24;
    the particle 40 px from the left edge loses the copy at x = 16 (box 64 leaves)."""
    root, apix = dataset.root, dataset.apix
    star = _one_particle_star(dataset, "edge.star", 40.0, 160.0)
    done = extract_cli(root, "--micrographs", dataset.micrographs_star, "--coords", star,
                       "--box", str(BOX), "--no-report", "--quiet", "--symmetry-expand", "C4",
                       "--recenter-xyz", str(24 * apix), "0", "0", "--out", "Edge")
    assert done.returncode == 0, done.stderr
    summary = json.loads((root / "Edge" / "summary.json").read_text())
    assert summary["particles_kept"] == 3
    assert summary["particles_dropped"] == {"box leaves micrograph": 1}
    kept = starfile.read(root / "Edge" / "particles.star")["particles"]
    centres = {(round(x - ox / apix), round(y - oy / apix)) for x, y, ox, oy in kept[
        ["rlnCoordinateX", "rlnCoordinateY", "rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()}
    assert centres == {(64, 160), (40, 184), (40, 136)}
    # --edge replicate keeps it (filled), as any extraction
    done = extract_cli(root, "--micrographs", dataset.micrographs_star, "--coords", star,
                       "--box", str(BOX), "--no-report", "--quiet", "--symmetry-expand", "C4",
                       "--recenter-xyz", str(24 * apix), "0", "0", "--edge", "replicate",
                       "--out", "EdgeKept")
    assert done.returncode == 0, done.stderr
    assert len(starfile.read(root / "EdgeKept" / "particles.star")["particles"]) == 4


# --------------------------------------------------------------------------- geometry
def test_align_subparticles_puts_each_vector_on_z():
    """Analytic: V v = |v| z; the aligned orientation A S V^T projects |v| z where A S
    projects v; copies of one vector share the aligned frame (A S V^T maps S^T-frames)."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(6, 3)) * 40
    rotation = vector_to_z(vectors)
    np.testing.assert_allclose(rotation @ vectors[..., None],
                               np.linalg.norm(vectors, axis=1)[:, None, None]
                               * np.array([0, 0, 1.0])[None, :, None], atol=1e-9)
    table = _posed(4, seed=9)
    v = (30.0, -12.0, 21.0)
    spec = SubparticleSpec(symmetry="D2", vectors_angstrom=(v,), align=True)
    plain = expand_subparticles(table, SubparticleSpec(symmetry="D2"), "t.star").picks
    aligned = expand_subparticles(table, spec, "t.star").picks
    a_s = euler_to_matrix(*plain[ANGLES].to_numpy().T)
    a_aligned = euler_to_matrix(*aligned[ANGLES].to_numpy().T)
    length = np.linalg.norm(v)
    np.testing.assert_allclose(a_aligned @ np.array([0, 0, length]), a_s @ np.array(v),
                               atol=1e-9)
    np.testing.assert_allclose(a_aligned, aligned_orientations(a_s, np.array(v)), atol=1e-9)
    # the sub-particle centre moved by the projection of S_k v (origins hold -A S v)
    np.testing.assert_allclose(
        plain["rlnOriginXAngst"] - aligned["rlnOriginXAngst"], (a_s @ np.array(v))[:, 0],
        atol=1e-9)


def test_several_vectors_trace_columns_and_overlap_filter():
    table = _posed(3, seed=2)
    v1, v2 = (10.0, 0.0, 0.0), (0.0, 8.0, 25.0)
    # v2 twice: its second listing lies on the first (distance 0) and is dropped
    spec = SubparticleSpec(symmetry="C2", vectors_angstrom=(v1, v2, v2),
                           min_distance_angstrom=0.5)
    expansion = expand_subparticles(table, spec, "t.star")
    rows = expansion.picks
    assert len(rows) == 3 * 2 * 2 and expansion.overlapping == 3 * 2
    assert "dropped" in expansion.warnings[0]
    assert set(rows["ceSubparticle"]) == {1, 2}
    np.testing.assert_array_equal(rows["ceSourceParticle"], np.repeat([1, 2, 3], 4))
    np.testing.assert_array_equal(rows["ceSymmetryCopy"], np.tile([1, 1, 2, 2], 3))
    # each row: origin = input origin - (A S v)[:2]
    source = table.iloc[rows["ceSourceParticle"] - 1].reset_index(drop=True)
    ops = symmetry_operators("C2")
    vec = np.array([v1, v2])[rows["ceSubparticle"] - 1]
    a = euler_to_matrix(*source[ANGLES].to_numpy().T) @ ops[rows["ceSymmetryCopy"] - 1]
    projected = (a @ vec[..., None])[:, :2, 0]
    np.testing.assert_allclose(source["rlnOriginXAngst"] - rows["rlnOriginXAngst"],
                               projected[:, 0], atol=1e-9)
    np.testing.assert_allclose(source["rlnOriginYAngst"] - rows["rlnOriginYAngst"],
                               projected[:, 1], atol=1e-9)
    # the filter itself: greedy per group, in order
    keep = separated([0, 0, 0, 1], [[0, 0], [3, 4], [5, 0], [0, 0]], 5.0)
    np.testing.assert_array_equal(keep, [True, True, False, True])


# --------------------------------------------------------------------------- files
def test_vector_files_text_and_chimera_markers(tmp_path):
    text = written(tmp_path / "v.txt", "# x y z in A\n10 0 0\n\n 0.5, -2, 3e1  # comment\n")
    assert read_subparticle_vectors(text) == ((10.0, 0.0, 0.0), (0.5, -2.0, 30.0))
    cmm = written(tmp_path / "v.cmm", """<marker_set name="vertices">
<marker id="1" x="100" y="100" z="100" r="1" g="1" b="0" radius="2"/>
<marker id="2" x="100" y="100" z="160.5" r="1" g="1" b="0" radius="2"/>
<marker id="3" x="70" y="110" z="100" r="1" g="1" b="0" radius="2"/>
</marker_set>
""")
    assert read_subparticle_vectors(cmm) == ((0.0, 0.0, 60.5), (-30.0, 10.0, 0.0))
    refused(lambda: read_subparticle_vectors(written(tmp_path / "b.txt", "1 2 3\n1 2\n")),
            tmp_path / "b.txt", line=2)
    refused(lambda: read_subparticle_vectors(written(tmp_path / "n.txt", "1 2 x\n")),
            tmp_path / "n.txt", line=1)
    refused(lambda: read_subparticle_vectors(written(tmp_path / "e.txt", "# none\n")),
            tmp_path / "e.txt")
    refused(lambda: read_subparticle_vectors(written(tmp_path / "b.cmm", "<marker_set><mar")),
            tmp_path / "b.cmm")
    refused(lambda: read_subparticle_vectors(written(
        tmp_path / "one.cmm", '<marker_set><marker id="1" x="1" y="2" z="3"/></marker_set>')),
        tmp_path / "one.cmm")


@pytest.mark.parametrize(("args", "named"), [
    (["--symmetry-expand", "X5"], "X5"),
    (["--symmetry-expand", "C2v"], "C2v"),
    (["--subparticles", "bad.txt"], "bad.txt:2"),
    (["--subparticles", "missing.txt"], "missing.txt"),
    (["--recenter-xyz", "1", "2", "a"], "--recenter-xyz"),
    (["--symmetry-expand", "C2", "--coords", "unposed.star"], "unposed.star"),
    (["--helical-twist-deg", "20", "--helical-expand-asu", "3"], "--helical-rise-angstrom"),
    (["--helical-expand-asu", "3", "--recenter-xyz", "1", "2", "3"], "--helical-twist-deg"),
])
def test_bad_input_is_one_line_naming_it(dataset, args, named):
    root = dataset.root
    written(root / "bad.txt", "1 2 3\n4 5\n")
    table = pd.DataFrame({"rlnCoordinateX": [100.0], "rlnCoordinateY": [100.0],
                          "rlnMicrographName": [dataset.micrographs[0].name],
                          "rlnOpticsGroup": [1]})
    write_particles_star(dataset, table, "unposed.star")
    posed = _one_particle_star(dataset, "posed1.star", 100.0, 100.0)
    coords = [] if "--coords" in args else ["--coords", posed]
    if not {"--recenter-xyz", "--symmetry-expand", "--helical-twist-deg"} & set(args):
        args = [*args, "--symmetry-expand", "C2"]
    done = extract_cli(root, "--micrographs", dataset.micrographs_star, *coords, *args,
                       "--box", str(BOX), "--no-report", "--out", "Bad")
    line = one_line_error(done.returncode, done.stdout, done.stderr)
    assert named in line, line
    assert not (root / "Bad" / "particles.star").exists()


def test_subparticles_with_binning_cs_workers_and_resume(dataset):
    root, apix = dataset.root, dataset.apix
    star = write_particles_star(dataset, refined_particles(dataset, seed=4, with_poses=True),
                                "posed_bin.star")
    n_source = len(starfile.read(root / star)["particles"])
    args = ["--micrographs", dataset.micrographs_star, "--coords", star, "--box", str(BOX),
            "--bin-to", "32", "--write-cs", "--workers", "2", "--no-report", "--quiet",
            "--symmetry-expand", "D2", "--recenter-xyz", str(5 * apix), "0", "0",
            "--recenter-xyz", "0", str(4 * apix), str(6 * apix), "--out", "Binned"]
    done = extract_cli(root, *args)
    assert done.returncode == 0, done.stderr
    first = (root / "Binned" / "particles.star").read_bytes()
    particles = starfile.read(root / "Binned" / "particles.star")
    assert len(particles["particles"]) == n_source * 4 * 2
    assert int(particles["optics"]["rlnImageSize"].iloc[0]) == 32
    cs = np.load(root / "Binned" / "particles.cs")
    assert len(cs) == n_source * 4 * 2
    done = extract_cli(root, *args, "--resume")
    assert done.returncode == 0, done.stderr
    assert (root / "Binned" / "particles.star").read_bytes() == first
    # another expansion is another job: --resume refuses it
    other = [a if a != "D2" else "C2" for a in args]
    done = extract_cli(root, *other, "--resume")
    assert "--resume" in one_line_error(done.returncode, done.stdout, done.stderr)


def test_subparticles_on_dask_equal_the_local_run(dataset):
    distributed = require_module("distributed")
    root, apix = dataset.root, dataset.apix
    star = write_particles_star(dataset, refined_particles(dataset, seed=6, with_poses=True),
                                "posed_dask.star")
    args = ["--micrographs", dataset.micrographs_star, "--coords", star, "--box", str(BOX),
            "--no-report", "--quiet", "--symmetry-expand", "C3", "--recenter-xyz",
            str(6 * apix), "0", str(2 * apix), "--paths", "relative-to-star"]
    done = extract_cli(root, *args, "--workers", "1", "--out", "Local")
    assert done.returncode == 0, done.stderr
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        done = extract_cli(root, *args, "--dask-scheduler", cluster.scheduler_address,
                           "--out", "Dask")
    assert done.returncode == 0, done.stderr
    local = (root / "Local" / "particles.star").read_text()
    assert len(starfile.read(root / "Local" / "particles.star")["particles"]) > 0
    assert (root / "Dask" / "particles.star").read_text() == local
    stacks = sorted((root / "Local" / "Particles").glob("*.mrcs"))
    assert stacks and all((root / "Dask" / "Particles" / s.name).read_bytes() == s.read_bytes()
                          for s in stacks)


def test_first_copy_with_ctf_correction_equals_single_point_recentring(dataset):
    """Copy 1 of a C2 expansion is the particle itself: with --ctf-correct flip and
    --bin-to its pixels are those of today's single --recenter-xyz re-extraction."""
    root, apix = dataset.root, dataset.apix
    table = refined_particles(dataset, seed=8, with_poses=True).assign(
        rlnDefocusU=15000.0, rlnDefocusV=14000.0, rlnDefocusAngle=30.0)
    star = write_particles_star(dataset, table, "posed_ctf.star")
    args = ["--micrographs", dataset.micrographs_star, "--coords", star, "--box", str(BOX),
            "--bin-to", "48", "--ctf-correct", "flip", "--no-report", "--quiet",
            "--recenter-xyz", str(5 * apix), str(-2 * apix), str(3 * apix)]
    done = extract_cli(root, *args, "--out", "Single")
    assert done.returncode == 0, done.stderr
    done = extract_cli(root, *args, "--symmetry-expand", "C2", "--out", "Expanded")
    assert done.returncode == 0, done.stderr
    single = load_particles(root / "Single" / "particles.star", root)
    expanded = load_particles(root / "Expanded" / "particles.star", root)
    first = (expanded.particles["ceSymmetryCopy"] == 1).to_numpy()
    assert first.sum() == len(single.particles) == len(table)
    np.testing.assert_array_equal(expanded.images[first], single.images)
    for column in ("rlnCoordinateX", "rlnCoordinateY", "rlnOriginXAngst", "rlnAngleRot"):
        np.testing.assert_array_equal(expanded.particles[column].to_numpy()[first],
                                      single.particles[column].to_numpy())
