"""Helpers and sample files shared by several test modules (readers, CLI, bad inputs).

The samples are hand-written text in each format; what a test expects of them it states
itself, from the text, never from our readers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoextract.errors import InputError


# --------------------------------------------------------------------------- files
def written(path: Path, content: str | bytes) -> Path:
    """``path`` holding ``content`` (text or bytes); parent folders made as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def mrc_written(path: Path, data: np.ndarray, voxel: float = 1.25,
                ext: np.ndarray | None = None) -> Path:
    """``path`` holding ``data`` as MRC (mrcfile), voxel size ``voxel`` Å, with the
    extended header ``ext`` when given."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if ext is not None:
            mrc.set_extended_header(ext)
        mrc.voxel_size = voxel
    return path


def refused(read: Callable[[], object], path: Path, line: int | None = None,
            match: str | None = None) -> InputError:
    """The InputError of ``read()``: one line naming ``path`` (``path:line`` when given)."""
    with pytest.raises(InputError, match=match) as info:
        read()
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    if line is not None:
        assert info.value.line == line, message
        assert f"{path}:{line}" in message, message
    return info.value


def write_picks_cs(path: Path, x_frac: list[float], y_frac: list[float],
                   shape_yx: tuple[int, int]) -> Path:
    """A minimal cryoSPARC picks ``.cs`` (numpy structured array, as cryoSPARC < 4.4)."""
    dtype = [("uid", "<u8"), ("location/micrograph_path", "S64"),
             ("location/micrograph_shape", "<u4", (2,)),
             ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4")]
    data = np.zeros(len(x_frac), dtype=dtype)
    data["uid"] = np.arange(len(x_frac))
    data["location/micrograph_path"] = b"J1/imported/mic_a.mrc"
    data["location/micrograph_shape"] = shape_yx
    data["location/center_x_frac"], data["location/center_y_frac"] = x_frac, y_frac
    with open(path, "wb") as stream:
        np.save(stream, data)
    return path


# --------------------------------------------------------------------------- the CLI
def cli_env() -> dict[str, str]:
    """Environment of a CLI subprocess: one thread per library, wide lines, UTF-8."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               COLUMNS="200", PYTHONIOENCODING="utf-8")
    return env


def cli_run(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m cryoextract ARGS`` in ``root`` (:func:`cli_env`), output captured."""
    return subprocess.run([sys.executable, "-m", "cryoextract", *args], cwd=root,
                          capture_output=True, text=True, timeout=timeout, env=cli_env(),
                          check=False)


def cli_ok(proc: subprocess.CompletedProcess) -> None:
    """Assert a CLI run succeeded, showing its output when it did not."""
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def one_line_error(returncode: int, stdout: str, stderr: str, where: str = "") -> str:
    """Check a refused CLI run (exit 2, no traceback, one stderr line); return that line."""
    where = where or f"rc={returncode}\nstderr:\n{stderr}\nstdout:\n{stdout}"
    assert "Traceback" not in stderr + stdout, where
    assert returncode == 2, where
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, where
    return lines[0]


# --------------------------------------------------------------------------- samples
# RELION 3.0 autopick STAR: bare data_, coordinates with score and class
STAR30_PICKS = """
data_

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnAutopickFigureOfMerit #3
_rlnClassNumber #4
  839.125024    19.979167     0.624705            0
  899.062526   199.791672     0.623809            0
   10.000000   300.500000     0.100000            0
"""

# RELION 3.1 micrographs STAR: two optics groups, three micrographs
MICROGRAPHS_STAR31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnMicrographPixelSize #7
opticsGroup1 1 0.885 300.0 2.7 0.1 0.885
opticsGroup2 2 0.5 200.0 2.7 0.1 1.0


data_micrographs

loop_
_rlnMicrographName #1
_rlnOpticsGroup #2
_rlnDefocusU #3
MotionCorr/job002/Movies/a.mrc 1 10000.0
MotionCorr/job002/Movies/b.mrc 2 12000.0
MotionCorr/job002/Movies/c.mrc 1 14000.0
"""

# crYOLO .cbox: lower-left corners, 220 px boxes, <NA> where crYOLO has no value
CBOX = """
data_global

_cbox_format_version 1.0

data_cryolo

loop_
_CoordinateX #1
_CoordinateY #2
_CoordinateZ #3
_Width #4
_Height #5
_Depth #6
_EstWidth #7
_EstHeight #8
_Confidence #9
_NumBoxes #10
_Angle #11
3700.25 3874.5 <NA> 220.0 220.0 <NA> 232.0 222.0 0.65 <NA> <NA>
10.0 20.0 <NA> 220.0 220.0 <NA> 220.0 218.0 0.13 <NA> <NA>

data_cryolo_include

loop_
_slice_index #1
"""

# Xmipp .pos: manual picks (one disabled) and automatic picks
POS = """# XMIPP_STAR_1 *
#
data_header
loop_
 _pickingMicrographState
Manual
data_particles
loop_
 _itemId
 _enabled
 _xcoor
 _ycoor
 _cost
 _micrographId
 000001   1   1030  1438  1   000003
 000002   -1   10  20  1   000003
data_particles_auto
loop_
 _xcoor
 _ycoor
 _cost
 _enabled
 500 600 0.75 1
"""


def stack_of(star: Path, written: str) -> Path:
    """The stack a STAR row names, found as RELION would: relative to the directory the
    command that wrote ``star`` ran in (its ``summary.json``'s ``paths_relative_to``,
    beside it or one folder up for additional outputs), else to the STAR's folder."""
    import json

    if Path(written).is_absolute():
        return Path(written)
    bases = []
    for summary in (star.parent / "summary.json", star.parent.parent / "summary.json"):
        if summary.is_file():
            recorded = json.loads(summary.read_text()).get("paths_relative_to")
            if recorded:
                bases.append(Path(recorded))
    bases.append(star.parent)
    for base in bases:
        if (base / written).is_file():
            return base / written
    return bases[0] / written
