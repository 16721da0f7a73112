"""``cryoextract select``: the particles that pass a condition, as a new STAR (and ``.cs``).

The condition is :func:`cryoextract.pipeline.selection.evaluate_where`'s; the new files
point at the same stacks (nothing is copied). An existing output is replaced only with
``overwrite``, and an input (the STAR or the ``.cs``) never.

The output is held under the job frame's lock while it is written
(:func:`cryoextract.pipeline.frame.output_lock`): a folder ``--out`` (or the default
``selected/``) by its own ``OUT/.cryoextract/lock``, a single file ``--out x.star`` by a
hidden ``.x.star.lock`` beside it, removed afterwards (the folder it lies in may be
someone else's, an extraction's). The summary goes to ``OUT/summary.json``, or for a
single file to the sidecar ``x.star.summary.json`` (never a bare ``summary.json`` beside
it, which could replace an extraction's own).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.cryosparc import load_cs, read_cs_particles, save_cs, write_cs
from cryoextract.io.paths import PathNamer, PathStyle, locate
from cryoextract.io.star import StarWarning, find_block, read_star, write_star
from cryoextract.pipeline.frame import output_lock, summary_path, write_summary
from cryoextract.pipeline.selection import evaluate_where

__all__ = ["SelectionSummary", "select_particles"]


@dataclass
class SelectionSummary:
    """What ``cryoextract select`` did."""

    source: str
    where: str
    particles_in: int
    particles_selected: int
    particles_star: str
    particles_cs: str | None = None
    warnings: list[str] = field(default_factory=list)


def select_particles(
    source: str | os.PathLike[str],
    where: str,
    out_path: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    path_style: PathStyle | str = PathStyle.CWD,
) -> SelectionSummary:
    """Write the particles that satisfy ``where`` as a new STAR (and ``.cs``), same stacks.

    Parameters
    ----------
    source : path-like
        An extraction folder (its ``particles.star``, else ``particles.cs``), a
        particles STAR or a cryoSPARC ``.cs``.
    where : str
        Condition on the columns (:func:`parse_where`), e.g.
        ``"ceScoreByVar < 1.5 and ceEdgeDistanceAngstrom > 50"``; the ``ce``/``rln``
        prefixes may be left out.
    out_path : path-like, optional
        Output STAR (a ``.star`` name) or folder (``particles.star`` in it). Default
        ``<folder of the input>/selected/particles.star``.
    overwrite : bool
        Replace an existing output STAR.
    path_style : PathStyle or str
        How the new STAR names the stacks (docs/conventions.md, "Paths").

    Returns
    -------
    SelectionSummary

    Notes
    -----
    Rows keep their order and every column; the other blocks of a STAR (``data_optics``)
    are copied. ``rlnImageName`` paths are renamed for the new file: each stack is found
    (relative to the working directory first, then to the input's folder) and named as
    ``path_style`` says, relative to the working directory by default (RELION's
    way). A ``.cs`` is
    written beside the STAR when the input is one or has a ``particles.cs`` beside it:
    its selected rows (``uid`` and every field kept, ``blob/path`` rewritten alike) when
    its rows match the STAR's, else a new one from the selected table.

    Raises
    ------
    InputError
        Unreadable input, invalid condition, or a condition no particle satisfies.
    ParameterError
        Output exists (without ``overwrite``) or would replace the input.
    """
    path_style = PathStyle(path_style)
    star_in, cs_in = _inputs(Path(source))
    table_path = star_in or cs_in
    assert table_path is not None
    blocks, particles_key = _read_table(table_path)
    particles = blocks[particles_key]
    keep = evaluate_where(particles, where)
    if not keep.any():  # no STAR that a later step would trust
        raise InputError(f"--where {where!r} matches none of the {len(particles)} "
                         "particles; nothing written", table_path)
    out_star = _output_star(table_path, out_path)
    single_file = out_path is not None and out_star == Path(out_path)
    output = out_star if single_file else out_star.parent
    out_cs = out_star.with_suffix(".cs") if cs_in is not None else None
    summary_json = summary_path(output, single_file=single_file)
    outputs = [p for p in (out_star, out_cs, summary_json) if p is not None]
    sources = [p for p in (star_in, cs_in) if p is not None]
    _check_outputs(outputs, sources, overwrite)  # before anything is made
    out_star.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output, single_file=single_file):  # two runs never both write
        _check_outputs(outputs, sources, overwrite)  # again: a run may have finished since
        summary = _write_selection(blocks, particles_key, keep, where, table_path, cs_in,
                                   out_star, out_cs, path_style)
        write_summary(summary_json, "select", inputs=sources,
                      parameters={"where": where, "path_style": path_style.value,
                                  "overwrite": overwrite},
                      counts={"particles_in": summary.particles_in,
                              "particles_out": summary.particles_selected},
                      warnings=summary.warnings, outputs=[
                          p for p in (summary.particles_star, summary.particles_cs) if p])
    return summary


def _write_selection(
    blocks: dict[str, pd.DataFrame], particles_key: str, keep: np.ndarray, where: str,
    table_path: Path, cs_in: Path | None, out_star: Path, out_cs: Path | None,
    path_style: PathStyle,
) -> SelectionSummary:
    """Write the selected rows (STAR, and ``.cs`` when ``out_cs``); what was done."""
    particles = blocks[particles_key]
    summary = SelectionSummary(str(table_path), where, len(particles), int(keep.sum()),
                               str(out_star))
    rewrite = _PathRewriter(table_path.parent, PathNamer.for_star(out_star, path_style))
    selected = particles[keep].reset_index(drop=True)
    selected["rlnImageName"] = rewrite.image_names(selected["rlnImageName"])
    summary.warnings += _written_star(out_star, {**blocks, particles_key: selected})
    if cs_in is not None and out_cs is not None:
        # cryoSPARC's blob/path: relative to the .cs file's folder
        in_cs = _PathRewriter(table_path.parent, PathNamer.for_star(out_cs, PathStyle.STAR))
        _write_selected_cs(cs_in, particles, keep, blocks, selected, out_cs, in_cs, summary)
        summary.particles_cs = str(out_cs)
        rewrite.missing += in_cs.missing
    summary.warnings += rewrite.warnings()
    return summary


def _check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output that is an input (always) or exists (without ``overwrite``)."""
    for out in outputs:
        for source in inputs:
            if _same_file(out, source):
                raise ParameterError(f"{out}: the selection would replace its input "
                                     f"{source}; choose another --out")
        if (out.exists() or out.is_symlink()) and not overwrite:
            raise ParameterError(f"{out} exists; use --overwrite to replace it")


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are one file (links and hard links too)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _written_star(path: Path, blocks: dict[str, pd.DataFrame]) -> list[str]:
    """Write the STAR; its warnings (values RELION reads differently) are returned."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StarWarning)
        return write_star(path, blocks)


def _inputs(source: Path) -> tuple[Path | None, Path | None]:
    """(particles STAR, companion or input .cs) of a ``select`` source."""
    if source.is_dir():
        star, cs = source / "particles.star", source / "particles.cs"
        if not star.is_file() and not cs.is_file():
            raise InputError("no particles.star or particles.cs in this folder", source)
        return (star if star.is_file() else None), (cs if cs.is_file() else None)
    if not source.is_file():
        raise InputError("particles file not found", source)
    if source.suffix.lower() == ".cs":
        return None, source
    cs = source.with_suffix(".cs")
    return source, (cs if cs.is_file() else None)


def _read_table(path: Path) -> tuple[dict[str, pd.DataFrame], str]:
    """Every block of the input, and the name of the particles block."""
    if path.suffix.lower() == ".cs":
        optics, particles = read_cs_particles(path)
        return {"optics": optics, "particles": particles}, "particles"
    blocks = read_star(path)
    particles = find_block(blocks, path, ("rlnImageName",), preferred=("particles",))
    key = next(name for name, block in blocks.items() if block is particles)
    return blocks, key


def _output_star(table_path: Path, out_path: str | os.PathLike[str] | None) -> Path:
    if out_path is None:
        return table_path.parent / "selected" / "particles.star"
    out = Path(out_path)
    return out if out.suffix.lower() == ".star" else out / "particles.star"


class _PathRewriter:
    """Stack paths of the input renamed for the output (see :func:`select_particles`).

    A relative path is looked up in the working directory, then beside the input (a
    path found in neither is taken as beside the input and reported); ``namer`` names
    what was found.
    """

    def __init__(self, in_dir: Path, namer: PathNamer):
        self.in_dir = Path(os.path.abspath(in_dir))
        self.namer = namer
        self.cache: dict[str, str] = {}
        self.missing: list[str] = []

    def path(self, written: str) -> str:
        if written not in self.cache:
            self.cache[written] = self._rewrite(written)
        return self.cache[written]

    def _rewrite(self, written: str) -> str:
        if not written:
            return written
        found = locate(written, (Path.cwd(), self.in_dir))
        if found is None:
            self.missing.append(written)
            found = self.in_dir / written
        return self.namer(found)

    def image_names(self, names: pd.Series) -> pd.Series:
        if not len(names):  # nothing selected: nothing to rename
            return names
        text = names.astype(str)
        parts = text.str.partition("@")
        has_index = parts[1] == "@"
        paths = parts[2].where(has_index, parts[0]).str.strip()
        new = paths.map(self.path)
        return (parts[0] + "@" + new).where(has_index, new)

    def warnings(self) -> list[str]:
        if not self.missing:
            return []
        return [f"{len(self.missing)} stack(s) not found (e.g. {self.missing[0]}); their "
                f"names were rewritten as if relative to {self.in_dir}"]


def _write_selected_cs(
    cs_in: Path, particles: pd.DataFrame, keep: np.ndarray, blocks: dict[str, pd.DataFrame],
    selected: pd.DataFrame, out_cs: Path, rewrite: _PathRewriter, summary: SelectionSummary,
) -> None:
    data = load_cs(cs_in)
    if _cs_matches(data, particles):
        rows = data[keep]
        paths = [rewrite.path(p.decode()) for p in rows["blob/path"]] if len(rows) else []
        _save_cs_rows(out_cs, rows, paths)
        return
    summary.warnings.append(f"{cs_in}: rows do not match the STAR's; wrote a new .cs from "
                            "the selected particles (no micrograph locations)")
    write_cs(out_cs, blocks.get("optics"), selected)


def _cs_matches(data: np.ndarray, particles: pd.DataFrame) -> bool:
    """True when the ``.cs`` rows are the STAR's rows (same image index and file name)."""
    names = data.dtype.names or ()
    if len(data) != len(particles) or "blob/idx" not in names or "blob/path" not in names:
        return False
    parts = particles["rlnImageName"].astype(str).str.partition("@")
    index = pd.to_numeric(parts[0], errors="coerce").to_numpy(np.float64) - 1
    if not np.array_equal(index, data["blob/idx"].astype(np.float64)):
        return False
    cs_files = [os.path.basename(p.decode()) for p in data["blob/path"]]
    star_files = [os.path.basename(p) for p in parts[2].str.strip()]
    return cs_files == star_files


def _save_cs_rows(out_cs: Path, rows: np.ndarray, paths: list[str]) -> None:
    """Save ``rows`` with ``blob/path`` replaced (the string width follows the new paths)."""
    width = max([1, *(len(p.encode()) for p in paths)])
    dtype = [(name, f"S{width}" if name == "blob/path" else rows.dtype.fields[name][0])
             for name in rows.dtype.names]
    out = np.empty(len(rows), dtype=dtype)
    for name in rows.dtype.names:
        out[name] = np.array([p.encode() for p in paths], dtype=f"S{width}") \
            if name == "blob/path" else rows[name]
    save_cs(out_cs, out)
