"""Outputs of the kNN evaluation: the readable table and the CSV/JSON files under ``--out``."""

from __future__ import annotations

import os

import pandas as pd

from dinov2_cell.profiles.io import write_json, write_table

KNN_FILES = ("knn_folds.csv", "knn_summary.csv", "knn.json")
MAP_FILES = ("map_activity.csv", "map_consistency.csv", "map.json")


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

    Args:
        result: output of :func:`evaluate`.
        out_dir: folder (created).
        map_result: output of ``map_scores`` or ``None``.
        overwrite: replace existing files.

    Returns:
        Paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    names = list(KNN_FILES) + (list(MAP_FILES) if map_result is not None else [])
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
    write_json(result, paths[2], overwrite=overwrite)
    if map_result is not None:
        from dinov2_cell.eval.map import map_summary

        write_table(map_result["activity"]["table"], paths[3], overwrite=overwrite)
        write_table(map_result["consistency"]["table"], paths[4], overwrite=overwrite)
        write_json(map_summary(map_result), paths[5], overwrite=overwrite)
    return paths
