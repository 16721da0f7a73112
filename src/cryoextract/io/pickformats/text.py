"""Plain text picks: ``x y`` centres per line (``#`` comments, commas allowed).

Also the Xmipp 2 ``.pos`` format (first line ``# <X position> <Y position>``), whose
coordinates RELION 1.x read as centres (``Preprocessing::readCoordinates``, ``xmipp2``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryoextract.io.pickformats.common import X, Y, numeric_rows


def read_text_picks(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Plain text ``x y`` per line (extra columns ignored); one header line allowed.

    Returns
    -------
    pandas.DataFrame
        ``rlnCoordinateX/Y`` (px, centres).
    """
    rows = [values[:2] for _, values in numeric_rows(Path(path), 2)]
    table = np.array(rows, dtype=np.float64).reshape(-1, 2)
    return pd.DataFrame({X: table[:, 0], Y: table[:, 1]})
