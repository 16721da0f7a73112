"""The fuzzing harness of ``test_fuzz_*.py``: hypothesis settings, byte-level mutations of
valid files, the inputs that broke a reader once tried first (:func:`with_examples`), and
the one check (:func:`parses_or_refuses`):
a reader returns or raises ``CryoExtractError`` with a one-line message.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, example, settings
from hypothesis import strategies as st

from cryoextract.errors import CryoExtractError

# Deterministic (the same examples on every run, so CI does not flake); for a longer hunt
# with fresh examples: CRYOEXTRACT_FUZZ_EXAMPLES=2000 CRYOEXTRACT_FUZZ_RANDOM=1 pytest ...
EXAMPLES = int(os.environ.get("CRYOEXTRACT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("CRYOEXTRACT_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# tokens of the text formats, to build random files that get past the first checks
TOKENS = [
    "data_", "data_optics", "data_micrographs", "data_particles", "data_cryolo", "data_global",
    "data_header", "loop_", "_rlnMicrographName", "_rlnOpticsGroup", "_rlnOpticsGroupName",
    "_rlnMicrographPixelSize", "_rlnImagePixelSize", "_rlnCoordinateX", "_rlnCoordinateY",
    "_rlnImageName", "_rlnDefocusU", "_rlnMicrographCoordinates", "_CoordinateX",
    "_CoordinateY", "_Width", "_Height", "_xcoor", "_ycoor", "_enabled", "_itemId",
    "# XMIPP_STAR_1 *", "image_name", "x_coord", "y_coord", "score", "#", "#1", "#2",
    "# Columns: #1 - micrograph number; #2 - defocus 1", "# Pixel size: 1.0 Angstroms ;",
    "acceleration voltage: 300 keV ;", "spherical aberration: 2.7 mm ;",
    "amplitude contrast: 0.1", "1", "0", "-1", "2", "7", "1.5", "-3.25", "1e5", "1e400",
    "-1e400", "nan", "NaN", "inf", "-inf", "<NA>", "None", "abc", "mic_001.mrc",
    "Micrographs/mic_001.mrc", "000001@s.mrcs", "@", '"a b"', "'c d'", '"', "'", ";", ",",
    "\\", "\t", " ", "é", "日本", "\x00", "\r", "\x0c", "data_data_", "_", "__", "0x1F",
    "1_000", "+", "-", ".", "..", "9" * 30,
]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few random edits: flips, deletions, insertions, line edits, cuts."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "token", "line", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[at: at + draw(st.integers(1, 40))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS)).encode("utf-8")
        elif op == "line":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            action = draw(st.sampled_from(["duplicate", "drop", "cut", "swap"]))
            if action == "duplicate":
                lines.insert(i, lines[i])
            elif action == "drop":
                del lines[i]
            elif action == "cut":
                lines[i] = lines[i][: len(lines[i]) // 2]
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        else:
            del data[at:]
    return bytes(data)




def with_examples(found: list[bytes]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``@example(content=...)`` for each input of ``found``."""
    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        for content in reversed(found):
            test = example(content=content)(test)
        return test
    return decorate


# --------------------------------------------------------------------------- harness
file_numbers = itertools.count()


def write(directory: Path, content: bytes, suffix: str) -> Path:
    """A fresh file per example (hypothesis reruns examples; names never repeat)."""
    path = directory / f"f{next(file_numbers):06d}{suffix}"
    path.write_bytes(content)
    return path


def parses_or_refuses(read: Callable[[], object]) -> object:
    """Call a reader: it returns, or raises CryoExtractError with a one-line message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read()
    except CryoExtractError as exc:
        message = str(exc)
        assert message.strip(), "empty error message"
        assert "\n" not in message.strip(), f"multi-line error message: {message!r}"
        return None
