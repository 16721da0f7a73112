"""Every pick format in one table: the one place where a format is added.

A format is one :class:`PickFormat` record in :data:`PICK_FORMATS`: its name (the value
of ``--coords-format`` and ``convert --to``), what it is called in messages, its file
extensions, how its first lines are recognised, its reader and writer (``module:function``,
imported when used), and whether one file holds the picks of many micrographs. Reading
(:mod:`cryoextract.io.coords`), writing (:mod:`cryoextract.io.pickformats.writers`),
``cryoextract convert`` and the command line's choices and help all come from here.

To add a format: write ``io/pickformats/<format>.py`` with a reader (path -> picks
table, docs/conventions.md "Pick and CTF formats") and, if it is written, a writer
``(path, picks, *write_args)``; then add its record below (with ``dialect_of`` if its
content is also another format's, as crYOLO's ``.cbox`` is STAR).

This module imports nothing but the standard library: the command line builds its
choices from it when it starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SNIFF_BYTES = 16384


@dataclass(frozen=True)
class Head:
    """The first lines of a file, stripped, for recognising its format."""

    lines: tuple[str, ...]

    @property
    def first_data_line(self) -> str:
        """The first line that is neither blank nor a ``#`` comment."""
        return next((ln for ln in self.lines if ln and not ln.startswith("#")), "")

    def starts_with(self, *prefixes: str) -> bool:
        """Whether some line starts with one of ``prefixes``."""
        return any(ln.startswith(prefixes) for ln in self.lines)


@dataclass(frozen=True)
class PickFormat:
    """One pick format.

    ``name``: the choice on the command line; ``description``: its name in messages;
    ``extensions``: lower-case, with the dot, the first one is what the writer writes;
    ``sniff``: True when the first lines show this format (None: nothing to see, e.g.
    plain numbers); ``reader``/``writer``: ``"module:function"``; ``write_args``: what
    the writer takes after ``(path, picks)``, among ``box_px`` and ``micrograph_name``;
    ``many_micrographs``: one file may hold the picks of many micrographs (a
    ``rlnMicrographName`` column); ``one_file``: written as one file for all micrographs,
    never one per micrograph (Topaz's table); ``dialect_of``: the format whose content
    this one's also is (crYOLO's ``.cbox`` is a STAR file): recognised before it;
    ``binary``: not a text format.
    """

    name: str
    description: str
    extensions: tuple[str, ...]
    reader: str | None = None
    writer: str | None = None
    write_args: tuple[str, ...] = ()
    many_micrographs: bool = False
    one_file: bool = False
    dialect_of: str | None = None
    sniff: Callable[[Head], bool] | None = None
    binary: bool = False

    @property
    def needs_box(self) -> bool:
        """Whether the writer needs a box size."""
        return "box_px" in self.write_args

    def read(self, path: Path) -> Any:
        """The picks table of ``path`` (a ``pandas.DataFrame``), by this format's reader."""
        if self.reader is None:
            raise ValueError(f"{self.name} has no reader")
        return _function(self.reader)(path)

    def write(self, path: Path, picks: Any, *, box_px: float | None = None,
              micrograph_name: str | None = None) -> None:
        """Write ``picks`` to ``path`` by this format's writer."""
        if self.writer is None:
            raise ValueError(f"{self.name} has no writer")
        given = {"box_px": box_px, "micrograph_name": micrograph_name}
        _function(self.writer)(path, picks, *(given[arg] for arg in self.write_args))


def _function(reference: str) -> Callable[..., Any]:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


# ----------------------------------------------------------------- recognising content
def _is_cbox(head: Head) -> bool:
    return head.starts_with("data_cryolo")


def _is_helicon(head: Head) -> bool:
    return head.starts_with("#helix:")


def _is_pos(head: Head) -> bool:
    return "XMIPP_STAR" in "\n".join(head.lines) or any(
        ln.split()[:1] == ["_xcoor"] for ln in head.lines if ln)


def _is_star(head: Head) -> bool:
    return head.starts_with("data_", "loop_", "_rln")


def _is_topaz(head: Head) -> bool:
    tokens = head.first_data_line.replace(",", " ").split()
    return "x_coord" in tokens and ("image_name" in tokens or "y_coord" in tokens)


_PACKAGE = "cryoextract.io.pickformats"

