"""The demo's report page, OUT/report/README.md, drawn with :mod:`dinov2_cell.report`'s figures."""

from __future__ import annotations

import os

from dinov2_cell.demo.scoring import COMBINATIONS, MODELS, format_results

HEALTH_RUNS = {"fluo_la": "fluo, LA", "fluo_nola": "fluo, no LA", "bf_la": "bf, LA", "bf_nola": "bf, no LA"}


def read_health(run: str) -> list[dict]:
    """The rows of a run's `training_metrics.json` that carry health values, one per computation."""
    from dinov2_cell.report.training import METRICS_FILE, read_metrics_file

    rows, seen = [], set()
    for r in read_metrics_file(os.path.join(run, METRICS_FILE))[0]:
        if "health_iteration" in r and r["health_iteration"] not in seen:
            seen.add(r["health_iteration"])
            rows.append(r)
    return rows


def report(
    results: dict, runs: dict[str, str], paths: dict[str, str], out: str, elapsed: dict, probe: list | None = None
) -> str:
    """Step 7: OUT/report/README.md with loss curves, health curves, the kNN probe along training, kNN per
    combination and a 2-D projection (PNG).

    Args:
        results: :func:`dinov2_cell.demo.scoring.evaluate_all`'s scores.
        runs: run name -> training run folder.
        paths: model variant -> profiles file.
        out: the demo's output folder.
        elapsed: step -> wall seconds.
        probe: the checkpoint probe curve.

    Returns:
        The README's path.
    """
    import numpy as np

    from dinov2_cell.atomic import write_text
    from dinov2_cell.profiles.io import feature_columns, is_control, read_profiles
    from dinov2_cell.report._figures import pyplot, save_figure
    from dinov2_cell.report.evaluation import plot_embedding, plot_knn_by_combination, tsne_coordinates
    from dinov2_cell.report.training import health_table, plot_health, plot_losses, plot_probe, read_training

    plt = pyplot()
    rdir = os.path.join(out, "report")
    os.makedirs(rdir, exist_ok=True)
    training = {name: read_training(run) for name, run in runs.items() if name in HEALTH_RUNS}
    chance = next(iter(results.values()))["chance"]

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, group in zip(axes, ("fluo", "bf")):
        for variant, label in (("la", "local aggregation"), ("nola", "no local aggregation")):
            rows = training[f"{group}_{variant}"].rows
            plot_losses(ax, rows, label=f"total, {label}", terms=False)
            if variant == "la":
                pts = [(r["iteration"], r["local_aggregation_loss"]) for r in rows if "local_aggregation_loss" in r]
                ax.plot(*zip(*pts), "--", label="local-aggregation term")
        ax.set_title(f"training loss, {'fluorescent (5 ch)' if group == 'fluo' else 'brightfield (3 ch)'}")
        ax.legend(fontsize=7)
    save_figure(fig, os.path.join(rdir, "loss_curves.png"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, (name, label) in enumerate(HEALTH_RUNS.items()):
        plot_health(axes[0], axes[1], training[name].health, label=label, color=f"C{i}")
    for ax in axes[:2]:
        ax.legend(fontsize=6, ncol=2)
    if probe:
        plot_probe(axes[2], probe, label="fluo LA teacher", chance=chance)
        axes[2].legend(fontsize=7)
    axes[2].set_title("kNN probe of the fluo LA teacher (fluo-only profiles)")
    axes[2].set_xlabel("iteration (0 = random init)")
    axes[2].set_ylabel("kNN mean accuracy (%)")
    save_figure(fig, os.path.join(rdir, "health_curves.png"))
    health_md = [
        "| run | iteration | teacher entropy / log K | batch-mean / log K | RankMe | flags |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in HEALTH_RUNS.items():
        health_md += health_table(training[name].health, label=label)
    probe_md = ["| iteration | kNN mean accuracy (%) |", "|---|---|"]
    probe_md += [f"| {p['iteration']} | {100 * p['knn_mean_accuracy']:.1f} |" for p in probe or []]

    fig, ax = plt.subplots(figsize=(9, 3.8))
    knn = {r.get("label", MODELS[name]): r["knn"] for name, r in results.items()}
    plot_knn_by_combination(ax, knn, COMBINATIONS, chance)
    save_figure(fig, os.path.join(rdir, "knn_by_combination.png"))

    df = read_profiles(paths["ssl_local_aggregation"])
    xy = tsne_coordinates(df[feature_columns(df)].to_numpy(np.float32))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    plot_embedding(axes, df, xy, is_control(df), ["target", "Metadata_cell_line"], "t-SNE")
    save_figure(fig, os.path.join(rdir, "embedding_tsne.png"))

    md = [
        "# dinov2_cell demo report",
        "",
        "Synthetic plates in the real CPJUMP1 layout (real barcodes, plate map, compounds and targets; both cell "
        "lines; 9- and 16-site plates; some missing sites). Tiny ViTs trained on CPU; every number below was "
        "measured in this run.",
        "",
        "## Scores",
        "",
        "```",
        format_results(results),
        "```",
        "",
        "![kNN accuracy per train->test combination](knn_by_combination.png)",
        "",
        "## Training",
        "",
        "| run | wall time (s) |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in elapsed.items()],
        "",
        "![training loss](loss_curves.png)",
        "",
        "## Training health",
        "",
        "Teacher collapse diagnostics logged during training (`health_*` keys of each run's `training_metrics.json`,"
        " computed on a fixed set of training sites): uniform collapse = both entropies near log K, one-prototype "
        "collapse = both near 0, healthy = per-sample entropy low and batch-mean entropy high; RankMe is the "
        "effective rank of the teacher's CLS embeddings. Right: kNN probe of the fluorescent local-aggregation "
        "teacher at checkpoints along its run (fluorescent-only profiles; iteration 0 is the random-init control).",
        "",
        *health_md,
        "",
        *probe_md,
        "",
        "![health curves and kNN probe](health_curves.png)",
        "",
        "## Well embeddings (SSL with local aggregation, fluorescent + brightfield)",
        "",
        "![t-SNE of well embeddings](embedding_tsne.png)",
        "",
        "Per-variant results: `../eval/<variant>/` (`knn_folds.csv`, `knn.json`, `compounds.csv`, `map_*.csv`). "
        "Any training run's curves: `python -m dinov2_cell.report ../runs/<run>`; an evaluation report of any "
        "profiles: `python -m dinov2_cell.eval.knn_wells PROFILES --report DIR`.",
    ]
    return write_text(os.path.join(rdir, "README.md"), "\n".join(md) + "\n")
