"""Small operations on the metadata tables the pipeline builds."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import pandas as pd


def with_columns(
    table: pd.DataFrame, columns: Mapping[str, object], *, drop: Collection[str] = ()
) -> pd.DataFrame:
    """A new table: ``table``'s columns (less ``drop``) with ``columns`` set or added.

    A column already in ``table`` keeps its place, new ones follow in the given order;
    the table is built once, not column by column (each ``table[name] = values`` copies
    pandas' internal blocks: 0.5 ms per column on a table of a few hundred rows).
    Values are arrays or lists of ``len(table)``, or scalars.
    """
    order = [c for c in table.columns if c not in drop]
    order += [c for c in columns if c not in table.columns and c not in drop]
    data = {c: columns[c] if c in columns else table[c] for c in order}
    return pd.DataFrame(data, index=table.index)
