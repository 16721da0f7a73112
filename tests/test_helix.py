"""Helical extraction (``--helix``) against RELION 3.1.3 ``relion_preprocess --helix``.

Generated micrographs with tubes at many angles (start/end pairs with integer
coordinates, some running off the micrograph or near its edges, one vertical, one
horizontal); RELION and we extract the same picks in the same dataset folder. Segments
are matched by order (RELION writes them tube by tube, as we do), and the positions,
priors, track lengths and pixels compared. docs/conventions.md, "Helical segments".
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryoextract.pipeline.extraction.params import HelixParams
from helix_oracle import (
    APIX,
    BG_RADIUS,
    BOX,
    DIAMETER,
    NR_ASU,
    RISE,
    Run,
    angle_difference,
    extract_ours,
    positions,
    relion_helix_args,
    tube_ends,
    tubes_dataset,
)
from relion_oracle import (
    coordinate_file,
    load_particles,
    make_dataset,
    pearson,
    require_relion,
    run_relion_preprocess,
)


@pytest.fixture(scope="module", params=[("_tubes.star", False), ("_tubes.star", True),
                                        (".box", False)], ids=["star", "star-bimodal", "box"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    require_relion()
    suffix, bimodal = request.param
    ds = tubes_dataset(tmp_path_factory.mktemp("helix"), suffix)
    run_relion_preprocess(ds, "Relion/", box=BOX, norm=True, bg_radius=BG_RADIUS,
                          extra=relion_helix_args(bimodal))
    relion = load_particles(ds.root / "Relion" / "particles.star", ds.root)
    helix = HelixParams(True, NR_ASU, RISE, DIAMETER, bimodal)
    ours, dropped = extract_ours(ds, "Ours", helix, bg_radius_px=BG_RADIUS)
    return Run(ds, relion, ours, dropped)


def test_segments_as_relion_places_them(run: Run) -> None:
    ref, ours = run.relion.particles, run.ours.particles
    assert len(ref) > 150  # the tubes give many segments; some were dropped at the edges
    assert len(ours) == len(ref)
    assert (ours["rlnHelicalTubeID"].to_numpy() == ref["rlnHelicalTubeID"].to_numpy()).all()
    if "rlnHelicalTubePitch" in ref.columns:
        assert (ours["rlnHelicalTubePitch"] == ref["rlnHelicalTubePitch"]).all()
        assert (ref["rlnHelicalTubeID"] % 10 == 7).all()
    assert np.abs(positions(ours) - positions(ref)).max() < 0.01
    for column, tolerance in (("rlnAnglePsiPrior", 0.01), ("rlnHelicalTrackLengthAngst", 1e-3),
                              ("rlnAngleTiltPrior", 0.0), ("rlnAnglePsiFlipRatio", 0.0)):
        difference = ours[column].to_numpy(np.float64) - ref[column].to_numpy(np.float64)
        assert np.abs(difference).max() <= tolerance, column
    assert sum(run.dropped.values()) > 0  # segments near the edges, reported


def test_tube_normalisation_as_relion(run: Run) -> None:
    correlations = [pearson(a, b) for a, b in zip(run.relion.images, run.ours.images,
                                                  strict=True)]
    assert min(correlations) >= 0.9999
    background = run.relion.images[:, :4, :].std()  # corner rows: normalised background
    assert 0.5 < background < 2.0


def test_segments_without_priors_get_them_from_their_order(run: Run) -> None:
    """RELION's segments with only coordinates and tube IDs (as Topaz or crYOLO give
    them): psi priors from the segments' direction, track lengths from their spacing
    (RELION's ``k * step`` from the tube's first segment), pixels as RELION's."""
    ref = run.relion.particles
    segments = ref[["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY",
                    "rlnHelicalTubeID"]]
    starfile.write(segments, run.ds.root / "segments.star", overwrite=True)
    ours, dropped = extract_ours(run.ds, "Segments",
                                 HelixParams(outer_diameter_angstrom=DIAMETER),
                                 picks="segments.star", bg_radius_px=BG_RADIUS)
    counts = ref["rlnHelicalTubeID"].value_counts()
    lone = ref["rlnHelicalTubeID"].isin(counts.index[counts == 1]).to_numpy()
    assert dropped == ({"filament of one segment: no direction": int(lone.sum())}
                       if lone.any() else {})
    ref, images = ref[~lone].reset_index(drop=True), run.relion.images[~lone]
    parts = ours.particles
    assert (parts["rlnHelicalTubeID"].to_numpy() == ref["rlnHelicalTubeID"].to_numpy()).all()
    assert angle_difference(parts["rlnAnglePsiPrior"], ref["rlnAnglePsiPrior"]).max() < 0.01
    assert (parts["rlnAngleTiltPrior"] == 90).all()
    assert (parts["rlnAnglePsiFlipRatio"] == 0).all()
    for tube, rows in ref.groupby("rlnHelicalTubeID"):
        expected = rows["rlnHelicalTrackLengthAngst"].to_numpy()
        got = parts.loc[parts["rlnHelicalTubeID"] == tube, "rlnHelicalTrackLengthAngst"]
        assert np.abs(got.to_numpy() - (expected - expected[0])).max() < 1e-3, tube
    assert min(pearson(a, b) for a, b in zip(images, ours.images, strict=True)) >= 0.9999


