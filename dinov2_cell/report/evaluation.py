"""Evaluation report of well profiles: per-compound table, mAP against -log10 q, kNN per combination, embeddings.

Written by ``python -m dinov2_cell.eval.knn_wells PROFILES --report DIR`` (which then also computes the mAP) into
``DIR``:

* ``compounds.csv``: one row per compound and cell line (:func:`dinov2_cell.eval.outputs.compound_table`): broad
  sample, compound name, target, cell line, activity mAP, p and corrected p (q), retrieved, and kNN hits / test
  wells per train->test combination;
* ``map_vs_q.png``: each compound's activity mAP against -log10 of its corrected p-value, per cell line, with the
  retrieval threshold;
* ``knn_by_combination.png``: kNN accuracy per train->test combination (mean over folds, fold std as error bars);
* ``embedding_pca.png``: the first two principal components of the wells (after the same post-processing as the
  scores), coloured by plate, by cell line and by target;
* ``README.md``: the score table, the most and least retrieved compounds and the figures.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.columns import CELL_LINE, PERT, PLATE, TARGET

REPORT_FILES = ("compounds.csv", "map_vs_q.png", "knn_by_combination.png", "embedding_pca.png", "README.md")
TOP_TARGETS = 9  # targets given their own colour in the embedding plots; the rest are "other"


def target_groups(df: pd.DataFrame, controls: np.ndarray, top: int = TOP_TARGETS) -> pd.Series:
    """Colour group per well: "DMSO", one of the ``top`` most frequent targets, "none" or "other".

    Args:
        df: profile rows.
        controls: boolean mask of the control wells.
        top: targets kept by name.

    Returns:
        Series aligned with ``df``.
    """
    target = df[TARGET].astype(str) if TARGET in df else pd.Series("", index=df.index)
    target = target.where(~target.isin(["", "nan"]), "none").where(~controls, "DMSO")
    keep = [t for t in target.value_counts().index if t not in ("DMSO", "none")][:top]
    return target.where(target.isin(["DMSO", "none", *keep]), "other")


def _scatter_groups(ax, xy: np.ndarray, groups: pd.Series, order: Sequence[str], legend: bool = True) -> None:
    grey = {"DMSO": "lightgrey", "other": "silver", "none": "gainsboro"}
    for g in order:
        m = (groups == g).to_numpy()
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=8, label=g, c=grey.get(g))
    if legend:
        ax.legend(fontsize=6, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_embedding(
    axes, df: pd.DataFrame, xy: np.ndarray, controls: np.ndarray, by: Sequence[str], method: str = "PCA"
) -> None:
    """Scatter the 2-D well coordinates once per colouring.

    Args:
        axes: one axis per entry of ``by``.
        df: profile rows aligned with ``xy``.
        xy: (n, 2) coordinates.
        controls: boolean mask of control wells.
        by: colourings, each ``"target"`` or a metadata column (plate, cell line).
        method: name of the projection, for the titles.
    """
    for ax, col in zip(axes, by):
        if col == "target":
            groups = target_groups(df, controls)
            order = ["DMSO", *[t for t in groups.value_counts().index if t not in ("DMSO", "other", "none")]]
            _scatter_groups(ax, xy, groups, [*order, "none", "other"])
            ax.set_title(f"well embeddings ({method}), by compound target")
            continue
        values = df[col].astype(str)
        levels = sorted(values.unique())
        _scatter_groups(ax, xy, values, levels, legend=len(levels) <= 20)
        ax.set_title(f"well embeddings ({method}), by {col.replace('Metadata_', '').replace('_', ' ').lower()}")


def pca_coordinates(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """First two principal components of the rows of ``x`` (fewer columns than 2: zero-padded).

    Args:
        x: (n, D) features.
        seed: PCA's random state (used by its randomised solver on large inputs).

    Returns:
        (n, 2) array.
    """
    from sklearn.decomposition import PCA

    k = min(2, x.shape[1], len(x))
    out = np.zeros((len(x), 2))
    if k > 0:
        out[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(x)
    return out


def tsne_coordinates(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of the rows of ``x`` after PCA to at most 30 dimensions (the demo's figure).

    Args:
        x: (n, D) features.
        seed: random state of both steps.

    Returns:
        (n, 2) array.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = PCA(n_components=min(30, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=min(30, len(x) // 4), random_state=seed, init="pca").fit_transform(x)


def plot_map_vs_q(ax, table: pd.DataFrame, threshold: float = 0.05, line_col: str = CELL_LINE) -> None:
    """Activity mAP against -log10 corrected p-value per compound, one colour per cell line.

    Args:
        ax: axis.
        table: rows with ``mAP`` (or ``mean_average_precision``) and ``corrected_p_value``.
        threshold: corrected p-value under which a compound is retrieved (dotted line).
        line_col: colour column (skipped when absent).
    """
    m = "mAP" if "mAP" in table.columns else "mean_average_precision"
    t = table[table[m].notna() & table["corrected_p_value"].notna()]
    groups = t.groupby(t[line_col].astype(str)) if line_col in t.columns else [("", t)]
    for name, g in groups:
        ax.scatter(g[m].astype(float), -np.log10(g["corrected_p_value"].astype(float)), s=12, label=name or None)
    ax.axhline(-np.log10(threshold), color="k", ls=":", lw=0.8, label=f"q = {threshold}")
    ax.set_xlabel("phenotypic activity mAP")
    ax.set_ylabel("-log10 corrected p (q)")
    ax.set_title("compounds: mAP vs -log10 q")
    ax.legend(fontsize=7)


def plot_knn_by_combination(
    ax, results: dict, combinations: Sequence[str], chance: float | None = None, error_bars: bool = False
) -> None:
    """Grouped bars of kNN accuracy (%) per train->test combination, one bar per result.

    Args:
        ax: axis.
        results: label -> output of :func:`dinov2_cell.eval.knn_wells.evaluate`.
        combinations: the combinations on the x axis, in order.
        chance: chance level in [0, 1] (dotted line) or None.
        error_bars: draw the fold standard deviation.
    """
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(combinations))
    for i, (label, knn) in enumerate(results.items()):
        combos = knn["combinations"]
        vals = [100 * combos.get(c, {}).get("accuracy", np.nan) for c in combinations]
        err = [100 * combos.get(c, {}).get("accuracy_std", np.nan) for c in combinations] if error_bars else None
        ax.bar(x + i * width, vals, width, yerr=err, capsize=3 if error_bars else 0, label=label)
    if chance is not None:
        ax.axhline(100 * chance, color="k", ls=":", label="chance")
    ax.set_xticks(x + width * (len(results) - 1) / 2, list(combinations))
    ax.set_ylabel("kNN accuracy (%)")
    ax.legend(fontsize=7)


def _compound_lines(table: pd.DataFrame, label: str, n: int = 10) -> list[str]:
    if "mAP" not in table.columns or table.empty:
        return []
    cols = [c for c in (label, PERT, TARGET, CELL_LINE) if c in table.columns]
    knn_hits = [c for c in table.columns if c.startswith("knn_hits_")]
    head = ["compound", *[c.replace("Metadata_", "") for c in cols[1:]], "mAP", "q", "retrieved", "kNN hits / wells"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ranked = table.sort_values("mAP", ascending=False, na_position="last")
    shown = ranked if len(ranked) <= 2 * n else pd.concat([ranked.head(n), ranked.tail(n)])
    for _, r in shown.iterrows():
        hits = sum(int(r[c]) for c in knn_hits if pd.notna(r[c]))
        wells = sum(int(r[c.replace("knn_hits_", "knn_wells_")]) for c in knn_hits if pd.notna(r[c]))
        cells = [str(r[c]) for c in cols]
        cells += [f"{r['mAP']:.3f}", f"{r['corrected_p_value']:.3g}", "yes" if r["retrieved"] is True else "no"]
        cells.append(f"{hits} / {wells}" if wells else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if len(shown) < len(ranked):
        lines.append(f"| ... {len(ranked) - len(shown)} more in compounds.csv | |")
    return lines


def check_report_dir(out_dir: str, overwrite: bool = False) -> None:
    """Refuse a report folder that is a file, or holds a report already (unless ``overwrite``), before any work.

    Args:
        out_dir: the folder.
        overwrite: allow replacing the report's files.

    Raises:
        FileExistsError: a report file exists and ``overwrite`` is False, or ``out_dir`` is a file.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"--report {out_dir}: exists and is not a folder")
    if not overwrite:
        existing = [os.path.join(out_dir, n) for n in REPORT_FILES if os.path.exists(os.path.join(out_dir, n))]
        if existing:
            raise FileExistsError(f"{existing[0]} exists; refusing to overwrite (pass --overwrite)")


