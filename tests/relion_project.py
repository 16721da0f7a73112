"""A small RELION 3.1 project on disk, laid out as RELION's own jobs would leave it.

``make_project(root)`` simulates micrographs (``cryoextract.sim``) and writes::

    MotionCorr/job002/Micrographs/mic_NNN.mrc
    MotionCorr/job002/corrected_micrographs.star    (optics + micrograph names)
    CtfFind/job003/micrographs_ctf.star             (the same, with CTF columns)
    AutoPick/job004/Micrographs/mic_NNN_autopick.star
    AutoPick/job004/coords_suffix_autopick.star     (names the micrographs STAR, as
                                                     RELION's AutoPick writes it)
    default_pipeline.star                           (those three jobs, finished;
                                                     the next job is job005)

Every name in the STAR files is relative to ``root``, the project directory. RELION 3.1's
``relion_pipeliner`` refuses to start without ``default_pipeline.star`` (it does not
create one); the file written here is the form RELION writes (version 30001 tables).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cryoextract.io.star import read_star, write_star
from cryoextract.sim.simulate import simulate_dataset

MICROGRAPHS_STAR = "CtfFind/job003/micrographs_ctf.star"
COORDS_NODE = "AutoPick/job004/coords_suffix_autopick.star"
NEXT_JOB = 5

#: (process, RELION process type, input nodes, output nodes with their node types)
JOBS = (
    ("MotionCorr/job002/", 1, (), (("MotionCorr/job002/corrected_micrographs.star", 1),)),
    ("CtfFind/job003/", 2, ("MotionCorr/job002/corrected_micrographs.star",),
     ((MICROGRAPHS_STAR, 1),)),
    ("AutoPick/job004/", 4, (MICROGRAPHS_STAR,), ((COORDS_NODE, 2),)),
)


@dataclass(frozen=True)
class RelionProject:
    """Where things are in the project; ``micrograph_names`` as in the STAR files."""

    root: Path
    micrograph_names: tuple[str, ...]
    coordinate_files: tuple[str, ...]
    pixel_size_angstrom: float
    particles_per_micrograph: int


def make_project(root: Path, *, n_micrographs: int = 3, size_px: int = 768,
                 pixel_size_angstrom: float = 1.5, particles_per_micrograph: int = 15,
                 particle_diameter_angstrom: float = 120.0, seed: int = 7) -> RelionProject:
    """Simulate a dataset and lay it out as MotionCorr, CtfFind and AutoPick jobs."""
    sim = simulate_dataset(root / "sim", n_micrographs=n_micrographs,
                           shape_yx=(size_px, size_px), pixel_size_angstrom=pixel_size_angstrom,
                           particles_per_micrograph=particles_per_micrograph,
                           particle_diameter_angstrom=particle_diameter_angstrom,
                           edge_picks=False, seed=seed)
    blocks = read_star(sim.micrographs_star)
    names, coordinate_files = [], []
    for old, mrc, picks in zip(sim.micrograph_names, sim.micrograph_paths, sim.pick_paths,
                               strict=True):
        stem = Path(old).stem
        name = f"MotionCorr/job002/Micrographs/{stem}.mrc"
        coords = f"AutoPick/job004/Micrographs/{stem}_autopick.star"
        for src, dst in ((mrc, name), (picks, coords)):
            (root / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), root / dst)
        names.append(name)
        coordinate_files.append(coords)
    for job in ("CtfFind/job003", "AutoPick/job004"):
        (root / job).mkdir(parents=True, exist_ok=True)
    micrographs = blocks["micrographs"].copy()
    micrographs["rlnMicrographName"] = names
    micrographs["rlnCtfMaxResolution"] = 4.0
    micrographs["rlnCtfFigureOfMerit"] = 0.2
    write_star(root / MICROGRAPHS_STAR, {"optics": blocks["optics"], "micrographs": micrographs})
    plain = micrographs[["rlnMicrographName", "rlnOpticsGroup"]]
    write_star(root / "MotionCorr/job002/corrected_micrographs.star",
               {"optics": blocks["optics"], "micrographs": plain})
    (root / COORDS_NODE).write_text(MICROGRAPHS_STAR + "\n")
    (root / "default_pipeline.star").write_text(pipeline_text(JOBS, NEXT_JOB))
    shutil.rmtree(root / "sim")
    return RelionProject(root, tuple(names), tuple(coordinate_files), pixel_size_angstrom,
                         particles_per_micrograph)


def pipeline_text(jobs: tuple, job_counter: int) -> str:
    """``default_pipeline.star`` with ``jobs`` finished (status 2)."""
    def table(name: str, labels: list[str], rows: list[tuple]) -> str:
        head = "".join(f"_rlnPipeLine{label} #{i}\n" for i, label in enumerate(labels, 1))
        body = "".join(" ".join(str(v) for v in row) + "\n" for row in rows)
        return f"\n# version 30001\n\ndata_{name}\n\nloop_\n{head}{body}\n"

    processes = [(name, "None", kind, 2) for name, kind, _, _ in jobs]
    nodes = [node for _, _, _, outputs in jobs for node in outputs]
    inputs = [(node, name) for name, _, ins, _ in jobs for node in ins]
    outputs = [(name, node) for name, _, _, outs in jobs for node, _ in outs]
    return (f"\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter "
            f"{job_counter}\n"
            + table("pipeline_processes", ["ProcessName", "ProcessAlias", "ProcessType",
                                           "ProcessStatus"], processes)
            + table("pipeline_nodes", ["NodeName", "NodeType"], nodes)
            + table("pipeline_input_edges", ["EdgeFromNode", "EdgeProcess"], inputs)
            + table("pipeline_output_edges", ["EdgeProcess", "EdgeToNode"], outputs))


def read_pipeline(root: Path) -> dict[str, pd.DataFrame]:
    """The tables of ``default_pipeline.star`` (``pipeline_processes``, ``_nodes``...)."""
    return read_star(root / "default_pipeline.star")
