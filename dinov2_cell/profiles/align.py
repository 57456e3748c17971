"""Cross-plate alignment (paper Sec. 3.3.3): ``z <- alpha * z + (1 - alpha) * mu_position``.

``mu_position`` is the mean, over the plates in the table (optionally within groups such as a cell line), of the
well vectors at the same well position (``Metadata_Well``). Off by default everywhere.

**This uses plate-layout knowledge.** In CPJUMP1 every compound plate has the same layout, so the same position
holds the same compound on every plate; pulling wells toward their position mean pulls replicates of a compound
together without looking at any label. It raised the challenge score in the paper, but it is not a property of the
images: scores obtained with it must be labelled as such, and it removes phenotypic information (alpha -> 0 makes
every plate identical). It is transductive: the means include every plate in the table, test plates included.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.columns import PLATE, WELL
from dinov2_cell.profiles.io import check_profiles

logger = logging.getLogger("dinov2_cell.profiles")

ALIGNMENT_LABEL = "cross-plate alignment (uses plate-layout knowledge: same well position = same compound)"


def align_cross_plate(
    df: pd.DataFrame,
    alpha: float,
    feature_cols: Sequence[str] | None = None,
    position_col: str = WELL,
    group_by: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Shift every well vector toward the mean of its well position over plates.

    Args:
        df: profile table with one row per (Metadata_Plate, position).
        alpha: weight of the well's own vector, in [0, 1] (1 = unchanged, 0 = replaced by the position mean).
        feature_cols: features to align (default: all feature columns).
        position_col: column naming the well position.
        group_by: optional metadata columns; means are taken within each group (e.g. ``["Metadata_cell_line"]``).
            Default: over all plates of the table, as in the paper.

    Returns:
        A new DataFrame with aligned features (same row order, same dtypes).

    Raises:
        ValueError: alpha outside [0, 1], a missing column, NaN features, or a duplicated (plate, position).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alignment alpha must be in [0, 1], got {alpha}")
    group_by = list(group_by or [])
    feats = check_profiles(df, required=[PLATE, position_col, *group_by], source="alignment", unique_wells=False)
    feats = list(feature_cols) if feature_cols is not None else feats
    keys = group_by + [position_col]
    if df.duplicated([PLATE, *keys]).any():
        raise ValueError(f"alignment: a plate has the same {position_col} twice; need one row per plate and position")
    values = df[feats].to_numpy(dtype=np.float64)
    frame = pd.DataFrame(values, index=df.index)
    mu = frame.groupby([df[k] for k in keys], sort=False).transform("mean").to_numpy()
    aligned = float(alpha) * values + (1.0 - float(alpha)) * mu
    # One block assignment (not a loop over columns: well profiles can have tens of thousands of features).
    dtype = np.result_type(*[df[c].dtype for c in feats])
    block = pd.DataFrame(aligned.astype(dtype), columns=feats, index=df.index)
    out = pd.concat([df.drop(columns=feats), block], axis=1)[list(df.columns)]
    logger.warning("applied %s with alpha=%g over %d plates", ALIGNMENT_LABEL, alpha, df[PLATE].nunique())
    return out
