"""The QC report's thumbnail gate: workers skip thumbnails the report cannot show."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from cryoextract import ExtractParams, extract
from cryoextract.ops.thumbnail import Thumbnail
from cryoextract.pipeline.extraction import task as task_module
from cryoextract.pipeline.extraction.thumbnail_gate import ThumbnailGate, ThumbnailShortlist
from cryoextract.sim.simulate import simulate_dataset


def test_gate_admits_by_the_reports_rank() -> None:
    gate = ThumbnailGate()
    assert gate.admits(0, 0, 10**6)
    gate.raise_to(3, 10, 5)
    assert gate.admits(3, 10, 5) and gate.admits(3, 10, 4) and gate.admits(3, 11, 9)
    assert gate.admits(4, 0, 9)
    assert not gate.admits(3, 10, 6) and not gate.admits(3, 9, 0)
    assert not gate.admits(2, 10**6, 0)
    gate.raise_to(1, 0, 0)  # never lowered
    assert not gate.admits(2, 0, 0)


def _child(gate: ThumbnailGate, answers: multiprocessing.Queue) -> None:
    answers.put((gate.admits(5, 5, 1), gate.admits(5, 4, 0)))


def test_forked_workers_see_the_bar_raised_after_they_started() -> None:
    gate = ThumbnailGate()
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    gate.raise_to(5, 5, 1)
    child = context.Process(target=_child, args=(gate, answers))
    child.start()
    child.join(30)
    assert answers.get(timeout=5) == (True, False)


def test_shortlist_worst_kept() -> None:
    pixels = Thumbnail(np.zeros((2, 2), np.uint8), (8, 8))
    shortlist = ThumbnailShortlist(2)
    shortlist.offer("a", n_kept=5, n_dropped=1, thumbnail=pixels)
    assert shortlist.worst_kept is None
    shortlist.offer("b", n_kept=9, n_dropped=0, thumbnail=pixels)
    assert shortlist.worst_kept == (0, 9, "b")
    shortlist.offer("c", n_kept=1, n_dropped=2, thumbnail=pixels)
    assert shortlist.worst_kept == (1, 5, "a")


def test_extraction_makes_only_the_thumbnails_the_report_may_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six micrographs, the first four with off-micrograph picks: in one process the last
    two rank below all four and get no thumbnail; the report still draws four, none read
    again."""
    import cryoextract.report.page as page

    ds = simulate_dataset(tmp_path / "data", n_micrographs=6, shape_yx=(384, 384),
                          particles_per_micrograph=8, particle_diameter_angstrom=100.0,
                          seed=3, edge_picks=False)
    for i, path in enumerate(sorted((ds.out_dir / "Picks").glob("*.star"))):
        if i < 4:  # 3 + i picks off the micrograph: dropped, so these rank first
            path.write_text(path.read_text().rstrip("\n") + "\n" + "".join(
                f"{5000 + k}.0\t{5000 + k}.0\t0.5\t0\n" for k in range(3 + i)))
    made: list[tuple[int, int]] = []
    real = task_module.micrograph_thumbnail

    def counting(image: np.ndarray) -> Thumbnail:
        made.append(image.shape)
        return real(image)

    monkeypatch.setattr(task_module, "micrograph_thumbnail", counting)
    monkeypatch.setattr(page, "open_micrograph", lambda path: pytest.fail(f"read {path}"))
    monkeypatch.chdir(ds.out_dir)
    out = tmp_path / "out"
    summary = extract("micrographs.star", out, ExtractParams(box_px=ds.box_px),
                      coords_dir="Picks", coords_suffix="_autopick.star", workers=1,
                      report=True)
    assert sum(summary.particles_dropped.values()) == 3 + 4 + 5 + 6
    assert len(made) == 4
    # the same counts everywhere: the first four by name only (ties go by name)
    made.clear()
    for path in sorted((ds.out_dir / "Picks").glob("*.star")):
        lines = path.read_text().splitlines()
        path.write_text("\n".join(line for line in lines if not line.startswith("50")) + "\n")
    extract("micrographs.star", out, ExtractParams(box_px=ds.box_px), coords_dir="Picks",
            coords_suffix="_autopick.star", workers=1, report=True, overwrite=True)
    assert len(made) == 4
    text = (out / "report" / "index.html").read_text()
    assert all(f"micrograph_{i}.png" in text for i in range(1, 5))
