"""The maps of a subtraction: the map or half-maps, the mask, the region whose
projection is removed and the point to re-centre on (docs/conventions.md, "Particle
subtraction"). Read strictly through :func:`cryoextract.io.mrc.read_volume`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.mrc import read_volume
from cryoextract.ops.subtract import MaskReport, centre_of_mass_xyz, inspect_mask
from cryoextract.options import MaskMode

#: relative difference of map and particle pixel sizes beyond which the job refuses
PIXEL_SIZE_TOLERANCE = 0.005


@dataclass(frozen=True)
class Maps:
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


def load_maps(
    map_path: str | os.PathLike[str] | None,
    half_maps: Sequence[str | os.PathLike[str]] | None,
) -> Maps:
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
    if len(sizes) == 2 and sizes[0] > 0 and sizes[1] > 0 and not close_sizes(sizes[0], sizes[1]):
        raise InputError(f"half-maps differ in pixel size: {sizes[0]:g} and {sizes[1]:g} A",
                         paths[1])
    keys = [0] if map_path is not None else [1, 2]
    volumes = {k: v for k, (v, _) in zip(keys, loaded, strict=True)}
    return Maps(volumes, [str(p) for p in paths], int(loaded[0][0].shape[0]), sizes[0])


def close_sizes(a: float, b: float) -> bool:
    return abs(a - b) <= PIXEL_SIZE_TOLERANCE * max(abs(a), abs(b))


def load_mask(
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


def recenter_point(recenter_on_mask: bool, recenter_xyz: Sequence[float] | None,
                   mask: np.ndarray | None) -> np.ndarray | None:
    """The 3D point to centre, as 0-based voxel indices ``(x, y, z)``; None for no
    recentring (the options are checked by :class:`.subtract_params.SubtractParams`)."""
    if recenter_on_mask:
        if mask is None:
            raise ParameterError("--recenter-on-mask needs --mask")
        return centre_of_mass_xyz(mask)
    if recenter_xyz is not None:
        return np.asarray(recenter_xyz, dtype=np.float64)
    return None
