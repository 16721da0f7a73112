"""``cryoextract extract`` run as the user runs it, and its outputs read back: the
harness of the end-to-end CLI tests (``test_cli.py``, ``test_cli_problems.py``,
``test_extract_api.py``).

Commands run through ``python -m cryoextract`` in subprocesses, several at once
(:func:`run_many`). Expected values come from the inputs (picks read with ``starfile``,
micrographs with ``mrcfile``) and naive numpy (:func:`fits`, :func:`window`...), never
from our own code. :func:`simulated` makes the dataset of the ``sim`` fixture
(``conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryoextract.sim.simulate import SimulatedDataset, simulate_dataset
from helpers import cli_env, stack_of

BOX = 64
HALF = BOX // 2
PIXEL = 1.5
SHAPE = (512, 512)
RADIUS = round(0.375 * BOX)  # default background radius


# --------------------------------------------------------------------------- running
@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    out: Path | None


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "cryoextract", "extract", *args]


def run_many(jobs: dict[str, list[str]], cwd: Path | None = None) -> dict[str, Run]:
    """Run several CLI invocations concurrently; ``--out`` is parsed for convenience."""
    procs = {
        name: subprocess.Popen(
            _command(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=cwd,
        )
        for name, args in jobs.items()
    }
    runs = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        args = jobs[name]
        out = Path(args[args.index("--out") + 1]) if "--out" in args else None
        runs[name] = Run(args, proc.returncode, stdout, stderr, out)
    return runs


def run_one(args: list[str]) -> Run:
    return run_many({"one": args})["one"]


def ok(run: Run) -> None:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr + run.stdout


def ok_output(run: Run) -> Output:
    """The outputs of a run that succeeded."""
    ok(run)
    assert run.out is not None
    return load_output(run.out)


# --------------------------------------------------------------------------- oracles
def read_picks_star(path: Path) -> pd.DataFrame:
    table = starfile.read(path)
    if isinstance(table, dict):
        table = next(iter(table.values()))
    return table


def read_mrc(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.array(mrc.data)


def fits(xy: np.ndarray, box: int, shape_yx: tuple[int, int]) -> np.ndarray:
    """Boxes ``[floor - box//2, floor + box//2 - 1]`` inside the micrograph."""
    c = np.floor(xy).astype(int)
    ny, nx = shape_yx
    return (
        (c[:, 0] - box // 2 >= 0)
        & (c[:, 0] + box // 2 - 1 <= nx - 1)
        & (c[:, 1] - box // 2 >= 0)
        & (c[:, 1] + box // 2 - 1 <= ny - 1)
    )


def window(mic: np.ndarray, cx: int, cy: int, box: int = BOX) -> np.ndarray:
    return mic[cy - box // 2 : cy + box // 2, cx - box // 2 : cx + box // 2].astype(np.float64)


def padded_window(
    mic: np.ndarray, cx: int, cy: int, mode: str, box: int = BOX, **kw: float
) -> np.ndarray:
    padded = np.pad(mic.astype(np.float64), box, mode=mode, **kw)
    y0, x0 = cy - box // 2 + box, cx - box // 2 + box
    return padded[y0 : y0 + box, x0 : x0 + box]


def bg_mask(box: int, radius: float) -> np.ndarray:
    o = np.arange(box) - box // 2
    return o[:, None] ** 2 + o[None, :] ** 2 > radius**2


@dataclass
class Output:
    optics: pd.DataFrame
    particles: pd.DataFrame
    stacks: dict[str, np.ndarray]
    summary: dict
    rejected: pd.DataFrame

    def image(self, row: pd.Series) -> np.ndarray:
        index, name = str(row["rlnImageName"]).split("@")
        return self.stacks[name][int(index) - 1]

    def of(self, micrograph_name: str) -> pd.DataFrame:
        return self.particles[self.particles["rlnMicrographName"] == micrograph_name]


def load_output(out: Path) -> Output:
    """The run's outputs; image names rewritten relative to ``out`` (the STAR names them
    relative to where the command ran, or absolutely outside it)."""
    blocks = starfile.read(out / "particles.star", always_dict=True)
    particles = blocks["particles"]
    stacks = {}
    keys = {}
    for written in sorted({str(n).split("@")[1] for n in particles["rlnImageName"]}):
        path = stack_of(out / "particles.star", written)
        name = keys[written] = Path(os.path.relpath(path, out)).as_posix()
        stacks[name] = read_mrc(path)
        if stacks[name].ndim == 2:
            stacks[name] = stacks[name][None]
    particles["rlnImageName"] = [f"{n.split('@')[0]}@{keys[n.split('@')[1]]}"
                                 for n in particles["rlnImageName"].astype(str)]
    summary = json.loads((out / "summary.json").read_text())
    rejected = pd.read_csv(out / "rejected_particles.tsv", sep="\t")
    return Output(blocks["optics"], particles, stacks, summary, rejected)


# --------------------------------------------------------------------------- data
@dataclass
class Sim:
    ds: SimulatedDataset
    root: Path
    picks: dict[str, np.ndarray]  # micrograph name -> (n, 2) picks (x, y) as read from STAR
    mics: dict[str, np.ndarray]
    star: Path

    def base(
        self, out: Path, *extra: str, workers: int = 1, box: str | None = str(BOX)
    ) -> list[str]:
        box_args = [] if box is None else ["--box", box]
        return [
            "--micrographs",
            str(self.star),
            "--coords-dir",
            str(self.root / "Picks"),
            "--coords-suffix",
            "_autopick.star",
            *box_args,
            "--workers",
            str(workers),
            "--out",
            str(out),
            *extra,
        ]

    @property
    def n_total(self) -> int:
        return sum(len(p) for p in self.picks.values())

    @property
    def n_fit(self) -> int:
        return sum(int(fits(p, BOX, SHAPE).sum()) for p in self.picks.values())


def simulated(root: Path) -> Sim:
    """Two simulated 512 px micrographs (1.5 A, 20 picks each, some too close to the edge
    for a 64 px box), their picks and pixels as read with starfile and mrcfile."""
    ds = simulate_dataset(
        root,
        n_micrographs=2,
        shape_yx=SHAPE,
        pixel_size_angstrom=PIXEL,
        particles_per_micrograph=20,
        particle_diameter_angstrom=60.0,
        seed=5,
    )
    picks = {}
    mics = {}
    for name, pick_path, mic_path in zip(
        ds.micrograph_names, ds.pick_paths, ds.micrograph_paths, strict=True
    ):
        table = read_picks_star(pick_path)
        picks[name] = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
        mics[name] = read_mrc(mic_path)
    sim = Sim(ds, root, picks, mics, ds.micrographs_star)
    assert sim.n_fit < sim.n_total  # some boxes leave the micrographs
    return sim

