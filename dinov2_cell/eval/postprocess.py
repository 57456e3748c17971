"""Post-processing of well profiles before scoring, applied identically to every feature set.

Three steps, in this order (each optional):

1. **Per-plate normalisation against DMSO wells** (:func:`dinov2_cell.eval.normalize.normalize_profiles`:
   ``standardize``, ``robustize``, ``mad_robustize`` through pycytominer, or ``spherize`` fitted on DMSO wells),
   for learned embeddings exactly as for CellProfiler features.
2. **Feature selection** (:func:`dinov2_cell.profiles.recipe.select_features`: pycytominer's ``feature_select``
   with the JUMP recipe's operations).
3. **Block scaling** of fused profiles (:func:`scale_blocks`): the features of each model (the column prefix before
   the first ``_``, e.g. ``fluo_`` and ``bf_``) are scaled so that the block's mean L2 norm over wells equals its
   weight. Without it the paper's raw concatenation gives each block a share of the cosine proportional to its
   norm, which depends on the model, not on how informative the block is.

Only DMSO wells fit step 1 and no compound label is read by any step, so post-processing before a cross-validation
split leaks no label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from dinov2_cell.eval.normalize import METHODS, normalize_profiles
from dinov2_cell.profiles.io import feature_columns


def block_of(column: str) -> str:
    """The model block of a feature column: its prefix before the first ``_`` (``fluo_p0_0001`` -> ``fluo``)."""
    return str(column).split("_", 1)[0]


def scale_blocks(
    df: pd.DataFrame, weights: Mapping[str, float] | None = None, feature_cols: list[str] | None = None
) -> pd.DataFrame:
    """Scale each model block so that its mean L2 norm over wells equals its weight.

    Args:
        df: profile table.
        weights: block name -> weight (>= 0); blocks not named get 1.0. A weight of 0 drops the block's columns.
        feature_cols: features (default: all).

    Returns:
        A new table (same row order; dropped blocks removed).

    Raises:
        ValueError: a weight names no block of the table, or is negative / not finite.
    """
    feats = list(feature_cols) if feature_cols is not None else feature_columns(df)
    blocks: dict[str, list[str]] = {}
    for c in feats:
        blocks.setdefault(block_of(c), []).append(c)
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(blocks))
    if unknown:
        raise ValueError(f"block weight(s) for {unknown}: the profiles have blocks {sorted(blocks)}")
    for name, w in weights.items():
        if not (np.isfinite(w) and w >= 0):
            raise ValueError(f"block weight {name}={w}: must be a finite number >= 0")
    out = df.copy()
    for name, cols in blocks.items():
        w = float(weights.get(name, 1.0))
        if w == 0:
            out = out.drop(columns=cols)
            continue
        x = df[cols].to_numpy(np.float64)
        mean_norm = float(np.linalg.norm(x, axis=1).mean())
        out[cols] = x * (w / mean_norm) if mean_norm > 0 else x
    return out


def parse_block_weights(text: str | None) -> dict[str, float] | None:
    """``"fluo=1,bf=0.5"`` -> ``{"fluo": 1.0, "bf": 0.5}``; None or ``""`` -> None (no block scaling).

    Args:
        text: comma-separated ``BLOCK=WEIGHT`` items.

    Returns:
        The weights.

    Raises:
        ValueError: an item is not ``BLOCK=NUMBER``.
    """
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"block weight {item!r}: expected BLOCK=WEIGHT, e.g. fluo=1,bf=0.5") from None
    return out


@dataclass(frozen=True)
class PostProcess:
    """The post-processing of a profile table (see the module docstring).

    Args:
        normalize: per-plate normalisation against DMSO (one of :data:`~dinov2_cell.eval.normalize.METHODS`).
        feature_select: run the JUMP recipe's feature selection after normalising.
        block_weights: block scaling weights (``{}`` = every block to unit mean norm); None = raw concatenation.
    """

    normalize: str = "none"
    feature_select: bool = False
    block_weights: Mapping[str, float] | None = field(default=None)

    def __post_init__(self):
        if self.normalize not in METHODS:
            raise ValueError(f"normalize must be one of {METHODS}, got {self.normalize!r}")

    def describe(self) -> str:
        """One line for tables and reports."""
        parts = ["no DMSO normalisation" if self.normalize == "none" else f"per-plate {self.normalize} vs DMSO"]
        if self.feature_select:
            parts.append("feature selection")
        if self.block_weights is not None:
            w = ", ".join(f"{k} {v:g}" for k, v in sorted(self.block_weights.items()))
            parts.append("blocks scaled to unit mean norm" + (f" x weight ({w})" if w else ""))
        return "raw" if len(parts) == 1 and self.normalize == "none" else ", ".join(parts)

    def __call__(self, df: pd.DataFrame, feature_cols: list[str] | None = None) -> pd.DataFrame:
        """Apply the steps in order; returns a new table (metadata untouched)."""
        feats = list(feature_cols) if feature_cols is not None else feature_columns(df)
        out = normalize_profiles(df, self.normalize, feats)
        if self.feature_select:
            from dinov2_cell.profiles.recipe import select_features

            out, _ = select_features(out)
            feats = feature_columns(out)
        if self.block_weights is not None:
            out = scale_blocks(out, self.block_weights, feats)
        return out
