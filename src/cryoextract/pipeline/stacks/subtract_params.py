"""What a subtraction computes and writes, as one record validated when it is made
(as :class:`~cryoextract.pipeline.extraction.params.ExtractParams` for extraction), and where it
reads from and how it runs, as two more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cryoextract.errors import ParameterError
from cryoextract.io.paths import PathStyle
from cryoextract.ops.boxsize import check_box_size
from cryoextract.ops.projection import DEFAULT_PADDING_FACTOR
from cryoextract.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SCALE_BAND,
    MaskMode,
    OutputFormat,
    ScaleMode,
)
from cryoextract.pipeline.stacks.common import check_batch_size, resolved_workers

__all__ = ["SubtractInputs", "SubtractParams", "SubtractRun"]


@dataclass(frozen=True)
class SubtractParams:
    """What is removed and what is written (see
    :func:`~cryoextract.pipeline.stacks.subtract.subtract_particles` for each field).

    Raises
    ------
    ParameterError
        A value that can never work (checked before anything is read or written).
    """

    mask_mode: MaskMode = MaskMode.SUBTRACT
    scale: ScaleMode = ScaleMode.PER_PARTICLE
    recenter_on_mask: bool = False
    recenter_xyz: Sequence[float] | None = None
    new_box: int | None = None
    float16: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    padding_factor: float = DEFAULT_PADDING_FACTOR
    scale_band: float = DEFAULT_SCALE_BAND
    map_resolution_angstrom: float | None = None
    output_format: OutputFormat = OutputFormat.AUTO

    def __post_init__(self) -> None:
        for name, kind in (("mask_mode", MaskMode), ("scale", ScaleMode),
                           ("output_format", OutputFormat)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if not 0.0 < self.scale_band <= 1.0:
            raise ParameterError(f"scale band must lie in (0, 1] (fraction of Nyquist), "
                                 f"got {self.scale_band}")
        if self.new_box is not None:
            check_box_size(self.new_box, "new box")
        check_batch_size(self.batch_size)
        resolution = self.map_resolution_angstrom
        if resolution is not None and not 0 < resolution < np.inf:
            raise ParameterError(f"map resolution must be > 0 and finite, got {resolution}")
        if not 1.0 <= self.padding_factor < np.inf:
            raise ParameterError(f"padding factor must be >= 1 and finite, got "
                                 f"{self.padding_factor}")
        if self.recenter_on_mask and self.recenter_xyz is not None:
            raise ParameterError("give at most one of --recenter-on-mask and --recenter-xyz")
        if self.recenter_xyz is not None:
            point = np.asarray(self.recenter_xyz, dtype=np.float64)
            if point.shape != (3,) or not np.all(np.isfinite(point)):
                raise ParameterError(f"--recenter-xyz needs three numbers, got "
                                     f"{self.recenter_xyz!r}")
            object.__setattr__(self, "recenter_xyz", tuple(float(v) for v in point))

    def fit_radius_px(self, box_px: int) -> float | None:
        """Where the scale is fitted up to (cycles per box); None for scale 1."""
        return None if self.scale is ScaleMode.NONE else self.scale_band * box_px / 2


@dataclass(frozen=True)
class SubtractInputs:
    """The particles and the maps."""

    particles: str
    map_path: str | None = None
    half_maps: tuple[str, ...] | None = None
    mask: str | None = None
    base_dir: str | None = None

    @classmethod
    def of(cls, particles: str | os.PathLike[str], *,
           map_path: str | os.PathLike[str] | None = None,
           half_maps: Sequence[str | os.PathLike[str]] | None = None,
           mask: str | os.PathLike[str] | None = None,
           base_dir: str | os.PathLike[str] | None = None) -> SubtractInputs:
        def text(value: str | os.PathLike[str] | None) -> str | None:
            return None if value is None else str(value)
        return cls(str(particles), text(map_path),
                   None if half_maps is None else tuple(str(p) for p in half_maps),
                   text(mask), text(base_dir))

    @property
    def maps(self) -> list[str]:
        """Every map and the mask (inputs the job must never replace)."""
        return [p for p in (self.map_path, *(self.half_maps or ()), self.mask)
                if p is not None]


@dataclass(frozen=True)
class SubtractRun:
    """How a subtraction runs; none of these change what it computes."""

    workers: int | None = None
    overwrite: bool = False
    path_style: PathStyle = PathStyle.CWD

    def __post_init__(self) -> None:
        self.worker_count()  # checked now, before anything is read
        object.__setattr__(self, "path_style", PathStyle(self.path_style))

    def worker_count(self) -> int:
        """Worker processes: all cores for None."""
        return resolved_workers(self.workers)
