"""The rule for missing test prerequisites (``prereq.py``): the test fails, in CI and
locally alike, and the test suite holds no skip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prereq import require, require_module, require_paths, require_programs
from shared_data import REAL, real_files

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci", [None, "false", "true"])
def test_missing_prerequisite_fails_in_ci_and_locally(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"the reason.*make test"):
        require(False, "the reason")
    with pytest.raises(pytest.fail.Exception, match="no_such_file"):
        require_paths(tmp_path / "no_such_file")
    with pytest.raises(pytest.fail.Exception, match="no-such-program-4f1c"):
        require_programs("no-such-program-4f1c")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_4f1c"):
        require_module("no_such_module_4f1c")
    require(True, "never said")  # met: nothing happens
    require_paths(tmp_path)
    assert require_module("json").dumps([1]) == "[1]"


def test_real_files_stand_in_when_nothing_matches() -> None:
    stand_in = real_files("*.no-such-extension")
    assert stand_in == [REAL / "*.no-such-extension"] and not stand_in[0].exists()


def test_no_skip_anywhere() -> None:
    """No pytest.skip/importorskip/skip marks/xfail in any test file."""
    pattern = re.compile(r"pytest\.(skip|importorskip)\b|mark\.(skip|skipif)\b|\.xfail\b")
    stray = [f"{path.name}:{number}"
             for path in sorted(TESTS.glob("*.py")) if path.name != Path(__file__).name
             for number, line in enumerate(path.read_text().splitlines(), start=1)
             if pattern.search(line)]
    assert not stray, f"skips in the test suite: {stray}"
