"""Issue 14: parameters that can never work, refused in one line before anything is
written, for the commands beyond ``extract``'s own list (tests/test_extract_guards.py).

- ``convert`` took an infinite or denormal ``--box``, ``--coords-pixel-size`` or
  ``--pixel-size`` and wrote ``inf`` coordinates and box sizes;
- a ``--helical-rise-angstrom`` of ``inf`` or ``1e-320`` (convert and extract) cut a
  tube in a loop that never ended (the process grew until it was killed); a rise that
  cuts one tube into more than a million segments is one line naming the pick file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cryoextract.ops.helix import MAX_SEGMENTS_PER_TUBE, segment_tube
from cryoextract.sim.simulate import simulate_dataset
from helpers import cli_env, one_line_error


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI, with a memory ceiling: a run that never ends fails here, not the host."""
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    return subprocess.run([sys.executable, "-m", "cryoextract", *args], cwd=root,
                          capture_output=True, text=True, timeout=120, env=cli_env(),
                          preexec_fn=limit, check=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("params")
    simulate_dataset(root / "data", n_micrographs=1, shape_yx=(256, 256),
                     particles_per_micrograph=4, pixel_size_angstrom=2.0,
                     particle_diameter_angstrom=60.0, seed=6)
    return root


PICKS = "data/Picks/mic_001_autopick.star"


HELIX = ["--helix", "--helical-tubes", "--pixel-size", "2", "--helical-rise-angstrom"]


@pytest.mark.parametrize(("args", "named"), [
    (["--box", "inf"], "--box"), (["--box", "1e-320"], "--box"),
    (["--coords-pixel-size", "inf", "--pixel-size", "1"], "--coords-pixel-size"),
    (["--coords-pixel-size", "1e-320", "--pixel-size", "1"], "--coords-pixel-size"),
    (["--coords-pixel-size", "1", "--pixel-size", "inf"], "error: --pixel-size"),
    ([*HELIX, "inf"], "--helical-rise-angstrom"),
    ([*HELIX, "1e-320"], "--helical-rise-angstrom"),
    ([*HELIX, "1e-9"], f"{PICKS}: a step of 5e-10 px"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_convert_refuses_sizes_that_can_never_work(data: Path, args: list[str],
                                                   named: str) -> None:
    proc = run(data, "convert", PICKS, "--to", "box", "--box", "48", *args, "--out",
               "out/picks.box")
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert named in line, line
    assert not (data / "out").exists()


def test_extract_refuses_a_rise_that_is_no_length(data: Path) -> None:
    for rise in ("inf", "1e-320", "nan"):
        proc = run(data, "extract", "--micrographs", "data/micrographs.star", "--coords-dir",
                   "data/Picks", "--coords-suffix", "_autopick.star", "--box", "48",
                   "--helix", "--helical-tubes", "--helical-rise-angstrom", rise,
                   "--out", "ext", "--workers", "1", "--quiet")
        line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
        assert "--helical-rise-angstrom" in line, line
        assert not (data / "ext").exists()


def test_segments_end_whatever_the_step() -> None:
    xy, lengths, _ = segment_tube((10.0, 10.0), (110.0, 10.0), 10.0)
    # RELION's placement, unchanged: 0.01 step past the start, then every step
    assert len(xy) == 10 and xy[0, 0] == pytest.approx(10.1) and lengths[-1] == 90.0
    for step in (float("inf"), float("nan"), 5e-324, 1e-9, 0.0, -1.0):
        with pytest.raises(ValueError, match=str(MAX_SEGMENTS_PER_TUBE)):
            segment_tube((1000.0, 10.0), (1100.0, 10.0), step)
    # a step lost in rounding at these coordinates (x + dx == x) still ends
    xy, _, _ = segment_tube((1e12, 0.0), (1e12 + 1e-3, 0.0), 1e-6)
    assert len(xy) <= 1e-3 / 1e-6 + 3
