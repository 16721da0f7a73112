"""The particles of a subtraction, resolved once before anything is written: poses,
origins, half-sets, CTFs, optics (aberrations, relative MTFs), one pixel size checked
against the map, and which particles cannot be used (docs/conventions.md, "Particle
subtraction").
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoextract.errors import InputError
from cryoextract.io.images import ImageLocations
from cryoextract.io.mtf import read_mtf
from cryoextract.io.particles import ParticleTable, read_particles
from cryoextract.io.paths import locate
from cryoextract.ops.aberrations import OpticalAberrations
from cryoextract.ops.mtf import mtf_image, relative_mtfs
from cryoextract.pipeline.stacks.common import ParticleImages, group_pixel_sizes
from cryoextract.pipeline.stacks.subtract_ctf import BAD_CTF, GroupOptics, star_ctf_records
from cryoextract.pipeline.stacks.subtract_maps import Maps, close_sizes

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


@dataclass
class SubtractJob:
    """Validated inputs: the particles and their images (:class:`ParticleImages`), the
    maps, and per-row arrays."""

    images: ParticleImages
    maps: Maps
    subset: np.ndarray  # (n,) half-set per row (0 with a single map)
    rotations: np.ndarray  # (n, 3) rot, tilt, psi degrees
    origins_angstrom: np.ndarray  # (n, 2) rlnOriginX/YAngst (0 when absent)
    pixel_size_angstrom: float
    ctf: np.ndarray  # (n,) CTF_RECORD: each particle's CTF, typed
    optics_group: np.ndarray  # (n,) int rlnOpticsGroup
    optics: GroupOptics  # aberrations and relative MTFs by optics group

    @property
    def table(self) -> ParticleTable:
        return self.images.table

    @property
    def particles(self) -> pd.DataFrame:
        return self.images.particles

    @property
    def locations(self) -> ImageLocations:
        return self.images.locations

    @property
    def warnings(self) -> list[str]:
        return self.images.warnings

    @property
    def good(self) -> np.ndarray:
        return self.images.good


def prepare_subtraction(
    particles_path: str | os.PathLike[str], maps: Maps,
    base_dir: str | os.PathLike[str] | None,
) -> SubtractJob:
    """Read the particles and check them against the maps."""
    table = read_particles(particles_path, base_dir=base_dir)
    missing = [c for c in POSE_COLUMNS if c not in table.particles.columns]
    if missing:
        raise InputError(f"particles have no 3D poses ({', '.join(missing)} missing)",
                         table.source)
    images = ParticleImages.locate(table)
    particles = images.particles
    apix = _pixel_size(images, maps)
    origins = np.zeros((len(particles), 2), dtype=np.float64)
    for axis, column in enumerate(("rlnOriginXAngst", "rlnOriginYAngst")):
        if column in particles.columns:
            origins[:, axis] = particles[column].to_numpy(dtype=np.float64)
    subset = _half_sets(images, maps)
    _check_sizes(images, maps.box_px)
    optics = GroupOptics(_optics_aberrations(table),
                         _mtf_ratios(table, maps.box_px, apix, images.warnings))
    ctf, bad = star_ctf_records(table, particles, optics)
    for row, detail in bad.items():
        images.reject(row, BAD_CTF, detail)
    return SubtractJob(
        images=images, maps=maps, subset=subset,
        rotations=particles[list(POSE_COLUMNS)].to_numpy(dtype=np.float64),
        origins_angstrom=origins, pixel_size_angstrom=apix, ctf=ctf,
        optics_group=images.groups, optics=optics,
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


def _pixel_size(images: ParticleImages, maps: Maps) -> float:
    """The particles' pixel size (one for all groups), checked against the map's: each
    group's (:func:`group_pixel_sizes`), else the map's."""
    found, _ = group_pixel_sizes(images, sorted(set(images.groups.tolist())))
    sizes = {g: (v if v is not None else maps.pixel_size_angstrom) for g, v in found.items()}
    source = images.table.source
    if not sizes or not all(v > 0 for v in sizes.values()):
        raise InputError("pixel size unknown: not in the STAR, the stacks nor the map", source)
    for group, size in sizes.items():
        if maps.pixel_size_angstrom > 0 and not close_sizes(size, maps.pixel_size_angstrom):
            raise InputError(
                f"map pixel size {maps.pixel_size_angstrom:g} A differs from the particles' "
                f"{size:g} A (optics group {group}); rescale the map to the particles",
                maps.paths[0],
            )
    first = next(iter(sizes.values()))
    if any(not close_sizes(v, first) for v in sizes.values()):
        raise InputError(f"optics groups have different pixel sizes {sorted(set(sizes.values()))}"
                         "; subtract each group with its own map", source)
    return first


def _half_sets(images: ParticleImages, maps: Maps) -> np.ndarray:
    particles = images.particles
    if 0 in maps.volumes:
        return np.zeros(len(particles), dtype=np.int64)
    if "rlnRandomSubset" not in particles.columns:
        raise InputError("half-maps given but the particles have no rlnRandomSubset "
                         "(cryoSPARC: alignments3D/split)", images.table.source)
    subset = pd.to_numeric(particles["rlnRandomSubset"], errors="coerce").to_numpy()
    valid = np.isin(subset, (1, 2))
    for row in np.flatnonzero(~valid):
        images.reject(int(row), NO_HALF_SET, f"rlnRandomSubset = {subset[row]}")
    return np.where(valid, subset, 0).astype(np.int64)


def _check_sizes(images: ParticleImages, box_px: int) -> None:
    """Images must be ``box_px`` squares: a whole group otherwise is an error."""
    wrong: Counter[tuple[int, int]] = Counter()
    for row in range(len(images.problem)):
        shape = images.locations.shape_of(row) if images.problem[row] is None else None
        if shape is not None and shape != (box_px, box_px):
            wrong[shape] += 1
            images.reject(row, WRONG_SIZE, f"{shape[1]}x{shape[0]} px, map {box_px} px")
    if wrong and not images.good.any():
        (h, w), count = wrong.most_common(1)[0]
        raise InputError(f"map box {box_px} px differs from the particle images ({w}x{h} px, "
                         f"{count} particles); use a map of the particles' box",
                         images.table.source)
