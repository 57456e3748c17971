"""The figures CPJUMP1 published for its CellProfiler features, computed the same way on any profile table.

Two retrieval figures per cell line (``benchmark/output/`` of the CPJUMP1 repository, quoted in
:data:`PUBLISHED`), both with copairs:

* **Phenotypic activity** (``cellprofiler_replicability_fr.csv``): the fraction of compounds whose replicate wells
  are retrieved against DMSO wells at BH-corrected p < 0.05 (:func:`dinov2_cell.eval.map.activity_map`).
* **Replicate retrieval mAP among all perturbations** (``cellprofiler_mAP.csv``): each treated well queries the
  other wells of its cell line; positives are the wells of the same compound, negatives every well of another
  perturbation (DMSO included); the mean over compounds of the per-compound mAP. Its chance level is measured the
  way CPJUMP1 did, with the compound labels shuffled across wells (``..._shuffled`` columns).

And one null that must stay at chance: **DMSO vs DMSO** -- DMSO wells are given dummy compound labels (one dummy
per group of DMSO wells, one well per plate, as a compound's replicates are laid out) and the activity test is run
for the dummies against the remaining DMSO wells; the fraction "retrieved" must be about the test's level (0.05 or
less), or the profiles carry plate/position structure that the activity figure would mistake for phenotype.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.columns import BROAD, CELL_LINE, PLATE, WELL
from dinov2_cell.eval.map import activity_map, paired_average_precision
from dinov2_cell.profiles.io import check_profiles, is_control, read_profiles

logger = logging.getLogger("dinov2_cell.eval")

# Published CPJUMP1 CellProfiler figures (REAL-BENCHMARKS.md): cell line -> time point -> value.
PUBLISHED = {
    "activity": {"A549": {"24 h": 0.765, "48 h": 0.954}, "U2OS": {"24 h": 0.775, "48 h": 0.663}},
    "replicate_map": {"A549": {"24 h": 0.376, "48 h": 0.571}, "U2OS": {"24 h": 0.391, "48 h": 0.332}},
    "replicate_map_shuffled": {"A549": {"24 h": 0.007, "48 h": 0.007}, "U2OS": {"24 h": 0.008, "48 h": 0.007}},
}


def published_range(metric: str) -> tuple[float, float]:
    """The (min, max) of a published figure over cell lines and time points.

    Args:
        metric: a key of :data:`PUBLISHED`.

    Returns:
        (low, high).
    """
    values = [v for line in PUBLISHED[metric].values() for v in line.values()]
    return min(values), max(values)


def replicate_map(
    meta: pd.DataFrame,
    feats: np.ndarray,
    label_col: str = BROAD,
    distance: str = "cosine",
    batch_size: int = 20000,
) -> pd.DataFrame:
    """Replicate retrieval mAP among all perturbations: per compound, the mean AP of its wells (see module docstring).

    Args:
        meta: metadata rows (label column and what :func:`is_control` needs), aligned with ``feats``.
        feats: (n, D) features.
        label_col: compound column.
        distance: copairs distance.
        batch_size: copairs similarity batch size.

    Returns:
        One row per compound with at least two wells: label_col, mean_average_precision, n_wells.
    """
    controls = np.asarray(is_control(meta), dtype=bool)
    labels = meta[label_col].astype(str).to_numpy().copy()
    labels[controls] = "DMSO"
    m = pd.DataFrame({label_col: labels})
    ap = paired_average_precision(m, feats, [label_col], "replicate mAP", distance, batch_size)
    if ap is None:
        return pd.DataFrame(columns=[label_col, "mean_average_precision", "n_wells"])
    ap = ap[~controls].dropna(subset=["average_precision"])
    out = ap.groupby(label_col, sort=True)["average_precision"].agg(["mean", "size"]).reset_index()
    return out.rename(columns={"mean": "mean_average_precision", "size": "n_wells"})


def dmso_null_labels(meta: pd.DataFrame, seed: int = 0) -> pd.Series:
    """Dummy compound labels for the DMSO-vs-DMSO null: groups of DMSO wells, one well per plate, like replicates.

    Every plate's DMSO wells are shuffled; the k-th well of every plate joins dummy ``k``; half of the dummies are
    kept as "compounds" (the other DMSO wells stay DMSO, the reference). Non-DMSO rows get ``None``.

    Args:
        meta: metadata with Metadata_Plate and what :func:`is_control` needs.
        seed: shuffle seed.

    Returns:
        Labels aligned with ``meta`` (``"DMSO"``, ``"null_<k>"`` or ``None``).
    """
    rng = np.random.default_rng(seed)
    controls = np.asarray(is_control(meta), dtype=bool)
    labels = np.array([None] * len(meta), dtype=object)
    labels[controls] = "DMSO"
    plates = sorted(meta.loc[controls, PLATE].astype(str).unique())
    slots = {}
    for plate in plates:
        rows = np.flatnonzero(controls & (meta[PLATE].astype(str).to_numpy() == plate))
        slots[plate] = rng.permutation(rows)
    n_groups = min(len(v) for v in slots.values()) // 2 if slots else 0
    for k in range(n_groups):
        for plate in plates:
            labels[slots[plate][k]] = f"null_{k}"
    return pd.Series(labels, index=meta.index, name=BROAD)


def calibration_scores(
    profiles: pd.DataFrame | str,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    distance: str = "cosine",
    feature_cols: Sequence[str] | None = None,
) -> dict:
    """CPJUMP1's published figures for one profile table, per cell line (see module docstring).

    Args:
        profiles: profile table (or path) already normalised as it should be scored (e.g. the CellProfiler recipe's
            output), with Metadata_Plate, Metadata_Well, Metadata_broad_sample, Metadata_cell_line.
        null_size: copairs null size of the activity p-values.
        threshold: corrected p-value threshold.
        seed: copairs and shuffle seed.
        distance: copairs distance.
        feature_cols: features to use (default all).

    Returns:
        Cell line -> dict with ``activity`` (fraction retrieved), ``activity_map``, ``n_compounds``,
        ``replicate_map``, ``replicate_map_shuffled``, ``dmso_null`` (fraction of DMSO dummies retrieved) and
        ``n_null``.

    Raises:
        ValueError: missing column or a cell line without DMSO wells (named).
    """
    source = profiles if isinstance(profiles, str) else "profiles"
    df = read_profiles(profiles)
    feats = check_profiles(df, required=[PLATE, WELL, BROAD, CELL_LINE], source=source, unique_wells=False)
    feats = list(feature_cols) if feature_cols is not None else feats
    out = {}
    for line, sub in df.groupby(CELL_LINE, sort=True):
        sub = sub.reset_index(drop=True)
        x = sub[feats].to_numpy(dtype=np.float64)
        if not is_control(sub).any():
            raise ValueError(f"{source}: cell line {line} has no DMSO wells; phenotypic activity needs them")
        act = activity_map(sub, x, BROAD, null_size, threshold, seed, distance)
        rep = replicate_map(sub, x, BROAD, distance)
        shuffled = sub.copy()
        treated = ~np.asarray(is_control(sub), dtype=bool)
        perm = np.random.default_rng(seed).permutation(np.flatnonzero(treated))
        shuffled.loc[treated, BROAD] = sub[BROAD].to_numpy()[perm]
        rep_shuf = replicate_map(shuffled, x, BROAD, distance)
        null_labels = dmso_null_labels(sub, seed=seed)
        keep = null_labels.notna().to_numpy()
        null_meta = sub.loc[keep, [PLATE, WELL]].assign(**{BROAD: null_labels[keep].to_numpy()})
        null = activity_map(null_meta.reset_index(drop=True), x[keep], BROAD, null_size, threshold, seed, distance)
        out[str(line)] = {
            "activity": float(act["below_corrected_p"].astype(bool).mean()) if len(act) else float("nan"),
            "activity_map": float(act["mean_average_precision"].mean()) if len(act) else float("nan"),
            "n_compounds": int(len(act)),
            "replicate_map": float(rep["mean_average_precision"].mean()) if len(rep) else float("nan"),
            "replicate_map_shuffled": (
                float(rep_shuf["mean_average_precision"].mean()) if len(rep_shuf) else float("nan")
            ),
            "dmso_null": float(null["below_corrected_p"].astype(bool).mean()) if len(null) else float("nan"),
            "n_null": int(len(null)),
        }
    return out
