"""Turn inputs (micrographs, picks, parameters) into independent per-micrograph tasks."""

from __future__ import annotations

import dataclasses
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
from cryoextract.io.names import unique_components
from cryoextract.io.star_text import value_problem
from cryoextract.pipeline.extraction.params import ExtractParams, resolve_output_box
from cryoextract.pipeline.extraction.task import MicrographTask
from cryoextract.pipeline.frame import JobPaths


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
    """Tasks to run, micrographs skipped before running (name -> reason), warnings, and
    the parameters every task carries (the output box of ``--pixel-size-out`` resolved)."""

    tasks: list[MicrographTask]
    params: ExtractParams
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def plan_tasks(
    micrographs: MicrographSet, picks: PickSource, params: ExtractParams, paths: JobPaths
) -> Plan:
    """One task per micrograph with its picks located; missing picks are skipped.

    A micrograph is identified by its resolved path: listed again under another name
    (``./a.mrc``, ``a//a.mrc``, a link), it is extracted once, under its first name; the
    others are reported as skipped and in :attr:`Plan.warnings`. Stack names come from
    :func:`unique_stack_names`.

    Raises
    ------
    InputError
        A micrograph name that no STAR file can hold (it goes to ``rlnMicrographName``).
    ParameterError
        An output folder that no STAR file can hold (it goes to ``rlnImageName``).
    """
    table = micrographs.micrographs
    names = [str(n) for n in table["rlnMicrographName"]]
    _check_names(names, micrographs.source)
    problem = value_problem(str(paths.out_dir))
    if problem is not None:  # it goes into every rlnImageName
        raise ParameterError(f"output folder {str(paths.out_dir)!r} {problem}")
    first_of = _first_listing([str(p) for p in table["path"]])
    plan = Plan(tasks=[], params=params)
    plan.warnings += _duplicate_warnings(names, first_of)
    kept = [i for i, first in enumerate(first_of) if first == i]
    stack_names = dict(zip(kept, unique_stack_names([names[i] for i in kept]), strict=True))
    pixel_sizes = _pixel_sizes(micrographs)
    by_micrograph = _picks_by_micrograph(picks, names, params, plan.warnings)
    carried = [c for c in PARTICLE_CARRIED_COLUMNS if c in table.columns]
    optics_by_group = {
        int(row["rlnOpticsGroup"]): {k: v for k, v in row.items() if k in OPTICS_COLUMNS}
        for _, row in micrographs.optics.iterrows()
    }
    # whole columns, not table.iloc per micrograph: a row Series costs tens of µs
    carried_values = {c: table[c].to_numpy() for c in carried}
    groups = (table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in table.columns
              else np.ones(len(table), dtype=int))
    listings: dict[int, list[int]] = {}
    for index, first in enumerate(first_of):
        listings.setdefault(first, []).append(index)
    for index, path in enumerate(table["path"]):
        name = names[index]
        if first_of[index] != index:
            first = names[first_of[index]]
            plan.skipped.setdefault(name, f"the same file as {first}, extracted once as that")
            continue
        metadata = {c: values[index] for c, values in carried_values.items()}
        task_picks, coords_path = None, None
        if by_micrograph is not None:
            task_picks = _merged_picks([by_micrograph.get(names[i]) for i in listings[index]])
        else:
            assert picks.coords_dir is not None and picks.coords_suffix is not None
            found = _coordinate_files(picks, [names[i] for i in listings[index]])
            if not found:
                candidates = coordinate_file_candidates(name, picks.coords_dir,
                                                        picks.coords_suffix)
                plan.skipped[name] = f"no coordinate file (looked for {candidates[0]})"
                continue
            if len(found) > 1:
                plan.warnings.append(
                    f"micrograph {name} is listed under several names with their own "
                    f"coordinate files; only {found[0]} was used (not "
                    f"{', '.join(str(f) for f in found[1:])})")
            coords_path = os.path.abspath(found[0])
        relative = f"Particles/{stack_names[index]}.mrcs"
        plan.tasks.append(MicrographTask(
            index=index, micrograph_name=name, micrograph_path=os.path.abspath(path),
            pixel_size_angstrom=pixel_sizes[index],
            out_dir=str(paths.out_dir), stack_name=relative, params=params,
            picks=task_picks, coords_path=coords_path, coords_format=picks.coords_format,
            metadata=metadata,
            optics=optics_by_group.get(int(groups[index]), {}),
        ))
    return plan


def _check_names(names: list[str], source: str) -> None:
    """Refuse, before anything is written, a micrograph name no STAR file can hold."""
    for row, name in enumerate(names, start=1):
        problem = value_problem(name)
        if problem is not None:
            raise InputError(f"micrograph {row}: rlnMicrographName {name!r} {problem}",
                             source)


def _first_listing(paths: list[str]) -> list[int]:
    """For each micrograph, the index of the first one with the same resolved path."""
    first: dict[str, int] = {}
    return [first.setdefault(os.path.realpath(path), index)
            for index, path in enumerate(paths)]


