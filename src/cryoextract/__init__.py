"""cryoextract: particle extraction and particle-stack preparation for single-particle cryo-EM."""

from importlib.metadata import PackageNotFoundError, version

from cryoextract.errors import CryoExtractError, InputError, ParameterError
from cryoextract.ops.boxes import EdgeMode
from cryoextract.ops.normalize import NormMode
from cryoextract.pipeline.extract import extract
from cryoextract.pipeline.params import ExtractParams, SubpixelMode

try:
    __version__ = version("cryoextract")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

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
