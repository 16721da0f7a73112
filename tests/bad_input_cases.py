"""The broken inputs of ``test_bad_inputs.py``: each :class:`Case` breaks one thing in a
copy of a small simulated dataset and gives the command line to run; its expectation is
:class:`Error` (exit 2, one line naming the file or option), :class:`Skip` (that
micrograph skipped, the others extracted) or :class:`Works` (odd but valid input).
``CRYOEXTRACT_ALL_BAD_INPUTS=1`` runs the ``extra`` cases too (:data:`RUN_CASES`).
"""

from __future__ import annotations

import os
import shutil
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from cryoextract.io.star import read_star
from helpers import written

BAD = "Micrographs/mic_002.mrc"  # the micrograph broken in the skip cases (not the first)
BAD_PICKS = "Picks/mic_002_autopick.star"
MICROGRAPHS = "micrographs.star"
N_MICROGRAPHS = 3
ROOT = os.geteuid() == 0  # chmod 000 does not stop root from reading
FSIZE_LIMIT = 40_000  # bytes per file in the disk-full case (a 10-particle stack is ~160 kB)


# --------------------------------------------------------------------------- expectations
@dataclass(frozen=True)
class Error:
    """Exit 2, one stderr line containing ``names`` (and ``names:line`` when given)."""

    names: str
    line: int | None = None


@dataclass(frozen=True)
class Skip:
    """Exit 0, ``micrograph`` skipped with a reason naming ``names``; the others done."""

    micrograph: str = BAD
    names: str = "mic_002"


@dataclass(frozen=True)
class Works:
    """Exit 0; ``done`` micrographs extracted; ``dropped`` a reason in the summary."""

    done: int = N_MICROGRAPHS
    dropped: str | None = None
    particles: int | None = None


Expectation = Error | Skip | Works


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # breaks the copy of the dataset, returns CLI args
    expect: Expectation
    fsize_limit: int | None = None
    out: str = "out"
    extra: bool = False  # run only with CRYOEXTRACT_ALL_BAD_INPUTS=1
    keeps: str | None = None  # a file that must survive the run

    def __repr__(self) -> str:
        return self.name


# --------------------------------------------------------------------------- helpers
OPTIONS = {
    "--micrographs": "micrographs.star", "--coords-dir": "Picks",
    "--coords-suffix": "_autopick.star", "--box": "64", "--workers": "1", "--out": "out",
}


def cli(*extra: str, report: bool = False, **changed: str | None) -> list[str]:
    """Default arguments with options replaced (``box="-4"``) or removed (``coords_dir=None``).

    The QC report is left out unless ``report``.
    """
    options = dict(OPTIONS)
    for key, value in changed.items():
        option = "--" + key.replace("_", "-")
        if value is None:
            options.pop(option, None)
        else:
            options[option] = value
    args = [item for pair in options.items() for item in pair]
    return [*args, "--quiet", "--report" if report else "--no-report", *extra]


def poke(path: Path, offset: int, fmt: str, *values: object) -> None:
    """Overwrite bytes of a file in place (little-endian MRC header fields)."""
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as stream:
        stream.truncate(size)


def write_mrc(path: Path, data: np.ndarray) -> None:
    path.unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrcfile warns about NaN/inf data: that is the point
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = 1.5


def read_pixels(path: Path) -> np.ndarray:
    with mrcfile.open(path) as mrc:
        return np.array(mrc.data, dtype=np.float32)


def symlink_loop(path: Path) -> None:
    """Replace ``path`` by a link into a two-link loop."""
    if path.exists() or path.is_symlink():
        path.unlink()
    other = path.with_name(path.name + ".loop")
    os.symlink(other.name, path)
    os.symlink(path.name, other)


def unreadable(path: Path) -> None:
    """Make ``path`` unreadable: chmod 000, or (as root, which reads anyway) a directory."""
    if ROOT:
        path.unlink(missing_ok=True)
        path.mkdir()
        (path / "inside").write_text("a directory where a file is expected\n")
    else:
        path.chmod(0)


def picks_text(rows: list[tuple[str, str]], extra_header: str = "") -> str:
    body = "".join(f"{x}\t{y}\n" for x, y in rows)
    return (f"\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n{extra_header}"
            f"{body}\n")


