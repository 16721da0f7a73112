"""One record per pick format (io/pickformats/registry.py), and ``convert`` on it.

A format added to the registry alone is read by extension and content, accepted by
``--coords-format`` and written by ``write_picks`` and ``convert``; ``convert`` takes
the output format from the output's extension (that io/ imports nothing above it is
tests/test_layers.py). The values checked are the coordinates written into the files
here, not our own readers' output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryoextract.errors import InputError, ParameterError
from cryoextract.io import coords
from cryoextract.io.pickformats import registry
from cryoextract.io.pickformats.registry import PickFormat
from cryoextract.io.pickformats.writers import write_picks
from helpers import CBOX, POS, cli_env, one_line_error, written

XY = ["rlnCoordinateX", "rlnCoordinateY"]


# a format that exists only in this test: "x;y" per line, extension .semi
def read_semi(path: Path) -> pd.DataFrame:
    rows = [line.split(";") for line in path.read_text().splitlines() if line.strip()]
    table = pd.DataFrame([[float(x), float(y)] for x, y in rows], columns=XY)
    return table


def write_semi(path: Path, picks: pd.DataFrame) -> None:
    Path(path).write_text("".join(f"{x};{y}\n" for x, y in picks[XY].to_numpy()))


SEMI = PickFormat("semi", "semicolon pairs", (".semi",), reader=f"{__name__}:read_semi",
                  writer=f"{__name__}:write_semi",
                  sniff=lambda head: ";" in head.first_data_line)


@pytest.fixture
def with_semi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "PICK_FORMATS", (*registry.PICK_FORMATS, SEMI))


def test_a_format_is_one_record(with_semi: None, tmp_path: Path) -> None:
    path = written(tmp_path / "mic.semi", "10.5;20\n30;40.25\n")
    assert coords.guess_format(path) == "semi"
    for fmt in ("auto", "semi"):
        picks = coords.read_picks(path, fmt)
        np.testing.assert_array_equal(picks[XY].to_numpy(), [[10.5, 20], [30, 40.25]])
    # written by write_picks and by convert, by name or by the output's extension
    out = tmp_path / "copy.semi"
    write_picks(out, picks, "semi")
    assert out.read_text() == "10.5;20.0\n30.0;40.25\n"
    from cryoextract.pipeline.convert import ConvertOptions, convert_picks

    result = convert_picks([path], ConvertOptions(to=None, out=tmp_path / "c.semi"))
    assert result.format == "semi"
    assert (tmp_path / "c.semi").read_text() == "10.5;20.0\n30.0;40.25\n"
    # its content is recognised: a .star holding it is refused naming the format
    other = written(tmp_path / "mislabelled.star", "data_\nloop_\n_rlnCoordinateX\n")
    assert registry.sniff_format(other) == "star"
    mislabelled = written(tmp_path / "wrong.box", "1;2\n")
    with pytest.raises(InputError, match="semicolon pairs"):
        coords.read_picks(mislabelled)


def test_without_the_record_the_format_is_unknown(tmp_path: Path) -> None:
    path = written(tmp_path / "mic.semi", "10.5;20\n")
    with pytest.raises(InputError, match="unknown coordinate format"):
        coords.read_picks(path)
    with pytest.raises(ParameterError, match="unknown output format"):
        write_picks(tmp_path / "x.semi", pd.DataFrame({"rlnCoordinateX": [1.0],
                                                      "rlnCoordinateY": [2.0]}), "semi")


def test_dialects_are_recognised_before_their_format(tmp_path: Path) -> None:
    # a crYOLO .cbox and an Xmipp .pos are STAR files too
    assert registry.sniff_format(written(tmp_path / "a.cbox", CBOX)) == "cbox"
    assert registry.sniff_format(written(tmp_path / "a.pos", POS)) == "pos"
    topaz = written(tmp_path / "t.txt", "image_name\tx_coord\ty_coord\nmic\t1\t2\n")
    plain = written(tmp_path / "p.txt", "1 2\n3 4\n")
    assert coords.guess_format(topaz) == "topaz"
    assert coords.guess_format(plain) == "txt"


@pytest.mark.parametrize("name", registry.writable())
def test_every_writer_round_trips_the_coordinates(name: str, tmp_path: Path) -> None:
    fmt = registry.pick_format(name)
    picks = pd.DataFrame({"rlnCoordinateX": [12.0, 100.5], "rlnCoordinateY": [7.0, 64.25],
                          "rlnMicrographName": ["mics/m1.mrc", "mics/m1.mrc"]})
    path = tmp_path / f"picks{fmt.extensions[0]}"
    write_picks(path, picks if fmt.many_micrographs else picks.drop(
        columns="rlnMicrographName"), name, box_px=32, micrograph_name="m1")
    assert coords.guess_format(path) == name
    back = coords.read_picks(path)
    np.testing.assert_allclose(back[XY].to_numpy(), picks[XY].to_numpy(), atol=1e-3)


@pytest.mark.parametrize(("suffix", "expected"), [
    (".star", "star"), (".box", "box"), (".cbox", "cbox"), (".txt", "topaz")])
def test_convert_takes_the_format_from_the_output_extension(
        suffix: str, expected: str, tmp_path: Path) -> None:
    source = written(tmp_path / "mic_a.box", "10 20 32 32\n50 60 32 32\n")
    out = tmp_path / f"out{suffix}"
    done = _convert([str(source), "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert f"to {expected}:" in done.stdout
    assert coords.guess_format(out) == expected
    back = coords.read_picks(out)
    np.testing.assert_allclose(back[XY].to_numpy(), [[26, 36], [66, 76]])


def test_convert_without_to_or_extension_is_one_line(tmp_path: Path) -> None:
    source = written(tmp_path / "mic_a.box", "10 20 32 32\n")
    done = _convert([str(source), "--out", str(tmp_path / "folder")])
    line = one_line_error(done.returncode, done.stdout, done.stderr)
    assert "give --to" in line and ".star" in line, line
    assert not (tmp_path / "folder").exists()


def test_cli_choices_and_help_come_from_the_registry() -> None:
    import typer.main

    from cryoextract.cli.app import app

    command = typer.main.get_command(app).commands["convert"]  # type: ignore[attr-defined]
    to = next(p for p in command.params if p.name == "to")
    assert to.display_type(None) == "<" + "|".join(registry.writable()) + ">"
    extract = typer.main.get_command(app).commands["extract"]  # type: ignore[attr-defined]
    help_text = next(p for p in extract.params if p.name == "coords_format").help
    for fmt in registry.PICK_FORMATS:
        assert f"{fmt.name} ({fmt.description})" in help_text


def _convert(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cryoextract", "convert", *args],
                          capture_output=True, text=True, timeout=120, env=cli_env())
