"""Feature normalisation against DMSO wells, delegated to pycytominer (the JUMP profiling recipe's implementation).

Methods (``method``, pycytominer's names):

* ``none``: unchanged.
* ``standardize``, ``robustize``, ``mad_robustize``: per plate, ``pycytominer.normalize`` with that method and the
  plate's DMSO wells as the reference (``samples``): ``(x - mean) / std`` (population std), ``(x - median) / IQR``,
  ``(x - median) / (1.4826 MAD)`` respectively (see :func:`dinov2_cell.profiles.recipe.normalize_per_plate`).
* ``spherize``: ``standardize`` per plate, then ``pycytominer.normalize(method="spherize", spherize_method="ZCA")``
  fitted on the pooled DMSO wells of all plates (centred; pycytominer's reduced-SVD ZCA, so directions outside the
  span of the DMSO wells are set to zero).

Only DMSO wells are used to fit (no compound label is read), so normalising before a cross-validation split leaks no
label; ``spherize`` pools the DMSO wells of every plate in the table (test plates included), an unsupervised,
transductive step that JUMP pipelines also take over a whole batch.

DMSO wells are recognised by :func:`dinov2_cell.profiles.io.is_control`: ``Metadata_control_type == "negcon"`` when
the table has that column (the JUMP convention), else ``Metadata_pert_iname == "DMSO"`` or an empty
``Metadata_broad_sample``; ``control_query`` (a pandas query string) overrides both. A plate with fewer than ``min_controls``
DMSO wells is an error that names the plate. A feature with zero spread on a plate's DMSO wells is divided by
pycytominer's epsilon (``mad_robustize``) or left centred (``standardize``), as pycytominer does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dinov2_cell.profiles.io import CONTROL_TYPE, PLATE, check_profiles, is_control, mark_controls
from dinov2_cell.profiles.recipe import normalize_per_plate

METHODS = ("none", "standardize", "robustize", "mad_robustize", "spherize")
_CONTROL_COL = "Metadata_is_DMSO_reference"


def spherize_on_controls(df: pd.DataFrame, features: list[str], eps: float = 1e-6) -> pd.DataFrame:
    """``pycytominer.normalize(method="spherize", spherize_method="ZCA")`` fitted on the table's DMSO wells.

    Args:
        df: profile table.
        features: feature columns.
        eps: pycytominer's ``spherize_epsilon``.

    Returns:
        A new table (rows and columns in the input order).
    """
    from pycytominer import normalize

    n_controls = int(is_control(df).sum())
    if n_controls <= len(features):
        # After per-plate centring the pooled DMSO wells span at most n - plates dimensions; pycytominer's ZCA then
        # fails its own rank check with "This is likely a bug" instead of naming the cause.
        raise ValueError(
            f"spherize: {n_controls} DMSO wells for {len(features)} features; sphering needs more DMSO wells than "
            "features (select features first, or use a per-plate method such as mad_robustize)"
        )
    work = df.copy()
    work[_CONTROL_COL] = np.where(is_control(df), "yes", "no")
    out = normalize(
        profiles=work,
        features=list(features),
        meta_features=[c for c in work.columns if c not in set(features)],
        samples=f"{_CONTROL_COL} == 'yes'",
        method="spherize",
        spherize_method="ZCA",
        spherize_center=True,
        spherize_epsilon=eps,
        output_file=None,
    )
    out.index = df.index
    return out[list(df.columns)]


def normalize_profiles(
    df: pd.DataFrame,
    method: str = "standardize",
    feature_cols: list[str] | None = None,
    plate_col: str = PLATE,
    eps: float = 1e-6,
    min_controls: int = 2,
    control_query: str | None = None,
) -> pd.DataFrame:
    """Normalise features against DMSO wells (see module docstring).

    Args:
        df: profile table (Metadata_Plate, Metadata_pert_iname and/or Metadata_broad_sample, features).
        method: one of :data:`METHODS`.
        feature_cols: features (default: all).
        plate_col: plate column.
        eps: sphering regulariser (``spherize``).
        min_controls: fewest DMSO wells a plate may have.
        control_query: pandas query string selecting the controls (default: see the module docstring).

    Returns:
        A new DataFrame with float64 normalised features (metadata untouched, same row and column order).

    Raises:
        ValueError: unknown method, missing column, NaN/inf features, or a plate with too few DMSO wells (named).
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; choose from {METHODS}")
    feats = check_profiles(df, required=[plate_col], source="normalisation", unique_wells=False)
    feats = list(feature_cols) if feature_cols is not None else feats
    if method == "none":
        return df.copy()
    if control_query is not None:
        # The query's wells become Metadata_control_type == "negcon", which every later is_control call follows;
        # the caller's table keeps its own columns.
        marked = mark_controls(df, control_query)
        out = normalize_profiles(marked, method, feats, plate_col, eps, min_controls)
        out = out[list(df.columns)].copy()
        if CONTROL_TYPE in df.columns:
            out[CONTROL_TYPE] = df[CONTROL_TYPE]
        return out
    per_plate = "standardize" if method == "spherize" else method
    out = normalize_per_plate(df, per_plate, feats, min_controls=min_controls, plate_col=plate_col)
    if method == "spherize":
        out = spherize_on_controls(out, feats, eps)
    return out