def cut_in_last_row(path: Path) -> int:
    """Cut a STAR file in the middle of its last loop row; return that row's line number."""
    lines = path.read_text().rstrip("\n").splitlines()
    last = len(lines)
    row = lines[-1]
    keep = "\n".join(lines[:-1]) + "\n" + row[: max(1, len(row) // 2)].rstrip()
    path.write_text(keep)  # no newline at the end: the writer died mid-row
    return last


def rewrite(path: Path, old: str, new: str, count: int = -1) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count))


def micrographs_row_line(root: Path, name: str) -> int:
    for number, line in enumerate((root / "micrographs.star").read_text().splitlines(), 1):
        if line.startswith(name):
            return number
    raise AssertionError(name)


# --------------------------------------------------------------------------- cases
def _broken(
    name: str, damage: Callable[[Path], object], report: bool = False
) -> Callable[[Path], list[str]]:
    """Setup of a case: ``damage(root / name)``, then the default arguments."""
    def setup(root: Path) -> list[str]:
        damage(root / name)
        return cli(report=report)
    return setup


def _content(content: bytes | str) -> Callable[[Path], object]:
    """Damage: the file's content replaced by ``content``."""
    return lambda path: written(path, content)


def _mrc_field(offset: int, fmt: str, *values: object) -> Callable[[Path], list[str]]:
    return _broken(BAD, lambda path: poke(path, offset, fmt, *values))


def _mrc_truncated(size: int) -> Callable[[Path], list[str]]:
    return _broken(BAD, lambda path: truncate(path, size))


def _mrc_data(
    make: Callable[[np.ndarray], np.ndarray], report: bool = False
) -> Callable[[Path], list[str]]:
    return _broken(BAD, lambda path: write_mrc(path, make(read_pixels(path))), report)


def _nan_block(image: np.ndarray) -> np.ndarray:
    image = image.copy()
    image[100:160, :] = np.nan
    return image


def _inf_pixels(image: np.ndarray) -> np.ndarray:
    image = image.copy()
    image[::37, ::41] = np.inf
    image[5::53, 3::29] = -np.inf
    return image


def _duplicate_micrograph(root: Path) -> list[str]:
    path = root / "micrographs.star"
    lines = path.read_text().splitlines()
    row = next(line for line in lines if line.startswith(BAD))
    at = lines.index(row)
    path.write_text("\n".join([*lines[: at + 1], row, *lines[at + 1:]]) + "\n")
    return cli()


def _unknown_optics_group(root: Path) -> list[str]:
    path = root / "micrographs.star"
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(BAD))
    fields = lines[at].split("\t")
    fields[1] = "7"
    lines[at] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n")
    return cli()


def _optics_pixel_size(value: str) -> Callable[[Path], list[str]]:
    return _broken(MICROGRAPHS, lambda path: rewrite(
        path, "1.500000\t300.000000\t2.700000\t0.100000\t1.500000",
        f"1.500000\t300.000000\t2.700000\t0.100000\t{value}"))


def _missing_star(root: Path) -> list[str]:
    return cli(micrographs="no_such_micrographs.star")


def _glob_matching_nothing(root: Path) -> list[str]:
    return cli(micrographs="Nowhere/*.mrc", pixel_size="1.5")


def _bad_line_in_one_file(root: Path) -> list[str]:
    (root / "picks.box").write_text("# x y w h\n10 12 64 64\n40 abc 64 64\n80 90 64 64\n")
    return cli(micrographs="Micrographs/mic_001.mrc", pixel_size="1.5", coords="picks.box",
               coords_dir=None, coords_suffix=None)


def _bad_line_in_coords_dir(root: Path) -> list[str]:
    for number in range(1, N_MICROGRAPHS + 1):
        rows = "100 100\n120 140\n90 60\n"
        if number == 2:
            rows = "100 100\n120 140\n90 sixty\n"
        (root / "Picks" / f"mic_{number:03d}.txt").write_text("x y\n" + rows)
    return cli(coords_suffix=".txt")


def _too_few_columns(root: Path) -> list[str]:
    (root / "picks.txt").write_text("100 100\n120 140\n90\n")
    return cli(micrographs="Micrographs/mic_001.mrc", pixel_size="1.5", coords="picks.txt",
               coords_dir=None, coords_suffix=None)


def _unknown_coords_extension(root: Path) -> list[str]:
    (root / "picks.xyz").write_text("100 100\n")
    return cli(coords="picks.xyz", coords_dir=None, coords_suffix=None)


def _unknown_coords_format_option(root: Path) -> list[str]:
    return cli("--coords-format", "eman9")


