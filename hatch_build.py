"""Build hook: compile the C inner loops of ``src/cryoextract/ops/native`` with the system
C compiler when the package is built or installed (also ``pip install -e``).

Each ``X.c`` becomes the library ``naming.py`` beside it names (``_X_<12 hex of the
source's sha256>.so``), the name
:func:`cryoextract.ops.native.library_path` looks for. Without a compiler the build goes
on with a warning and cryoextract uses its numba versions of the loops (slower to start).
"""

from __future__ import annotations

import os
import runpy
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

NATIVE = Path("src") / "cryoextract" / "ops" / "native"
# no -ffast-math: gcc then links crtfastmath.o into the library, whose constructor turns
# on flush-to-zero for the whole process when it is loaded (denormals become 0 everywhere)
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"]


def compile_library(source: Path) -> Path | None:
    """Compile ``source`` into its library (None, with a warning, when that fails), named
    by ``naming.py`` beside it, the rule the package loads by."""
    library_name = runpy.run_path(str(source.with_name("naming.py")))["library_name"]
    target = source.with_name(library_name(source))
    for stale in source.parent.glob(f"_{source.stem}_*.so"):
        if stale != target:
            stale.unlink()
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    partial = target.with_name(target.name + ".part")
    command = [*compiler, *FLAGS, "-o", str(partial), str(source)]
    # a loop compiled for several instruction sets (target_clones) needs the toolchain's
    # ifunc support; without it, once more for the baseline only
    for extra in ([], ["-DCRYOEXTRACT_NO_CLONES"]):
        try:
            subprocess.run([*command, *extra], check=True, capture_output=True, text=True,
                           timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
        else:
            partial.replace(target)
            return target
    print(f"warning: could not compile {source.name} ({detail}); cryoextract will use "
          "numba for it", file=sys.stderr)
    partial.unlink(missing_ok=True)
    return None


class NativeLoops(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        built = [compile_library(c) for c in sorted((Path(self.root) / NATIVE).glob("*.c"))]
        if version == "editable":
            return  # the libraries lie in the source tree the editable install points to
        for library in filter(None, built):
            build_data["force_include"][str(library)] = str(
                library.relative_to(Path(self.root) / "src"))
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
