"""Choosing particles: duplicate picks, score thresholds, per-micrograph caps, ``--where``.

Pick selection (:func:`selection_reasons` and its parts) works on a picks or particles
table (RELION column names, ``rlnCoordinateX/Y`` in micrograph pixels, grouped by
``rlnMicrographName`` when present) and returns per-row masks or reasons, ready for
``OUT/rejected_particles.tsv``. Nothing here reads or writes pixels.

:func:`evaluate_where` is the condition of ``cryoextract select``
(:mod:`cryoextract.pipeline.stacks.select`).
"""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd

from cryoextract.errors import InputError, ParameterError

FIGURE_OF_MERIT = "rlnAutopickFigureOfMerit"
MICROGRAPH = "rlnMicrographName"


# --------------------------------------------------------------------------- reasons


def reason_close(distance: str) -> str:
    """Reject reason of a pick that lost to a better one (``distance`` with its unit)."""
    return f"closer than {distance} to a better pick"


def reason_score(min_score: float) -> str:
    """Reject reason of a pick under ``--min-score``."""
    return f"score below {min_score:g}"


def reason_max(max_per_micrograph: int) -> str:
    """Reject reason of a pick beyond ``--max-per-micrograph``."""
    return f"over {max_per_micrograph} per micrograph"


# --------------------------------------------------------------------------- pick selection


def _active(table: pd.DataFrame, active: np.ndarray | None) -> np.ndarray:
    if active is None:
        return np.ones(len(table), dtype=bool)
    active = np.asarray(active, dtype=bool)
    if active.shape != (len(table),):
        raise ParameterError(f"active mask has shape {active.shape}, expected ({len(table)},)")
    return active


def _scores(table: pd.DataFrame, score_column: str) -> np.ndarray:
    """``(n,)`` float64 scores; NaN where missing, all NaN when the column is absent."""
    if score_column not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[score_column], errors="coerce").to_numpy(np.float64)


def _rank(scores: np.ndarray) -> np.ndarray:
    """``(n,)`` rank of each row, 0 = best: descending score, NaN last, ties in table order."""
    key = np.where(np.isnan(scores), np.inf, -scores)
    order = np.argsort(key, kind="stable")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores))
    return rank


def _groups(table: pd.DataFrame) -> np.ndarray:
    """``(n,)`` int64 micrograph number of each row (0 everywhere without micrograph names)."""
    if MICROGRAPH not in table.columns:
        return np.zeros(len(table), dtype=np.int64)
    return pd.factorize(table[MICROGRAPH].astype(str))[0].astype(np.int64)