def _coords_file_without_micrograph_name(root: Path) -> list[str]:
    shutil.copy(root / "Picks" / "mic_001_autopick.star", root / "all_picks.star")
    return cli(coords="all_picks.star", coords_dir=None, coords_suffix=None)


def _particles_star(root: Path) -> Path:
    """One particles STAR of every pick (with rlnMicrographName)."""
    lines = ["", "data_particles", "", "loop_", "_rlnMicrographName #1", "_rlnCoordinateX #2",
             "_rlnCoordinateY #3"]
    for number in range(1, N_MICROGRAPHS + 1):
        tables = read_star(root / "Picks" / f"mic_{number:03d}_autopick.star")
        table = next(iter(tables.values()))
        for x, y in zip(table["rlnCoordinateX"], table["rlnCoordinateY"], strict=True):
            lines.append(f"Micrographs/mic_{number:03d}.mrc\t{x:.3f}\t{y:.3f}")
    path = root / "all_picks.star"
    path.write_text("\n".join(lines) + "\n")
    return path


def _half_written_particles_star(root: Path) -> list[str]:
    cut_in_last_row(_particles_star(root))
    return cli(coords="all_picks.star", coords_dir=None, coords_suffix=None)


def _particles_star_matching_nothing(root: Path) -> list[str]:
    path = _particles_star(root)
    rewrite(path, "Micrographs/mic_", "Elsewhere/other_")
    return cli(coords="all_picks.star", coords_dir=None, coords_suffix=None)


def _garbage_cs(root: Path) -> list[str]:
    (root / "picks.cs").write_bytes(b"\x93NUMPY\x01\x00" + os.urandom(300))
    return cli(coords="picks.cs", coords_dir=None, coords_suffix=None)


def _coords_path_is_directory(root: Path) -> list[str]:
    (root / "picks_dir.star").mkdir()
    return cli(coords="picks_dir.star", coords_dir=None, coords_suffix=None)


def _missing_coords_dir(root: Path) -> list[str]:
    return cli(coords_dir="NoSuchPicks")


def _picks(rows: list[tuple[str, str]], report: bool = False) -> Callable[[Path], list[str]]:
    return _broken(BAD_PICKS, _content(picks_text(rows)), report)


def _spaces_and_non_ascii(root: Path) -> list[str]:
    mics, picks = root / "Micro graphs ü", root / "Pícks dir"
    (root / "Micrographs").rename(mics)
    (root / "Picks").rename(picks)
    star = (root / "micrographs.star").read_text()
    for number in range(1, N_MICROGRAPHS + 1):
        name = f"mïc {number:03d} é"
        (mics / f"mic_{number:03d}.mrc").rename(mics / f"{name}.mrc")
        (picks / f"mic_{number:03d}_autopick.star").rename(picks / f"{name}_autopick.star")
        star = star.replace(f"Micrographs/mic_{number:03d}.mrc", f'"{mics.name}/{name}.mrc"')
    (root / "micrographs.star").write_text(star)
    return cli(coords_dir=picks.name, out="out dir ñ/ja 日本", report=True)


def _glob_with_spaces(root: Path) -> list[str]:
    (root / "Micrographs").rename(root / "my micrographs é")
    return cli(micrographs="my micrographs é/*.mrc", pixel_size="1.5",
               out="out with space")


def _output_under_a_file(root: Path) -> list[str]:
    (root / "a_file").write_text("not a directory\n")
    return cli(out="a_file/out")


def _output_is_a_file(root: Path) -> list[str]:
    (root / "a_file").write_text("not a directory\n")
    return cli(out="a_file")


def _output_loop(root: Path) -> list[str]:
    symlink_loop(root / "out_loop")
    return cli(out="out_loop")


def _output_not_empty(root: Path) -> list[str]:
    (root / "out").mkdir()
    (root / "out" / "precious.txt").write_text("someone's work\n")
    return cli()


def _disk_full(root: Path) -> list[str]:
    return cli()


def _options(*extra: str, **changed: str | None) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        return cli(*extra, **changed)
    return setup


def _mode(mode: int) -> Callable[[Path], list[str]]:
    return _mrc_field(12, "<i", mode)


