"""Realistic simulated cryo-EM data: micrographs, picks and a RELION 3.1 micrographs STAR.

:func:`simulate_dataset` draws one object (:mod:`.specimen`), then per micrograph a CTF,
particle positions and the image (:mod:`.micrograph`, which describes the image model,
``snr`` and ``ice_fraction``), and writes the micrographs, picks, ``micrographs.star``
and ``truth.csv``.

Everything is drawn from ``numpy.random.default_rng(seed)``: a fixed seed gives the same
files, byte for byte except the STAR header comment's time stamp.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryoextract.errors import ParameterError
from cryoextract.io.atomic import atomic_file, atomic_path
from cryoextract.ops.ctf import CtfParams
from cryoextract.pipeline.frame import JobLock, holds_outputs, write_summary
from cryoextract.sim.micrograph import (
    SimDtype,
    place_particles,
    random_ctf,
    simulate_micrograph,
    to_dtype,
)
from cryoextract.sim.specimen import random_object

__all__ = ["SimulatedDataset", "simulate_dataset", "suggested_box_px", "write_truth"]


@dataclass(frozen=True, eq=False)
class SimulatedDataset:
    """Paths and ground truth of a simulated data set.

    Attributes
    ----------
    out_dir
        Root folder; STAR names are relative to it.
    micrographs_star
        ``micrographs.star`` (RELION 3.1: ``data_optics`` and ``data_micrographs``).
    micrograph_paths, pick_paths
        One MRC file and one coordinate STAR file per micrograph.
    micrograph_names
        ``rlnMicrographName`` values, e.g. ``Micrographs/mic_001.mrc``.
    truth_csv
        ``truth.csv`` with columns micrograph_name, x_px, y_px, near_edge.
    positions_xy
        Per micrograph, true centres, shape (n, 2), columns (x, y) in 0-based pixels
        (x: column, y: row); the same values as the picks.
    near_edge
        Per micrograph, bool, shape (n,): ``min(x, y, nx - 1 - x, ny - 1 - y) < box_px / 2``,
        i.e. a ``box_px`` box around the centre leaves the micrograph. The other centres
        are at least ``box_px / 2 + 1`` from every edge.
    ctf_params
        Per micrograph, the CTF used (also written to ``micrographs.star``).
    pixel_size_angstrom
        Micrograph pixel size.
    shape_yx
        Micrograph shape (ny, nx).
    box_px
        Suggested (even) extraction box, about 1.5 particle diameters.
    """

    out_dir: Path
    micrographs_star: Path
    micrograph_paths: tuple[Path, ...]
    pick_paths: tuple[Path, ...]
    micrograph_names: tuple[str, ...]
    truth_csv: Path
    positions_xy: tuple[np.ndarray, ...]
    near_edge: tuple[np.ndarray, ...]
    ctf_params: tuple[CtfParams, ...]
    pixel_size_angstrom: float
    shape_yx: tuple[int, int]
    box_px: int


def suggested_box_px(particle_diameter_angstrom: float, pixel_size_angstrom: float) -> int:
    """Smallest even box of at least 1.5 particle diameters, in pixels."""
    return int(2 * np.ceil(0.75 * particle_diameter_angstrom / pixel_size_angstrom))


#: the largest micrograph side simulated (a 16384 px square is 2 GiB in float64)
MAX_SIDE_PX = 16384


def _check_arguments(
    n_micrographs: int,
    shape_yx: tuple[int, int],
    pixel_size_angstrom: float,
    particles_per_micrograph: int,
    particle_diameter_angstrom: float,
    defocus_range_angstrom: tuple[float, float],
    astigmatism_range_angstrom: tuple[float, float],
    snr: float,
    ice_fraction: float,
    dtype: str,
) -> None:
    """Raise ParameterError for arguments the simulator cannot honour."""
    if n_micrographs < 1:  # a dataset of nothing is no dataset: nothing usable
        raise ParameterError(f"number of micrographs must be >= 1, got {n_micrographs}")
    if particles_per_micrograph < 0:
        raise ParameterError("number of particles must be >= 0")
    if not (pixel_size_angstrom > 0 and particle_diameter_angstrom > 0 and snr > 0):
        raise ParameterError("pixel size, particle diameter and snr must be > 0")
    for what, value in (("pixel size", pixel_size_angstrom),
                        ("particle diameter", particle_diameter_angstrom), ("snr", snr)):
        if not np.isfinite(value) or value < np.finfo(np.float64).tiny:
            raise ParameterError(f"{what} must be a finite, normal number, got {value}")
    if max(shape_yx) > MAX_SIDE_PX:
        raise ParameterError(f"micrograph side must be at most {MAX_SIDE_PX} px, got "
                             f"{max(shape_yx)}")
    if not ice_fraction >= 0:
        raise ParameterError(f"ice fraction must be >= 0, got {ice_fraction}")
    if dtype not in ("float32", "float16", "uint16"):
        raise ParameterError(f"dtype must be float32, float16 or uint16, got {dtype!r}")
    low, high = defocus_range_angstrom
    if not 0 < low <= high:
        raise ParameterError(f"defocus range must satisfy 0 < low <= high, got {(low, high)}")
    a_low, a_high = astigmatism_range_angstrom
    if not 0 <= a_low <= a_high < 2 * low:
        raise ParameterError(
            f"astigmatism range must satisfy 0 <= low <= high < 2 * min defocus, "
            f"got {(a_low, a_high)}"
        )
    box = suggested_box_px(particle_diameter_angstrom, pixel_size_angstrom)
    if min(shape_yx) < box + 4:
        raise ParameterError(
            f"micrograph {tuple(shape_yx)} px is too small for {particle_diameter_angstrom} Å "
            f"particles at {pixel_size_angstrom} Å/px (box {box} px)"
        )


def _write_mrc(path: Path, image: np.ndarray, pixel_size_angstrom: float) -> None:
    """Write a 2D image with the pixel size in the header."""
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(image)
        mrc.voxel_size = pixel_size_angstrom


def _write_picks(path: Path, positions_xy: np.ndarray, figure_of_merit: np.ndarray) -> None:
    """RELION coordinate STAR (one ``data_`` block), as written by LoG autopicking."""
    table = pd.DataFrame(
        {
            "rlnCoordinateX": positions_xy[:, 0],
            "rlnCoordinateY": positions_xy[:, 1],
            "rlnAutopickFigureOfMerit": figure_of_merit,
            "rlnClassNumber": np.zeros(len(positions_xy), dtype=int),
        }
    )
    with atomic_path(path) as tmp:
        starfile.write(table, tmp, overwrite=True)


def _write_micrographs_star(
    path: Path, names: Sequence[str], ctfs: Sequence[CtfParams], optics: CtfParams,
    pixel_size_angstrom: float,
) -> None:
    """RELION 3.1 ``micrographs.star`` with an optics table and the micrographs' CTFs."""
    optics_table = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [float(pixel_size_angstrom)],
            "rlnVoltage": [optics.voltage_kv],
            "rlnSphericalAberration": [optics.spherical_aberration_mm],
            "rlnAmplitudeContrast": [optics.amplitude_contrast],
            "rlnMicrographPixelSize": [float(pixel_size_angstrom)],
        }
    )
    micrographs = pd.DataFrame(
        {
            "rlnMicrographName": list(names),
            "rlnOpticsGroup": np.ones(len(names), dtype=int),
            "rlnDefocusU": [c.defocus_u_angstrom for c in ctfs],
            "rlnDefocusV": [c.defocus_v_angstrom for c in ctfs],
            "rlnDefocusAngle": [c.defocus_angle_degrees for c in ctfs],
            "rlnCtfBfactor": [c.bfactor_angstrom2 for c in ctfs],
            "rlnCtfScalefactor": [c.scale for c in ctfs],
            "rlnPhaseShift": [c.phase_shift_degrees for c in ctfs],
        }
    )
    with atomic_path(path) as tmp:
        starfile.write({"optics": optics_table, "micrographs": micrographs}, tmp, overwrite=True)