#: every pick format, in the order the command line lists them
PICK_FORMATS: tuple[PickFormat, ...] = (
    PickFormat("star", "RELION STAR", (".star",), sniff=_is_star,
               reader=f"{_PACKAGE}.star_picks:read_star_picks",
               writer=f"{_PACKAGE}.star_picks:write_star_picks", many_micrographs=True),
    PickFormat("box", "EMAN .box", (".box",),
               reader=f"{_PACKAGE}.box:read_box", writer=f"{_PACKAGE}.box:write_box",
               write_args=("box_px",)),
    PickFormat("helicon", "EMAN2 helix .box (#helix: segments)", (".box",), sniff=_is_helicon,
               dialect_of="box", reader=f"{_PACKAGE}.filaments:read_helicon"),
    PickFormat("cbox", "crYOLO .cbox", (".cbox",), sniff=_is_cbox, dialect_of="star",
               reader=f"{_PACKAGE}.cbox:read_cbox", writer=f"{_PACKAGE}.cbox:write_cbox",
               write_args=("box_px",)),
    PickFormat("topaz", "Topaz picks table", (".txt", ".tsv"), sniff=_is_topaz,
               reader=f"{_PACKAGE}.topaz:read_topaz", writer=f"{_PACKAGE}.topaz:write_topaz",
               write_args=("micrograph_name",), many_micrographs=True, one_file=True),
    PickFormat("pos", "Xmipp .pos", (".pos",), sniff=_is_pos, dialect_of="star",
               reader=f"{_PACKAGE}.xmipp_pos:read_pos"),
    PickFormat("txt", "plain text x y", (".txt", ".tsv", ".coord", ".csv", ".xy"),
               reader=f"{_PACKAGE}.text:read_text_picks"),
    PickFormat("cs", "cryoSPARC .cs", (".cs",), binary=True, many_micrographs=True,
               reader="cryoextract.io.cryosparc:read_cs_picks"),
)


def pick_format(name: str) -> PickFormat:
    """The record of ``name``; KeyError when there is none."""
    for fmt in PICK_FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(name)


def readable() -> tuple[str, ...]:
    """Names of the formats read (``--coords-format``)."""
    return tuple(f.name for f in PICK_FORMATS if f.reader is not None)


def writable() -> tuple[str, ...]:
    """Names of the formats written (``convert --to``)."""
    return tuple(f.name for f in PICK_FORMATS if f.writer is not None)


def format_for_extension(path: Path, names: Sequence[str] | None = None) -> str | None:
    """The format of a file by its extension, among ``names`` (default all); None when
    no format has it. Where formats share the extension (``.txt``: Topaz or plain x y),
    the first whose ``sniff`` recognises the content, else the one that has no ``sniff``
    (or the last, the most general)."""
    suffix = path.suffix.lower()
    found = [f for f in PICK_FORMATS if suffix in f.extensions
             and (names is None or f.name in names)]
    if not found:
        return None
    if len(found) > 1:
        shown = sniff_format(path) if path.is_file() else None
        for fmt in found:
            if fmt.name == shown:
                return fmt.name
    return next((f.name for f in found if f.sniff is None), found[-1].name)


def extension_list(names: Sequence[str] | None = None) -> str:
    """``.star, .box, ...``: the extensions of ``names`` (default all), for messages."""
    seen: list[str] = []
    for fmt in PICK_FORMATS:
        if names is None or fmt.name in names:
            seen += [e for e in fmt.extensions if e not in seen]
    return ", ".join(seen)


def describe(names: Sequence[str]) -> str:
    """``star (RELION STAR), box (EMAN .box), ...`` for help texts."""
    return ", ".join(f"{n} ({pick_format(n).description})" for n in names)


# ----------------------------------------------------------------- sniffing a file
#: what a file that is not a pick file shows; ``ctffind`` (CTFFIND's results) and
#: ``binary`` (NUL bytes) are refused with these words
NOT_PICKS = {"ctffind": "CTFFIND results", "binary": "a binary file"}


def sniff_format(path: Path) -> str | None:
    """The format the first bytes of a file show, or None when they do not tell.

    A format name of :data:`PICK_FORMATS` (the first whose ``sniff`` recognises the
    lines, a dialect before the format it is a dialect of), ``ctffind`` (CTFFIND output)
    or ``binary`` (NUL bytes); None for plain numbers or an unreadable file.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read(_SNIFF_BYTES)
    except OSError:
        return None
    if b"\0" in data:
        return "binary"
    head = Head(tuple(ln.strip() for ln in data.decode("utf-8", "replace").splitlines()))
    if head.lines and "ctffind" in head.lines[0].lower() and head.lines[0].startswith("#"):
        return "ctffind"
    for fmt in sorted(PICK_FORMATS, key=lambda f: -_dialect_depth(f)):
        if fmt.sniff is not None and fmt.sniff(head):
            return fmt.name
    return None


def _dialect_depth(fmt: PickFormat) -> int:
    """0 for a format of its own, 1 for a dialect of one, 2 for a dialect of that..."""
    depth = 0
    while fmt.dialect_of is not None and depth < len(PICK_FORMATS):
        fmt, depth = pick_format(fmt.dialect_of), depth + 1
    return depth


def description(name: str) -> str:
    """What a format (or a :data:`NOT_PICKS` kind) is called in messages."""
    return NOT_PICKS.get(name) or pick_format(name).description
