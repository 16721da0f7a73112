"""The rule for missing test prerequisites (``prereq.py``): skip locally, fail in CI, and
nowhere else in the test suite a skip of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prereq import require, require_module, require_paths, require_programs
from shared_data import REAL, real_files

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci", [None, "false", "1"])
def test_missing_prerequisite_skips_outside_ci(monkeypatch: pytest.MonkeyPatch,
                                               ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="the reason"):
        require(False, "the reason")
    require(True, "never said")  # met: nothing happens


def test_missing_prerequisite_fails_in_ci(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"the reason.*CI=true"):
        require(False, "the reason")
    with pytest.raises(pytest.fail.Exception, match="no_such_file"):
        require_paths(tmp_path / "no_such_file")
    with pytest.raises(pytest.fail.Exception, match="no-such-program-4f1c"):
        require_programs("no-such-program-4f1c")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_4f1c"):
        require_module("no_such_module_4f1c")
    require_paths(tmp_path)
    assert require_module("json").dumps([1]) == "[1]"


def test_real_files_stand_in_when_nothing_matches() -> None:
    stand_in = real_files("*.no-such-extension")
    assert stand_in == [REAL / "*.no-such-extension"] and not stand_in[0].exists()


def test_no_skip_outside_prereq() -> None:
    """Every skip goes through prereq.require: no pytest.skip/importorskip/skip marks."""
    pattern = re.compile(r"pytest\.(skip|importorskip)\b|mark\.(skip|skipif)\b|\.xfail\b")
    stray = [f"{path.name}:{number}"
             for path in sorted(TESTS.glob("*.py")) if path.name not in ("prereq.py",
                                                                        Path(__file__).name)
             for number, line in enumerate(path.read_text().splitlines(), start=1)
             if pattern.search(line)]
    assert not stray, f"skips outside prereq.require: {stray}"