def write_truth(
    path: Path,
    micrograph_names: Sequence[str],
    positions_xy: Sequence[np.ndarray],
    near_edge: Sequence[np.ndarray],
) -> None:
    """Write the true particle centres as CSV.

    Parameters
    ----------
    path
        Output file (``truth.csv``).
    micrograph_names
        ``rlnMicrographName`` of each micrograph.
    positions_xy
        Per micrograph, shape (n, 2): (x, y) in 0-based pixels.
    near_edge
        Per micrograph, shape (n,): whether the suggested box leaves the micrograph.

    Notes
    -----
    Columns: ``micrograph_name, x_px, y_px, near_edge``; one row per particle, in pick
    order, with full float precision.
    """
    frames = [
        pd.DataFrame(
            {
                "micrograph_name": [name] * len(xy),
                "x_px": xy[:, 0] if len(xy) else np.empty(0),
                "y_px": xy[:, 1] if len(xy) else np.empty(0),
                "near_edge": np.asarray(edge, dtype=bool),
            }
        )
        for name, xy, edge in zip(micrograph_names, positions_xy, near_edge, strict=True)
    ]
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["micrograph_name", "x_px", "y_px", "near_edge"])
    )
    with atomic_file(path, "w", encoding="utf-8", newline="") as stream:
        table.to_csv(stream, index=False, float_format="%.17g")


