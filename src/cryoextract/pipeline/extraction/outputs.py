"""A job's outputs: particles STAR (and .cs) per output size, rejected picks, summary."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from cryoextract.io.atomic import atomic_file, write_text_atomic
from cryoextract.io.cryosparc import write_cs as write_cryosparc
from cryoextract.io.micrographs import MicrographSet
from cryoextract.io.paths import PathNamer, PathStyle, rebase_image_names
from cryoextract.io.star import star_warnings_into, write_star
from cryoextract.ops.ctf_correct import CtfCorrection
from cryoextract.pipeline.extraction.params import ExtractParams, OutputSpec
from cryoextract.pipeline.extraction.task import MicrographResult
from cryoextract.pipeline.frame import JobPaths


@dataclass
class ExtractionSummary:
    """What a job did; also written to ``OUT/summary.json``."""

    out_dir: str
    particles_star: str
    micrographs_done: int = 0
    micrographs_resumed: int = 0
    micrographs_skipped: dict[str, str] = field(default_factory=dict)
    particles_kept: int = 0
    particles_dropped: dict[str, int] = field(default_factory=dict)
    box_px: int = 0
    output_box_px: int = 0
    output_pixel_size_angstrom: dict[str, float] = field(default_factory=dict)
    additional_outputs: list[str] = field(default_factory=list)
    #: the directory the paths in the STARs are relative to (``--paths``)
    paths_relative_to: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def write_outputs(
    paths: JobPaths, mic_set: MicrographSet, params: ExtractParams,
    results: list[MicrographResult], summary: ExtractionSummary, *, write_cs: bool = False,
    path_style: PathStyle = PathStyle.CWD,
) -> None:
    """Write every output of a finished job; each file atomically, the STARs after stacks.

    The tasks name their stacks relative to each output's folder; each STAR names them
    as ``path_style`` says (RELION's way by default: relative to the working directory),
    the cryoSPARC ``.cs`` relative to its own folder (what cryosparc-tools loads).
    """
    results = sorted(results, key=lambda r: r.index)
    gather(results, summary)
    particles = [r.particles for r in results if r.particles is not None and len(r.particles)]
    table = pd.concat(particles, ignore_index=True) if particles else _empty_particles()
    shapes = {r.micrograph_name: r.shape_yx for r in results if r.shape_yx is not None}
    # what RELION would read differently goes to the summary (and summary.json)
    with star_warnings_into(summary.warnings):
        for output in params.outputs:
            optics = output_optics(mic_set, params, output, results)
            star = paths.out_dir / output.subdir / "particles.star"
            named = table.copy()
            named["rlnImageName"] = rebase_image_names(
                table["rlnImageName"].astype(str), star.parent,
                PathNamer.for_star(star, path_style))
            write_star(star, {"optics": optics, "particles": named})
            if write_cs:
                write_cryosparc(paths.out_dir / output.subdir / "particles.cs", optics, table,
                                micrograph_shapes=shapes,
                                blob_sign=1.0 if params.invert else -1.0)
    summary.output_pixel_size_angstrom = {
        str(row.rlnOpticsGroupName): float(params.output_pixel_size(row.rlnMicrographPixelSize))
        for row in mic_set.optics.itertuples()
    }
    summary.additional_outputs = [
        str(paths.out_dir / o.subdir / "particles.star") for o in params.outputs[1:]
    ]
    summary.paths_relative_to = PathNamer.for_star(paths.particles_star, path_style).base
    _write_rejected(paths.rejected_tsv, results)
    write_text_atomic(paths.summary_json, summary.to_json())


def gather(results: list[MicrographResult], summary: ExtractionSummary) -> None:
    dropped: Counter[str] = Counter()
    for result in results:
        summary.warnings += result.warnings
        if result.error is not None:
            summary.micrographs_skipped[result.micrograph_name] = result.error
            continue
        summary.micrographs_done += 1
        summary.particles_kept += result.n_particles
        if result.dropped is not None:
            dropped.update(result.dropped["reason"])
    summary.particles_dropped = dict(sorted(dropped.items()))


def output_optics(
    mic_set: MicrographSet, params: ExtractParams, output: OutputSpec,
    results: list[MicrographResult],
) -> pd.DataFrame:
    """Optics block of the particles: input optics plus image size and pixel size.

    Groups without particles are left out, as RELION does.
    """
    optics = mic_set.optics.copy()
    used = set()
    for result in results:
        if result.particles is not None and "rlnOpticsGroup" in result.particles.columns:
            used.update(int(g) for g in result.particles["rlnOpticsGroup"])
    if used:
        optics = optics[optics["rlnOpticsGroup"].isin(used)]
    optics["rlnImagePixelSize"] = [
        params.output_pixel_size(float(p), output.box_px) for p in optics["rlnMicrographPixelSize"]
    ]
    optics["rlnImageSize"] = output.box_px
    optics["rlnImageDimensionality"] = 2
    optics["rlnCtfDataArePhaseFlipped"] = int(params.ctf_correct is CtfCorrection.FLIP)
    optics["rlnCtfDataAreCtfPremultiplied"] = int(
        params.ctf_correct is CtfCorrection.PREMULTIPLY)
    return optics.drop(columns=["rlnMicrographPixelSize"]).reset_index(drop=True)


def _empty_particles() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in (
        "rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName",
        "rlnOpticsGroup", "rlnOriginXAngst", "rlnOriginYAngst")})


def _write_rejected(path: Path, results: list[MicrographResult]) -> None:
    frames = [
        r.dropped.assign(rlnMicrographName=r.micrograph_name)
        for r in results if r.dropped is not None and len(r.dropped)
    ]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"rlnCoordinateX": [], "rlnCoordinateY": [], "reason": [], "rlnMicrographName": []})
    with atomic_file(path, "w", encoding="utf-8", newline="") as stream:
        table[["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "reason"]].to_csv(
            stream, sep="\t", index=False)
