"""Particle subtraction: remove the projection of a masked map from every particle image.

:func:`subtract_particles` reads a particles STAR (RELION 3.0 or 3.1+) or cryoSPARC ``.cs``
with poses, offsets, CTF and half-sets, and writes ``OUT/Particles/subtracted_XXXXXX.mrcs``,
``OUT/particles.star`` (and ``OUT/particles.cs`` on request), ``OUT/summary.json`` and
``OUT/rejected_particles.tsv``. :func:`revert_subtraction` gives the original particles
back, origins included. Conventions: docs/conventions.md, "Particle subtraction".

Memory is bounded whatever the number of particles: the work is cut into tasks of
consecutive images of one output stack (:mod:`cryoextract.pipeline.stacks.subtract_tasks`),
each worker reads, subtracts and writes its own tasks, and each half-set is done in its
own pass, so at most two Fourier volumes (region to remove, whole map for the scale
fit) are held at once, shared by the workers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, as_completed, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import CryoExtractError, InputError, ParameterError, os_error_message
from cryoextract.io.cryosparc import write_cs
from cryoextract.io.images import ImageLocations, format_image_name, locate_images
from cryoextract.io.mrc import StackWriter, read_volume
from cryoextract.io.mtf import read_mtf
from cryoextract.io.particles import ParticleTable, base_dirs, read_particles
from cryoextract.io.paths import (
    PathNamer,
    PathStyle,
    locate,
    located_names,
    rebase_found_names,
    rebase_image_names,
)
from cryoextract.io.star import find_block, read_star, write_star
from cryoextract.ops.aberrations import OpticalAberrations
from cryoextract.ops.mtf import mtf_image, relative_mtfs
from cryoextract.ops.projection import DEFAULT_PADDING_FACTOR, FourierVolume, fourier_volume
from cryoextract.ops.recenter import recentre
from cryoextract.ops.subtract import (
    MaskReport,
    centre_of_mass_xyz,
    inspect_mask,
    suggested_edge_px,
)
from cryoextract.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SCALE_BAND,
    MaskMode,
    OutputFormat,
    ScaleMode,
)
from cryoextract.pipeline.params import JobPaths, check_box_size
from cryoextract.pipeline.stacks.subtract_tasks import (
    CTF_COLUMNS,
    GroupOptics,
    StackTask,
    TaskContext,
    TaskResult,
    kernel_loading_meanwhile,
    split_stack,
    task_pool,
)

__all__ = [
    "MaskMode",
    "OutputFormat",
    "RevertSummary",
    "ScaleMode",
    "SubtractSummary",
    "revert_subtraction",
    "subtract_particles",
]

#: relative difference of map and particle pixel sizes beyond which the job refuses
PIXEL_SIZE_TOLERANCE = 0.005

ORIGINAL_COLUMNS = {
    "rlnOriginXAngst": "cryoextractOriginalOriginXAngst",
    "rlnOriginYAngst": "cryoextractOriginalOriginYAngst",
    "rlnCoordinateX": "cryoextractOriginalCoordinateX",
    "rlnCoordinateY": "cryoextractOriginalCoordinateY",
}
SCALE_COLUMN = "cryoextractSubtractScale"
POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
PRIOR_COLUMNS = ("rlnOriginXPriorAngst", "rlnOriginYPriorAngst")
NO_HALF_SET = "no half-set"
WRONG_SIZE = "image size differs from the map"

ProgressCallback = Callable[[int], None]


@dataclass
class SubtractSummary:
    """What a subtraction did; also written to ``OUT/summary.json``.

    ``scale`` holds statistics of the fitted per-particle scale factors (``count``,
    ``mean``, ``std``, ``min``, ``p05``, ``median``, ``p95``, ``max``), overall under
    ``"all"`` and per half-set under ``"half1"``/``"half2"``.
    """

    command: str
    out_dir: str
    particles_star: str
    particles_cs: str | None = None
    particles_in: int = 0
    particles_written: int = 0
    particles_skipped: dict[str, int] = field(default_factory=dict)
    maps: list[str] = field(default_factory=list)
    half_maps: bool = False
    mask: str | None = None
    mask_mode: str = MaskMode.SUBTRACT.value
    mask_edge_width_px: float | None = None
    mask_suggested_edge_px: float | None = None
    scale_mode: str = ScaleMode.PER_PARTICLE.value
    scale: dict[str, dict[str, float]] = field(default_factory=dict)
    box_px: list[int] = field(default_factory=list)
    pixel_size_angstrom: float = 0.0
    padding_factor: float = DEFAULT_PADDING_FACTOR
    scale_band: float = DEFAULT_SCALE_BAND
    fourier_volume_bytes: int = 0
    recenter_xyz_px: list[float] | None = None
    recentered: int = 0
    float16: bool = False
    aberrations: dict[str, list[str]] = field(default_factory=dict)
    stacks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class RevertSummary:
    """What :func:`revert_subtraction` did."""

    particles_star: str
    particles: int = 0
    origins_restored: int = 0
    coordinates_restored: int = 0
    image_size_px: dict[str, int] = field(default_factory=dict)
    originals_missing: int = 0
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- maps
@dataclass(frozen=True)
class _Maps:
    """The maps by half-set (``0`` for a single map), their side and pixel size."""

    volumes: dict[int, np.ndarray]
    paths: list[str]
    box_px: int
    pixel_size_angstrom: float


def read_map(path: str | os.PathLike[str], what: str = "map") -> tuple[np.ndarray, float]:
    """:func:`cryoextract.io.mrc.read_volume`, with the even side a subtraction needs."""
    volume, voxel = read_volume(path, what)
    if volume.shape[0] % 2:
        raise InputError(f"{what} side must be even, got {volume.shape[0]}", path)
    return volume, voxel


def _load_maps(
    map_path: str | os.PathLike[str] | None,
    half_maps: Sequence[str | os.PathLike[str]] | None,
) -> _Maps:
    if (map_path is None) == (half_maps is None):
        raise ParameterError("give exactly one of --map and --half-maps")
    paths = [map_path] if map_path is not None else list(half_maps or ())
    if half_maps is not None and len(paths) != 2:
        raise ParameterError(f"--half-maps needs two maps, got {len(paths)}")
    loaded = [read_map(p) for p in paths]
    shapes = {v.shape for v, _ in loaded}
    if len(shapes) != 1:
        raise InputError(f"half-maps differ in size: {sorted(shapes)}", paths[1])
    sizes = [s for _, s in loaded]
    if len(sizes) == 2 and sizes[0] > 0 and sizes[1] > 0 and not _close(sizes[0], sizes[1]):
        raise InputError(f"half-maps differ in pixel size: {sizes[0]:g} and {sizes[1]:g} A",
                         paths[1])
    keys = [0] if map_path is not None else [1, 2]
    volumes = {k: v for k, (v, _) in zip(keys, loaded, strict=True)}
    return _Maps(volumes, [str(p) for p in paths], int(loaded[0][0].shape[0]), sizes[0])


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= PIXEL_SIZE_TOLERANCE * max(abs(a), abs(b))


def _load_mask(
    path: str | os.PathLike[str] | None, box_px: int
) -> tuple[np.ndarray | None, MaskReport | None]:
    if path is None:
        return None, None
    volume, _ = read_map(path, "mask")
    if volume.shape[0] != box_px:
        raise InputError(f"mask is {volume.shape[0]}^3 but the map is {box_px}^3", path)
    try:
        report = inspect_mask(volume)
    except ParameterError as exc:
        raise InputError(str(exc), path) from exc
    return np.clip(volume, 0.0, 1.0), report


def region_volume(volume: np.ndarray, mask: np.ndarray | None, mode: MaskMode) -> np.ndarray:
    """The part of the map whose projection is removed.

    ``subtract``: ``map * mask``; ``keep``: ``map * (1 - mask)``; no mask: the whole map.
    """
    if mask is None:
        return volume
    if MaskMode(mode) is MaskMode.SUBTRACT:
        return volume * mask
    return volume * (1.0 - mask)


# --------------------------------------------------------------------------- particles
@dataclass
class _Job:
    """Validated inputs: particles, where their images are, per-row arrays."""

    table: ParticleTable
    particles: pd.DataFrame
    locations: ImageLocations
    problem: list[str | None]
    detail: list[str]
    maps: _Maps
    subset: np.ndarray  # (n,) half-set per row (0 with a single map)
    rotations: np.ndarray  # (n, 3) rot, tilt, psi degrees
    origins_angstrom: np.ndarray  # (n, 2) rlnOriginX/YAngst (0 when absent)
    pixel_size_angstrom: float
    ctf: dict[str, np.ndarray]  # per-row CTF parameter arrays
    ctf_power: np.ndarray  # (n,) 1 (plain), 2 (premultiplied)
    phase_flipped: np.ndarray  # (n,) bool
    optics_group: np.ndarray  # (n,) int rlnOpticsGroup
    optics: GroupOptics  # aberrations and relative MTFs by optics group
    warnings: list[str] = field(default_factory=list)

    @property
    def good(self) -> np.ndarray:
        return np.array([p is None for p in self.problem], dtype=bool)


#: values of the optional CTF columns when a dataset has none (RELION's); the other
#: :data:`~cryoextract.pipeline.stacks.subtract_tasks.CTF_COLUMNS` are required, but for
#: ``rlnDefocusV``, which is ``rlnDefocusU`` when absent
_CTF_DEFAULTS = {
    "rlnDefocusAngle": 0.0, "rlnPhaseShift": 0.0, "rlnCtfBfactor": 0.0, "rlnCtfScalefactor": 1.0,
}


def _row_column(
    table: ParticleTable, particles: pd.DataFrame, column: str, default: float | None
) -> np.ndarray:
    """A numeric column per particle row: the particle's, else its optics group's."""
    if column in particles.columns:
        return particles[column].to_numpy(dtype=np.float64)
    optics = table.optics.set_index("rlnOpticsGroup")
    if column in optics.columns:
        per_group = optics[column].astype(float)
        return particles["rlnOpticsGroup"].map(per_group).to_numpy(dtype=np.float64)
    if default is None:
        raise InputError(f"particles have no {column} (needed for the CTF)", table.source)
    return np.full(len(particles), default, dtype=np.float64)


def _ctf_arrays(table: ParticleTable, particles: pd.DataFrame) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for column in CTF_COLUMNS:  # rlnDefocusU comes before rlnDefocusV
        if column == "rlnDefocusV" and column not in particles.columns:
            arrays[column] = arrays["rlnDefocusU"].copy()
        else:
            arrays[column] = _row_column(table, particles, column, _CTF_DEFAULTS.get(column))
    return arrays


def _prepare(
    particles_path: str | os.PathLike[str], maps: _Maps,
    base_dir: str | os.PathLike[str] | None,
) -> _Job:
    table = read_particles(particles_path, base_dir=base_dir)
    particles = table.particles.reset_index(drop=True)
    missing = [c for c in POSE_COLUMNS if c not in particles.columns]
    if missing:
        raise InputError(f"particles have no 3D poses ({', '.join(missing)} missing)",
                         table.source)
    locations = locate_images(particles["rlnImageName"].astype(str), table.base_dirs)
    problem, detail = list(locations.problem), list(locations.detail)
    apix = _pixel_size(table, particles, locations, problem, maps)
    origins = np.zeros((len(particles), 2), dtype=np.float64)
    for axis, column in enumerate(("rlnOriginXAngst", "rlnOriginYAngst")):
        if column in particles.columns:
            origins[:, axis] = particles[column].to_numpy(dtype=np.float64)
    subset = _half_sets(table, particles, maps, problem, detail)
    _check_sizes(table, locations, problem, detail, maps.box_px)
    premultiplied = _row_column(table, particles, "rlnCtfDataAreCtfPremultiplied", 0.0)
    flipped = _row_column(table, particles, "rlnCtfDataArePhaseFlipped", 0.0)
    warnings = list(table.warnings)
    return _Job(
        table=table, particles=particles, locations=locations, problem=problem, detail=detail,
        maps=maps, subset=subset,
        rotations=particles[list(POSE_COLUMNS)].to_numpy(dtype=np.float64),
        origins_angstrom=origins, pixel_size_angstrom=apix, ctf=_ctf_arrays(table, particles),
        ctf_power=np.where(premultiplied > 0, 2, 1), phase_flipped=flipped > 0,
        optics_group=particles["rlnOpticsGroup"].to_numpy(dtype=np.int64),
        optics=GroupOptics(_optics_aberrations(table),
                           _mtf_ratios(table, maps.box_px, apix, warnings)),
        warnings=warnings,
    )


def _optics_aberrations(table: ParticleTable) -> dict[int, OpticalAberrations]:
    """The aberrations of each optics group that has any (docs "Optical aberrations")."""
    found: dict[int, OpticalAberrations] = {}
    for row in table.optics.to_dict("records"):
        try:
            aberrations = OpticalAberrations.from_star_row(row)
        except InputError as exc:
            raise InputError(f"optics group {row['rlnOpticsGroup']}: {exc.reason}",
                             table.source) from None
        if not aberrations.is_identity:
            found[int(row["rlnOpticsGroup"])] = aberrations
    return found


def _mtf_ratios(table: ParticleTable, box_px: int, pixel_size_angstrom: float,
                warnings: list[str]) -> dict[int, np.ndarray]:
    """Each optics group's MTF over the average of all groups' (``(N, N // 2 + 1)``
    float32), when the groups name different MTF files, as ``relion_particle_subtract``
    (docs "Optical aberrations"); empty otherwise."""
    optics = table.optics
    if "rlnMtfFileName" not in optics.columns:
        return {}
    names = optics["rlnMtfFileName"].astype(str).str.strip().tolist()
    if len(set(names)) < 2:
        return {}
    unknown = pd.Series(np.nan, index=optics.index)
    detector = pd.to_numeric(optics.get("rlnMicrographOriginalPixelSize", unknown),
                             errors="coerce")
    if not (detector > 0).all() or any(n in ("", "nan", "None") for n in names):
        warnings.append("optics groups have different detector MTFs, but not every group has "
                        "an MTF file and rlnMicrographOriginalPixelSize: the ratio of each "
                        "MTF to their average, which relion_particle_subtract applies, is not "
                        "applied")
        return {}
    # looked up as RELION does (the working directory), else beside the STAR
    curves = {name: read_mtf(locate(name, table.base_dirs) or name) for name in set(names)}
    images = [mtf_image(*curves[name], float(apix), box_px, pixel_size_angstrom)
              for name, apix in zip(names, detector, strict=True)]
    groups = optics["rlnOpticsGroup"].astype(int).tolist()
    return {g: ratio.astype(np.float32)
            for g, ratio in zip(groups, relative_mtfs(images), strict=True)}


def describe_aberrations(aberrations: OpticalAberrations) -> list[str]:
    """What is applied for one optics group, in words (for the summary)."""
    words = []
    if aberrations.has_odd:
        words.append(f"antisymmetric (beam tilt, odd Zernike): {len(aberrations.odd_zernike)} "
                     "coefficients")
    if aberrations.has_even:
        words.append(f"symmetric (even Zernike): {len(aberrations.even_zernike)} coefficients")
    if aberrations.magnification is not None:
        words.append("anisotropic magnification " +
                     ", ".join(f"{v:.6g}" for v in aberrations.magnification))
    return words


def _pixel_size(
    table: ParticleTable, particles: pd.DataFrame, locations: ImageLocations,
    problem: list[str | None], maps: _Maps,
) -> float:
    """The particles' pixel size (one for all groups), checked against the map's."""
    optics = table.optics.set_index("rlnOpticsGroup")
    sizes: dict[int, float] = {}
    for group in sorted(set(particles["rlnOpticsGroup"].astype(int))):
        value = optics["rlnImagePixelSize"].get(group) if "rlnImagePixelSize" in optics else None
        if value is None or pd.isna(value) or not float(value) > 0:
            rows = np.flatnonzero((particles["rlnOpticsGroup"].astype(int) == group).to_numpy()
                                  & np.array([p is None for p in problem]))
            header = (locations.stacks[locations.stack[int(rows[0])]].pixel_size_angstrom
                      if len(rows) else 0.0)
            value = header if header > 0 else maps.pixel_size_angstrom
        sizes[group] = float(value)
    if not sizes or not all(v > 0 for v in sizes.values()):
        raise InputError("pixel size unknown: not in the STAR, the stacks nor the map",
                         table.source)
    for group, size in sizes.items():
        if maps.pixel_size_angstrom > 0 and not _close(size, maps.pixel_size_angstrom):
            raise InputError(
                f"map pixel size {maps.pixel_size_angstrom:g} A differs from the particles' "
                f"{size:g} A (optics group {group}); rescale the map to the particles",
                maps.paths[0],
            )
    first = next(iter(sizes.values()))
    if any(not _close(v, first) for v in sizes.values()):
        raise InputError(f"optics groups have different pixel sizes {sorted(set(sizes.values()))}"
                         "; subtract each group with its own map", table.source)
    return first


def _half_sets(
    table: ParticleTable, particles: pd.DataFrame, maps: _Maps,
    problem: list[str | None], detail: list[str],
) -> np.ndarray:
    if 0 in maps.volumes:
        return np.zeros(len(particles), dtype=np.int64)
    if "rlnRandomSubset" not in particles.columns:
        raise InputError("half-maps given but the particles have no rlnRandomSubset "
                         "(cryoSPARC: alignments3D/split)", table.source)
    subset = pd.to_numeric(particles["rlnRandomSubset"], errors="coerce").to_numpy()
    valid = np.isin(subset, (1, 2))
    for row in np.flatnonzero(~valid):
        if problem[row] is None:
            problem[row], detail[row] = NO_HALF_SET, f"rlnRandomSubset = {subset[row]}"
    return np.where(valid, subset, 0).astype(np.int64)


def _check_sizes(
    table: ParticleTable, locations: ImageLocations, problem: list[str | None],
    detail: list[str], box_px: int,
) -> None:
    """Images must be ``box_px`` squares: a whole group otherwise is an error."""
    wrong: Counter[tuple[int, int]] = Counter()
    for row in range(len(problem)):
        if problem[row] is None and locations.shape_of(row) != (box_px, box_px):
            shape = locations.shape_of(row)
            wrong[shape] += 1
            problem[row] = WRONG_SIZE
            detail[row] = f"{shape[1]}x{shape[0]} px, map {box_px} px"
    if wrong and not any(p is None for p in problem):
        (h, w), count = wrong.most_common(1)[0]
        raise InputError(f"map box {box_px} px differs from the particle images ({w}x{h} px, "
                         f"{count} particles); use a map of the particles' box", table.source)


# --------------------------------------------------------------------------- recentring
def _recenter_point(
    recenter_on_mask: bool, recenter_xyz: Sequence[float] | None, mask: np.ndarray | None,
    box_px: int,
) -> np.ndarray | None:
    """The 3D point to centre, as 0-based voxel indices ``(x, y, z)``; None for no recentring."""
    if recenter_on_mask and recenter_xyz is not None:
        raise ParameterError("give at most one of --recenter-on-mask and --recenter-xyz")
    if recenter_on_mask:
        if mask is None:
            raise ParameterError("--recenter-on-mask needs --mask")
        return centre_of_mass_xyz(mask)
    if recenter_xyz is not None:
        point = np.asarray(recenter_xyz, dtype=np.float64)
        if point.shape != (3,) or not np.all(np.isfinite(point)):
            raise ParameterError(f"--recenter-xyz needs three numbers, got {recenter_xyz!r}")
        return point
    return None


def _micrograph_pixel_sizes(table: ParticleTable, particles: pd.DataFrame) -> np.ndarray | None:
    optics = table.optics.set_index("rlnOpticsGroup")
    for column in ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"):
        if column in optics.columns:
            values = particles["rlnOpticsGroup"].map(optics[column].astype(float))
            if values.notna().all():
                return values.to_numpy(dtype=np.float64)
    return None


# --------------------------------------------------------------------------- the job
def subtract_particles(
    particles: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    map_path: str | os.PathLike[str] | None = None,
    half_maps: Sequence[str | os.PathLike[str]] | None = None,
    mask: str | os.PathLike[str] | None = None,
    mask_mode: MaskMode | str = MaskMode.SUBTRACT,
    scale: ScaleMode | str = ScaleMode.PER_PARTICLE,
    recenter_on_mask: bool = False,
    recenter_xyz: Sequence[float] | None = None,
    new_box: int | None = None,
    float16: bool = False,
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    padding_factor: float = DEFAULT_PADDING_FACTOR,
    scale_band: float = DEFAULT_SCALE_BAND,
    map_resolution_angstrom: float | None = None,
    output_format: OutputFormat | str = OutputFormat.AUTO,
    overwrite: bool = False,
    base_dir: str | os.PathLike[str] | None = None,
    path_style: PathStyle | str = PathStyle.CWD,
    on_start: ProgressCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> SubtractSummary:
    """Subtract the projection of (part of) a map from every particle image.

    Parameters
    ----------
    particles : path-like
        Particles STAR (RELION 3.0 or 3.1+) with ``rlnAngleRot/Tilt/Psi``, origins, CTF
        (and ``rlnRandomSubset`` with half-maps), or a cryoSPARC ``.cs`` with
        ``alignments3D``.
    out_dir : path-like
        Gets ``Particles/subtracted_XXXXXX.mrcs``, ``particles.star`` (+ ``particles.cs``),
        ``summary.json``, ``rejected_particles.tsv``; refused if not empty unless
        ``overwrite``.
    map_path : path-like, optional
        One map for every particle (the gold-standard separation is then not kept; the
        summary says so).
    half_maps : pair of path-like, optional
        Half-maps 1 and 2: each particle is subtracted with the map of its own half-set
        (``rlnRandomSubset``), never the other. Give exactly one of ``map_path`` and this.
    mask : path-like, optional
        Soft mask in [0, 1] of the map's size. Without one the whole map is removed.
    mask_mode : MaskMode or str
        ``subtract``: remove the density inside the mask (cryoSPARC); ``keep``: remove
        the density outside it (RELION's ``--mask``).
    scale : ScaleMode or str
        ``per-particle``: least-squares scale of the whole map's CTF-modulated projection
        to each image, applied to the projection removed; ``none``: scale 1.
    recenter_on_mask : bool
        Centre each output image on the projection of the mask's centre of mass.
    recenter_xyz : three floats, optional
        ... or of this point, 0-based voxel indices ``(x, y, z)`` of the map (RELION's
        ``--center_x`` is ``x - N/2``).
    new_box : int, optional
        Crop the output to this even side (after recentring).
    float16 : bool
        Write MRC mode 12.
    workers : int, optional
        Worker processes (default: all cores; 1 runs everything in this process).
    batch_size : int
        Images per output stack.
    padding_factor : float
        Oversampling of the 3D Fourier transform (RELION's default 2).
    scale_band : float
        The per-particle scale is fitted over frequencies up to this fraction of Nyquist
        (default 0.5: where a map's signal and the images' SNR are; the whole map is then
        projected only there, which makes the fit cheap).
    map_resolution_angstrom : float, optional
        The map's resolution: the mask's soft edge is checked against cryoSPARC's
        suggested ``5 · resolution / apix``.
    output_format : OutputFormat or str
        ``cs`` also writes ``particles.cs``; ``auto`` does so for ``.cs`` input.
    overwrite : bool
        Replace a previous output in ``out_dir``.
    base_dir : path-like, optional
        Where relative image names are looked up first (default: the working directory,
        then the particles file's directory).
    path_style : PathStyle or str
        How ``particles.star`` names the new and the original images: relative to the
        working directory (RELION's way) or to its own folder (docs/conventions.md,
        "Paths"); ``particles.cs`` names its stacks relative to its folder.
    on_start, on_progress : callable, optional
        Called with the number of images to write / written so far.

    Returns
    -------
    SubtractSummary
    """
    mode, scale_mode = MaskMode(mask_mode), ScaleMode(scale)
    if not 0.0 < scale_band <= 1.0:
        raise ParameterError(f"scale band must lie in (0, 1] (fraction of Nyquist), "
                             f"got {scale_band}")
    output_format = OutputFormat(output_format)
    if new_box is not None:
        check_box_size(new_box, "new box")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ParameterError(f"batch size must be a positive integer, got {batch_size}")
    maps = _load_maps(map_path, half_maps)
    mask_volume, mask_report = _load_mask(mask, maps.box_px)
    point = _recenter_point(recenter_on_mask, recenter_xyz, mask_volume, maps.box_px)
    out_box = maps.box_px if new_box is None else int(new_box)
    if out_box > maps.box_px:
        raise ParameterError(f"new box {out_box} px is larger than the particles' {maps.box_px}")
    job = _prepare(particles, maps, base_dir)
    summary = SubtractSummary(
        command="subtract", out_dir=str(out_dir), particles_star="", maps=maps.paths,
        half_maps=half_maps is not None, mask=None if mask is None else str(mask),
        mask_mode=mode.value, scale_mode=scale_mode.value, box_px=[maps.box_px, out_box],
        padding_factor=padding_factor, scale_band=scale_band, float16=bool(float16),
        particles_in=len(job.particles),
    )
    apix = job.pixel_size_angstrom
    summary.pixel_size_angstrom = apix
    summary.aberrations = {f"optics group {g}": describe_aberrations(a)
                           for g, a in sorted(job.optics.aberrations.items())}
    for group in sorted(job.optics.mtf_ratios):
        summary.aberrations.setdefault(f"optics group {group}", []).append(
            "detector MTF relative to the average of the optics groups'")
    _mask_warnings(summary, job, mask_report, mode, apix, map_resolution_angstrom,
                   recenter_on_mask)
    if not maps.pixel_size_angstrom > 0:
        job.warnings.append(f"the map header has no pixel size; assumed the particles' "
                            f"{apix:g} A")
    if half_maps is None:
        job.warnings.append("single map: every particle is subtracted with the same map, so "
                            "the half-sets are no longer independent (give --half-maps)")
    good = np.flatnonzero(job.good)
    if not len(good):
        raise InputError(_nothing_readable(job), job.table.source)
    shifts, table = _recentered_table(job, point, summary)
    paths = JobPaths(Path(out_dir))
    workers = max(1, int(workers or os.cpu_count() or 1))
    fit_radius = None if scale_mode is ScaleMode.NONE else scale_band * maps.box_px / 2
    try:
        _prepare_out_dir(paths, overwrite, job.locations)
        if on_start is not None:
            on_start(len(good))
        names, scales = _run_passes(
            job, good, paths, summary, mask_volume, mode, scale_mode, shifts,
            _Output(out_box, bool(float16), batch_size, fit_radius), padding_factor, workers,
            on_progress)
        _write_outputs(job, table, good, names, scales, paths, summary, scale_mode,
                       out_box, output_format is OutputFormat.CS or (
                           output_format is OutputFormat.AUTO
                           and str(particles).lower().endswith(".cs")),
                       PathStyle(path_style))
    except OSError as exc:  # writing the outputs (in a worker or here): e.g. a full disk
        raise CryoExtractError(os_error_message(exc)) from exc
    return summary


@dataclass(frozen=True)
class _Output:
    """How subtracted images are written: box, mode, stack size, scale-fit radius."""

    box_px: int
    float16: bool
    batch_size: int
    fit_radius: float | None


def _run_passes(
    job: _Job, good: np.ndarray, paths: JobPaths, summary: SubtractSummary,
    mask: np.ndarray | None, mode: MaskMode, scale_mode: ScaleMode, shifts: np.ndarray,
    output: _Output, padding_factor: float, workers: int,
    on_progress: ProgressCallback | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass per half-set (its own Fourier volumes, workers and stacks); names and
    scales per row."""
    names = np.empty(len(job.particles), dtype=object)
    scales = np.full(len(job.particles), np.nan)
    progress = _Progress(on_progress)
    for half, stacks in _plan_stacks(job, good, output.batch_size):
        with kernel_loading_meanwhile(workers):
            region, whole = _half_volumes(job.maps.volumes[half], mask, mode, scale_mode,
                                          padding_factor, workers)
        summary.fourier_volume_bytes = max(summary.fourier_volume_bytes, region.nbytes + (
            0 if whole is None else whole.nbytes))
        context = TaskContext(
            particles=job.particles, locations=job.locations, rotations_deg=job.rotations,
            origins_angstrom=job.origins_angstrom, integer_shifts_xy=shifts, ctf=job.ctf,
            ctf_power=job.ctf_power, phase_flipped=job.phase_flipped,
            optics_group=job.optics_group, optics=job.optics,
            pixel_size_angstrom=job.pixel_size_angstrom, region=region, whole=whole,
            out_box_px=output.box_px, float16=output.float16,
            fit_radius_px=output.fit_radius,
        )
        targets = []
        for rows in stacks:
            relative = f"{paths.particles_dir.name}/subtracted_{len(summary.stacks):06d}.mrcs"
            names[rows] = [format_image_name(i, relative) for i in range(len(rows))]
            summary.stacks.append(str(paths.out_dir / relative))
            targets.append((paths.out_dir / relative, rows))
        _write_stacks(context, targets, workers, scales, progress)
        del context, region, whole
    return names, scales


@dataclass
class _Progress:
    """Images written so far, reported to the caller's callback."""

    callback: ProgressCallback | None
    done: int = 0

    def add(self, count: int) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(self.done)


def _write_stacks(
    context: TaskContext, targets: list[tuple[Path, np.ndarray]], workers: int,
    scales: np.ndarray, progress: _Progress,
) -> None:
    """Write the stacks ``(path, rows)`` of one half-set; fills ``scales[rows]``.

    The tasks are submitted in stack order, at most two per worker at a time; a stack is
    opened with its first task and published (renamed into place) when its last one is
    done. On any error every unpublished stack is removed.
    """
    writers: dict[str, StackWriter] = {}
    box, out_box, apix = context.region.box_px, context.out_box_px, context.pixel_size_angstrom

    def tasks() -> Iterator[StackTask]:
        for path, rows in targets:
            writer = StackWriter(path, len(rows), (out_box, out_box), apix,
                                 float16=context.float16)
            writers[str(writer.part_path)] = writer
            yield from split_stack(str(writer.part_path), rows, context.rotations_deg, box)

    def finish(result: TaskResult) -> None:
        task = result.task
        scales[task.rows] = result.scales
        writer = writers[task.part_path]
        writer.record(len(task.rows), result.stats)
        if writer.written == writer.count:
            writer.close()
            del writers[task.part_path]
        progress.add(len(task.rows))

    try:
        with task_pool(context, workers) as submit:
            pending: set[Future[TaskResult]] = set()
            for task in tasks():
                pending.add(submit(task))
                while len(pending) >= 2 * workers:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        finish(_result(future))
            for future in as_completed(pending):
                finish(_result(future))
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise


def _result(future: Future[TaskResult]) -> TaskResult:
    try:
        return future.result()
    except BrokenExecutor:
        raise CryoExtractError("a subtraction worker process died (out of memory? try fewer "
                               "--workers)") from None


def _write_outputs(
    job: _Job, table: pd.DataFrame, good: np.ndarray, names: np.ndarray, scales: np.ndarray,
    paths: JobPaths, summary: SubtractSummary, scale_mode: ScaleMode, out_box: int,
    write_cs_file: bool, path_style: PathStyle = PathStyle.CWD,
) -> None:
    """particles.star (+ .cs), rejected_particles.tsv and summary.json."""
    fitted = scale_mode is ScaleMode.PER_PARTICLE
    out_table = _output_table(table, job, good, names, scales, fitted)
    optics = _output_optics(job, good, out_box)
    namer = PathNamer.for_star(paths.particles_star, path_style)
    named = out_table.copy()
    named["rlnImageName"] = rebase_image_names(out_table["rlnImageName"], paths.out_dir, namer)
    named["rlnImageOriginalName"] = located_names(job.locations, good, namer)
    write_star(paths.particles_star, {"optics": optics, "particles": named})
    summary.particles_star = str(paths.particles_star)
    if write_cs_file:
        summary.particles_cs = str(_write_cs(paths.out_dir / "particles.cs", optics, out_table))
    summary.particles_written = len(good)
    summary.particles_skipped = dict(sorted(Counter(p for p in job.problem if p).items()))
    if fitted:
        summary.scale = _scale_statistics(scales, _reported_half_sets(job))
    summary.warnings = list(job.warnings)
    _write_rejected(paths.rejected_tsv, job)
    paths.summary_json.write_text(summary.to_json())


def _mask_warnings(
    summary: SubtractSummary, job: _Job, report: MaskReport | None, mode: MaskMode,
    apix: float, resolution: float | None, recenter_on_mask: bool,
) -> None:
    if report is None:
        job.warnings.append("no mask: the whole map is subtracted")
        return
    summary.mask_edge_width_px = round(report.edge_width_px, 3)
    if resolution is not None:
        summary.mask_suggested_edge_px = round(suggested_edge_px(resolution, apix), 3)
    wanted = summary.mask_suggested_edge_px
    if report.hard or (wanted is not None and report.edge_width_px < wanted):
        advice = (f"at least {wanted:.1f} px (5 x {resolution:g} A / {apix:g} A)" if wanted
                  else "5 x resolution / pixel size voxels (give --map-resolution to check)")
        job.warnings.append(
            f"the mask has a hard edge (soft edge about {report.edge_width_px:.1f} px): "
            f"subtraction leaves artefacts at it; use a soft edge of {advice}")
    if recenter_on_mask and mode is MaskMode.SUBTRACT:
        job.warnings.append("--recenter-on-mask with --mask-mode subtract centres the images "
                            "on the region removed; use --recenter-xyz to centre elsewhere")


def _nothing_readable(job: _Job) -> str:
    if not len(job.particles):
        return "no particles in the input"
    first = next(i for i, p in enumerate(job.problem) if p is not None)
    return (f"none of the {len(job.particles)} particles can be used; first: "
            f"{job.locations.names[first]}: {job.problem[first]} ({job.detail[first]})")


def _recentered_table(
    job: _Job, point: np.ndarray | None, summary: SubtractSummary
) -> tuple[np.ndarray, pd.DataFrame]:
    """Per-row integer content shifts and the particles table with new origins/coordinates."""
    table = job.particles.copy()
    shifts = np.zeros((len(table), 2), dtype=np.int64)
    if point is None:
        return shifts, table
    summary.recenter_xyz_px = [round(float(v), 4) for v in point]
    centre = point - job.maps.box_px // 2
    apix = job.pixel_size_angstrom
    moves = recentre(job.origins_angstrom / apix, job.rotations, centre)
    shifts = moves.shifts_px
    table["rlnOriginXAngst"] = moves.residual_px[:, 0] * apix
    table["rlnOriginYAngst"] = moves.residual_px[:, 1] * apix
    table = table.drop(columns=[c for c in PRIOR_COLUMNS if c in table.columns])
    if {"rlnCoordinateX", "rlnCoordinateY"} <= set(table.columns):
        mic_apix = _micrograph_pixel_sizes(job.table, table)
        if mic_apix is None:
            job.warnings.append("recentring: no micrograph pixel size in the optics table, "
                                "rlnCoordinateX/Y not moved")
        else:
            for axis, column in enumerate(("rlnCoordinateX", "rlnCoordinateY")):
                table[column] = (table[column].to_numpy(dtype=float)
                                 - shifts[:, axis] * apix / mic_apix)
    summary.recentered = int(np.count_nonzero(np.any(shifts != 0, axis=1) & job.good))
    return shifts, table


def _plan_stacks(
    job: _Job, good: np.ndarray, batch_size: int
) -> list[tuple[int, list[np.ndarray]]]:
    """Per half-set (in order 0 or 1, 2), its good rows in table order cut into stacks."""
    plan = []
    for half in sorted(job.maps.volumes):
        rows = good[job.subset[good] == half]
        if len(rows):
            plan.append((half, [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]))
    return plan


def _half_volumes(
    volume: np.ndarray, mask: np.ndarray | None, mode: MaskMode, scale_mode: ScaleMode,
    padding_factor: float, workers: int,
) -> tuple[FourierVolume, FourierVolume | None]:
    """Fourier volumes of the region to remove and, to fit the scale, of the whole map
    (None when the region is the whole map or with ``--scale none``)."""
    region = region_volume(volume, mask, mode)
    region_fv = fourier_volume(region, padding_factor=padding_factor, workers=workers)
    if scale_mode is ScaleMode.NONE or region is volume:
        return region_fv, None
    return region_fv, fourier_volume(volume, padding_factor=padding_factor, workers=workers)


# --------------------------------------------------------------------------- outputs
def _prepare_out_dir(paths: JobPaths, overwrite: bool, locations: ImageLocations) -> None:
    out = paths.out_dir
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ParameterError(f"output directory {out} exists and is not empty; use --overwrite")
        target = paths.particles_dir.resolve()
        for stack in locations.stacks:
            if Path(stack).resolve().is_relative_to(target):
                raise ParameterError(f"input stack {stack} lies in {paths.particles_dir}, which "
                                     "--overwrite would replace; choose another output directory")
        shutil.rmtree(paths.particles_dir, ignore_errors=True)
        for stale in (paths.particles_star, paths.summary_json, paths.rejected_tsv,
                      out / "particles.cs"):
            stale.unlink(missing_ok=True)
    paths.particles_dir.mkdir(parents=True, exist_ok=True)


def _output_table(
    table: pd.DataFrame, job: _Job, good: np.ndarray, names: np.ndarray, scales: np.ndarray,
    fitted: bool,
) -> pd.DataFrame:
    """Good rows in input order: new names, original names/origins/coordinates, scales."""
    out = table.iloc[good].reset_index(drop=True)
    original = job.particles.iloc[good].reset_index(drop=True)
    out["rlnImageOriginalName"] = original["rlnImageName"].astype(str).to_numpy()
    out["rlnImageName"] = list(names[good])
    for column, keep in ORIGINAL_COLUMNS.items():
        if column in original.columns:
            out[keep] = original[column].to_numpy(dtype=float)
        elif column.startswith("rlnOrigin"):
            out[keep] = 0.0
    if fitted:
        out[SCALE_COLUMN] = scales[good]
    return out


def _output_optics(job: _Job, good: np.ndarray, out_box: int) -> pd.DataFrame:
    used = set(job.particles["rlnOpticsGroup"].iloc[good].astype(int))
    optics = job.table.optics
    optics = optics[optics["rlnOpticsGroup"].astype(int).isin(used)].reset_index(drop=True).copy()
    optics["rlnImageSize"] = out_box
    if "rlnImageDimensionality" not in optics.columns:
        optics["rlnImageDimensionality"] = 2
    return optics


def _write_cs(path: Path, optics: pd.DataFrame, particles: pd.DataFrame) -> Path:
    write_cs(path, optics, particles)
    return path


def _reported_half_sets(job: _Job) -> np.ndarray:
    """Half-set per row for the summary: ``rlnRandomSubset`` even with a single map."""
    if "rlnRandomSubset" not in job.particles.columns:
        return job.subset
    values = pd.to_numeric(job.particles["rlnRandomSubset"], errors="coerce")
    return values.fillna(0).to_numpy(dtype=np.int64)


def _scale_statistics(scales: np.ndarray, subset: np.ndarray) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    groups = {"all": np.isfinite(scales)}
    for half in (1, 2):
        chosen = np.isfinite(scales) & (subset == half)
        if chosen.any():
            groups[f"half{half}"] = chosen
    for name, chosen in groups.items():
        values = scales[chosen]
        if not len(values):
            continue
        p05, median, p95 = np.percentile(values, [5, 50, 95])
        stats[name] = {
            "count": len(values), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "p05": float(p05), "median": float(median),
            "p95": float(p95), "max": float(values.max()),
        }
    return stats


def _write_rejected(path: Path, job: _Job) -> None:
    bad = [i for i, p in enumerate(job.problem) if p is not None]
    pd.DataFrame({
        "row": np.array(bad, dtype=np.int64),
        "rlnImageName": [job.locations.names[i] for i in bad],
        "reason": [job.problem[i] for i in bad],
        "detail": [job.detail[i] for i in bad],
    }).to_csv(path, sep="\t", index=False)


# --------------------------------------------------------------------------- revert
def revert_subtraction(
    star: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    base_dir: str | os.PathLike[str] | None = None,
    path_style: PathStyle | str = PathStyle.CWD,
) -> RevertSummary:
    """Give the original particles of a subtraction back, with their origins.

    ``rlnImageName`` and ``rlnImageOriginalName`` are swapped (as
    ``relion_particle_subtract --revert``), and unlike RELION (relion#690) the origins and
    coordinates the particles had before recentring are restored from the
    ``cryoextractOriginal*`` columns; ``rlnImageSize`` becomes the original images' size
    (relion#531). Every other column (e.g. classes, poses refined since) is kept.

    Parameters
    ----------
    star : path-like
        A particles STAR written by :func:`subtract_particles` (possibly selected or
        refined since: RELION 3.1 keeps the extra columns).
    out_dir : path-like
        Gets ``particles.star``.
    overwrite : bool
        Replace an existing ``OUT/particles.star``.
    base_dir : path-like, optional
        Where relative original image names are looked up (default: the working
        directory, then the STAR's directory), to read their size.
    path_style : PathStyle or str
        How the new STAR names both images (docs/conventions.md, "Paths"); a name whose
        stack is not found is kept as written.

    Returns
    -------
    RevertSummary
    """
    path = Path(star)
    tables = read_star(path)
    particles = find_block(tables, path, ("rlnImageName",), preferred=("particles",)).copy()
    if "rlnImageOriginalName" not in particles.columns:
        raise InputError("no rlnImageOriginalName column: not a subtracted particles STAR", path)
    optics = tables.get("optics")
    out = Path(out_dir)
    target = out / "particles.star"
    if target.exists() and not overwrite:
        raise ParameterError(f"{target} exists; use --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    summary = RevertSummary(particles_star=str(target), particles=len(particles))
    dirs = base_dirs(path, base_dir)
    namer = PathNamer.for_star(target, PathStyle(path_style))
    current = rebase_found_names(particles["rlnImageName"].astype(str), dirs, namer)
    particles["rlnImageName"] = rebase_found_names(
        particles["rlnImageOriginalName"].astype(str), dirs, namer)
    particles["rlnImageOriginalName"] = current
    for column, keep in ORIGINAL_COLUMNS.items():
        if keep in particles.columns:
            values = pd.to_numeric(particles[keep], errors="coerce")
            if column.startswith("rlnOrigin"):
                summary.origins_restored = int(values.notna().sum())
            else:
                summary.coordinates_restored = int(values.notna().sum())
            particles[column] = values.where(values.notna(), particles.get(column))
    if not summary.origins_restored:
        summary.warnings.append("no cryoextractOriginalOrigin* columns: origins kept as they "
                                "are (they fit the originals only if there was no recentring)")
    particles = particles.drop(columns=[c for c in (*ORIGINAL_COLUMNS.values(), SCALE_COLUMN)
                                        if c in particles.columns])
    blocks = {"particles": particles}
    if optics is not None and optics is not particles:
        blocks = {"optics": _reverted_optics(optics, particles, target, base_dir, summary),
                  **blocks}
    write_star(target, blocks)
    return summary


def _reverted_optics(
    optics: pd.DataFrame, particles: pd.DataFrame, star: Path,
    base_dir: str | os.PathLike[str] | None, summary: RevertSummary,
) -> pd.DataFrame:
    """Optics with ``rlnImageSize`` of each group's first readable original image
    (names as ``star``, the STAR being written, gives them)."""
    dirs = base_dirs(star, base_dir)
    locations = locate_images(particles["rlnImageName"].astype(str), dirs)
    summary.originals_missing = int((~locations.ok).sum())
    if summary.originals_missing:
        summary.warnings.append(f"{summary.originals_missing} original images not found "
                                f"(first: {locations.detail[int(np.argmin(locations.ok))]})")
    optics = optics.copy()
    groups = (particles["rlnOpticsGroup"].astype(int).to_numpy()
              if "rlnOpticsGroup" in particles.columns else np.ones(len(particles), int))
    for index, group in enumerate(optics["rlnOpticsGroup"].astype(int)):
        rows = np.flatnonzero((groups == group) & locations.ok)
        name = str(optics["rlnOpticsGroupName"].iloc[index]) if (
            "rlnOpticsGroupName" in optics.columns) else f"opticsGroup{group}"
        if not len(rows):
            summary.warnings.append(f"optics group {name}: size of the originals unknown, "
                                    "rlnImageSize kept")
            continue
        size = locations.shape_of(int(rows[0]))[1]
        optics.loc[optics.index[index], "rlnImageSize"] = size
        summary.image_size_px[name] = int(size)
    return optics
