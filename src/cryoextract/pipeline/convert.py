"""Convert picks between formats, pixel sizes and axis conventions (``cryoextract convert``).

Picks are read with :func:`cryoextract.io.coords.read_picks`, grouped by micrograph,
mapped with :func:`cryoextract.ops.coordinates.transform_picks` (scale, swap, flips) and
written with :func:`cryoextract.io.pickformats.writers.write_picks`. Picks that fall
off their micrograph afterwards earn a warning naming the axis option that would bring
them back (:func:`cryoextract.ops.coordinates.suggest_axis_fix`).

The output is held under the job frame's lock while it is written
(:func:`cryoextract.pipeline.frame.output_lock`): a folder of per-micrograph files by its
own ``OUT/.cryoextract/lock``, a single file ``--out x.star`` by a hidden
``.x.star.lock`` beside it, removed afterwards. The summary goes to ``OUT/summary.json``,
or for a single file to the sidecar ``x.star.summary.json`` (never a bare
``summary.json`` beside it, which could replace an extraction's own).
"""

from __future__ import annotations

import glob
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.coords import guess_format, read_picks, split_by_micrograph
from cryoextract.io.mrc import mrc_shape_yx
from cryoextract.io.names import unique_components
from cryoextract.io.pickformats.box import box_size_of
from cryoextract.io.pickformats.common import MICROGRAPH, X, Y, centres
from cryoextract.io.pickformats.registry import (
    extension_list,
    format_for_extension,
    pick_format,
    writable,
)
from cryoextract.io.pickformats.writers import write_picks
from cryoextract.io.star import star_warnings_into
from cryoextract.ops.coordinates import off_micrograph_warning, transform_picks
from cryoextract.pipeline.frame import (
    check_inputs_outside,
    output_lock,
    summary_path,
    write_summary,
)

if TYPE_CHECKING:
    from cryoextract.pipeline.extraction.params import HelixParams

#: the smallest normal float: a size below it is no size
_TINY = sys.float_info.min
_MRC_EXTENSIONS = (".mrc", ".mrcs", ".st", ".map")
_SIZE_COLUMNS = ("EstWidth", "EstHeight")
_ORIGIN_COLUMNS = ("rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst")
_MAX_LISTED = 5


@dataclass(frozen=True)
class ConvertOptions:
    """What ``cryoextract convert`` does; see :func:`convert_picks`.

    ``to``: the output format, None for the one ``out``'s extension names.
    ``box_px`` and ``micrograph_shape_yx`` are in output micrograph pixels; pixel sizes
    in Å/px. ``scale = coords_pixel_size_angstrom / pixel_size_angstrom``.
    """

    to: str | None
    out: Path
    coords_format: str = "auto"
    box_px: float | None = None
    coords_pixel_size_angstrom: float | None = None
    pixel_size_angstrom: float | None = None
    swap_xy: bool = False
    flip_x: bool = False
    flip_y: bool = False
    micrograph_shape_yx: tuple[int, int] | None = None
    micrographs: str | None = None
    suffix: str | None = None
    overwrite: bool = False
    # helical columns (pipeline/extraction/helical.helical_columns)
    helix: HelixParams | None = None


@dataclass
class ConvertResult:
    """Files written, their format, counts, and warnings for the user (one line each)."""

    files: list[Path] = field(default_factory=list)
    format: str = ""
    n_picks: int = 0
    n_micrographs: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Group:
    """The picks of one micrograph; ``named``: the name came from inside the file."""

    name: str
    picks: pd.DataFrame
    named: bool
    source: Path
    micrograph_path: str | None = None
    pixel_size_angstrom: float | None = None


@dataclass(frozen=True)
class _Micrograph:
    name: str
    path: str
    pixel_size_angstrom: float | None


