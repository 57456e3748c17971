"""Mean average precision with ``copairs``: phenotypic activity and phenotypic consistency.

The field's standard retrieval metrics (Kalinin et al., Nat. Commun. 2025), computed by calling copairs with the
recipes of its examples (``examples/runner/configs/{activity,consistency}_analysis.yaml``):

* **Phenotypic activity** -- can a compound's replicate wells be retrieved against DMSO wells? Every DMSO well gets
  its own reference index (``copairs.matching.assign_reference_index``; other wells -1); positive pairs share the
  compound and the reference index (= replicate wells of a compound), negative pairs differ in both (= compound vs
  DMSO): ``pos_sameby=[compound, ref]``, ``pos_diffby=[]``, ``neg_sameby=[]``, ``neg_diffby=[compound, ref]``.
  mAP per compound with ``copairs.map.mean_average_precision(sameby=[compound], null_size, threshold, seed)``;
  a compound is *retrieved* (phenotypically active) when its BH-corrected p-value is below ``threshold`` (0.05).
* **Phenotypic consistency** -- do compounds annotated with the same target look alike? Replicate wells are
  averaged into one consensus profile per compound (otherwise replicates of one compound would count as
  same-target pairs), restricted by default to the compounds found active above (copairs' recipe); positive pairs
  share ``Metadata_target``, negative pairs differ in it; mAP per target with the same p-value correction. Targets
  with a single compound have no positive pair and are left out by copairs.

Both are computed separately within each group of ``split_by`` (default: per cell line -- replicates of a compound
across U2OS and A549 plates are different experiments). Summaries: the mean of the per-compound (per-target) mAPs
and the fraction retrieved. ``null_size`` defaults to 10000 here (copairs' examples use 10^6; the p-value cannot be
below 1 / (null_size + 1)). Null distributions are cached by copairs under ``cache_dir`` (default ``~/.copairs``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.eval.normalize import METHODS
from dinov2_cell.eval.postprocess import PostProcess
from dinov2_cell.columns import BROAD, CELL_LINE, PERT, PLATE, TARGET
from dinov2_cell.profiles.io import check_profiles, feature_columns, is_control, read_profiles

logger = logging.getLogger("dinov2_cell.eval")

REFERENCE_COL = "Metadata_reference_index"


def _empty(cols: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(
        columns=list(cols) + ["mean_average_precision", "p_value", "corrected_p_value", "below_corrected_p"]
    )


def paired_average_precision(
    meta: pd.DataFrame,
    feats: np.ndarray,
    same: Sequence[str],
    what: str,
    distance: str = "cosine",
    batch_size: int = 20000,
    progress: bool = False,
) -> pd.DataFrame | None:
    """copairs' per-row average precision with positives sharing every column of ``same`` and negatives differing in
    all of them; ``None`` (with a warning naming ``what``) when no row has a positive pair.

    Args:
        meta: metadata of the rows (the ``same`` columns).
        feats: (n, D) features aligned with ``meta``.
        same: the columns positives share and negatives differ in.
        what: the metric's name, for the warning.
        distance: copairs distance.
        batch_size: copairs similarity batch size.
        progress: copairs progress bar.

    Returns:
        copairs' table (``meta`` plus average_precision, n_pos_pairs, n_total_pairs), or ``None``.
    """
    from copairs.map import average_precision

    try:
        return average_precision(
            meta,
            np.asarray(feats, dtype=np.float64),
            pos_sameby=list(same),
            pos_diffby=[],
            neg_sameby=[],
            neg_diffby=list(same),
            batch_size=batch_size,
            distance=distance,
            progress_bar=progress,
        )
    except Exception as e:  # copairs' UnpairedException: no row has a positive pair
        if type(e).__name__ != "UnpairedException":
            raise
        logger.warning("%s: %s", what, e)
        return None


def activity_map(
    meta: pd.DataFrame,
    feats: np.ndarray,
    label_col: str = BROAD,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    distance: str = "cosine",
    cache_dir: str | None = None,
    batch_size: int = 20000,
    progress: bool = False,
) -> pd.DataFrame:
    """Phenotypic activity mAP per compound (replicates vs DMSO), copairs' recipe.

    Args:
        meta: metadata rows (label column and whatever :func:`is_control` needs), aligned with ``feats``.
        feats: (n, D) features.
        label_col: compound column.
        null_size: null distribution size.
        threshold: p-value threshold for ``below_corrected_p``.
        seed: null distribution seed.
        distance: copairs distance (``cosine``, ``euclidean``, ``correlation``, ...).
        cache_dir: copairs null cache folder.
        batch_size: copairs similarity batch size.
        progress: copairs progress bars.

    Returns:
        copairs' table: label_col, mean_average_precision, p_value, corrected_p_value, below_p, below_corrected_p.

    Raises:
        ValueError: no DMSO rows.
    """
    from copairs.map import mean_average_precision
    from copairs.matching import assign_reference_index

    controls = is_control(meta)
    if not controls.any():
        raise ValueError("phenotypic activity needs DMSO wells; none found")
    m = pd.DataFrame({label_col: meta[label_col].astype(str).to_numpy()})
    m.loc[controls, label_col] = "DMSO"
    m = assign_reference_index(m, pd.Index(np.flatnonzero(controls)), reference_col=REFERENCE_COL, default_value=-1)
    cols = [label_col, REFERENCE_COL]
    ap = paired_average_precision(m, feats, cols, "phenotypic activity", distance, batch_size, progress)
    if ap is None:
        return _empty([label_col])
    ap = ap[~controls]
    if ap["average_precision"].notna().sum() == 0:
        return _empty([label_col])
    return mean_average_precision(
        ap,
        sameby=[label_col],
        null_size=null_size,
        threshold=threshold,
        seed=seed,
        progress_bar=progress,
        cache_dir=cache_dir,
    ).drop(columns=["indices"], errors="ignore")


def consistency_map(
    meta: pd.DataFrame,
    feats: np.ndarray,
    label_col: str = BROAD,
    target_col: str = TARGET,
    compounds: Sequence[str] | None = None,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    distance: str = "cosine",
    cache_dir: str | None = None,
    batch_size: int = 20000,
    progress: bool = False,
) -> pd.DataFrame:
    """Phenotypic consistency mAP per target over compound consensus profiles, copairs' recipe.

    Args:
        meta: metadata rows aligned with ``feats`` (DMSO rows are ignored).
        feats: (n, D) features.
        label_col: compound column.
        target_col: target annotation column (empty = no annotation, dropped).
        compounds: keep only these compounds (e.g. the active ones); ``None`` = all.
        null_size: null distribution size.
        threshold: p-value threshold.
        seed: null seed.
        distance: copairs distance.
        cache_dir: copairs null cache folder.
        batch_size: copairs similarity batch size.
        progress: copairs progress bars.

    Returns:
        copairs' table with target_col, mean_average_precision, p_value, corrected_p_value, below_corrected_p
        (empty when no target has two compounds).
    """
    from copairs.map import mean_average_precision

    keep = ~is_control(meta)
    frame = pd.DataFrame(np.asarray(feats, dtype=np.float64)[keep])
    labels = meta[label_col].astype(str).to_numpy()[keep]
    targets = meta[target_col].astype(str).to_numpy()[keep]
    if compounds is not None:
        sel = np.isin(labels, list(compounds))
        frame, labels, targets = frame[sel], labels[sel], targets[sel]
    if len(frame) == 0:
        return _empty([target_col])
    consensus = frame.groupby(labels, sort=True).mean()
    target_of = pd.Series(targets, index=labels).groupby(level=0).first().loc[consensus.index]
    annotated = (target_of.str.strip() != "") & (target_of != "nan")
    consensus, target_of = consensus[annotated.to_numpy()], target_of[annotated]
    m = pd.DataFrame({label_col: consensus.index.to_numpy(), target_col: target_of.to_numpy()})
    counts = m[target_col].value_counts()
    if len(m) == 0 or counts.max() < 2 or len(counts) < 2:
        return _empty([target_col])
    ap = paired_average_precision(
        m, consensus.to_numpy(), [target_col], "phenotypic consistency", distance, batch_size, progress
    )
    if ap is None:
        return _empty([target_col])
    return mean_average_precision(
        ap,
        sameby=[target_col],
        null_size=null_size,
        threshold=threshold,
        seed=seed,
        progress_bar=progress,
        cache_dir=cache_dir,
    ).drop(columns=["indices"], errors="ignore")


def annotate_compounds(
    table: pd.DataFrame, profiles: pd.DataFrame, label_col: str = BROAD, columns: Sequence[str] = (PERT, TARGET)
) -> pd.DataFrame:
    """Add each compound's annotations (name, target) from the profiles to a per-compound table.

    Args:
        table: one row per compound (``label_col``), e.g. copairs' activity table.
        profiles: the profile rows the table was computed from.
        label_col: compound column of both.
        columns: annotation columns to add, where ``profiles`` has them (the first non-empty value per compound).

    Returns:
        A new table: ``label_col``, the annotation columns, then ``table``'s other columns.
    """
    out = table.copy()
    added = []
    for col in columns:
        if col == label_col or col not in profiles.columns or col in out.columns:
            continue
        values = profiles[col].astype(str).where(profiles[col].notna(), "")
        values = values[(values.str.strip() != "") & (values != "nan")]
        first = values.groupby(profiles.loc[values.index, label_col].astype(str)).first()
        out[col] = out[label_col].astype(str).map(first).fillna("")
        added.append(col)
    return out[[label_col, *added, *[c for c in table.columns if c != label_col]]]


def _summary(table: pd.DataFrame) -> dict:
    n = int(len(table))
    if n == 0:
        return {"mean_average_precision": float("nan"), "fraction_retrieved": float("nan"), "n": 0, "n_retrieved": 0}
    retrieved = int(table["below_corrected_p"].astype(bool).sum())
    return {
        "mean_average_precision": float(table["mean_average_precision"].mean()),
        "fraction_retrieved": retrieved / n,
        "n": n,
        "n_retrieved": retrieved,
    }


def map_scores(
    profiles: pd.DataFrame | str,
    normalize: str = "none",
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    distance: str = "cosine",
    label_col: str = BROAD,
    target_col: str = TARGET,
    split_by: Sequence[str] | None = (CELL_LINE,),
    activity: bool = True,
    consistency: bool = True,
    consistency_active_only: bool = True,
    cache_dir: str | None = None,
    batch_size: int = 20000,
    progress: bool = False,
    feature_cols: Sequence[str] | None = None,
    feature_select: bool = False,
    block_weights: dict | None = None,
) -> dict:
    """Phenotypic activity and consistency mAP per group (see module docstring).

    Args:
        profiles: profile table or path.
        normalize: per-plate normalisation against DMSO first (``none``, ``standardize``, ``robustize``, ``spherize``).
        null_size: copairs null distribution size (small in tests).
        threshold: corrected p-value threshold for "retrieved".
        seed: copairs seed.
        distance: copairs distance.
        label_col: compound column.
        target_col: target column.
        split_by: metadata columns; mAP is computed within each group (default per cell line; ``None`` = pooled).
        activity: compute phenotypic activity.
        consistency: compute phenotypic consistency.
        consistency_active_only: restrict consistency to compounds retrieved by the activity test (needs activity).
        cache_dir: copairs null cache folder.
        batch_size: copairs similarity batch size.
        progress: copairs progress bars.
        feature_cols: features (default all).
        feature_select: pycytominer feature selection after normalising (:mod:`dinov2_cell.eval.postprocess`).
        block_weights: scale each model block to unit mean norm times its weight; None keeps the raw concatenation.

    Returns:
        Dict with ``config`` and, for ``activity`` and ``consistency``: ``summary`` (group name -> mean mAP, fraction
        retrieved, counts; plus ``all``, pooled over groups' tables) and ``table`` (DataFrame, one row per compound or
        target and group; the activity table also carries each compound's name and target where the profiles have
        them, and the ``split_by`` columns, before copairs' values).

    Raises:
        ValueError: bad option, missing column, NaN features, or a group / plate without DMSO wells (named).
    """
    if normalize not in METHODS:
        raise ValueError(f"normalize must be one of {METHODS}, got {normalize!r}")
    source = profiles if isinstance(profiles, str) else "profiles"
    df = read_profiles(profiles)
    split_by = list(split_by or [])
    required = [PLATE, label_col, *split_by] + ([target_col] if consistency else [])
    feats = check_profiles(df, required=required, source=source, unique_wells=False)
    feats = list(feature_cols) if feature_cols is not None else feats
    post = PostProcess(normalize, feature_select, block_weights)
    df = post(df, feats).reset_index(drop=True)
    feats = [c for c in feature_columns(df) if c in set(feats)]
    groups = df.groupby(split_by, sort=True).indices if split_by else {"all": np.arange(len(df))}
    act_tables, con_tables = [], []
    act_summary, con_summary = {}, {}
    for key, idx in groups.items():
        key = key if isinstance(key, tuple) else (key,)
        name = "/".join(map(str, key))
        sub = df.iloc[idx].reset_index(drop=True)
        x = sub[feats].to_numpy(dtype=np.float64)
        label_info = dict(zip(split_by, key)) if split_by else {}
        active = None
        if activity or consistency_active_only:
            if not is_control(sub).any():
                raise ValueError(f"{source}: group {name} has no DMSO wells; phenotypic activity needs them")
            t = activity_map(sub, x, label_col, null_size, threshold, seed, distance, cache_dir, batch_size, progress)
            active = t.loc[t["below_corrected_p"].astype(bool), label_col].tolist() if len(t) else []
            if activity:
                act_summary[name] = _summary(t)
                t = annotate_compounds(t.assign(**label_info), sub, label_col, (PERT, target_col))
                # metadata first: compound, its name and target, the group (cell line), then copairs' values
                meta = [label_col, *[c for c in (PERT, target_col) if c in t.columns and c != label_col], *split_by]
                act_tables.append(t[list(dict.fromkeys(meta)) + [c for c in t.columns if c not in meta]])
        if consistency:
            t = consistency_map(
                sub,
                x,
                label_col,
                target_col,
                active if consistency_active_only else None,
                null_size,
                threshold,
                seed,
                distance,
                cache_dir,
                batch_size,
                progress,
            )
            con_summary[name] = _summary(t)
            con_tables.append(t.assign(**label_info))
    out = {
        "config": {
            "normalize": normalize,
            "postprocess": post.describe(),
            "null_size": null_size,
            "threshold": threshold,
            "seed": seed,
            "distance": distance,
            "label_col": label_col,
            "target_col": target_col,
            "split_by": split_by,
            "consistency_active_only": consistency_active_only,
            "n_features": len(feats),
        }
    }
    for key, tables, summary in (("activity", act_tables, act_summary), ("consistency", con_tables, con_summary)):
        table = pd.concat(tables, ignore_index=True) if tables else _empty([label_col])
        if summary:
            summary = {**summary, "all": _summary(table)}
        out[key] = {"summary": summary, "table": table}
    return out


def map_summary(result: dict) -> dict:
    """JSON-serialisable part of :func:`map_scores` (config and summaries, no tables).

    Args:
        result: output of :func:`map_scores`.

    Returns:
        Dict.
    """
    return {
        "config": result["config"],
        "activity": result["activity"]["summary"],
        "consistency": result["consistency"]["summary"],
    }


def format_map(result: dict) -> str:
    """Readable mAP summary.

    Args:
        result: output of :func:`map_scores`.

    Returns:
        Text.
    """
    cfg = result["config"]
    lines = [
        f"copairs mAP (null_size={cfg['null_size']}, corrected p < {cfg['threshold']}, {cfg['distance']}, "
        f"normalize={cfg['normalize']})",
        f"{'metric':<14}{'group':<10}{'mAP':>8}{'retrieved':>12}{'n':>6}",
    ]
    for key in ("activity", "consistency"):
        for group, s in result[key]["summary"].items():
            frac = "-" if s["n"] == 0 else f"{100 * s['fraction_retrieved']:.1f} %"
            mean = "-" if s["n"] == 0 else f"{s['mean_average_precision']:.3f}"
            lines.append(f"{key:<14}{group:<10}{mean:>8}{frac:>12}{s['n']:>6}")
    return "\n".join(lines)
