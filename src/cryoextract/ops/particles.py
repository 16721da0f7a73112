"""One chunk of particles from a micrograph in memory: cut, CTF, crop, normalise, invert.

:func:`process_chunk` is the whole per-particle computation of an extraction, as a pure
function of arrays (no files): the extraction task reads the micrograph, calls it on
bounded chunks of box centres, and writes what it returns. Conventions (box centre,
Fourier crop, normalisation, CTF) are in docs/conventions.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cryoextract.ops.boxes import EdgeMode, box_sources, cut_boxes
from cryoextract.ops.ctf import CtfParams
from cryoextract.ops.ctf_correct import CtfCorrection, correct_boxes, window_centre
from cryoextract.ops.descriptors import background_stats
from cryoextract.ops.fourier import fourier_crop_boxes
from cryoextract.ops.helix import normalise_segments
from cryoextract.ops.normalize import NormMode, normalise


@dataclass(frozen=True)
class ParticleRecipe:
    """What becomes of each box; one output image per entry of ``out_box_px``.

    Attributes
    ----------
    box_px : int
        Extraction box, micrograph pixels.
    out_box_px : tuple of int
        Fourier-cropped size of each output (``box_px`` for none).
    bg_radius_px : tuple of float
        Background radius of each output's normalisation, in its own pixels.
    norm : NormMode
        Normalisation of every output.
    invert : bool
        Contrast inversion after normalising.
    white_dust_sigma, black_dust_sigma : float or None
        Dust thresholds, background standard deviations (``None``: off).
    ctf_correction : CtfCorrection
        ``none``, or the correction done in the padded cut before windowing.
    pixel_size_angstrom : float
        Micrograph pixel size (for the CTF).
    measure_background : bool
        Also return each raw box's background mean and std (descriptors), inside the
        main output's radius scaled to micrograph pixels.
    tube_radius_px : float or None
        Helical segments: the background is farther than this from each segment's axis
        (micrograph pixels; scaled to each output's pixels), not outside
        ``bg_radius_px``; needs ``psi_deg`` in :func:`process_chunk`.
    """

    box_px: int
    out_box_px: tuple[int, ...]
    bg_radius_px: tuple[float, ...]
    norm: NormMode = NormMode.RAMP
    invert: bool = True
    white_dust_sigma: float | None = None
    black_dust_sigma: float | None = None
    ctf_correction: CtfCorrection = CtfCorrection.NONE
    pixel_size_angstrom: float = 1.0
    measure_background: bool = False
    tube_radius_px: float | None = None


@dataclass
class ParticleChunk:
    """What :func:`process_chunk` made of ``n`` boxes.

    ``images`` holds one ``(n, m, m)`` float32 stack per output; ``dust_pixels`` is
    ``(n,)`` pixels replaced as dust per image, per output; ``background_mean`` and
    ``background_std`` are ``(n,)`` float64 raw-box statistics (``None`` unless asked).
    """

    images: list[np.ndarray]
    dust_pixels: list[np.ndarray]
    background_mean: np.ndarray | None = None
    background_std: np.ndarray | None = None


def process_chunk(
    image: np.ndarray,
    centres_xy: np.ndarray,
    recipe: ParticleRecipe,
    *,
    cut_px: int | None = None,
    edge: EdgeMode = EdgeMode.REPLICATE,
    fill_value: float = 0.0,
    shifts_px: np.ndarray | None = None,
    ctfs: Sequence[CtfParams] | None = None,
    rng: np.random.Generator | None = None,
    psi_deg: np.ndarray | None = None,
) -> ParticleChunk:
    """Cut, CTF-correct, Fourier-crop, normalise and invert the particles of a chunk.

    Parameters
    ----------
    image : np.ndarray
        ``(ny, nx)`` micrograph, any real dtype; not modified.
    centres_xy : np.ndarray
        ``(n, 2)`` integer box centres ``(x, y)``, micrograph pixels.
    recipe : ParticleRecipe
        What to compute.
    cut_px : int, optional
        Side of the box cut (the CTF correction's padded box); ``recipe.box_px`` when
        not given. The result is windowed to ``recipe.box_px`` after the correction.
    edge, fill_value : optional
        How pixels beyond the micrograph are filled (:func:`cut_boxes`).
    shifts_px : np.ndarray, optional
        ``(n, 2)`` sub-pixel shifts ``(dx, dy)`` of each box's content, micrograph pixels.
    ctfs : sequence of CtfParams, optional
        One CTF per box, needed when ``recipe.ctf_correction`` is not ``none``.
    rng : np.random.Generator, optional
        Random source of edge noise and dust replacement.
    psi_deg : np.ndarray, optional
        ``(n,)`` psi prior of each helical segment (with ``recipe.tube_radius_px``).

    Returns
    -------
    ParticleChunk
    """
    rng = rng or np.random.default_rng(0)
    box = recipe.box_px
    chunk = ParticleChunk([], [])
    correct = recipe.ctf_correction is not CtfCorrection.NONE
    # boxes inside the micrograph stay views until the FFT converts them; a CTF
    # correction transforms padded boxes first, so those are cut whole
    boxes: np.ndarray | list[np.ndarray] = \
        cut_boxes(image, centres_xy, cut_px or box, edge=edge, fill_value=fill_value, rng=rng) \
        if correct else \
        box_sources(image, centres_xy, box, edge=edge, fill_value=fill_value, rng=rng)
    if recipe.measure_background:
        radius = recipe.bg_radius_px[0] * box / recipe.out_box_px[0]
        chunk.background_mean, chunk.background_std = background_stats(
            window_centre(boxes, box) if correct else boxes, radius)
    if correct:
        if ctfs is None or len(ctfs) != len(boxes):
            raise ValueError("a CTF correction needs one CTF per box")
        corrected = correct_boxes(np.asarray(boxes), list(ctfs), recipe.pixel_size_angstrom,
                                  recipe.ctf_correction)
        boxes = list(window_centre(corrected, box))
    cropped = fourier_crop_boxes(boxes, recipe.out_box_px, shifts_xy=shifts_px)
    for radius, images in zip(recipe.bg_radius_px, cropped, strict=True):
        if any(images is done for done in chunk.images):
            images = images.copy()
        options = {"radius_px": radius, "rng": rng, "white_sigma": recipe.white_dust_sigma,
                   "black_sigma": recipe.black_dust_sigma, "invert": recipe.invert}
        if recipe.tube_radius_px is None or psi_deg is None:
            dust, _ = normalise(images, recipe.norm, **options)
        else:  # helical segments: the tube's radius in these images' pixels
            dust = normalise_segments(images, recipe.norm, psi_deg, recipe.tube_radius_px
                                      * images.shape[-1] / box, **options)
        chunk.images.append(images)
        chunk.dust_pixels.append(dust)
    return chunk
