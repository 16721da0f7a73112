"""Sub-particle vector files (``extract --subparticles FILE``): where the sub-particles lie
in the reference, as vectors from its centre in Ångström (docs/conventions.md,
"Sub-particles").

Two formats, told apart by the extension:

- text (any extension but ``.cmm``): one vector a line, ``x y z`` in Å, separated by
  blanks or commas; blank lines and ``#`` comments are skipped;
- UCSF Chimera marker files (``.cmm``, XML ``<marker_set><marker x= y= z= .../>``): the
  first marker is the centre of the particle and each other marker gives the vector
  from it (as localrec reads them); Chimera writes marker positions in Å.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from cryoextract.errors import InputError

Vector = tuple[float, float, float]

_SEPARATORS = re.compile(r"[\s,]+")


def read_subparticle_vectors(path: str | os.PathLike[str]) -> tuple[Vector, ...]:
    """The vectors of a text or ``.cmm`` file, in file order.

    Raises
    ------
    InputError
        Missing or unreadable file, a line or marker that does not give three finite
        numbers, or no vector at all; one line naming the file (and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise InputError("sub-particle vector file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read sub-particle vectors ({exc})", path) from None
    vectors = _from_cmm(text, path) if path.suffix.lower() == ".cmm" else _from_text(text, path)
    if not vectors:
        raise InputError("no sub-particle vector in the file", path)
    return vectors


def _from_text(text: str, path: Path) -> tuple[Vector, ...]:
    vectors: list[Vector] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = [f for f in _SEPARATORS.split(content) if f]
        if len(fields) != 3:
            raise InputError(f"expected three numbers 'x y z' (Å), got {content[:60]!r}",
                             path, number)
        vectors.append(_vector(fields, path, number))
    return tuple(vectors)


def _from_cmm(text: str, path: Path) -> tuple[Vector, ...]:
    from xml.etree import ElementTree

    if "<!ENTITY" in text or "<!DOCTYPE" in text:
        raise InputError("not a Chimera marker file (DOCTYPE or ENTITY declarations)", path)
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        raise InputError(f"not a Chimera marker file (XML: {exc})".split("\n")[0],
                         path, line) from None
    markers = list(root.iter("marker"))
    if not markers:
        raise InputError("no <marker> in the Chimera marker file", path)
    points = []
    for index, marker in enumerate(markers, start=1):
        fields = [marker.get(axis) for axis in ("x", "y", "z")]
        if any(f is None for f in fields):
            raise InputError(f"marker {index} (id {marker.get('id')}) lacks x, y or z", path)
        points.append(_vector([str(f) for f in fields], path, None, f"marker {index}: "))
    if len(points) < 2:
        raise InputError("a Chimera marker file needs the particle centre (first marker) "
                         "and at least one sub-particle marker", path)
    x0, y0, z0 = points[0]
    return tuple((x - x0, y - y0, z - z0) for x, y, z in points[1:])


def _vector(fields: list[str], path: Path, line: int | None, where: str = "") -> Vector:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise InputError(f"{where}not a number in {' '.join(fields)[:60]!r}", path,
                         line) from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{where}not a finite number in {' '.join(fields)[:60]!r}", path,
                         line)
    return (values[0], values[1], values[2])
