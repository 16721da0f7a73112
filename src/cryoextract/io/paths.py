"""How the STAR files we write name other files (docs/conventions.md, "Paths").

RELION writes every path relative to the directory its programs run in (the project
directory): ``000001@Extract/job010/Particles/mic_001.mrcs``. :class:`PathNamer` gives
that form (a file outside that directory gets its absolute path), or the path relative
to the STAR's own folder (``../`` allowed: the folders move together). Paths are
compared as written (``os.path.abspath``, no symlinks resolved), so a project reached
through a link stays relative.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryoextract.options import PathStyle

if TYPE_CHECKING:
    from cryoextract.io.images import ImageLocations

__all__ = ["PathNamer", "PathStyle", "locate", "located_names", "rebase_found_names",
           "rebase_image_names"]


@dataclass(frozen=True)
class PathNamer:
    """Names files as a STAR at ``star_path`` written in ``style`` should.

    ``base`` is the absolute directory the names are relative to.
    """

    base: str
    style: PathStyle

    @classmethod
    def for_star(cls, star_path: str | os.PathLike[str], style: PathStyle) -> PathNamer:
        if style is PathStyle.STAR:
            return cls(os.path.dirname(os.path.abspath(star_path)), style)
        return cls(os.path.abspath(os.getcwd()), style)

    def __call__(self, path: str | os.PathLike[str]) -> str:
        """``path`` (absolute, or relative to the working directory) as the STAR names it."""
        target = os.path.abspath(path)
        below = os.path.commonpath([target, self.base]) == self.base
        if below or self.style is PathStyle.STAR:
            try:
                return Path(os.path.relpath(target, self.base)).as_posix()
            except ValueError:  # another drive (Windows)
                pass
        return Path(target).as_posix()


def split_image_name(name: str) -> tuple[str, str]:
    """``("NNNNNN@", path)`` of an image name; ``("", path)`` for a bare path."""
    index, at, path = name.partition("@")
    return (index + at, path) if at else ("", name)


def rebase_image_names(
    names: Iterable[str], from_dir: str | os.PathLike[str], namer: PathNamer
) -> list[str]:
    """``NNNNNN@path`` names (or bare paths) relative to ``from_dir``, as ``namer`` names
    them (absolute paths are renamed too)."""
    done: dict[str, str] = {}
    out = []
    for name in names:
        prefix, path = split_image_name(str(name))
        if path not in done:
            done[path] = namer(os.path.join(from_dir, path))
        out.append(prefix + done[path])
    return out


def locate(path: str, base_dirs: Sequence[Path]) -> Path | None:
    """The first existing ``base_dir / path`` (``path`` itself when absolute); else None."""
    if os.path.isabs(path):
        return Path(path) if os.path.isfile(path) else None
    for base in base_dirs:
        candidate = Path(base) / path
        if candidate.is_file():
            return candidate
    return None


def located_names(locations: ImageLocations, rows: Iterable[int], namer: PathNamer) -> list[str]:
    """Each row's image name with its stack named by ``namer`` where it was found (the
    index part kept as written)."""
    named: dict[str, str] = {}
    out = []
    for row in rows:
        stack = locations.stack[int(row)]
        if stack not in named:
            named[stack] = namer(stack)
        prefix, _ = split_image_name(locations.names[int(row)])
        out.append(prefix + named[stack])
    return out


def rebase_found_names(
    names: Iterable[str], base_dirs: Sequence[Path], namer: PathNamer
) -> list[str]:
    """Image names renamed by ``namer`` where their stack is found in ``base_dirs``
    (:func:`locate`); a name whose stack is not found is kept as written."""
    done: dict[str, str] = {}
    out = []
    for name in names:
        prefix, path = split_image_name(str(name))
        if path not in done:
            found = locate(path, base_dirs)
            done[path] = path if found is None else namer(found)
        out.append(prefix + done[path])
    return out