def remove_close_picks(
    table: pd.DataFrame,
    min_distance_px: float,
    score_column: str = FIGURE_OF_MERIT,
    *,
    active: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Of picks closer than a distance on the same micrograph, keep the best by score.

    Greedy non-maximum suppression: picks are visited by descending score (missing
    scores last, ties and a missing ``score_column`` in table order); a pick is kept
    unless a pick kept before it lies at a distance ``< min_distance_px``. The kept
    picks are therefore all at least ``min_distance_px`` apart, and a pick is removed
    only by a better kept one. Pairs are found with one KD-tree for all micrographs
    (micrographs moved apart along x), so only picks with a neighbour are visited in
    Python.

    Parameters
    ----------
    table : pd.DataFrame
        ``rlnCoordinateX/Y`` in pixels, optional ``rlnMicrographName`` and score column.
    min_distance_px : float
        Minimum distance between kept picks, pixels of the coordinates.
    score_column : str
        Higher is better.
    active : np.ndarray, optional
        ``(n,)`` bool: only these rows take part (others neither removed nor removing,
        e.g. picks already dropped for another reason). Default all.

    Returns
    -------
    keep : np.ndarray
        ``(n,)`` bool, False for removed picks (inactive rows stay True).
    n_removed : int
        Number of removed picks.
    """
    if not min_distance_px > 0:
        raise ParameterError(f"minimum distance must be positive, got {min_distance_px}")
    active = _active(table, active)
    keep = np.ones(len(table), dtype=bool)
    rows = np.flatnonzero(active)
    if len(rows) < 2:
        return keep, 0
    xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)[rows]
    finite = np.isfinite(xy).all(axis=1)
    rows, xy = rows[finite], xy[finite]
    groups = _groups(table)[rows]
    span = float(np.ptp(xy[:, 0])) + 2.0 * min_distance_px + 1.0
    placed = np.column_stack([xy[:, 0] - xy[:, 0].min() + groups * span, xy[:, 1]])
    radius = np.nextafter(float(min_distance_px), 0.0)  # strictly closer than
    from scipy.spatial import cKDTree  # 0.2 s to import; only this option needs it

    pairs = cKDTree(placed).query_pairs(radius, output_type="ndarray")
    if not len(pairs):
        return keep, 0
    rank = _rank(_scores(table, score_column)[rows])
    removed = _suppress(pairs, rank, len(rows))
    keep[rows[removed]] = False
    return keep, int(removed.sum())


def _suppress(pairs: np.ndarray, rank: np.ndarray, n: int) -> np.ndarray:
    """Greedy suppression over neighbour pairs; ``(n,)`` bool removed."""
    # each pair as (better, worse)
    better = np.where(rank[pairs[:, 0]] < rank[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    worse = pairs[:, 0] + pairs[:, 1] - better
    order = np.argsort(rank[better], kind="stable")
    better, worse = better[order], worse[order]
    starts = np.flatnonzero(np.r_[True, better[1:] != better[:-1]])
    stops = np.r_[starts[1:], len(better)]
    removed = np.zeros(n, dtype=bool)
    for start, stop in zip(starts, stops, strict=True):  # one step per pick with a worse neighbour
        if not removed[better[start]]:
            removed[worse[start:stop]] = True
    return removed


def score_filter(
    table: pd.DataFrame, min_score: float, score_column: str = FIGURE_OF_MERIT
) -> np.ndarray:
    """``(n,)`` bool, True where ``score >= min_score`` (a missing score fails).

    Raises
    ------
    ParameterError
        The table has no ``score_column``.
    """
    if score_column not in table.columns:
        raise ParameterError(f"a minimum score needs the column {score_column}, which the "
                             "picks lack")
    scores = _scores(table, score_column)
    with np.errstate(invalid="ignore"):
        return scores >= min_score


def limit_per_micrograph(
    table: pd.DataFrame,
    max_per_micrograph: int,
    score_column: str = FIGURE_OF_MERIT,
    *,
    active: np.ndarray | None = None,
) -> np.ndarray:
    """``(n,)`` bool: the best ``max_per_micrograph`` active picks of each micrograph.

    Best by descending score, missing scores last, ties (and a missing column) in table
    order. Inactive rows stay True.
    """
    if max_per_micrograph < 0:
        raise ParameterError(f"maximum per micrograph must be >= 0, got {max_per_micrograph}")
    active = _active(table, active)
    keep = np.ones(len(table), dtype=bool)
    rows = np.flatnonzero(active)
    if not len(rows):
        return keep
    rank = _rank(_scores(table, score_column)[rows])
    groups = _groups(table)[rows]
    order = np.lexsort((rank, groups))
    sorted_groups = groups[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    position = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    over = np.zeros(len(rows), dtype=bool)
    over[order] = position >= max_per_micrograph
    keep[rows[over]] = False
    return keep


def selection_reasons(
    table: pd.DataFrame,
    *,
    min_distance_px: float | None = None,
    min_score: float | None = None,
    max_per_micrograph: int | None = None,
    score_column: str = FIGURE_OF_MERIT,
    pixel_size_angstrom: float | None = None,
    active: np.ndarray | None = None,
) -> np.ndarray:
    """Why each pick is dropped by ``--min-score``, ``--min-distance``, ``--max-per-micrograph``.

    Applied in this order, each to the picks the previous ones kept: the score
    threshold, then duplicate removal (:func:`remove_close_picks`), then the cap (so the
    cap counts distinct particles).

    Parameters
    ----------
    table : pd.DataFrame
        Picks (see :func:`remove_close_picks`).
    min_distance_px, min_score, max_per_micrograph : optional
        The criteria; ``None`` skips one.
    score_column : str
        Score used by all three.
    pixel_size_angstrom : float, optional
        When given, the distance in the reason is written in Å
        (``min_distance_px * pixel_size_angstrom``), else in px.
    active : np.ndarray, optional
        ``(n,)`` bool: rows still in play (e.g. not dropped at the edge); the others get
        no reason here. Default all.

    Returns
    -------
    np.ndarray
        ``(n,)`` object array of reasons (:func:`reason_score`, :func:`reason_close`,
        :func:`reason_max`), ``""`` for kept and inactive rows.
    """
    active = _active(table, active).copy()
    reasons = np.full(len(table), "", dtype=object)
    if min_score is not None:
        fail = active & ~score_filter(table, min_score, score_column)
        reasons[fail] = reason_score(min_score)
        active &= ~fail
    if min_distance_px is not None:
        keep, _ = remove_close_picks(table, min_distance_px, score_column, active=active)
        distance = (f"{min_distance_px:g} px" if pixel_size_angstrom is None
                    else f"{min_distance_px * pixel_size_angstrom:g} A")
        reasons[~keep] = reason_close(distance)
        active &= keep
    if max_per_micrograph is not None:
        keep = limit_per_micrograph(table, max_per_micrograph, score_column, active=active)
        reasons[~keep] = reason_max(max_per_micrograph)
    return reasons


# --------------------------------------------------------------------------- --where

_COMPARISONS = {
    ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater,
    ast.GtE: np.greater_equal, ast.Eq: np.equal, ast.NotEq: np.not_equal,
}
_ALLOWED = "column names, numbers, comparisons (< <= > >= == !=), and, or, not, parentheses"


def resolve_column(name: str, columns: list[str] | pd.Index) -> str:
    """The table column a ``--where`` name refers to.

    The name itself, else with the ``ce`` (cryoextract descriptor) or ``rln`` prefix, so
    ``ScoreByVar`` finds ``ceScoreByVar`` and ``DefocusU`` ``rlnDefocusU``.

    Raises
    ------
    InputError
        No such column.
    """
    for candidate in (name, f"ce{name}", f"rln{name}"):
        if candidate in columns:
            return candidate
    descriptors = [c for c in columns if str(c).startswith("ce")]
    known = ", ".join(descriptors) if descriptors else "none"
    raise InputError(f"--where: unknown column {name!r} (descriptor columns: {known})")


def parse_where(where: str) -> ast.Expression:
    """Parse and validate a ``--where`` condition.

    Only column names, numbers (``-1.5``, ``2e3``), comparisons (chained too:
    ``0 < x < 5``), ``and``, ``or``, ``not`` and parentheses are accepted; no calls,
    attributes, arithmetic or strings, so evaluating it can do nothing but compare
    columns.

    Raises
    ------
    InputError
        Not a valid expression, or anything else than the above.
    """
    text = " ".join(str(where).split())
    if not text:
        raise InputError("--where: empty condition")
    shown = text if len(text) <= 80 else text[:77] + "..."
    try:
        tree = ast.parse(text, mode="eval")
        _check_condition(tree.body, text)
    except SyntaxError as exc:
        raise InputError(f"--where: not a valid condition: {shown!r} ({exc.msg}); "
                         f"allowed: {_ALLOWED}") from exc
    except (RecursionError, MemoryError):
        raise InputError(f"--where: condition nested too deeply: {shown!r}") from None
    return tree


def _reject(node: ast.AST, text: str) -> InputError:
    piece = ast.get_source_segment(text, node) or type(node).__name__
    return InputError(f"--where: {piece!r} is not allowed in a condition; allowed: {_ALLOWED}")


def _check_condition(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_condition(value, text)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check_condition(node.operand, text)
    elif isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARISONS for op in node.ops):
            raise _reject(node, text)
        for operand in (node.left, *node.comparators):
            _check_operand(operand, text)
        if not any(isinstance(o, ast.Name) for o in (node.left, *node.comparators)):
            raise InputError(f"--where: {ast.get_source_segment(text, node)!r} compares no "
                             "column")
    else:
        raise _reject(node, text)


def _check_operand(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.Name):
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
            and not isinstance(node.value, bool):
        return
    raise _reject(node, text)


def evaluate_where(table: pd.DataFrame, where: str) -> np.ndarray:
    """``(n,)`` bool: the rows of ``table`` that satisfy a ``--where`` condition.

    Comparisons with a missing value (NaN) are False (so ``not`` of one is True).

    Raises
    ------
    InputError
        Invalid condition (:func:`parse_where`), unknown or non-numeric column.
    """
    tree = parse_where(where)
    try:
        values = _evaluate(tree.body, table)
    except RecursionError:
        raise InputError("--where: condition nested too deeply") from None
    return np.asarray(values, dtype=bool) & np.ones(len(table), bool)


def _evaluate(node: ast.AST, table: pd.DataFrame) -> np.ndarray:
    if isinstance(node, ast.BoolOp):
        values = [_evaluate(v, table) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = values[0]
        for value in values[1:]:
            result = combine(result, value)
        return result
    if isinstance(node, ast.UnaryOp):
        return np.logical_not(_evaluate(node.operand, table))
    assert isinstance(node, ast.Compare)
    result = np.ones(len(table), dtype=bool)
    left = _operand(node.left, table)
    for op, comparator in zip(node.ops, node.comparators, strict=True):
        right = _operand(comparator, table)
        with np.errstate(invalid="ignore"):
            result &= _COMPARISONS[type(op)](left, right)
        left = right
    return result


def _operand(node: ast.AST, table: pd.DataFrame) -> np.ndarray | float:
    if isinstance(node, ast.Name):
        column = resolve_column(node.id, table.columns)
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().all() and table[column].notna().any():
            raise InputError(f"--where: column {column} is not numeric")
        return values.to_numpy(np.float64)
    sign = -1.0 if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) else 1.0
    constant = node.operand if isinstance(node, ast.UnaryOp) else node
    assert isinstance(constant, ast.Constant)
    return sign * float(constant.value)
