"""Issue 14: a STAR row with another number of values than its loop has columns is
refused, naming the file and its line (as a file line: comments, blank lines, CRLF
and a BOM counted as an editor counts them), wherever the row is.

Only a loop's last row was checked (a file cut short); a short row before it was read
with an empty value (pandas fills it in), which RELION refuses: "A line in the STAR
file contains fewer columns than the number of labels".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cryoextract.errors import InputError
from cryoextract.io.star import read_star
from helpers import cli_env, one_line_error
from relion_oracle import require_relion

HEADER = ("# written by hand\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n"
          "1 300\n\n\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n"
          "_rlnDefocusU #3\n\n")
ROWS = ["1@a.mrcs 1 10000", "# a comment between rows", "2@a.mrcs 1 12000", "",
        "3@a.mrcs 1", "4@a.mrcs 1 11000"]
SHORT_LINE = HEADER.count("\n") + 5  # "3@a.mrcs 1", as an editor numbers it

VARIANTS = {
    "plain": lambda text: text,
    "quoted": lambda text: text.replace("4@a.mrcs", "'4@a b.mrcs'"),  # not plain
    "spaces": lambda text: text.replace("4@a.mrcs", '"4@a b.mrcs"'),
    "crlf-bom": lambda text: "\ufeff" + text.replace("\n", "\r\n"),
    "long": lambda text: text.replace("3@a.mrcs 1", "3@a.mrcs 1 10000 5"),
}


def _write(path: Path, variant: str) -> Path:
    path.write_bytes(VARIANTS[variant](HEADER + "\n".join(ROWS) + "\n").encode("utf-8"))
    return path


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_row_of_another_length_is_refused_naming_its_line(tmp_path: Path,
                                                           variant: str) -> None:
    path = _write(tmp_path / "particles.star", variant)
    with pytest.raises(InputError) as info:
        read_star(path)
    values = 4 if variant == "long" else 2
    assert info.value.line == SHORT_LINE, str(info.value)
    assert f"{path}:{SHORT_LINE}:" in str(info.value)
    assert f"{values} values for 3 columns" in str(info.value)


def test_rows_of_the_right_length_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "particles.star"
    path.write_text(HEADER + "\n".join(ROWS).replace("3@a.mrcs 1\n", "3@a.mrcs 1 9000\n"))
    table = read_star(path)["particles"]
    assert list(table["rlnDefocusU"]) == [10000, 12000, 9000, 11000]


def test_relion_refuses_the_short_row_too(tmp_path: Path) -> None:
    require_relion("relion_star_handler")
    path = _write(tmp_path / "particles.star", "plain")
    proc = subprocess.run(["relion_star_handler", "--i", str(path), "--o",
                           str(tmp_path / "out.star")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0
    assert "fewer columns than the number of labels" in proc.stdout + proc.stderr
    assert not (tmp_path / "out.star").exists()


def test_restack_refuses_it_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    _write(tmp_path / "particles.star", "plain")
    proc = subprocess.run([sys.executable, "-m", "cryoextract", "restack", "--particles",
                           "particles.star", "--out", "out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=cli_env(),
                          check=False)
    line = one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert f"particles.star:{SHORT_LINE}:" in line, line
    assert not (tmp_path / "out").exists()