def convert_picks(inputs: Sequence[str | Path], options: ConvertOptions) -> ConvertResult:
    """Read picks in any format, transform them, write them in ``options.to``.

    Parameters
    ----------
    inputs : sequence of path-like
        Pick files: several per-micrograph files, or files for many micrographs
        (``rlnMicrographName`` / Topaz ``image_name``).
    options : ConvertOptions
        Output format and place, box size, pixel sizes, axis options, micrographs.

    Returns
    -------
    ConvertResult
    """
    options = replace(options, to=output_format(options.to, options.out))
    _check_options(options)
    if not inputs:
        raise ParameterError("no input pick files")
    result = ConvertResult(format=str(options.to))
    groups, input_box = _read_groups([Path(p) for p in inputs], options.coords_format,
                                     options.micrograph_shape_yx)
    micrographs = _micrograph_list(options)
    if micrographs is not None:
        _attach_micrographs(groups, micrographs, result)
    for group in groups:
        _transform(group, options, result)
        if options.helix is not None:
            group.picks = _helical(group, options, result)
    box_px = options.box_px
    if box_px is None and input_box is not None:
        box_px = input_box * _common_scale(groups, options)
    sources = [*inputs, *(m.path for m in micrographs or ())]
    if micrographs is not None and options.micrographs is not None:
        sources.append(options.micrographs)  # the STAR (a glob names no file of its own)
    result.n_picks = sum(len(g.picks) for g in groups)
    result.n_micrographs = len(groups)
    moved_axes = options.swap_xy or options.flip_x or options.flip_y
    if moved_axes and any(c in g.picks.columns for g in groups for c in _ORIGIN_COLUMNS):
        result.warnings.append("origin columns are carried unchanged: the axis options "
                               "move rlnCoordinateX/Y only")
    with star_warnings_into(result.warnings):  # values RELION reads differently
        result.files = _write(groups, options, box_px, sources, result)
    return result


# --------------------------------------------------------------------------- options
def output_format(to: str | None, out: Path) -> str:
    """``to``, or the output format the extension of ``out`` names (``.star``, ``.box``,
    ``.cbox``, ``.txt``: Topaz); ParameterError when it names none."""
    if to is not None:
        return to
    found = format_for_extension(Path(out), writable())
    if found is None:
        raise ParameterError(f"give --to: the extension of {out} names no output format "
                             f"({extension_list(writable())})")
    return found


def _check_options(options: ConvertOptions) -> None:
    if options.to not in writable():
        raise ParameterError(f"--to must be one of {', '.join(writable())}")
    for name, value in (("--box", options.box_px),
                        ("--coords-pixel-size", options.coords_pixel_size_angstrom),
                        ("--pixel-size", options.pixel_size_angstrom)):
        if value is not None and not value > 0:
            raise ParameterError(f"{name} must be > 0, got {value}")
        if value is not None and not _TINY <= value < math.inf:  # inf, a denormal
            raise ParameterError(f"{name} must be a finite, normal number, got {value}")
    if options.pixel_size_angstrom is not None and options.coords_pixel_size_angstrom is None \
            and options.helix is None:
        raise ParameterError("--pixel-size goes with --coords-pixel-size (the picks' pixel "
                             "size)")
    suffix = options.suffix
    if suffix is not None and (any(c in suffix for c in "/\\") or not suffix.isprintable()):
        # each micrograph's file stays in --out under its own name
        raise ParameterError(f"--suffix {suffix!r} must end a file name: no folder "
                             "separator or control character")
    if options.micrograph_shape_yx is not None and min(options.micrograph_shape_yx) <= 0:
        raise ParameterError(f"--micrograph-shape must be positive, got "
                             f"{options.micrograph_shape_yx}")


# --------------------------------------------------------------------------- reading
def _read_groups(
    paths: list[Path], fmt: str, shape_yx: tuple[int, int] | None
) -> tuple[list[_Group], float | None]:
    groups: list[_Group] = []
    boxes = set()
    for path in paths:
        picks = _read_input(path, fmt, shape_yx)
        if box_size_of(picks) is not None:
            boxes.add(box_size_of(picks))
        if MICROGRAPH in picks.columns:
            for name, group in split_by_micrograph(picks, path).items():
                groups.append(_Group(name, group.drop(columns=[MICROGRAPH]), True, path))
        else:
            groups.append(_Group(path.stem, picks, False, path))
    seen: dict[str, Path] = {}
    for group in groups:
        if group.name in seen and seen[group.name] != group.source:
            raise InputError(f"picks of micrograph {group.name} also in {seen[group.name]}",
                             group.source)
        seen[group.name] = group.source
    return groups, (boxes.pop() if len(boxes) == 1 else None)