def write_evaluation_report(
    profiles: pd.DataFrame,
    result: dict,
    map_result: dict,
    out_dir: str,
    overwrite: bool = False,
    source: str = "profiles",
    text: str | None = None,
) -> list[str]:
    """Write the report files of :data:`REPORT_FILES` (see module docstring).

    Args:
        profiles: the profile table scored (all wells, controls included), before post-processing.
        result: output of :func:`dinov2_cell.eval.knn_wells.evaluate` on it.
        map_result: output of :func:`dinov2_cell.eval.map.map_scores` on it (split by cell line).
        out_dir: report folder (created).
        overwrite: replace an earlier report's files.
        source: what was scored, for the README.
        text: the score table to show (default :func:`dinov2_cell.eval.outputs.format_table`).

    Returns:
        Paths written.
    """
    from dinov2_cell.atomic import write_text
    from dinov2_cell.eval.outputs import compound_table, format_table
    from dinov2_cell.eval.postprocess import PostProcess
    from dinov2_cell.profiles.io import feature_columns, is_control, write_table
    from dinov2_cell.report._figures import pyplot, save_figure

    check_report_dir(out_dir, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    cfg = result["config"]
    paths = []
    table = compound_table(result, map_result)
    paths.append(write_table(table, os.path.join(out_dir, "compounds.csv"), overwrite=overwrite))
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4.2))
    threshold = map_result["config"]["threshold"]
    plot_map_vs_q(ax, table, threshold, cfg["cell_line_col"])
    paths.append(save_figure(fig, os.path.join(out_dir, "map_vs_q.png"), overwrite=overwrite))

    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = profiles.loc[~is_control(profiles), cfg["label_col"]]
    chance = 1.0 / max(labels.nunique(), 1)
    plot_knn_by_combination(ax, {"kNN (mean over folds ± std)": result}, list(result["combinations"]), chance, True)
    paths.append(save_figure(fig, os.path.join(out_dir, "knn_by_combination.png"), overwrite=overwrite))

    # the wells as the scores saw them: the same normalisation, selection and block scaling
    feats = feature_columns(profiles)
    post = PostProcess(cfg["normalize"], cfg.get("feature_select", False), cfg.get("block_weights"))
    df = post(profiles, feats).reset_index(drop=True)
    x = df[[c for c in feature_columns(df) if c in set(feats)]].to_numpy(np.float64)
    xy = pca_coordinates(x)
    by = [c for c in (PLATE, cfg["cell_line_col"]) if c in df.columns] + ["target"]
    fig, axes = plt.subplots(1, len(by), figsize=(5.2 * len(by), 4.6))
    plot_embedding(np.atleast_1d(axes), df, xy, is_control(df), by, "PCA")
    paths.append(save_figure(fig, os.path.join(out_dir, "embedding_pca.png"), overwrite=overwrite))

    act = map_result["activity"]["summary"].get("all", {})
    md = [
        "# Evaluation report",
        "",
        f"Profiles: `{source}` ({len(profiles)} wells, {cfg['n_features']} features after post-processing: "
        f"{cfg.get('postprocess', cfg['normalize'])}).",
        "",
        "```",
        text if text is not None else format_table(result, map_result),
        "```",
        "",
        "![kNN accuracy per train->test combination](knn_by_combination.png)",
        "",
        "## Compounds",
        "",
        f"`compounds.csv`: one row per compound and cell line. Phenotypic activity (replicates vs DMSO, copairs): "
        f"{act.get('n_retrieved', 0)} of {act.get('n', 0)} compound x cell line retrieved at corrected p < "
        f"{threshold}; kNN hits count the compound's test wells assigned to it, per train->test combination.",
        "",
        *_compound_lines(table, cfg["label_col"]),
        "",
        "![mAP vs -log10 q](map_vs_q.png)",
        "",
        "## Well embeddings (PCA)",
        "",
        "![PCA of the wells by plate, cell line and target](embedding_pca.png)",
        "",
    ]
    paths.append(write_text(os.path.join(out_dir, "README.md"), "\n".join(md), overwrite=overwrite))
    return paths