_OURS_MRC = re.compile(r"mic_\d{3,}\.mrc")
_OURS_PICKS = re.compile(r"mic_\d{3,}_autopick\.star")


def _prepare_out_dir(out_dir: Path, overwrite: bool, *, remove: bool = True) -> None:
    """Refuse a folder holding anything unless ``overwrite``; then (with ``remove``, under
    the folder's lock) remove our own files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ParameterError(f"{out_dir} exists and is not a folder")
    if not holds_outputs(out_dir):  # nothing, or only our lock
        return
    if not overwrite:
        raise ParameterError(f"output folder {out_dir} exists and is not empty; use "
                             "--overwrite to replace the dataset in it")
    if not remove:
        return
    ours = [p for p in out_dir.glob("Micrographs/mic_*.mrc") if _OURS_MRC.fullmatch(p.name)]
    ours += [p for p in out_dir.glob("Picks/mic_*_autopick.star")
             if _OURS_PICKS.fullmatch(p.name)]
    for path in [*ours, out_dir / "micrographs.star", out_dir / "truth.csv",
                 out_dir / "summary.json"]:
        if path.is_symlink() or path.is_file():  # a link goes, not what it points to
            path.unlink()


def simulate_dataset(
    out_dir: Path,
    *,
    n_micrographs: int = 4,
    shape_yx: tuple[int, int] = (1024, 1024),
    pixel_size_angstrom: float = 1.5,
    particles_per_micrograph: int = 60,
    particle_diameter_angstrom: float = 150.0,
    voltage_kv: float = 300.0,
    spherical_aberration_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    defocus_range_angstrom: tuple[float, float] = (8000.0, 25000.0),
    astigmatism_range_angstrom: tuple[float, float] = (0.0, 1000.0),
    snr: float = 0.05,
    ice_fraction: float = 0.1,
    dtype: SimDtype = "float32",
    edge_picks: bool = True,
    seed: int = 0,
    overwrite: bool = False,
) -> SimulatedDataset:
    """Simulate micrographs with particles, CTF and noise, their picks and STAR files.

    Parameters
    ----------
    out_dir
        Output folder (created). Writes ``Micrographs/mic_NNN.mrc``,
        ``Picks/mic_NNN_autopick.star``, ``micrographs.star``, ``truth.csv``
        (NNN from 001) and, last, ``summary.json`` (the job frame's,
        :func:`cryoextract.pipeline.frame.write_summary`). A folder that exists and
        is not empty is refused unless ``overwrite``.
    n_micrographs
        Number of micrographs.
    shape_yx
        Micrograph shape (ny, nx) in pixels; need not be square.
    pixel_size_angstrom
        Micrograph pixel size.
    particles_per_micrograph
        Particles (and picks) per micrograph. They do not overlap (centres at least 0.8
        diameters apart) unless the micrograph is too crowded to place them otherwise.
    particle_diameter_angstrom
        Approximate diameter of the simulated object.
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Optics, written to the optics table.
    defocus_range_angstrom
        Range of the mean defocus, drawn uniformly per micrograph.
    astigmatism_range_angstrom
        Range of ``U - V``, drawn uniformly per micrograph; the angle is uniform in
        [0, 180) degrees.
    snr
        Signal variance within the particles over noise variance (see
        :mod:`cryoextract.sim.micrograph`).
    ice_fraction
        Variance of the CTF-filtered ice background over the noise variance; 0 disables it.
    dtype
        ``float32`` (MRC mode 2), ``float16`` (mode 12) or ``uint16`` (mode 6, counts).
    edge_picks
        Place about 15% (at least one) of each micrograph's particles closer than half the
        suggested box to an edge, so their boxes leave the micrograph; all centres are
        inside. Otherwise every box fits with a pixel to spare.
    seed
        Seed of ``numpy.random.default_rng``.
    overwrite
        Replace a dataset in ``out_dir``: the files named as this function names them
        are removed first (so no micrograph of a larger earlier dataset stays); other
        files are left.

    Returns
    -------
    SimulatedDataset
        Paths and the true positions, which equal the picks.
    """
    shape_yx = (int(shape_yx[0]), int(shape_yx[1]))
    _check_arguments(
        n_micrographs,
        shape_yx,
        pixel_size_angstrom,
        particles_per_micrograph,
        particle_diameter_angstrom,
        defocus_range_angstrom,
        astigmatism_range_angstrom,
        snr,
        ice_fraction,
        dtype,
    )
    optics = CtfParams(  # the defocus is drawn per micrograph (random_ctf)
        defocus_u_angstrom=0.0,
        defocus_v_angstrom=0.0,
        defocus_angle_degrees=0.0,
        voltage_kv=float(voltage_kv),
        spherical_aberration_mm=float(spherical_aberration_mm),
        amplitude_contrast=float(amplitude_contrast),
    )
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ParameterError(f"seed must be an integer >= 0, got {seed}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite, remove=False)  # refused before anything is made
    with JobLock(out_dir):  # two runs on one folder never both write there
        _prepare_out_dir(out_dir, overwrite)  # again: a run may have finished since
        (out_dir / "Micrographs").mkdir(parents=True, exist_ok=True)
        (out_dir / "Picks").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        diameter_px = particle_diameter_angstrom / pixel_size_angstrom
        box_px = suggested_box_px(particle_diameter_angstrom, pixel_size_angstrom)
        obj = random_object(rng, particle_diameter_angstrom, pixel_size_angstrom)

        names, mic_paths, pick_paths, positions, edges, ctfs = [], [], [], [], [], []
        for index in range(1, n_micrographs + 1):
            ctf = random_ctf(rng, defocus_range_angstrom, astigmatism_range_angstrom, optics)
            xy, near_edge = place_particles(
                rng, particles_per_micrograph, shape_yx, box_px, diameter_px, edge_picks
            )
            image = simulate_micrograph(
                rng, obj, xy, shape_yx, ctf, pixel_size_angstrom, diameter_px, snr, ice_fraction
            )
            name = f"Micrographs/mic_{index:03d}.mrc"
            pick_path = out_dir / "Picks" / f"mic_{index:03d}_autopick.star"
            _write_mrc(out_dir / name, to_dtype(image, dtype), pixel_size_angstrom)
            _write_picks(pick_path, xy, rng.uniform(0.2, 1.0, len(xy)))
            names.append(name)
            mic_paths.append(out_dir / name)
            pick_paths.append(pick_path)
            positions.append(xy)
            edges.append(near_edge)
            ctfs.append(ctf)

        star_path = out_dir / "micrographs.star"
        _write_micrographs_star(star_path, names, ctfs, optics, pixel_size_angstrom)
        truth_path = out_dir / "truth.csv"
        write_truth(truth_path, names, positions, edges)
        write_summary(out_dir / "summary.json", "simulate", inputs=(), parameters={
            "n_micrographs": n_micrographs, "shape_yx": list(shape_yx),
            "pixel_size_angstrom": pixel_size_angstrom,
            "particles_per_micrograph": particles_per_micrograph,
            "particle_diameter_angstrom": particle_diameter_angstrom,
            "optics": {"voltage_kv": voltage_kv, "spherical_aberration_mm":
                       spherical_aberration_mm, "amplitude_contrast": amplitude_contrast},
            "defocus_range_angstrom": list(defocus_range_angstrom),
            "astigmatism_range_angstrom": list(astigmatism_range_angstrom), "snr": snr,
            "ice_fraction": ice_fraction, "dtype": dtype, "edge_picks": edge_picks,
            "seed": seed}, counts={"micrographs_out": len(names),
                                   "picks_out": sum(len(xy) for xy in positions)},
            outputs=[str(star_path), str(truth_path), *map(str, mic_paths),
                     *map(str, pick_paths)])
        return SimulatedDataset(
            out_dir=out_dir,
            micrographs_star=star_path,
            micrograph_paths=tuple(mic_paths),
            pick_paths=tuple(pick_paths),
            micrograph_names=tuple(names),
            truth_csv=truth_path,
            positions_xy=tuple(positions),
            near_edge=tuple(edges),
            ctf_params=tuple(ctfs),
            pixel_size_angstrom=float(pixel_size_angstrom),
            shape_yx=shape_yx,
            box_px=box_px,
        )
