"""``cryoextract subtract``: its CTF cache and CTF records, mask checks, errors, a busy
output folder, the command line with ``--revert``, the viewing-direction order and the
kernel loading.
"""

from __future__ import annotations

import threading

import mrcfile
import numpy as np
import pytest
import starfile
import typer
from typer.testing import CliRunner

from cryoextract.cli.subtract import subtract_command
from cryoextract.errors import InputError, ParameterError
from cryoextract.io.particles import read_particles
from cryoextract.ops.ctf import CtfParams, ctf_2d_batch
from cryoextract.ops.recenter import recentre
from cryoextract.ops.rotations import euler_to_matrix, viewing_direction_order
from cryoextract.ops.subtract import inspect_mask, suggested_edge_px
from cryoextract.pipeline.frame import JobLock, JobLockedError
from cryoextract.pipeline.stacks import subtract_ctf
from cryoextract.pipeline.stacks import subtract_tasks as tasks
from cryoextract.pipeline.stacks.revert import revert_subtraction
from cryoextract.pipeline.stacks.subtract import subtract_particles
from subtract_sim import (
    CENTRE_A,
    blob_dataset,
    sphere_mask,
    write_mrc,
    write_star,
)


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
    with tasks.kernel_loading_meanwhile(2):  # the C library: no thread, nothing loaded
        ran.append(True)
    assert ran == [True] and loads == []
    ran.clear()
    import cryoextract.ops.native as native

    monkeypatch.setattr(native, "kernel_backend", lambda: "numba")
    with pytest.raises(ImportError, match="numba is broken"):
        with tasks.kernel_loading_meanwhile(2):
            ran.append(True)
    assert ran == [True] and loads == ["cryoextract-kernel-load"]
    with tasks.kernel_loading_meanwhile(1):  # one worker: loaded when used
        ran.append(True)
    assert len(loads) == 1