def _read_input(path: Path, fmt: str, shape_yx: tuple[int, int] | None) -> pd.DataFrame:
    """``read_picks``; a ``.cs`` file's fractions are scaled by ``shape_yx`` when given."""
    is_cs = fmt == "cs" or (fmt == "auto" and path.suffix.lower() == ".cs")
    if not is_cs or shape_yx is None:
        return read_picks(path, fmt)
    read_picks(path, "cs")  # the checks and errors of read_picks
    from cryoextract.io.cryosparc import read_cs_picks

    return read_cs_picks(path, micrograph_shape=shape_yx)


def _micrograph_list(options: ConvertOptions) -> list[_Micrograph] | None:
    spec = options.micrographs
    if spec is None:
        return None
    if spec.endswith(".star"):
        from cryoextract.io.micrographs import read_micrograph_set

        mics = read_micrograph_set(spec, pixel_size_angstrom=options.pixel_size_angstrom)
        sizes = mics.optics.set_index("rlnOpticsGroup")["rlnMicrographPixelSize"]
        table = mics.micrographs
        return [_Micrograph(str(n), str(p), float(sizes[g])) for n, p, g in
                zip(table["rlnMicrographName"], table["path"], table["rlnOpticsGroup"],
                    strict=True)]
    paths = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
    paths = [p for p in paths if Path(p).suffix.lower() in _MRC_EXTENSIONS]
    if not paths:
        raise InputError("no MRC micrographs match", spec)
    return [_Micrograph(p, p, options.pixel_size_angstrom) for p in paths]


def _attach_micrographs(
    groups: list[_Group], micrographs: list[_Micrograph], result: ConvertResult
) -> None:
    """Match each group to a micrograph: full name, file name, stem, then stem prefix."""
    by_name = {m.name: m for m in micrographs}
    by_file = {PurePosixPath(m.name).name: m for m in micrographs}
    by_stem = {PurePosixPath(m.name).stem: m for m in micrographs}
    unmatched = []
    for group in groups:
        key = PurePosixPath(group.name.replace("\\", "/"))
        found = (by_name.get(group.name) or by_file.get(key.name) or by_stem.get(key.stem)
                 or by_stem.get(group.name))
        if found is None and not group.named:
            prefixes = [s for s in by_stem if group.name.startswith(s)]
            found = by_stem[max(prefixes, key=len)] if prefixes else None
        if found is None:
            unmatched.append(group.name)
            continue
        group.micrograph_path = found.path
        group.pixel_size_angstrom = found.pixel_size_angstrom
        if not group.named:
            group.name, group.named = found.name, True
    if unmatched:
        result.warnings.append(f"no micrograph matches the picks of {_listing(unmatched)}")


# --------------------------------------------------------------------------- transform
def _scale(group: _Group, options: ConvertOptions) -> float:
    if options.coords_pixel_size_angstrom is None:
        return 1.0
    pixel_size = options.pixel_size_angstrom or group.pixel_size_angstrom
    if pixel_size is None:
        raise ParameterError(f"--coords-pixel-size needs --pixel-size (or --micrographs "
                             f"STAR with pixel sizes) for {group.name}")
    return options.coords_pixel_size_angstrom / pixel_size


def _common_scale(groups: list[_Group], options: ConvertOptions) -> float:
    scales = {_scale(g, options) for g in groups}
    if len(scales) > 1:
        raise ParameterError("micrographs of different pixel sizes: give --box")
    return scales.pop() if scales else 1.0


def _shape(group: _Group, options: ConvertOptions, result: ConvertResult
           ) -> tuple[int, int] | None:
    if options.micrograph_shape_yx is not None:
        return options.micrograph_shape_yx
    if group.micrograph_path is None:
        return None
    try:
        return mrc_shape_yx(group.micrograph_path)
    except InputError as exc:
        if options.flip_x or options.flip_y:
            raise
        result.warnings.append(f"no off-micrograph check for {group.name}: {exc}")
        return None


def _transform(group: _Group, options: ConvertOptions, result: ConvertResult) -> None:
    scale = _scale(group, options)
    shape = _shape(group, options, result)
    flips = options.flip_x or options.flip_y
    if flips and shape is None:
        raise ParameterError(f"--flip-x/--flip-y need the micrograph shape for {group.name}: "
                             "give --micrograph-shape NY NX or --micrographs")
    xy = transform_picks(centres(group.picks), shape, scale=scale, swap_xy=options.swap_xy,
                         flip_x=options.flip_x, flip_y=options.flip_y)
    picks = group.picks.copy()
    picks[X], picks[Y] = xy[:, 0], xy[:, 1]
    if scale != 1.0:
        for column in _SIZE_COLUMNS:
            if column in picks.columns:
                picks[column] = pd.to_numeric(picks[column], errors="coerce") * scale
    group.picks = picks
    warning = None if shape is None else off_micrograph_warning(xy, shape, group.name)
    if warning is not None:
        result.warnings.append(warning)


