"""The fast plain-STAR reader against ``starfile`` (the independent oracle) on every STAR
file of the shared real data and on generated layouts; texts it must not take are left
to the general reader."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import starfile

from cryoextract.io.star import read_star
from cryoextract.io.star_plain import read_plain_star
from shared_data import SHARED_DATA, require_paths


def _same_as_starfile(path: Path) -> bool:
    """Assert our blocks equal starfile's; False when the text is not plain."""
    ours = read_plain_star(path.read_bytes().decode("utf-8", errors="replace"))
    if ours is None:
        return False
    theirs = starfile.read(path, always_dict=True)
    assert list(ours) == list(theirs), path
    for name, block in theirs.items():
        mine = ours[name]
        if isinstance(block, pd.DataFrame):
            assert isinstance(mine, pd.DataFrame), (path, name)
            pd.testing.assert_frame_equal(mine.reset_index(drop=True),
                                          block.reset_index(drop=True), check_names=False)
        else:
            assert mine == block, (path, name)
    return True


def test_every_shared_star_file_reads_as_starfile_reads_it() -> None:
    require_paths(SHARED_DATA)
    files = sorted(SHARED_DATA.rglob("*.star"))
    assert len(files) > 20
    plain = [path for path in files if _same_as_starfile(path)]
    # most real STAR files are plain: the fast path must actually be taken
    assert len(plain) >= len(files) // 2, (len(plain), len(files))


LAYOUTS = {
    "relion31": "# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n"
                "_rlnOpticsGroup #2\n_rlnMicrographPixelSize #3\nopticsGroup1 1 0.885\n\n"
                "# version 30001\n\ndata_particles\n\nloop_\n_rlnCoordinateX #1\n"
                "_rlnCoordinateY #2\n_rlnMicrographName #3\n_rlnClassNumber #4\n"
                "10.5 20 mics/a.mrc 1\n\n 11 21.25 mics/b.mrc 2\n-3e2 nan mics/c.mrc 3\n",
    "relion30": "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
                "100.000000 200.000000\n300.000000 400.000000\n",
    "pairs": "data_general\n\n_rlnImageSize 128\n_rlnPixelSize 1.5\n_rlnName abc\n"
             "_rlnFlag True\n\ndata_rows\nloop_\n_a\n_b\n1 x\n2 y\n",
    "empty_loop": "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n\n",
    "crlf": "data_x\r\n\r\nloop_\r\n_a #1\r\n_b #2\r\n1 2\r\n3 4\r\n",
    "mixed_text": "data_x\nloop_\n_a\n_b\n1 7\nfoo 8\nNaN 9\n<NA> 10\n",
    "bools": "data_x\nloop_\n_a\n_b\nTrue 1\nFalse 2\n",
    "all_nan": "data_x\nloop_\n_a\n_b\nnan 1\nnan 2\n",
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_generated_layouts_read_as_starfile_reads_them(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.star"
    path.write_bytes(LAYOUTS[name].encode())
    assert _same_as_starfile(path)


@pytest.mark.parametrize("text", [
    "data_x\nloop_\n_a\n_b\n'a b' 1\n",           # quoted value
    "data_x\nloop_\n_a\n_b\n1 2 # a comment\n",   # comment in the rows
    "data_x\nloop_\n_a\n_b\n1 2 3\n",             # more values than labels
    "data_x\n\ndata_y\nloop_\n_a\n1\n",           # an empty block
    "data_x\n_a 1 2\n",                           # a pair with two values
    "data_x\nloop_\n_a\n1\nloop_\n_b\n2\n",       # two loops in one block
])
def test_texts_that_are_not_plain_go_to_the_general_reader(tmp_path: Path, text: str) -> None:
    assert read_plain_star(text) is None
    path = tmp_path / "x.star"
    path.write_text(text)
    try:  # the general reader decides: a table or a one-line InputError, never a crash
        read_star(path)
    except Exception as exc:
        assert type(exc).__name__ == "InputError", exc
