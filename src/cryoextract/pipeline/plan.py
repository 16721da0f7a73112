"""Turn inputs (micrographs, picks, parameters) into independent per-micrograph tasks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.coords import (
    FORMATS,
    coordinate_file_candidates,
    read_picks,
    split_by_micrograph,
)
from cryoextract.io.micrographs import OPTICS_COLUMNS, PARTICLE_CARRIED_COLUMNS, MicrographSet
from cryoextract.pipeline.params import ExtractParams, JobPaths
from cryoextract.pipeline.task import MicrographTask


@dataclass(frozen=True)
class PickSource:
    """Where the picks come from: a directory + suffix (RELION) or one file."""

    coords_dir: Path | None = None
    coords_suffix: str | None = None
    coords_file: Path | None = None
    coords_format: str = "auto"

    def __post_init__(self) -> None:
        by_dir = self.coords_dir is not None or self.coords_suffix is not None
        if by_dir == (self.coords_file is not None):
            raise ParameterError("give either --coords-dir with --coords-suffix, or --coords FILE")
        if by_dir and (self.coords_dir is None or not self.coords_suffix):
            raise ParameterError("--coords-dir and --coords-suffix go together")
        if self.coords_format != "auto" and self.coords_format not in FORMATS:
            raise ParameterError(f"unknown --coords-format {self.coords_format!r} "
                                 f"(auto or one of {', '.join(FORMATS)})")
        if self.coords_dir is not None and not self.coords_dir.is_dir():
            raise InputError("coordinate directory not found", self.coords_dir)


@dataclass
class Plan:
    """Tasks to run and micrographs skipped before running (name -> reason)."""

    tasks: list[MicrographTask]
    skipped: dict[str, str] = field(default_factory=dict)


def plan_tasks(
    micrographs: MicrographSet, picks: PickSource, params: ExtractParams, paths: JobPaths
) -> Plan:
    """One task per micrograph with its picks located; missing picks are skipped."""
    table = micrographs.micrographs
    names = [str(n) for n in table["rlnMicrographName"]]
    stack_names = unique_stack_names(names)
    pixel_sizes = _pixel_sizes(micrographs)
    by_micrograph = _picks_by_micrograph(picks, names)
    carried = [c for c in PARTICLE_CARRIED_COLUMNS if c in table.columns]
    optics_by_group = {
        int(row["rlnOpticsGroup"]): {k: v for k, v in row.items() if k in OPTICS_COLUMNS}
        for _, row in micrographs.optics.iterrows()
    }
    plan = Plan(tasks=[])
    # whole columns, not table.iloc per micrograph: a row Series costs tens of µs
    carried_values = {c: table[c].to_numpy() for c in carried}
    groups = (table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in table.columns
              else np.ones(len(table), dtype=int))
    rows = zip(names, table["path"], stack_names, strict=True)
    for index, (name, path, stack_name) in enumerate(rows):
        metadata = {c: values[index] for c, values in carried_values.items()}
        task_picks, coords_path = None, None
        if by_micrograph is not None:
            task_picks = by_micrograph.get(name)
            if task_picks is None:
                task_picks = pd.DataFrame({"rlnCoordinateX": [], "rlnCoordinateY": []})
        else:
            assert picks.coords_dir is not None and picks.coords_suffix is not None
            candidates = coordinate_file_candidates(name, picks.coords_dir, picks.coords_suffix)
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                plan.skipped[name] = f"no coordinate file (looked for {candidates[0]})"
                continue
            coords_path = os.path.abspath(found)
        relative = f"Particles/{stack_name}.mrcs"
        plan.tasks.append(MicrographTask(
            index=index, micrograph_name=name, micrograph_path=os.path.abspath(path),
            pixel_size_angstrom=pixel_sizes[index],
            out_dir=str(paths.out_dir), stack_name=relative, params=params,
            picks=task_picks, coords_path=coords_path, coords_format=picks.coords_format,
            metadata=metadata,
            optics=optics_by_group.get(int(groups[index]), {}),
        ))
    return plan


def _pixel_sizes(micrographs: MicrographSet) -> list[float]:
    optics = micrographs.optics.set_index("rlnOpticsGroup")["rlnMicrographPixelSize"]
    return [float(optics[g]) for g in micrographs.micrographs["rlnOpticsGroup"]]


def _picks_by_micrograph(picks: PickSource, names: list[str]) -> dict[str, pd.DataFrame] | None:
    """Picks from one file, keyed by micrograph name; ``None`` for per-micrograph files."""
    if picks.coords_file is None:
        return None
    table = read_picks(picks.coords_file, picks.coords_format)
    if "rlnMicrographName" not in table.columns:
        if len(names) != 1:
            raise InputError(
                f"picks without rlnMicrographName can only go with one micrograph, "
                f"got {len(names)}", picks.coords_file,
            )
        return {names[0]: table}
    groups = split_by_micrograph(table, picks.coords_file, keep_name=False)
    matched: dict[str, pd.DataFrame] = {}
    by_base = {PurePosixPath(k).name: v for k, v in groups.items()}
    # Topaz and others name micrographs without directory or extension
    by_stem = {PurePosixPath(k).stem: v for k, v in groups.items()}
    for name in names:
        group = groups.get(name)
        if group is None:
            group = by_base.get(PurePosixPath(name).name)
        if group is None:
            group = by_stem.get(PurePosixPath(name).stem)
        if group is not None:
            matched[name] = group
    if groups and not matched:
        raise InputError("no rlnMicrographName matches any micrograph", picks.coords_file)
    return matched


def unique_stack_names(micrograph_names: list[str]) -> list[str]:
    """Stack names (no extension) per micrograph: the stem, or more of the path if stems clash."""
    paths = [PurePosixPath(n.replace("\\", "/")) for n in micrograph_names]
    depth = 1
    while True:
        names = ["/".join([*p.parent.parts[max(0, len(p.parent.parts) - depth + 1):], p.stem])
                 if depth > 1 else p.stem for p in paths]
        if len(set(names)) == len(names) or depth > max((len(p.parts) for p in paths), default=1):
            break
        depth += 1
    if len(set(names)) != len(names):
        names = [f"{name}_{i:06d}" for i, name in enumerate(names, start=1)]
    return [n.lstrip("/") for n in names]
