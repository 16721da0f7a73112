"""Checks and warnings made before a job runs: box sizes against FFTs, micrographs, defocus."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoextract.errors import InputError, ParameterError
from cryoextract.io.micrographs import MicrographSet
from cryoextract.io.mrc import mrc_shape_yx
from cryoextract.ops.boxsize import (
    delocalisation_px,
    is_efficient_box,
    nearest_efficient_boxes,
    smallest_efficient_box,
)
from cryoextract.pipeline.extraction.params import ExtractParams


def box_size_warnings(params: ExtractParams) -> list[str]:
    """Warnings for box sizes that make FFTs slow, naming the nearest efficient sizes."""
    warnings = []
    for what, size in (("box", params.box_px), ("output box", params.output_box_px)):
        if not is_efficient_box(size):
            below, above = nearest_efficient_boxes(size)
            options = " or ".join(str(s) for s in (below, above) if s is not None)
            warnings.append(f"{what} {size} px is not an FFT-efficient size; nearest: {options}")
    return list(dict.fromkeys(warnings))


def delocalisation_warnings(mic_set: MicrographSet, params: ExtractParams) -> list[str]:
    """Warn when the box is smaller than Rosenthal & Henderson's D + 2 lambda dF / d.

    ``d`` is the output Nyquist resolution, ``dF`` the largest defocus of each optics
    group, ``D`` the particle diameter (0 when not given).
    """
    table = mic_set.micrographs
    if "rlnDefocusU" not in table.columns:
        return []
    warnings = []
    optics = mic_set.optics.set_index("rlnOpticsGroup")
    for group, rows in table.groupby("rlnOpticsGroup"):
        row = optics.loc[group]
        if "rlnVoltage" not in row.index:
            continue
        apix = float(row["rlnMicrographPixelSize"])
        defocus = float(np.nanmax(rows[[c for c in ("rlnDefocusU", "rlnDefocusV")
                                        if c in rows.columns]].to_numpy(np.float64)))
        nyquist = 2 * params.output_pixel_size(apix)
        shift = delocalisation_px(defocus, float(row["rlnVoltage"]), apix, nyquist) * apix
        diameter = params.particle_diameter_angstrom or 0.0
        needed = diameter + 2 * shift
        if params.box_px * apix < needed:
            warnings.append(
                f"box {params.box_px} px = {params.box_px * apix:.0f} A is smaller than "
                f"D + 2*lambda*dF/d = {needed:.0f} A (defocus {defocus:.0f} A, "
                f"d = {nyquist:.2f} A output Nyquist, D = {diameter:.0f} A): signal moved "
                f"out of the box is lost; about --box "
                f"{smallest_efficient_box(needed / apix)} keeps it"
            )
    return warnings


def check_box_against_first_micrograph(mic_set: MicrographSet, params: ExtractParams) -> None:
    """A box larger than the micrographs is a parameter error, not thousands of skips."""
    for path in mic_set.micrographs["path"]:
        if Path(path).is_file():
            try:  # the header only: the task reads the data
                shape = mrc_shape_yx(path)
            except InputError:  # the task reports unreadable micrographs
                continue
            if params.box_px > min(shape):
                raise ParameterError(
                    f"box {params.box_px} px is larger than the micrographs "
                    f"({shape[1]}x{shape[0]}, e.g. {path})"
                )
            if params.descriptors and params.descriptor_patch_px > min(shape):
                raise ParameterError(
                    f"--patch {params.descriptor_patch_px} px is larger than the micrographs "
                    f"({shape[1]}x{shape[0]}, e.g. {path})")
            if params.ctf_box_px is not None and params.ctf_box_px > max(shape):
                raise ParameterError(
                    f"CTF box {params.ctf_box_px} px is larger than the micrographs "
                    f"({shape[1]}x{shape[0]}, e.g. {path}): no particle's signal spreads "
                    "further"
                )
            return


