"""cryoextract: particle extraction and particle-stack preparation for single-particle cryo-EM.

The public names below are imported on first use (PEP 562), so that ``import
cryoextract.<module>`` pays only for what that module needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "CryoExtractError": "cryoextract.errors",
    "InputError": "cryoextract.errors",
    "ParameterError": "cryoextract.errors",
    "EdgeMode": "cryoextract.options",
    "NormMode": "cryoextract.options",
    "extract": "cryoextract.pipeline.extraction.extract",
    "ExtractParams": "cryoextract.pipeline.extraction.params",
    "SubpixelMode": "cryoextract.options",
}

__all__ = [
    "CryoExtractError",
    "EdgeMode",
    "ExtractParams",
    "InputError",
    "NormMode",
    "ParameterError",
    "SubpixelMode",
    "__version__",
    "extract",
]

if TYPE_CHECKING:
    from cryoextract.errors import CryoExtractError, InputError, ParameterError
    from cryoextract.options import EdgeMode, NormMode, SubpixelMode
    from cryoextract.pipeline.extraction.extract import extract
    from cryoextract.pipeline.extraction.params import ExtractParams


def _version() -> str:
    # importlib.metadata costs 70 ms: read only when asked for
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cryoextract")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = globals()[name] = _version()
        return value
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'cryoextract' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, "__version__"})
