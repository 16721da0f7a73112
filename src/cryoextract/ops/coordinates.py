"""Pick coordinate transforms between pickers, micrograph binnings and axis conventions.

Conventions: docs/conventions.md, "Pixels and axes" and "Axis flips and binned picks".
Coordinates are 0-based pixel indices ``(x, y)``; a flip maps pixel index ``i`` to
``n - 1 - i`` (an involution that takes integer picks to integer picks), and a change of
pixel size scales coordinates by ``pick_pixel_size / micrograph_pixel_size``.
"""

from __future__ import annotations

import numpy as np


def transform_picks(
    coords_xy: np.ndarray,
    shape_yx: tuple[int, int] | None = None,
    *,
    scale: float = 1.0,
    swap_xy: bool = False,
    flip_x: bool = False,
    flip_y: bool = False,
) -> np.ndarray:
    """Map picks into the pixel frame of the stored micrograph.

    Applied in this order: scale (picks made at another pixel size), swap x and y,
    flip x, flip y.

    Parameters
    ----------
    coords_xy : np.ndarray
        ``(n, 2)`` float pick coordinates ``(x, y)`` as written by the picker.
    shape_yx : tuple of int, optional
        ``(ny, nx)`` of the micrograph; required for flips.
    scale : float
        ``pick_pixel_size_angstrom / micrograph_pixel_size_angstrom``.
    swap_xy, flip_x, flip_y : bool
        Axis corrections.

    Returns
    -------
    np.ndarray
        ``(n, 2)`` float64 coordinates in micrograph pixels.
    """
    xy = np.array(coords_xy, dtype=np.float64).reshape(-1, 2) * scale
    if swap_xy:
        xy = xy[:, ::-1].copy()
    if flip_x or flip_y:
        if shape_yx is None:
            raise ValueError("flipping picks needs the micrograph shape")
        ny, nx = shape_yx
        if flip_x:
            xy[:, 0] = (nx - 1) - xy[:, 0]
        if flip_y:
            xy[:, 1] = (ny - 1) - xy[:, 1]
    return xy


def fraction_outside(coords_xy: np.ndarray, shape_yx: tuple[int, int]) -> float:
    """Fraction of picks whose integer centre lies outside a ``(ny, nx)`` micrograph."""
    xy = np.floor(np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2))
    if len(xy) == 0:
        return 0.0
    ny, nx = shape_yx
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= nx) | (xy[:, 1] < 0) | (xy[:, 1] >= ny)
    return float(outside.mean())


def suggest_axis_fix(
    coords_xy: np.ndarray, shape_yx: tuple[int, int], *, threshold: float = 0.02
) -> str | None:
    """Name the axis correction that brings off-micrograph picks back, if one does.

    Returns ``None`` when at most ``threshold`` of the picks fall outside, or when no
    single correction among swap x/y, flip y, flip x reduces that fraction below the
    threshold; otherwise the CLI option to try (e.g. ``"--swap-xy"``).
    """
    if fraction_outside(coords_xy, shape_yx) <= threshold:
        return None
    candidates = {
        "--swap-xy": transform_picks(coords_xy, shape_yx, swap_xy=True),
        "--flip-y": transform_picks(coords_xy, shape_yx, flip_y=True),
        "--flip-x": transform_picks(coords_xy, shape_yx, flip_x=True),
    }
    for option, moved in candidates.items():
        if fraction_outside(moved, shape_yx) <= threshold:
            return option
    return None


def off_micrograph_warning(
    coords_xy: np.ndarray, shape_yx: tuple[int, int], source: str, *,
    threshold: float = 0.02,
) -> str | None:
    """The one warning about picks off their micrograph (``extract`` and ``convert``).

    None when at most ``threshold`` of the picks fall outside; otherwise one line naming
    ``source``, the share of picks outside, the micrograph's size as ``nx x ny`` and the
    axis option that brings them back (:func:`suggest_axis_fix`), or what to check.
    """
    xy = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    outside = fraction_outside(xy, shape_yx)
    if outside <= threshold:
        return None
    fix = suggest_axis_fix(xy, shape_yx, threshold=threshold)
    advice = (f"{fix} brings them back" if fix is not None
              else "check the axis options and --coords-pixel-size")
    ny, nx = shape_yx
    return (f"{source}: {outside:.0%} of the {len(xy)} picks fall off the micrograph of "
            f"{nx} x {ny} px (x by y); {advice}")