def test_reextraction_keeps_tubes_and_moves_by_origins(run: Run) -> None:
    """Our segments re-extracted with refined origins: tube IDs, priors and track lengths
    carried, each segment boxed where ``coordinate - origin / apix`` says."""
    first = starfile.read(run.ds.root / "Ours" / "particles.star", always_dict=True)
    parts = first["particles"]
    rng = np.random.default_rng(5)
    parts["rlnOriginXAngst"] += rng.uniform(-6, 6, len(parts)).round(3)
    parts["rlnOriginYAngst"] += rng.uniform(-6, 6, len(parts)).round(3)
    starfile.write(first, run.ds.root / "refined.star", overwrite=True)
    again, _ = extract_ours(run.ds, "Again", HelixParams(outer_diameter_angstrom=DIAMETER),
                            picks="refined.star", recenter=True)
    # matched by tube and track length; dropped: the ones whose box, at the nearest pixel
    # to where they moved, leaves the micrograph
    key = ["rlnHelicalTubeID", "rlnHelicalTrackLengthAngst"]
    merged = parts.merge(again.particles, on=key, suffixes=("_in", ""))
    assert len(merged) == len(again.particles)
    moved = np.round(positions(parts))
    ny, nx = run.ds.micrographs[0].shape
    fits = ((moved >= BOX / 2) & (moved <= np.array([nx, ny]) - BOX / 2)).all(axis=1)
    assert len(merged) == fits.sum() > 250
    for column in ("rlnAnglePsiPrior", "rlnAngleTiltPrior", "rlnAnglePsiFlipRatio"):
        assert (merged[column + "_in"] == merged[column]).all(), column
    wanted = merged[["rlnCoordinateX_in", "rlnCoordinateY_in"]].to_numpy() - merged[
        ["rlnOriginXAngst_in", "rlnOriginYAngst_in"]].to_numpy() / APIX
    assert np.abs(positions(merged) - wanted).max() < 1e-3
    assert np.abs(merged[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).max() <= APIX / 2


def _tube_normalised(image: np.ndarray, radius_px: float, psi_deg: float) -> np.ndarray:
    """RELION's helical normalisation written out: background farther than the radius
    from the axis at psi through the centre; plane fit, then mean 0 and std 1 there."""
    n = image.shape[0]
    i, j = np.mgrid[0:n, 0:n] - n // 2
    psi = math.radians(psi_deg)
    background = np.abs(math.sin(psi) * j + math.cos(psi) * i) > radius_px
    design = np.stack([j[background], i[background], np.ones(background.sum())], axis=1)
    plane, *_ = np.linalg.lstsq(design, image[background].astype(np.float64), rcond=None)
    flat = image - (plane[0] * j + plane[1] * i + plane[2])
    return (flat - flat[background].mean()) / flat[background].std()


def test_binned_tube_radius_scales(run: Run) -> None:
    """Binned segments: the tube radius is D/2 in output pixels (not RELION's integer
    division, which makes it 0): our unbinned raw segments, Fourier-cropped and then
    tube-normalised here, are our binned ones."""
    from cryoextract.ops.fourier import fourier_crop_2d
    from cryoextract.options import NormMode

    helix = HelixParams(True, NR_ASU, RISE, DIAMETER)
    binned, _ = extract_ours(run.ds, "Binned", helix, out_box_px=BOX // 2,
                             bg_radius_px=BG_RADIUS // 2)
    raw, _ = extract_ours(run.ds, "Raw", helix, norm=NormMode.NONE)
    cropped = fourier_crop_2d(raw.images, BOX // 2)
    radius = DIAMETER / 2 / (APIX * 2)
    psi = raw.particles["rlnAnglePsiPrior"].to_numpy()
    expected = [_tube_normalised(image, radius, p) for image, p in zip(cropped, psi, strict=True)]
    assert min(pearson(a, b) for a, b in zip(expected, binned.images, strict=True)) >= 0.9999
    relion_bug = [_tube_normalised(image, 0.0, p) for image, p in zip(cropped[:20], psi[:20],
                                                                      strict=True)]
    assert min(pearson(a, b) for a, b in zip(relion_bug, binned.images[:20],
                                             strict=True)) < 0.999


def test_edge_segments_kept_with_edge_replicate(run: Run) -> None:
    """``--edge replicate`` keeps the segments RELION drops near the edges (their centres
    on the micrograph), filled by replication; the others are unchanged."""
    from cryoextract.ops.boxes import EdgeMode

    bimodal = bool((run.relion.particles["rlnAnglePsiFlipRatio"] == 0.5).all())
    helix = HelixParams(True, NR_ASU, RISE, DIAMETER, bimodal)
    kept, dropped = extract_ours(run.ds, "Replicate", helix, bg_radius_px=BG_RADIUS,
                                 edge=EdgeMode.REPLICATE)
    assert list(dropped) == ["centre outside micrograph"]
    assert len(kept.particles) == len(run.ours.particles) + run.dropped["box leaves micrograph"]
    both = positions(kept.particles)[:, None, :] - positions(run.ours.particles)[None]
    match = np.flatnonzero((np.abs(both).max(axis=2) < 1e-6).any(axis=1))
    assert len(match) == len(run.ours.particles)
    assert np.array_equal(kept.images[match], run.ours.images)


def test_tubes_from_plain_text(run: Run) -> None:
    """Start/end pairs as plain text ``x y`` rows: RELION's segments of the same tubes
    (from its STAR; its EMAN .box tubes, trimmed by half a box, have fewer)."""
    (run.ds.root / "tubes.txt").write_text(
        "".join(f"{x:g} {y:g}\n" for x, y in tube_ends().to_numpy()))
    bimodal = bool((run.relion.particles["rlnAnglePsiFlipRatio"] == 0.5).all())
    helix = HelixParams(True, NR_ASU, RISE, DIAMETER, bimodal)
    ours, _ = extract_ours(run.ds, "Text", helix, picks="tubes.txt", bg_radius_px=BG_RADIUS)
    ref = run.relion.particles
    if "rlnHelicalTubePitch" not in ref.columns:  # the EMAN .box run
        assert len(ours.particles) > len(ref)
        return
    assert len(ours.particles) == len(ref)
    assert np.abs(positions(ours.particles) - positions(ref)).max() < 0.01
    assert (ours.particles["rlnHelicalTubeID"] == (ref["rlnHelicalTubeID"] - 7) // 10 + 1).all()
    assert min(pearson(a, b) for a, b in zip(run.relion.images, ours.images,
                                             strict=True)) >= 0.9999


def test_dust_on_the_tube_background(tmp_path: Path) -> None:
    """Dust (``--white-dust/--black-dust``) is judged by each segment's tube background, as
    RELION's ``normalise``: our replaced-pixel counts are those the rule gives on the raw
    segments, and the result is RELION's apart from the random replacements."""
    from cryoextract.options import NormMode

    require_relion()
    ds = make_dataset(tmp_path, kinds=("float32",), shape=(640, 768), n_picks=1, n_edge=0,
                      box=BOX, apix=APIX, dust=200, coords_suffix="_tubes.star")
    starfile.write(tube_ends(), coordinate_file(ds, ds.micrographs[0].name), overwrite=True)
    run_relion_preprocess(ds, "Relion/", box=BOX, norm=True, bg_radius=BG_RADIUS,
                          white_dust=2.5, black_dust=2.5, extra=relion_helix_args(False))
    relion = load_particles(ds.root / "Relion" / "particles.star", ds.root)
    helix = HelixParams(True, NR_ASU, RISE, DIAMETER)
    ours, _ = extract_ours(ds, "Ours", helix, bg_radius_px=BG_RADIUS, white_dust_sigma=2.5,
                           black_dust_sigma=2.5, descriptors=True)
    raw, _ = extract_ours(ds, "Raw", helix, norm=NormMode.NONE)
    i, j = np.mgrid[0:BOX, 0:BOX] - BOX // 2
    expected, circular, correlations = [], [], []
    for image, psi, theirs, mine in zip(raw.images.astype(np.float64),
                                        raw.particles["rlnAnglePsiPrior"], relion.images,
                                        ours.images, strict=True):
        angle = math.radians(psi)
        tube = np.abs(math.sin(angle) * j + math.cos(angle) * i) > DIAMETER / 2 / APIX
        dust = {}
        for name, background in (("tube", tube), ("circle", i**2 + j**2 > BG_RADIUS**2)):
            mean, std = image[background].mean(), image[background].std()
            dust[name] = np.abs(image - mean) > 2.5 * std
        expected.append(int(dust["tube"].sum()))
        circular.append(int(dust["circle"].sum()))
        # RELION's result but for the random values given to the replaced pixels
        correlations.append(pearson(theirs[~dust["tube"]], mine[~dust["tube"]]))
    counts = ours.particles["ceDustPixels"].to_numpy()
    assert (counts == expected).all() and counts.sum() > 20
    assert (counts != circular).sum() > 10  # the tube background, not the circle
    assert min(correlations) > 0.999


def test_convert_tubes_to_relion_segments(run: Run) -> None:
    """``convert --helix --helical-tubes``: the tubes become RELION's segments (those
    RELION keeps, at its unrounded coordinates, with its columns) plus the edge ones."""
    from cryoextract.pipeline.convert import ConvertOptions, convert_picks

    coords = coordinate_file(run.ds, run.ds.micrographs[0].name)
    out = run.ds.root / "converted.star"
    convert_picks([coords], ConvertOptions(
        to="star", out=out, pixel_size_angstrom=APIX, overwrite=True,
        helix=HelixParams(True, NR_ASU, RISE, bimodal_psi=bool(
            (run.relion.particles["rlnAnglePsiFlipRatio"] == 0.5).all()))))
    segments = starfile.read(out)
    ref = run.relion.particles
    key = ["rlnHelicalTubeID", "rlnHelicalTrackLengthAngst"]
    merged = ref.merge(segments.round({key[1]: 3}), on=[key[0]], suffixes=("", "_c"))
    merged = merged[np.abs(merged[key[1]] - merged[key[1] + "_c"]) < 1e-3]
    assert len(merged) == len(ref) < len(segments)
    for column in ("rlnCoordinateX", "rlnCoordinateY", "rlnAnglePsiPrior"):
        assert np.abs(merged[column] - merged[column + "_c"]).max() < 1e-5, column


def test_report_joins_the_segments_of_each_tube(run: Run, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    from cryoextract.report.page import write_report

    monkeypatch.chdir(run.ds.root)
    text = write_report(run.ds.root / "Ours", n_random=2, n_worst=0, max_micrographs=1
                        ).read_text()
    drawn = re.search(r'<path class="tubes" d="([^"]+)"', text).group(1)
    lines = [np.array(re.findall(r"([-\d.]+) ([-\d.]+)", line), float)
             for line in drawn.split("M")[1:]]
    parts = run.ours.particles
    tubes = [group[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
             for _, group in parts.groupby("rlnHelicalTubeID", sort=False) if len(group) > 1]
    assert len(lines) == len(tubes) > 5
    assert 'class="boxes"' not in text  # overlapping boxes would hide the tubes
    for line, tube in zip(lines, tubes, strict=True):
        assert line.shape == tube.shape and np.abs(line - tube).max() <= 0.05