def _helical(group: _Group, options: ConvertOptions, result: ConvertResult) -> pd.DataFrame:
    from cryoextract.pipeline.extraction.helical import helical_columns

    pixel_size = options.pixel_size_angstrom or group.pixel_size_angstrom
    if pixel_size is None:
        raise ParameterError("--helix needs the micrographs' pixel size (track lengths in A): "
                             "give --pixel-size or --micrographs")
    fmt = options.coords_format if options.coords_format != "auto" \
        else guess_format(group.source)
    picks, warnings = helical_columns(group.picks, options.helix, pixel_size,
                                      str(group.source), fmt)
    result.warnings += warnings
    return picks


# --------------------------------------------------------------------------- writing
def _write(groups: list[_Group], options: ConvertOptions, box_px: float | None,
           sources: Sequence[str | Path], result: ConvertResult) -> list[Path]:
    """Write each output file, then the summary, under the output's lock; none may be
    one of ``sources`` (the picks and micrographs read), with or without
    ``--overwrite``."""
    out, fmt = options.out, pick_format(str(options.to))
    single_file = fmt.one_file or (out.suffix.lower() in fmt.extensions and (
        fmt.many_micrographs or len(groups) == 1))
    if fmt.needs_box and box_px is None:
        raise ParameterError(f"{fmt.description} output needs --box PX (the input has no "
                             "box size)")
    if single_file:
        targets = {out: groups}
    else:
        suffix = options.suffix if options.suffix is not None else fmt.extensions[0]
        targets = {out / f"{stem}{suffix}": [g]
                   for stem, g in zip(_file_stems(groups), groups, strict=True)}
    summary_json = summary_path(out, single_file=single_file)
    if summary_json in targets:  # a micrograph named "summary", --suffix .json
        raise ParameterError(f"{summary_json} is the summary of the job: give another "
                             "--suffix")
    _check_targets([*targets, summary_json], sources, options.overwrite)
    (out.parent if single_file else out).mkdir(parents=True, exist_ok=True)
    with output_lock(out, single_file=single_file):  # two runs never both write
        _check_targets([*targets, summary_json], sources, options.overwrite)  # again
        for path, members in targets.items():
            picks = _combined(members, with_names=single_file and (
                len(members) > 1 or members[0].named or fmt.one_file))
            write_picks(path, picks, fmt.name, box_px=box_px,
                        micrograph_name=members[0].name)
        write_summary(summary_json, "convert", inputs=sources, parameters=_parameters(
            options, box_px), counts={"micrographs": result.n_micrographs,
                                      "picks_in": result.n_picks, "picks_out": result.n_picks,
                                      "files_out": len(targets)},
            warnings=result.warnings, outputs=[str(p) for p in targets])
    return list(targets)


def _check_targets(targets: list[Path], sources: Sequence[str | Path],
                   overwrite: bool) -> None:
    check_inputs_outside(targets, sources, "convert would write")
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise InputError("output exists (give --overwrite)", existing[0])


def _parameters(options: ConvertOptions, box_px: float | None) -> dict[str, object]:
    """The options of a conversion as its summary records them."""
    record = {k: v for k, v in asdict(options).items() if k != "out"}
    return {**record, "box_px": box_px}


def _combined(groups: list[_Group], with_names: bool) -> pd.DataFrame:
    if not with_names:
        return groups[0].picks
    tables = [g.picks.assign(**{MICROGRAPH: g.name}) for g in groups]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame({X: [], Y: []})


def _file_stems(groups: list[_Group]) -> list[str]:
    """One safe output file name per micrograph: its stem, told apart by a hash of the
    full name where stems clash (:func:`cryoextract.io.names.unique_components`)."""
    stems = [PurePosixPath(g.name.replace("\\", "/")).stem for g in groups]
    return unique_components(stems, [g.name for g in groups])


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown} and {len(names) - _MAX_LISTED} more"
