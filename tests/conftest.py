"""Shared fixtures and dataset builders of the tests.

The builders are plain functions (a test module's own helpers call them too:
``from conftest import posed_particles``); the fixtures hand them to tests.

- :func:`optics_table`, :func:`posed_particles`, :func:`write_mrc`: particles with poses,
  offsets, CTFs and half-sets, and their maps and stacks (subtraction, projection);
- :func:`simulated_extraction`: a small extraction of a simulated dataset (select,
  report);
- the ``sim`` fixture: two simulated micrographs with picks, per module
  (:func:`extract_cli.simulated`, for the end-to-end extraction tests);
- the ``two_domain`` fixture: a two-domain map, a mask and particles of it, per module
  (:func:`subtract_sim.two_domain_dataset`, for the ``subtract`` tests);
- :func:`cli_app` and the ``cli`` fixture: commands run as the user runs them, through
  typer's runner.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner, Result

#: the optics of every synthetic particle set (RELION 3.1 optics-table labels)
OPTICS_300KV = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                "rlnAmplitudeContrast": 0.1}


def optics_table(box: int, apix: float, mic_apix: float | None = None) -> pd.DataFrame:
    """One optics group: 300 kV, Cs 2.7 mm, Q0 0.1, ``box`` px images of ``apix`` Å (and
    ``rlnMicrographPixelSize`` when given)."""
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        **{k: [v] for k, v in OPTICS_300KV.items()},
        "rlnImagePixelSize": [apix], "rlnImageSize": [box], "rlnImageDimensionality": [2],
    })
    if mic_apix is not None:
        optics["rlnMicrographPixelSize"] = mic_apix
    return optics


def posed_particles(n: int, seed: int, *, apix: float, stack: str = "imgs.mrcs",
                    max_offset_px: float = 3.0, micrographs: int | None = None) -> pd.DataFrame:
    """Particles with random poses (tilts 10-170), offsets, CTFs and alternating half-sets.

    With ``micrographs``, also micrograph names and coordinates (drawn first).
    """
    rng = np.random.default_rng(seed)
    located: dict[str, Any] = {}
    if micrographs is not None:
        located = {
            "rlnMicrographName": [f"mic_{i % micrographs}.mrc" for i in range(n)],
            "rlnCoordinateX": rng.uniform(100, 900, n).round(2),
            "rlnCoordinateY": rng.uniform(100, 900, n).round(2),
        }
    table = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
        **located,
        "rlnAngleRot": rng.uniform(-180, 180, n),
        "rlnAngleTilt": rng.uniform(10, 170, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n),
        "rlnOriginXAngst": rng.uniform(-max_offset_px, max_offset_px, n) * apix,
        "rlnOriginYAngst": rng.uniform(-max_offset_px, max_offset_px, n) * apix,
        "rlnDefocusU": rng.uniform(9000, 20000, n),
        "rlnDefocusAngle": rng.uniform(0, 180, n),
        "rlnOpticsGroup": 1,
        "rlnRandomSubset": np.arange(n) % 2 + 1,
    })
    table["rlnDefocusV"] = table["rlnDefocusU"] - rng.uniform(0, 800, n)
    return table


def write_mrc(path: Path, data: np.ndarray, apix: float, stack: bool = False) -> None:
    """``data`` as float32 MRC with voxel size ``apix`` (an image stack with ``stack``)."""
    with mrcfile.new(path, overwrite=True) as handle:
        handle.set_data(np.asarray(data, np.float32))
        if stack:
            handle.set_image_stack()
        handle.voxel_size = apix


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the block in ``path`` (as a user runs a command in a project folder)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def simulated_extraction(root: Path, *, n_micrographs: int, shape_yx: tuple[int, int],
                         particles_per_micrograph: int, particle_diameter_angstrom: float,
                         seed: int, write_cs: bool = False) -> tuple[Any, Path]:
    """A simulated dataset in ``root/data`` extracted (its own box, one worker) into
    ``root/out`` from the dataset's folder; returns ``(dataset, out)``."""
    from cryoextract.pipeline.extraction.extract import extract
    from cryoextract.pipeline.extraction.params import ExtractParams
    from cryoextract.sim.simulate import simulate_dataset

    ds = simulate_dataset(root / "data", n_micrographs=n_micrographs, shape_yx=shape_yx,
                          particles_per_micrograph=particles_per_micrograph,
                          particle_diameter_angstrom=particle_diameter_angstrom, seed=seed)
    out = root / "out"
    with working_directory(ds.out_dir):
        extract("micrographs.star", out, ExtractParams(box_px=ds.box_px), coords_dir="Picks",
                coords_suffix="_autopick.star", workers=1, write_cs=write_cs)
    return ds, out


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """:func:`extract_cli.simulated` in a folder of its own, made once per module."""
    from extract_cli import simulated

    return simulated(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def two_domain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """:func:`subtract_sim.two_domain_dataset` in a folder of its own, once per module."""
    from subtract_sim import two_domain_dataset

    return two_domain_dataset(tmp_path_factory.mktemp("two_domain"))


def cli_app(commands: Mapping[str, Callable[..., Any]]) -> typer.Typer:
    """A typer app with these commands (and a second one when there is only one, so that
    the command's name stays a subcommand, as in ``cryoextract``)."""
    app = typer.Typer()
    for name, function in commands.items():
        app.command(name)(function)
    if len(commands) == 1:
        app.command("other")(lambda: None)
    return app


Invoke = Callable[[Mapping[str, Callable[..., Any]], Sequence[str]], Result]


@pytest.fixture
def cli() -> Invoke:
    """``cli({"select": select_command}, ["select", ...])``: the command's result."""
    def invoke(commands: Mapping[str, Callable[..., Any]], args: Sequence[str]) -> Result:
        return CliRunner().invoke(cli_app(commands), list(args))
    return invoke
