"""Site vectors -> one vector per well (paper Sec. 3.3.2).

Sites of a well are laid out on a square grid: 9 sites (f01..f09) on 3x3, 16 sites (f01..f16, plates
BR00117015/16/17/19 of CPJUMP1) on 4x4.

Site -> grid position (assumption, an option): the Phenix numbers fields 1..n; we place site ``s`` at
``row = (s - 1) // side``, ``col = (s - 1) % side`` (``"row-major"``, default). ``"snake"`` reverses every other row
(a serpentine acquisition path). No public CPJUMP1 file states the field layout, so this is a documented guess; the
paper only assumes that "positions are sampled in a symmetrical pattern". With ``mode="mean"`` the layout does not
matter.

Merging modes:

* ``concat`` (paper default): the well's sites are put on their grid; a 4x4 grid is resampled to 3x3 by bilinear
  interpolation with ``align_corners=True`` -- output node ``i`` samples input coordinate ``i * (4 - 1) / (3 - 1)``,
  i.e. 0, 1.5, 3: the four corner sites are kept exactly, an edge node is the mean of its two neighbouring edge
  sites, and the centre node is the mean of the four central sites. The 9 grid vectors are then concatenated in
  row-major grid order, so every well has ``9 * D`` features whatever its site count. A 3x3 grid is used as is.
* ``mean``: the mean of the sites that are present (no grid, no interpolation).

Missing sites (CPJUMP1 has wells with 7 or 8 of 9 images): in ``concat`` mode every empty grid position is filled
with the mean of the sites present in that well (before interpolation), which keeps the well (nothing crashes) and
puts the least informative guess at the hole; the number of such wells is returned in the stats and logged.
``missing="error"`` refuses instead. Wells with no site at all do not exist here (a well appears only through its
sites).

Feature names: ``{prefix}p{pos}_{j:04d}`` in ``concat`` mode (``pos`` = grid node 0..8 row-major, ``j`` = index in the
site vector), ``{prefix}{j:04d}`` in ``mean`` mode. For embeddings the site vector is ``concat(CLS, mean patch)``, so
``j < embed_dim`` is CLS and the rest the mean patch token.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.columns import PLATE, SITE, WELL

logger = logging.getLogger("dinov2_cell.profiles")

MERGE_MODES = ("concat", "mean")
SITE_ORDERS = ("row-major", "snake")
MISSING_POLICIES = ("mean", "error")
GRID_SIDES = {9: 3, 16: 4}
OUT_SIDE = 3

_SITE_RE = re.compile(r"^\s*[fF]?0*(\d+)\s*$")


def parse_site(value) -> int:
    """Site number (1-based) from an int, "7", "07" or "f07".

    Args:
        value: the site label.

    Returns:
        The site number.

    Raises:
        ValueError: unparseable or < 1.
    """
    if isinstance(value, (int, np.integer)):
        site = int(value)
    else:
        m = _SITE_RE.match(str(value))
        if m is None:
            raise ValueError(f"{SITE}: cannot parse site {value!r} (expected 1..16, '07' or 'f07')")
        site = int(m.group(1))
    if site < 1:
        raise ValueError(f"{SITE}: site numbers start at 1, got {value!r}")
    return site


def grid_side(n_sites: int) -> int:
    """Grid side for a well layout of ``n_sites`` sites (9 -> 3, 16 -> 4).

    Args:
        n_sites: sites per well of the plate.

    Returns:
        3 or 4.

    Raises:
        ValueError: any other count.
    """
    if n_sites not in GRID_SIDES:
        raise ValueError(f"sites per well must be 9 (3x3) or 16 (4x4), got {n_sites}")
    return GRID_SIDES[n_sites]


def infer_sites_per_well(max_site: int) -> int:
    """Layout of a plate from the largest site number seen on it (<= 9 -> 9, <= 16 -> 16).

    Args:
        max_site: largest site number on the plate.

    Returns:
        9 or 16.

    Raises:
        ValueError: above 16.
    """
    if max_site <= 9:
        return 9
    if max_site <= 16:
        return 16
    raise ValueError(f"site number {max_site} > 16: only 3x3 and 4x4 site grids are supported")


def site_position(site: int, side: int, order: str = "row-major") -> tuple[int, int]:
    """Grid (row, col) of a 1-based site number.

    Args:
        site: site number, 1..side**2.
        side: grid side (3 or 4).
        order: ``"row-major"`` or ``"snake"`` (odd rows right-to-left).

    Returns:
        (row, col).

    Raises:
        ValueError: site out of range or unknown order.
    """
    if order not in SITE_ORDERS:
        raise ValueError(f"unknown site order {order!r}; choose from {SITE_ORDERS}")
    if not 1 <= site <= side * side:
        raise ValueError(f"site {site} outside a {side}x{side} grid (1..{side * side})")
    row, col = divmod(site - 1, side)
    if order == "snake" and row % 2 == 1:
        col = side - 1 - col
    return row, col


def linear_resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """1-D linear interpolation weights with ``align_corners=True`` (endpoints map to endpoints).

    Output node ``i`` samples input coordinate ``x = i * (n_in - 1) / (n_out - 1)`` and takes
    ``(1 - t) * in[floor(x)] + t * in[floor(x) + 1]`` with ``t = x - floor(x)``; the same rule as
    ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=True)`` along one axis.

    Args:
        n_in: input nodes.
        n_out: output nodes.

    Returns:
        (n_out, n_in) float64 matrix whose rows sum to 1.
    """
    if n_in < 2 or n_out < 2:
        raise ValueError(f"grid interpolation needs at least 2 nodes per side, got {n_in} -> {n_out}")
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = i * (n_in - 1) / (n_out - 1)
        lo = min(int(np.floor(x)), n_in - 2)
        t = x - lo
        m[i, lo] += 1.0 - t
        m[i, lo + 1] += t
    return m


def interpolate_grid(grid: np.ndarray, out_side: int = OUT_SIDE) -> np.ndarray:
    """Bilinear (``align_corners=True``) resampling of a (side, side, D) grid of vectors to (out_side, out_side, D).

    Args:
        grid: the site grid.
        out_side: output side.

    Returns:
        The resampled grid (a copy; unchanged values when the sides are equal).
    """
    side = grid.shape[0]
    if grid.shape[1] != side:
        raise ValueError(f"site grid must be square, got {grid.shape[:2]}")
    if side == out_side:
        return np.array(grid, copy=True)
    m = linear_resample_matrix(side, out_side)
    # Separable: rows then columns.
    return np.einsum("ia,abd,jb->ijd", m, grid, m)


def well_grid(
    sites: Sequence[int], feats: np.ndarray, side: int, order: str = "row-major", missing: str = "mean"
) -> tuple[np.ndarray, int]:
    """Place a well's site vectors on their grid.

    Args:
        sites: 1-based site numbers, one per row of ``feats``.
        feats: (n_sites, D) site vectors.
        side: grid side (3 or 4).
        order: site -> position rule (see module docstring).
        missing: ``"mean"`` fills empty positions with the mean of the present sites; ``"error"`` raises.

    Returns:
        ((side, side, D) grid, number of empty positions that were filled).

    Raises:
        ValueError: no site, a duplicated site, a site outside the grid, or a missing site with ``missing="error"``.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"unknown missing-site policy {missing!r}; choose from {MISSING_POLICIES}")
    feats = np.asarray(feats, dtype=np.float64)
    if len(sites) == 0:
        raise ValueError("a well needs at least one site")
    if len(set(sites)) != len(sites):
        raise ValueError(f"duplicated site numbers in one well: {sorted(sites)}")
    grid = np.empty((side, side, feats.shape[1]))
    filled = np.zeros((side, side), dtype=bool)
    for s, v in zip(sites, feats):
        r, c = site_position(int(s), side, order)
        grid[r, c] = v
        filled[r, c] = True
    n_missing = int((~filled).sum())
    if n_missing:
        if missing == "error":
            raise ValueError(f"well has {len(sites)} of {side * side} sites (missing='error')")
        grid[~filled] = feats.mean(axis=0)
    return grid, n_missing


