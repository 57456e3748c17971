"""The JUMP profiling recipe on well profiles, through pycytominer: per-plate DMSO normalisation, feature selection.

CPJUMP1's published ``*_normalized_feature_select_negcon*`` profiles were made by the profiling recipe: single cells
-> per-well median (``pycytominer.aggregate``) -> per plate, ``pycytominer.normalize`` with the plate's DMSO wells as
the reference (``samples``) -> ``pycytominer.feature_select`` over the batch. This module runs the last two steps on
a table of well medians (the aggregation is done per well by the featuriser, see
:mod:`dinov2_cell.profiles.cellprofiler`):

* :func:`normalize_per_plate`: ``pycytominer.normalize(method=..., samples=<DMSO wells>)`` on each plate separately
  (pycytominer fits one reference for the whole table it is given, so plates are passed one at a time). DMSO wells
  are :func:`dinov2_cell.profiles.io.is_control` (``Metadata_control_type == "negcon"`` when that column is present,
  else ``Metadata_pert_iname == "DMSO"`` or an empty broad sample; ``control_query`` overrides both).
* :func:`select_features`: ``pycytominer.feature_select`` with :data:`SELECT_OPERATIONS` (NaN columns first, so the
  variance and correlation filters see complete columns; ``drop_outliers`` last, which removes features with a
  normalised value beyond 500 in absolute value: a feature nearly constant on a plate's DMSO wells is divided by
  pycytominer's ``mad_robustize`` epsilon of 1e-18 and reaches ~1e18 elsewhere), then any column that still holds
  a NaN or infinite value is dropped and counted, so the output never holds one.

Only DMSO wells fit the normalisation and no compound label is read, so no label leaks into the features.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from dinov2_cell.profiles.io import PLATE, feature_columns, is_control, metadata_columns

logger = logging.getLogger("dinov2_cell.profiles")

# Per-plate methods only: sphering is fitted on the DMSO wells of a whole batch (see dinov2_cell.eval.normalize).
NORMALIZE_METHODS = ("standardize", "robustize", "mad_robustize")
SELECT_OPERATIONS = ("drop_na_columns", "variance_threshold", "correlation_threshold", "blocklist", "drop_outliers")
_CONTROL_COL = "Metadata_is_DMSO_reference"


@dataclass(frozen=True)
class RecipeSettings:
    """Settings of the post-aggregation recipe (recorded in a run's configuration).

    Args:
        normalize: pycytominer normalisation method (per plate, DMSO wells as reference).
        operations: pycytominer feature_select operations, applied in this order.
        na_cutoff: largest fraction of NaN a kept column may have (``drop_na_columns``).
        corr_threshold: ``correlation_threshold`` cut-off.
        min_controls: fewest DMSO wells a plate may have.
        control_query: pandas query selecting the control wells (default: :func:`~dinov2_cell.profiles.io.is_control`'s
            rule: ``Metadata_control_type == "negcon"`` when present, else the DMSO spellings).
    """

    normalize: str = "mad_robustize"
    operations: tuple[str, ...] = SELECT_OPERATIONS
    na_cutoff: float = 0.0
    corr_threshold: float = 0.9
    min_controls: int = 2
    control_query: str | None = None

    def __post_init__(self):
        if self.normalize not in NORMALIZE_METHODS:
            raise ValueError(f"unknown normalisation {self.normalize!r}; choose from {NORMALIZE_METHODS}")

    def describe(self) -> dict:
        """JSON-able settings."""
        out = asdict(self)
        out["operations"] = list(self.operations)
        if self.control_query is None:
            del out["control_query"]  # run configs recorded before the option existed stay equal
        return out


def normalize_per_plate(
    df: pd.DataFrame,
    method: str = "mad_robustize",
    features: list[str] | None = None,
    min_controls: int = 2,
    plate_col: str = PLATE,
    control_query: str | None = None,
) -> pd.DataFrame:
    """``pycytominer.normalize`` of each plate against its own DMSO wells.

    Args:
        df: well profiles with Metadata_Plate and Metadata_pert_iname and/or Metadata_broad_sample.
        method: pycytominer method (``standardize``, ``robustize`` or ``mad_robustize``).
        features: feature columns (default: every numeric non-Metadata column).
        min_controls: fewest DMSO wells a plate may have.
        plate_col: plate column.
        control_query: pandas query selecting the control wells (default: :func:`is_control`'s rule).

    Returns:
        A new table, rows and columns in the input order, features normalised (float64).

    Raises:
        ValueError: unknown method, missing plate column, or a plate with too few DMSO wells (named).
    """
    from pycytominer import normalize

    if method not in NORMALIZE_METHODS:
        raise ValueError(f"unknown normalisation {method!r}; choose from {NORMALIZE_METHODS}")
    if plate_col not in df.columns:
        raise ValueError(f"normalisation: missing column {plate_col}")
    feats = list(features) if features is not None else feature_columns(df)
    controls = is_control(df, control_query)
    work = pd.concat(
        [
            df.drop(columns=feats),
            df[feats].astype(np.float64),
            pd.Series(np.where(controls, "yes", "no"), index=df.index, name=_CONTROL_COL),
        ],
        axis=1,
    )
    meta = [c for c in work.columns if c not in feats]
    out = []
    for plate, rows in work.groupby(plate_col, sort=False):
        n_ctrl = int((rows[_CONTROL_COL] == "yes").sum())
        if n_ctrl < min_controls:
            raise ValueError(
                f"plate {plate}: {n_ctrl} DMSO well(s), need at least {min_controls} to normalise against DMSO "
                "(is Metadata_pert_iname / Metadata_broad_sample right for this plate?)"
            )
        part = normalize(
            profiles=rows,
            features=feats,
            meta_features=meta,
            samples=f"{_CONTROL_COL} == 'yes'",
            method=method,
            output_file=None,
        )
        part.index = rows.index
        out.append(part)
    result = pd.concat(out).loc[df.index]
    return result[list(df.columns)]


def select_features(df: pd.DataFrame, settings: RecipeSettings = RecipeSettings()) -> tuple[pd.DataFrame, dict]:
    """``pycytominer.feature_select`` (infinite values counted as missing) then removal of columns still holding NaN.

    Args:
        df: well profiles.
        settings: recipe settings.

    Returns:
        (table with the kept features, stats: ``features_in``, ``features_out``, ``dropped_non_finite``).
    """
    from pycytominer import feature_select

    feats = feature_columns(df)
    # A feature that is infinite in some well (e.g. a ratio over an empty compartment) would make sklearn's variance
    # threshold inside feature_select raise; as missing values they fall under drop_na_columns' cutoff instead.
    values = df[feats].to_numpy(dtype=np.float64)
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        logger.warning("%d infinite feature value(s) treated as missing before feature selection", n_inf)
        df = df.copy()
        df[feats] = np.where(np.isinf(values), np.nan, values)
    selected = feature_select(
        profiles=df,
        features=feats,
        operation=list(settings.operations),
        na_cutoff=settings.na_cutoff,
        corr_threshold=settings.corr_threshold,
        output_file=None,
    )
    kept = [c for c in feature_columns(selected) if c in set(feats)]
    values = selected[kept].to_numpy(dtype=np.float64)
    bad = [c for c, ok in zip(kept, np.isfinite(values).all(axis=0)) if not ok]
    if bad:
        logger.warning("%d feature(s) still held NaN/inf after feature selection; dropped (e.g. %s)", len(bad), bad[0])
        selected = selected.drop(columns=bad)
    out = selected[metadata_columns(selected) + [c for c in kept if c not in set(bad)]]
    stats = {"features_in": len(feats), "features_out": len(kept) - len(bad), "dropped_non_finite": len(bad)}
    return out, stats


def run_recipe(df: pd.DataFrame, settings: RecipeSettings = RecipeSettings()) -> pd.DataFrame:
    """Normalise per plate against DMSO, then select features (see module docstring).

    Args:
        df: well medians of every plate, with metadata.
        settings: recipe settings.

    Returns:
        The profile table (no NaN/inf; ``attrs["recipe_stats"]`` holds the selection counts).

    Raises:
        ValueError: no feature survives.
    """
    normalized = normalize_per_plate(
        df, settings.normalize, min_controls=settings.min_controls, control_query=settings.control_query
    )
    out, stats = select_features(normalized, settings)
    if not feature_columns(out):
        raise ValueError("feature selection kept no feature (too few wells, or every feature constant?)")
    logger.info("feature selection: %d -> %d features", stats["features_in"], stats["features_out"])
    out.attrs["recipe_stats"] = stats
    return out
