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

import itertools
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


def correlation_excluded(df: pd.DataFrame, features: list[str], threshold: float) -> list[str]:
    """The features ``pycytominer``'s ``correlation_threshold`` (Pearson) excludes, without its long-format table.

    pycytominer stacks the lower triangle of the correlation matrix into a table of every feature pair and applies a
    Python function to each pair above the threshold, which takes seconds for a few thousand ViT features; the rule is
    the same here, on arrays: for each pair whose correlation exceeds ``threshold`` (signed, strictly), the feature
    later in the order of summed absolute correlation (pycytominer's own ordering call) is excluded.

    Args:
        df: table holding the feature columns.
        features: the columns to filter.
        threshold: correlation cut-off in [0, 1].

    Returns:
        Excluded feature names, in the order of ``features``.
    """
    if not 0 <= threshold <= 1:
        raise ValueError("threshold variable must be between (0 and 1)")
    if len(features) < 2:  # no pair
        return []
    values = df[features].to_numpy()
    if not np.isfinite(values).all():  # pycytominer's pandas path (pairwise complete observations)
        from pycytominer.operations import correlation_threshold

        chosen = set(correlation_threshold(df, features=list(features), threshold=threshold))
        return [f for f in features if f in chosen]
    corr = pd.DataFrame(np.corrcoef(values.T), index=features, columns=features)
    order = corr.abs().sum().sort_values().index
    rank = order.get_indexer_for(pd.Index(features))  # each feature's place in that order
    above = np.tril(corr.to_numpy() > threshold, k=-1)
    a, b = np.nonzero(above)  # a > b: pycytominer's pair_a (row) and pair_b (column)
    drop = np.where(rank[a] > rank[b], a, b)
    chosen = np.zeros(len(features), dtype=bool)
    chosen[drop] = True
    return [f for f, c in zip(features, chosen) if c]


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
    # pycytominer applies the operations in order, each to the features the earlier ones kept; the correlation
    # filter is ours (same result, see correlation_excluded), the others are pycytominer's, run in the same order.
    excluded: set[str] = set()
    current = feats
    for is_corr, group in itertools.groupby(settings.operations, key=lambda op: op == "correlation_threshold"):
        if is_corr:  # repeated, it would find nothing more
            excluded |= set(correlation_excluded(df, current, settings.corr_threshold))
        else:
            step = feature_select(
                profiles=df,
                features=current,
                operation=list(group),
                na_cutoff=settings.na_cutoff,
                corr_threshold=settings.corr_threshold,
                output_file=None,
            )
            excluded |= set(df.columns) - set(step.columns)
        current = [c for c in current if c not in excluded]
    selected = df.drop(columns=[c for c in df.columns if c in excluded])
    in_feats = set(feats)
    kept = [c for c in feature_columns(selected) if c in in_feats]
    values = selected[kept].to_numpy(dtype=np.float64)
    bad = [c for c, ok in zip(kept, np.isfinite(values).all(axis=0)) if not ok]
    if bad:
        logger.warning("%d feature(s) still held NaN/inf after feature selection; dropped (e.g. %s)", len(bad), bad[0])
        selected = selected.drop(columns=bad)
    dropped = set(bad)
    out = selected[metadata_columns(selected) + [c for c in kept if c not in dropped]]
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