CASES = [
    # ---- micrographs: corrupted headers, data and files (one bad among good ones: skip)
    Case("mrc_bad_map_id", _mrc_field(208, "4s", b"XXXX"), Skip()),
    Case("mrc_absurd_nx", _mrc_field(0, "<i", 2**30), Skip()),
    Case("mrc_absurd_ny_nz", _mrc_field(4, "<ii", 70000, 70000), Skip(), extra=True),
    Case("mrc_negative_nx", _mrc_field(0, "<i", -256), Skip()),
    Case("mrc_negative_nz", _mrc_field(8, "<i", -1), Skip(), extra=True),
    Case("mrc_zero_nx", _mrc_field(0, "<i", 0), Skip(), extra=True),
    Case("mrc_mode_99", _mode(99), Skip()),
    Case("mrc_mode_3_complex_int16", _mode(3), Skip(), extra=True),
    Case("mrc_mode_4_complex", _mrc_data(lambda im: im.astype(np.complex64)), Skip()),
    Case("mrc_3d_volume", _mrc_data(lambda im: np.stack([im[:128, :128]] * 4)), Skip(),
         extra=True),
    Case("mrc_tiny", _mrc_data(lambda im: im[:8, :8].copy()), Skip(), extra=True),
    Case("mrc_truncated_data", _mrc_truncated(1024 + 100_000), Skip()),
    Case("mrc_truncated_header", _mrc_truncated(200), Skip(), extra=True),
    Case("mrc_zero_size", _mrc_truncated(0), Skip()),
    Case("mrc_missing", _broken(BAD, Path.unlink), Skip(), extra=True),
    Case("mrc_unreadable", _broken(BAD, unreadable), Skip()),
    Case("mrc_symlink_loop", _broken(BAD, symlink_loop), Skip()),
    # NaN/inf pixels: the boxes touching them are dropped, the rest extracted (finite)
    Case("mrc_nan_rows", _mrc_data(_nan_block), Works(dropped="non-finite")),
    Case("mrc_inf_pixels", _mrc_data(_inf_pixels), Works(dropped="non-finite")),
    Case("mrc_all_nan", _mrc_data(lambda im: np.full_like(im, np.nan)),
         Works(dropped="non-finite"), extra=True),
    # ---- the micrographs STAR
    Case("star_garbage_binary", _broken(MICROGRAPHS, _content(bytes(range(256)) * 8)),
         Error("micrographs.star")),
    Case("star_garbage_text",
         _broken(MICROGRAPHS, _content("this is\nnot a STAR file {}\n\t;;\n")),
         Error("micrographs.star"), extra=True),
    Case("star_zero_size", _broken(MICROGRAPHS, _content(b"")), Error("micrographs.star"),
         extra=True),
    Case("star_half_written", _broken(MICROGRAPHS, cut_in_last_row),
         Error("micrographs.star", line=-1)),
    Case("star_no_micrograph_name",
         _broken(MICROGRAPHS, lambda path: rewrite(path, "_rlnMicrographName", "_rlnMovieName")),
         Error("micrographs.star")),
    Case("star_duplicate_micrograph", _duplicate_micrograph, Error("micrographs.star")),
    Case("star_unknown_optics_group", _unknown_optics_group, Error("micrographs.star"),
         extra=True),
    Case("star_zero_pixel_size", _optics_pixel_size("0.000000"), Error("micrographs.star"),
         extra=True),
    Case("star_text_pixel_size", _optics_pixel_size("abc"), Error("micrographs.star")),
    Case("star_nan_pixel_size", _optics_pixel_size("nan"), Error("micrographs.star"),
         extra=True),
    Case("star_missing", _missing_star, Error("no_such_micrographs.star"), extra=True),
    Case("star_unreadable", _broken(MICROGRAPHS, unreadable), Error("micrographs.star")),
    Case("star_symlink_loop", _broken(MICROGRAPHS, symlink_loop), Error("micrographs.star"),
         extra=True),
    Case("glob_matching_nothing", _glob_matching_nothing, Error("Nowhere/*.mrc"), extra=True),
    # ---- coordinates
    Case("picks_garbage_binary", _broken(BAD_PICKS, _content(os.urandom(2000))),
         Skip(names=BAD_PICKS)),
    Case("picks_garbage_text",
         _broken(BAD_PICKS, _content("data_\nloop_\n_rlnCoordinateX\n_rlnCoord\n1 2 3 4\n")),
         Skip(names=BAD_PICKS), extra=True),
    Case("picks_half_written", _broken(BAD_PICKS, cut_in_last_row), Skip(names=BAD_PICKS)),
    Case("picks_symlink_loop", _broken(BAD_PICKS, symlink_loop),
         Skip(names="mic_002_autopick.star")),
    Case("picks_unreadable", _broken(BAD_PICKS, unreadable),
         Skip(names="mic_002_autopick.star"), extra=True),
    Case("picks_bad_line_one_file", _bad_line_in_one_file, Error("picks.box", line=3)),
    Case("picks_bad_line_coords_dir", _bad_line_in_coords_dir,
         Skip(names="Picks/mic_002.txt:4")),
    Case("picks_too_few_columns", _too_few_columns, Error("picks.txt", line=3), extra=True),
    Case("picks_unknown_extension", _unknown_coords_extension, Error("picks.xyz")),
    Case("picks_unknown_format_option", _unknown_coords_format_option, Error("eman9")),
    Case("picks_star_without_micrograph_name", _coords_file_without_micrograph_name,
         Error("all_picks.star"), extra=True),
    Case("picks_particles_star_half_written", _half_written_particles_star,
         Error("all_picks.star", line=-1)),
    Case("picks_particles_star_matching_nothing", _particles_star_matching_nothing,
         Error("all_picks.star"), extra=True),
    Case("picks_garbage_cs", _garbage_cs, Error("picks.cs"), extra=True),
    Case("picks_path_is_directory", _coords_path_is_directory, Error("picks_dir.star"),
         extra=True),
    Case("picks_dir_missing", _missing_coords_dir, Error("NoSuchPicks")),
    Case("picks_empty_file", _broken(BAD_PICKS, _content(b"")), Works()),
    Case("picks_header_only", _picks([]), Works(), extra=True),
    Case("picks_outside", _picks([("5000", "100"), ("-300", "100"), ("100", "1e300")]),
         Works(dropped="outside")),
    Case("picks_nan_and_inf",
         _picks([("nan", "100"), ("100", "inf"), ("128", "128")], report=True),
         Works(dropped="coordinate")),
    # ---- parameters
    Case("box_negative", _options(box="-64"), Error("box")),
    Case("box_zero", _options(box="0"), Error("box"), extra=True),
    Case("box_odd", _options(box="63"), Error("box"), extra=True),
    Case("box_absurd", _options(box="100000"), Error("box")),
    Case("bin_to_negative", _options("--bin-to", "-32"), Error("box")),
    Case("bin_to_zero", _options("--bin-to", "0"), Error("box"), extra=True),
    Case("bin_to_larger_than_box", _options("--bin-to", "128"), Error("128"), extra=True),
    Case("bin_factor_below_one", _options("--bin-factor", "0.5"), Error("bin factor"),
         extra=True),
    Case("bg_radius_negative", _options("--bg-radius", "-5"), Error("radius")),
    Case("bg_radius_absurd", _options("--bg-radius", "1e9"), Error("radius")),
    Case("bg_radius_nan", _options("--bg-radius", "nan"), Error("radius"), extra=True),
    Case("pixel_size_negative", _options(pixel_size="-1.5"), Error("pixel size")),
    Case("pixel_size_zero", _options(pixel_size="0"), Error("pixel size"), extra=True),
    Case("pixel_size_nan", _options(pixel_size="nan"), Error("pixel size")),
    Case("pixel_size_inf", _options(pixel_size="inf"), Error("pixel size"), extra=True),
    Case("workers_zero", _options(workers="0"), Error("workers"), extra=True),
    # ---- paths that must work
    Case("paths_with_spaces_and_non_ascii", _spaces_and_non_ascii, Works(),
         out="out dir ñ/ja 日本"),
    Case("glob_with_spaces", _glob_with_spaces, Works(), out="out with space"),
    # ---- output
    Case("out_under_a_file", _output_under_a_file, Error("a_file")),
    Case("out_is_a_file", _output_is_a_file, Error("a_file"), extra=True),
    Case("out_symlink_loop", _output_loop, Error("out_loop"), extra=True),
    Case("out_not_empty", _output_not_empty, Error("out"), extra=True,
         keeps="out/precious.txt"),
    Case("disk_full", _disk_full, Error("out"), fsize_limit=FSIZE_LIMIT),
]
# The cases run by default; CRYOEXTRACT_ALL_BAD_INPUTS=1 runs the extra ones too.
ALL_CASES = os.environ.get("CRYOEXTRACT_ALL_BAD_INPUTS", "") not in ("", "0")
RUN_CASES = [c for c in CASES if ALL_CASES or not c.extra]
# cases whose expected line is the last line of this (cut) file
LINE_FROM_FILE = {"star_half_written": "micrographs.star",
                   "picks_particles_star_half_written": "all_picks.star"}
