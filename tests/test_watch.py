"""Live mode: a writer adds micrographs while cryoextract --watch runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import starfile

from cryoextract.io.mrc import stack_image_count
from cryoextract.sim.simulate import simulate_dataset
from helpers import stack_of

ARGS = ["--coords-dir", "Picks", "--coords-suffix", "_autopick.star", "--box", "64", "--no-report",
        "--bin-to", "32"]


def _star_is_valid(path: Path) -> int:
    """Rows of a particles STAR that reads back and whose stacks hold every image."""
    blocks = starfile.read(path, always_dict=True)
    particles = blocks["particles"]
    for name in particles["rlnImageName"]:
        index, stack = str(name).split("@")
        assert stack_image_count(stack_of(path, stack)) >= int(index)
    return len(particles)


def test_watch_follows_a_growing_star(tmp_path):
    source = tmp_path / "source"
    data = simulate_dataset(source, n_micrographs=4, shape_yx=(256, 256),
                            particles_per_micrograph=8, pixel_size_angstrom=3.0, seed=5)
    live = tmp_path / "live"
    (live / "Micrographs").mkdir(parents=True)
    (live / "Picks").mkdir()
    tables = starfile.read(data.micrographs_star, always_dict=True)
    optics, micrographs = tables["optics"], tables["micrographs"]

    def publish(count: int) -> None:
        """The session writes micrograph ``count`` and its picks, then the STAR."""
        row = micrographs.iloc[count - 1]
        name = Path(str(row["rlnMicrographName"]))
        shutil.copy(source / name, live / name)
        shutil.copy(source / "Picks" / f"{name.stem}_autopick.star",
                    live / "Picks" / f"{name.stem}_autopick.star")
        starfile.write({"optics": optics, "micrographs": micrographs.iloc[:count]},
                       live / "micrographs.star", overwrite=True)

    publish(1)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "cryoextract", "extract", "--micrographs", "micrographs.star",
         *ARGS, "--out", "out", "--watch", "--settle", "0.5", "--watch-timeout", "6"],
        cwd=live, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 60  # a loaded machine may take a while to start the watcher
    while not (live / "out" / "particles.star").exists() and time.time() < deadline:
        time.sleep(0.1)
    for count in (2, 3, 4):
        time.sleep(1.5)
        star = live / "out" / "particles.star"
        if star.exists():
            seen.append(_star_is_valid(star))
        publish(count)
    _, stderr = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, stderr
    assert seen and seen == sorted(seen)  # the STAR only grows, valid every time
    # the final result equals a normal run on the complete data
    batch = subprocess.run(
        [sys.executable, "-m", "cryoextract", "extract", "--micrographs", "micrographs.star",
         *ARGS, "--out", "batch"], cwd=live, capture_output=True, text=True, timeout=120)
    assert batch.returncode == 0, batch.stderr
    live_rows = starfile.read(live / "out" / "particles.star")["particles"]
    batch_rows = starfile.read(live / "batch" / "particles.star")["particles"]
    # the same rows; each names its own stacks (relative to where the command ran)
    batch_rows["rlnImageName"] = batch_rows["rlnImageName"].str.replace("@batch/", "@out/")
    pd.testing.assert_frame_equal(live_rows, batch_rows)
    for stack in (live / "batch" / "Particles").glob("*.mrcs"):
        assert (live / "out" / "Particles" / stack.name).read_bytes() == stack.read_bytes()