def _duplicate_warnings(names: list[str], first_of: list[int]) -> list[str]:
    """One warning per micrograph listed more than once (under other names)."""
    again: dict[int, list[str]] = {}
    for index, first in enumerate(first_of):
        if first != index:
            again.setdefault(first, []).append(names[index])
    return [f"micrograph {names[first]} is listed again as {', '.join(others)}: the same "
            "file, extracted once" for first, others in again.items()]


def _merged_picks(tables: list[pd.DataFrame | None]) -> pd.DataFrame:
    """The picks of every listing of one micrograph (each distinct table once)."""
    distinct: dict[int, pd.DataFrame] = {}
    for table in tables:
        if table is not None:
            distinct.setdefault(id(table), table)
    if not distinct:
        return pd.DataFrame({"rlnCoordinateX": [], "rlnCoordinateY": []})
    if len(distinct) == 1:
        return next(iter(distinct.values()))
    return pd.concat(distinct.values(), ignore_index=True)


def _coordinate_files(picks: PickSource, names: list[str]) -> list[Path]:
    """The coordinate file of each listing of one micrograph, distinct files once."""
    assert picks.coords_dir is not None and picks.coords_suffix is not None
    found: dict[str, Path] = {}
    for name in names:
        candidates = coordinate_file_candidates(name, picks.coords_dir, picks.coords_suffix)
        # a directory where the file should be is named (the task refuses it), not missed
        path = next((c for c in candidates if c.is_file()), None) or next(
            (c for c in candidates if c.exists()), None)
        if path is not None:
            found.setdefault(os.path.realpath(path), path)
    return list(found.values())


def resolve_output_size(micrographs: MicrographSet, params: ExtractParams) -> ExtractParams:
    """``params`` with the output box of ``--pixel-size-out`` worked out, once per optics
    group, from the micrograph pixel size of the groups the list uses.

    A job writes one box (as RELION), so groups whose pixel sizes ask for different
    boxes are refused: a ParameterError naming the groups, before anything is written.
    Each group's exact output pixel size (``pixel size * box / output box``) is the one
    the job reports and writes to its optics table.
    """
    wanted = params.pixel_size_out_angstrom
    if wanted is None:
        return params
    optics = micrographs.optics.set_index("rlnOpticsGroup")
    used = pd.unique(micrographs.micrographs["rlnOpticsGroup"])
    boxes = {}
    for group in used:
        apix = float(optics.loc[group, "rlnMicrographPixelSize"])
        out = resolve_output_box(params.box_px, pixel_size_out_angstrom=wanted,
                                 pixel_size_angstrom=apix)
        boxes[group] = (apix, params.box_px if out is None else out)
    if not boxes:  # no micrograph listed: nothing will be extracted
        return params
    if len({box for _, box in boxes.values()}) > 1:
        groups = ", ".join(
            f"{optics.loc[g].get('rlnOpticsGroupName', g)} {apix:g} A -> {box} px"
            for g, (apix, box) in boxes.items())
        raise ParameterError(
            f"--pixel-size-out {wanted:g} A asks for a different box in each optics group "
            f"({groups}) of {micrographs.source}, and a job writes one box: extract the "
            f"groups apart or give --bin-to")
    box = next(iter(boxes.values()))[1]
    return dataclasses.replace(params, pixel_size_out_angstrom=None,
                               out_box_px=None if box == params.box_px else box)


def _pixel_sizes(micrographs: MicrographSet) -> list[float]:
    optics = micrographs.optics.set_index("rlnOpticsGroup")["rlnMicrographPixelSize"]
    return [float(optics[g]) for g in micrographs.micrographs["rlnOpticsGroup"]]


def _picks_by_micrograph(picks: PickSource, names: list[str], params: ExtractParams,
                         warnings: list[str]) -> dict[str, pd.DataFrame] | None:
    """Picks from one file, keyed by micrograph name; ``None`` for per-micrograph files.

    Symmetry expansion and sub-particles (``params.subparticles``) happen here, once on
    the whole table (:mod:`cryoextract.pipeline.extraction.subparticles`).
    """
    if picks.coords_file is None:
        if params.subparticles is not None:
            raise ParameterError("symmetry expansion and sub-particles need --coords with "
                                 "one refined particles STAR")
        return None
    table = read_picks(picks.coords_file, picks.coords_format)
    if params.subparticles is not None:
        from cryoextract.pipeline.extraction.subparticles import expand_subparticles

        expansion = expand_subparticles(table, params.subparticles, str(picks.coords_file))
        table = expansion.picks
        warnings += expansion.warnings
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
    """Stack names (no extension, no folder) per micrograph, unique in ``Particles/``.

    The micrograph's file name without extension, made safe
    (:func:`cryoextract.io.names.safe_component`); names that clash (also in letter
    case) get ``_`` and a hash of the micrograph name as listed, the same on every run
    (:func:`cryoextract.io.names.unique_components`).
    """
    stems = [PurePosixPath(n.replace("\\", "/")).stem for n in micrograph_names]
    return unique_components(stems, micrograph_names)
