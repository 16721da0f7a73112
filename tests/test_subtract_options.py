"""``cryoextract subtract`` options and I/O on simulated particles (``subtract_sim.py``):
re-centring on a 3D point with a new box and its revert, cryoSPARC ``.cs`` in and out,
float16, batch and chunk sizes, worker processes (the same stacks; a dying worker or a full
disk fails the job in one line), memory that does not grow with the particle count.
"""

from __future__ import annotations

import errno
import os
import signal
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import ndimage

from cryoextract.errors import CryoExtractError, InputError, ParameterError
from cryoextract.io.cryosparc import read_cs_particles, write_cs
from cryoextract.ops.rotations import euler_to_matrix
from cryoextract.pipeline.stacks import subtract_ctf
from cryoextract.pipeline.stacks import subtract_tasks as tasks
from cryoextract.pipeline.stacks.revert import revert_subtraction
from cryoextract.pipeline.stacks.subtract import subtract_particles
from subtract_sim import (
    APIX,
    N,
    blob_dataset,
    corr,
    domain,
    optics_table,
    random_particles,
    read_output,
    simulate,
    sphere_mask,
    write_mrc,
)


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
