"""Outputs of the kNN evaluation: the readable table and the CSV/JSON files under ``--out``."""

from __future__ import annotations

import os

import pandas as pd

from dinov2_cell.columns import PERT, TARGET
from dinov2_cell.profiles.io import write_json, write_table

COMPOUNDS_FILE = "compounds.csv"
KNN_FILES = ("knn_folds.csv", "knn_summary.csv", "knn.json", COMPOUNDS_FILE)
MAP_FILES = ("map_activity.csv", "map_consistency.csv", "map.json")
MAP_COLUMNS = {"mean_average_precision": "mAP", "p_value": "p_value", "corrected_p_value": "corrected_p_value"}


def knn_columns(combination: str) -> tuple[str, str]:
    """Names of the per-compound kNN columns of one combination: (correct test wells, test wells).

    Args:
        combination: e.g. ``"U2OS->A549"``.

    Returns:
        ``("knn_hits_U2OS->A549", "knn_wells_U2OS->A549")``.
    """
    return f"knn_hits_{combination}", f"knn_wells_{combination}"


def compound_table(result: dict, map_result: dict | None = None) -> pd.DataFrame:
    """One row per compound and cell line: annotations, activity mAP and kNN hits per train->test combination.

    A compound's wells on the plates of cell line L are test wells of every combination with target L, each exactly
    once (the folds partition L's plates), so ``knn_hits_<S->L>`` of ``knn_wells_<S->L>`` of them were assigned
    their own compound; combinations of another target are empty for that row. With ``map_result`` the row also
    carries the phenotypic activity of the compound within L: ``mAP``, ``p_value``, ``corrected_p_value`` and
    ``retrieved`` (corrected p below the threshold).

    Args:
        result: output of :func:`dinov2_cell.eval.knn_wells.evaluate`.
        map_result: output of :func:`dinov2_cell.eval.map.map_scores` (split by cell line) or None.

    Returns:
        DataFrame sorted by cell line and compound: the label column, ``Metadata_pert_iname`` and
        ``Metadata_target`` where known, the cell line column, then the mAP and kNN columns.
    """
    cfg = result["config"]
    label, line = cfg["label_col"], cfg["cell_line_col"]
    pred = result["predictions"].copy()
    target_of = {f["combination"]: f["target"] for f in result["folds"]}
    pred[line] = pred["combination"].map(target_of)
    annotations = [c for c in (PERT, TARGET) if c in pred.columns and c != label]
    table = pred[[label, line, *annotations]].drop_duplicates([label, line]).reset_index(drop=True)
    counts = pred.groupby([label, line, "combination"], sort=False)["correct"].agg(["sum", "size"])
    for combo in result["combinations"]:
        hits_col, wells_col = knn_columns(combo)
        sub = counts.xs(combo, level="combination") if combo in counts.index.get_level_values(2) else None
        keys = pd.MultiIndex.from_frame(table[[label, line]])
        for col, stat in ((hits_col, "sum"), (wells_col, "size")):
            values = sub[stat].reindex(keys) if sub is not None else pd.Series(index=keys, dtype=float)
            table[col] = pd.array(values.to_numpy(), dtype="Int64")
    if map_result is not None:
        act = map_result["activity"]["table"]
        keys = [label] + ([line] if line in act.columns else [])
        cols = {**{k: v for k, v in MAP_COLUMNS.items() if k in act.columns}, "below_corrected_p": "retrieved"}
        act = act[[*keys, *[c for c in annotations if c in act.columns], *cols]].rename(columns=cols)
        act[label] = act[label].astype(str)
        if line in act.columns:
            act[line] = act[line].astype(str)
        table = table.merge(act, on=keys, how="outer", suffixes=("", "_map"))
        for c in annotations:  # compounds only the mAP saw (e.g. a cell line without a kNN combination)
            if f"{c}_map" in table.columns:
                table[c] = table[c].where(table[c].notna(), table[f"{c}_map"])
                table = table.drop(columns=f"{c}_map")
        table["retrieved"] = table["retrieved"].astype("boolean")
        knn = [c for c in table.columns if c.startswith(("knn_hits_", "knn_wells_"))]
        table = table[[label, *annotations, line, *cols.values(), *knn]]
    else:
        table = table[[label, *annotations, line, *[c for c in table.columns if c.startswith("knn_")]]]
    return table.sort_values([line, label], kind="stable").reset_index(drop=True)