def merge_well(
    sites: Sequence[int],
    feats: np.ndarray,
    side: int,
    mode: str = "concat",
    order: str = "row-major",
    missing: str = "mean",
    out_side: int = OUT_SIDE,
) -> tuple[np.ndarray, int]:
    """One well: site vectors -> well vector.

    Args:
        sites: 1-based site numbers.
        feats: (n_sites, D) site vectors.
        side: grid side of the plate (3 or 4).
        mode: ``"concat"`` (grid, 4x4 -> 3x3, concatenation, length ``out_side**2 * D``) or ``"mean"`` (length D).
        order: site -> grid position rule.
        missing: missing-site policy for ``concat``.
        out_side: grid side after interpolation (3).

    Returns:
        (well vector, number of filled grid positions; 0 in ``mean`` mode).
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"unknown site merge mode {mode!r}; choose from {MERGE_MODES}")
    feats = np.asarray(feats, dtype=np.float64)
    if mode == "mean":
        if len(sites) != len(set(sites)):
            raise ValueError(f"duplicated site numbers in one well: {sorted(sites)}")
        return feats.mean(axis=0), 0
    grid, n_missing = well_grid(sites, feats, side, order=order, missing=missing)
    return interpolate_grid(grid, out_side).reshape(-1), n_missing


def well_feature_names(dim: int, mode: str, prefix: str = "", out_side: int = OUT_SIDE) -> list[str]:
    """Feature column names of merged wells (see module docstring).

    Args:
        dim: site vector length D.
        mode: ``"concat"`` or ``"mean"``.
        prefix: e.g. ``"fluo_"``.
        out_side: grid side after interpolation.

    Returns:
        Names, ``out_side**2 * dim`` (concat) or ``dim`` (mean) of them.
    """
    if mode == "mean":
        return [f"{prefix}{j:04d}" for j in range(dim)]
    return [f"{prefix}p{p}_{j:04d}" for p in range(out_side * out_side) for j in range(dim)]


def merge_sites(
    index: pd.DataFrame,
    feats: np.ndarray,
    mode: str = "concat",
    order: str = "row-major",
    sites_per_well: int | str = "auto",
    missing: str = "mean",
    prefix: str = "",
    dtype=np.float32,
) -> tuple[pd.DataFrame, dict]:
    """Merge site vectors into well vectors for every (plate, well).

    Args:
        index: one row per site with Metadata_Plate, Metadata_Well, Metadata_Site (row i describes ``feats[i]``).
        feats: (n_sites, D) site vectors.
        mode: ``"concat"`` or ``"mean"``.
        order: site -> grid position rule.
        sites_per_well: 9, 16, or ``"auto"`` (per plate, from its largest site number).
        missing: missing-site policy (``"mean"`` fill or ``"error"``).
        prefix: feature name prefix.
        dtype: dtype of the output features.

    Returns:
        (DataFrame with Metadata_Plate, Metadata_Well and the feature columns, sorted by plate and well;
        stats dict with ``wells``, ``sites``, ``wells_with_missing_sites``, ``sites_present_histogram``
        ({n_sites: n_wells}) and ``sites_per_well`` per plate).

    Raises:
        ValueError: a missing index column (named), a length mismatch, or a bad site layout.
    """
    for col in (PLATE, WELL, SITE):
        if col not in index.columns:
            raise ValueError(f"site index: missing column {col}; present: {list(index.columns)}")
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) != len(index):
        raise ValueError(f"site features {feats.shape} do not match the site index ({len(index)} rows)")
    sites = np.array([parse_site(s) for s in index[SITE]])
    plates = index[PLATE].astype(str).to_numpy()
    wells = index[WELL].astype(str).to_numpy()
    layout: dict[str, int] = {}
    for plate in sorted(set(plates)):
        max_site = int(sites[plates == plate].max())
        if sites_per_well == "auto":
            layout[plate] = infer_sites_per_well(max_site)
        else:
            layout[plate] = int(sites_per_well)
            if max_site > layout[plate]:
                raise ValueError(f"plate {plate}: site {max_site} with sites_per_well={sites_per_well}")
    keys = pd.MultiIndex.from_arrays([plates, wells])
    groups = pd.Series(np.arange(len(index))).groupby(keys, sort=True).indices
    rows, vectors = [], []
    present = Counter()
    n_missing_wells = 0
    for (plate, well), idx in groups.items():
        side = grid_side(layout[plate])
        vec, n_missing = merge_well(list(sites[idx]), feats[idx], side, mode=mode, order=order, missing=missing)
        rows.append((plate, well))
        vectors.append(vec.astype(dtype))
        present[len(idx)] += 1
        n_missing_wells += n_missing > 0 or (mode == "mean" and len(idx) < layout[plate])
    names = well_feature_names(feats.shape[1], mode, prefix)
    out = pd.DataFrame(np.stack(vectors) if vectors else np.empty((0, len(names)), dtype), columns=names)
    out.insert(0, WELL, [r[1] for r in rows])
    out.insert(0, PLATE, [r[0] for r in rows])
    stats = {
        "wells": len(rows),
        "sites": int(len(index)),
        "wells_with_missing_sites": int(n_missing_wells),
        "sites_present_histogram": {int(k): int(v) for k, v in sorted(present.items())},
        "sites_per_well": layout,
    }
    if n_missing_wells:
        policy = "mean of present sites filled the empty grid positions" if mode == "concat" else "mean of present"
        logger.warning(
            "plate(s) %s: %d of %d wells have missing sites (sites present: %s); %s",
            ",".join(sorted(layout)),
            n_missing_wells,
            len(rows),
            stats["sites_present_histogram"],
            policy,
        )
    return out, stats