def format_table(result: dict, map_result: dict | None = None) -> str:
    """Readable summary of :func:`evaluate` (and optionally :func:`dinov2_cell.eval.map.map_scores`).

    Args:
        result: output of :func:`evaluate`.
        map_result: output of ``map_scores`` or ``None``.

    Returns:
        Multi-line text.
    """
    cfg = result["config"]
    lines = [
        f"kNN compound classification (k={cfg['k']}, {cfg['metric']}, {cfg['weights']}, {cfg['n_folds']}-fold "
        f"plate-wise CV, cross-line train={cfg.get('cross_line_train', 'fold')}, normalize={cfg['normalize']}, "
        f"{cfg['n_wells']} non-DMSO wells, {cfg['n_features']} features)",
        f"{'combination':<14}{'folds':>6}{'accuracy %':>14}{'macro-F1 %':>14}",
    ]
    for name, c in result["combinations"].items():
        lines.append(
            f"{name:<14}{c['n_folds']:>6}{100 * c['accuracy']:>8.1f} ±{100 * c['accuracy_std']:>4.1f}"
            f"{100 * c['macro_f1']:>8.1f} ±{100 * c['macro_f1_std']:>4.1f}"
        )
    m = result["mean"]
    lines.append(f"{'mean':<14}{'':>6}{100 * m['accuracy']:>8.1f}{'':>6}{100 * m['macro_f1']:>8.1f}")
    if result.get("skipped"):
        lines.append(f"skipped (cell line absent): {', '.join(result['skipped'])}")
    if map_result is not None:
        from dinov2_cell.eval.map import format_map

        lines.append("")
        lines.append(format_map(map_result))
    return "\n".join(lines)


def write_outputs(result: dict, out_dir: str, map_result: dict | None = None, overwrite: bool = False) -> list[str]:
    """Write the CSV/JSON outputs (refusing to replace files unless ``overwrite``).

    ``knn.json`` holds everything but the per-well predictions, which ``compounds.csv`` sums per compound.

    Args:
        result: output of :func:`evaluate`.
        out_dir: folder (created).
        map_result: output of ``map_scores`` or ``None``.
        overwrite: replace existing files.

    Returns:
        Paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    knn_files = [n for n in KNN_FILES if n != COMPOUNDS_FILE or "predictions" in result]
    names = knn_files + (list(MAP_FILES) if map_result is not None else [])
    paths = [os.path.join(out_dir, n) for n in names]
    if not overwrite:
        existing = [p for p in paths if os.path.exists(p)]
        if existing:
            raise FileExistsError(f"{existing} exist; refusing to overwrite (pass --overwrite)")
    folds = pd.DataFrame(result["folds"])
    folds["train_plates"] = folds["train_plates"].map(";".join)
    folds["test_plates"] = folds["test_plates"].map(";".join)
    write_table(folds, paths[0], overwrite=overwrite)
    summary = pd.DataFrame(
        [{"combination": n, **c} for n, c in result["combinations"].items()]
        + [{"combination": "mean", **result["mean"]}]
    )
    write_table(summary, paths[1], overwrite=overwrite)
    write_json({k: v for k, v in result.items() if k != "predictions"}, paths[2], overwrite=overwrite)
    if COMPOUNDS_FILE in knn_files:
        write_table(compound_table(result, map_result), paths[3], overwrite=overwrite)
    if map_result is not None:
        from dinov2_cell.eval.map import map_summary

        m = len(knn_files)
        write_table(map_result["activity"]["table"], paths[m], overwrite=overwrite)
        write_table(map_result["consistency"]["table"], paths[m + 1], overwrite=overwrite)
        write_json(map_summary(map_result), paths[m + 2], overwrite=overwrite)
    return paths
