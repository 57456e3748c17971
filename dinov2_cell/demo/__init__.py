"""`python -m dinov2_cell.demo`: the whole method on synthetic plates in the real CPJUMP1 layout, on CPU.

Steps (each resumable: re-running skips what is complete):
1. synthetic plates (both cell lines, 9- and 16-site plates, some missing sites) -> OUT/plates
2. four tiny ViTs with `python -m dinov2_cell.run.train`: fluorescent and brightfield, with local aggregation
   and without it (`local_aggregation.loss_weight=0`) -> OUT/runs/{fluo,bf}_{la,nola}
3. a randomly initialised ViT of the same architecture (the "no training" control) -> OUT/runs/{fluo,bf}_random
4. well profiles (`dinov2_cell.embed`: CLS + mean patch token per site, sites concatenated on the 3x3 grid,
   fluorescent + brightfield) for the three ViT variants, and CellProfiler features (the classical baseline:
   segmentation + cp_measure on the first sites of each well, pycytominer's per-plate DMSO normalisation and
   feature selection, through the CellProfiler featuriser of the profiling driver)
5. the challenge kNN protocol (4 train->test cell-line combinations) and copairs mAP for each
6. a kNN probe of the fluorescent local-aggregation teacher at checkpoints along its run
7. a report (Markdown + PNG): loss and training-health curves, the kNN probe curve, kNN per combination, a 2-D
   projection of the well embeddings
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

logger = logging.getLogger("dinov2_cell.demo")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"fluo": "tiny_cpu_fluo", "bf": "tiny_cpu_bf"}  # packaged configs, by name
MODELS = {
    "ssl_local_aggregation": "SSL, local aggregation (the method)",
    "ssl_no_local_aggregation": "SSL, local aggregation off",
    "random_init": "random-init ViT (no training)",
    "cellprofiler": "CellProfiler features (cp_measure + pycytominer)",
}
# The CellProfiler baseline's cost decides its settings. Measured per 96 px site of the demo's plates (one thread,
# shared machine): Costes' colocalization alone ~5 s; segmentation + every other family except the intensity
# Zernike moments 0.59 CPU s, so the demo's ~2000 sites would still need ~10 min of 2 cores. Hence: every core
# family except the intensity Zernikes, colocalization without Costes, the first --cp-sites-per-well sites of a well.
CP_FAMILIES = ("intensity", "sizeshape", "texture", "granularity", "radial_distribution", "correlation")
CP_CORRELATIONS = ("pearson", "manders_fold", "rwc")
# Two plates per cell line (plate-wise folds become leave-one-plate-out); BR00117015 is imaged with 16 sites per well.
DEMO_PLATES = ("BR00116995", "BR00117010", "BR00116991", "BR00117015")
COMBINATIONS = ("U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549")
# One post-processing for every row of the table (CellProfiler included). Defaults measured on the demo's plates,
# see docs/benchmarks.md ("Post-processing").
DEFAULT_NORMALIZE = "none"
DEFAULT_FEATURE_SELECT = True
DEFAULT_BLOCK_WEIGHTS = "fluo=1,bf=0.5"
HEALTH_RUNS = {"fluo_la": "fluo, LA", "fluo_nola": "fluo, no LA", "bf_la": "bf, LA", "bf_nola": "bf, no LA"}


def get_args_parser() -> argparse.ArgumentParser:
    """Demo options; the defaults take about 3 minutes on 2 CPU cores."""
    from dinov2_cell.cli import comma_list, common_parser, non_negative_int, positive_int

    p = argparse.ArgumentParser(
        prog="python -m dinov2_cell.demo",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parser()],
    )
    p.add_argument("--out", default="demo_output", metavar="DIR", help="output folder (default: demo_output)")
    p.add_argument(
        "--plates",
        type=comma_list,
        default=list(DEMO_PLATES),
        metavar="A,B,...",
        help="comma-separated barcodes of the synthetic plates (default: 2 U2OS + 2 A549 plates, one of them a real "
        "16-site plate); a single number N (older spelling) makes N plates",
    )
    p.add_argument("--wells", type=positive_int, default=48, help="wells per plate, DMSO included (default 48)")
    p.add_argument("--size", type=positive_int, default=96, help="site size in pixels (default 96)")
    p.add_argument("--epochs", type=positive_int, default=40, help="epochs of 10 iterations per model (default 40)")
    p.add_argument("--seed", type=int, default=0, help="seed of the plates and of the random-init ViT")
    p.add_argument(
        "--null-size", type=positive_int, default=2000, help="copairs null size for the mAP p-values (default 2000)"
    )
    p.add_argument(
        "--probe-checkpoints",
        type=positive_int,
        default=4,
        help="teacher checkpoints of the fluorescent local-aggregation run probed with kNN (default 4)",
    )
    p.add_argument(
        "--normalize",
        default=DEFAULT_NORMALIZE,
        choices=("none", "standardize", "robustize", "mad_robustize", "spherize"),
        help=f"per-plate normalisation against DMSO wells, applied to every row of the table alike (default "
        f"{DEFAULT_NORMALIZE})",
    )
    p.add_argument(
        "--feature-select",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_FEATURE_SELECT,
        help="pycytominer feature selection after normalising, for every row alike",
    )
    p.add_argument(
        "--block-weights",
        default=DEFAULT_BLOCK_WEIGHTS,
        metavar="BLOCK=W,...",
        help="fused ViT profiles: each model's block (fluo, bf) scaled to unit mean norm times its weight; 'raw' = "
        f"the paper's raw concatenation (default {DEFAULT_BLOCK_WEIGHTS})",
    )
    p.add_argument(
        "--cp-sites-per-well",
        type=positive_int,
        default=3,
        metavar="N",
        help="CellProfiler features from the first N sites of each well (default 3; all sites would need ~10 min "
        "of 2 cores)",
    )
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=2,
        help="worker processes of the CellProfiler features (default 2)",
    )
    return p


def model_label(name: str, args) -> str:
    """The table label of a model variant (the CellProfiler one says which sites it measured).

    Args:
        name: key of :data:`MODELS`.
        args: the demo's arguments.

    Returns:
        The label.
    """
    if name == "cellprofiler":
        return f"{MODELS[name]}, {args.cp_sites_per_well} sites/well"
    return MODELS[name]


def _run(cmd: list[str], log_path: str) -> None:
    logger.info("$ %s", " ".join(cmd))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\nlast lines of {log_path}:\n{tail}")


def generate(args, plates_dir: str) -> None:
    """Step 1: synthetic plates (skipped when the folder already holds them)."""
    from dinov2_cell.synthetic import generate_plates

    if os.path.isfile(os.path.join(plates_dir, "synthetic_truth.csv")):
        logger.info("plates: %s already there", plates_dir)
        return
    generate_plates(
        plates_dir,
        plates=int(args.plates[0]) if len(args.plates) == 1 and args.plates[0].isdigit() else args.plates,
        wells=args.wells,
        size=args.size,
        missing_sites=0.1,
        seed=args.seed,
        progress=not args.no_progress,
    )


def dataset_path(config_file: str, root: str) -> str:
    """The config's dataset string with `root` pointed at the demo's plates (its other keys, e.g. normalize, kept)."""
    from omegaconf import OmegaConf

    from dinov2_cell.train.config import resolve_config_file

    tokens = str(OmegaConf.load(resolve_config_file(config_file)).train.dataset_path).split(":")
    return ":".join([tokens[0], f"root={root}"] + [t for t in tokens[1:] if not t.startswith("root=")])


def train(args, plates_dir: str, runs_dir: str) -> dict[str, str]:
    """Step 2: the four trainings, each through the user-facing CLI (resumes if interrupted)."""
    runs = {}
    for group in ("fluo", "bf"):
        for variant, weight in (("la", None), ("nola", "0")):
            out = os.path.join(runs_dir, f"{group}_{variant}")
            runs[f"{group}_{variant}"] = out
            if os.path.isfile(os.path.join(out, "eval", "final", "teacher_checkpoint.pth")):
                continue
            cmd = [sys.executable, "-m", "dinov2_cell.run.train", "--config-file", CONFIGS[group], "--output-dir", out]
            cmd.append(f"train.dataset_path={dataset_path(CONFIGS[group], plates_dir)}")
            if args.epochs is not None:
                cmd.append(f"optim.epochs={args.epochs}")
            if weight is not None:
                cmd.append(f"local_aggregation.loss_weight={weight}")
            if (group, variant) == ("fluo", "la"):  # teacher checkpoints along the run for the kNN probe curve
                cmd.append(f"evaluation.eval_period_iterations={probe_period(args, CONFIGS[group])}")
            t0 = time.time()
            _run(cmd, os.path.join(runs_dir, f"{group}_{variant}.log"))
            logger.info("trained %s in %.0f s", out, time.time() - t0)
    return runs


def probe_period(args, config_file: str) -> int:
    """Iterations between the teacher checkpoints of the kNN probe (``--probe-checkpoints`` along the run)."""
    from omegaconf import OmegaConf

    from dinov2_cell.train.config import resolve_config_file

    cfg = OmegaConf.load(resolve_config_file(config_file))
    epochs = args.epochs if args.epochs is not None else int(cfg.optim.epochs)
    return max(1, epochs * int(cfg.train.OFFICIAL_EPOCH_LENGTH) // args.probe_checkpoints)


def checkpoint_probe(args, plates_dir: str, run: str, random_run: str, out: str) -> list[dict]:
    """kNN probe of the teacher along one run: fluorescent-only profiles of each `eval/training_<i>` checkpoint.

    The random-init control (same architecture, not trained) stands at iteration 0.

    Returns:
        [{"iteration", "knn_mean_accuracy"}], by iteration.
    """
    import glob

    from dinov2_cell.embed import embed_plates
    from dinov2_cell.eval.knn_wells import evaluate
    from dinov2_cell.profiles.io import read_profiles

    points = [(0, os.path.join(random_run, "eval", "final", "teacher_checkpoint.pth"))]
    for ckpt in glob.glob(os.path.join(run, "eval", "training_*", "teacher_checkpoint.pth")):
        points.append((int(os.path.basename(os.path.dirname(ckpt)).split("_")[-1]) + 1, ckpt))
    curve = []
    for iteration, ckpt in sorted(points):
        path = embed_plates({"fluo": ckpt}, plates_dir, os.path.join(out, f"iter_{iteration}"), progress=False)
        knn = evaluate(read_profiles(path), normalize=args.normalize)
        curve.append({"iteration": iteration, "knn_mean_accuracy": knn["mean"]["accuracy"]})
        logger.info("kNN probe, fluo teacher at iteration %d: %.1f %%", iteration, 100 * curve[-1]["knn_mean_accuracy"])
    return curve


def read_health(run: str) -> list[dict]:
    """The rows of a run's `training_metrics.json` that carry health values, one per computation."""
    rows, seen = [], set()
    for line in open(os.path.join(run, "training_metrics.json")):
        r = json.loads(line)
        if "health_iteration" in r and r["health_iteration"] not in seen:
            seen.add(r["health_iteration"])
            rows.append(r)
    return rows


def random_init_run(trained_run: str, out: str, seed: int) -> str:
    """Step 3: a run folder holding a randomly initialised teacher with the trained run's config."""
    import torch
    from omegaconf import OmegaConf

    from dinov2_cell.models.multichannel_vit import build_model

    ckpt = os.path.join(out, "eval", "final", "teacher_checkpoint.pth")
    if os.path.isfile(ckpt):
        return out
    cfg = OmegaConf.load(os.path.join(trained_run, "config.yaml"))
    torch.manual_seed(seed)
    backbone, _ = build_model(
        cfg.student, only_teacher=True, img_size=cfg.crops.global_crops_size, in_chans=int(cfg.student.in_chans)
    )
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    OmegaConf.save(cfg, os.path.join(out, "config.yaml"))
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, ckpt + ".tmp")
    os.replace(ckpt + ".tmp", ckpt)
    return out


def profiles(args, plates_dir: str, runs: dict[str, str], out: str, elapsed: dict | None = None) -> dict[str, str]:
    """Step 4: well profiles of every model variant (fluorescent + brightfield concatenated)."""
    from dinov2_cell.embed import embed_plates

    paths = {}
    pairs = {
        "ssl_local_aggregation": (runs["fluo_la"], runs["bf_la"]),
        "ssl_no_local_aggregation": (runs["fluo_nola"], runs["bf_nola"]),
        "random_init": (runs["fluo_random"], runs["bf_random"]),
    }
    for name, (fluo, bf) in pairs.items():
        t0 = time.time()
        paths[name] = embed_plates(
            {"fluo": fluo, "bf": bf}, plates_dir, os.path.join(out, name), progress=not args.no_progress
        )
        logger.info("profiles %s: %s (%.0f s)", name, paths[name], time.time() - t0)
    # A finished run is not recomputed: the driver skips plates with a part and keeps a merged table of them.
    # The user-facing CLI in its own process: its worker pool then forks a process that has not run torch.
    t0 = time.time()
    cp_out = os.path.join(out, "cellprofiler")
    cmd = [sys.executable, "-m", "dinov2_cell.profiles.cellprofiler", "--data-root", plates_dir, "--out", cp_out]
    cmd += ["--families", ",".join(CP_FAMILIES), "--correlations", ",".join(CP_CORRELATIONS)]
    cmd += ["--sites-per-well", str(args.cp_sites_per_well), "--num-workers", str(args.num_workers), "--no-progress"]
    os.makedirs(out, exist_ok=True)
    _run(cmd, os.path.join(out, "cellprofiler.log"))
    paths["cellprofiler"] = os.path.join(cp_out, "profiles.parquet")
    logger.info("profiles cellprofiler: %s (%.0f s)", paths["cellprofiler"], time.time() - t0)
    if elapsed is not None:
        elapsed[f"CellProfiler features ({args.cp_sites_per_well} sites/well, {args.num_workers} workers)"] = (
            time.time() - t0
        )
    return paths


def postprocess(args, name: str):
    """The row's post-processing: the same normalisation and selection for every row; block scaling for fused ViTs.

    Args:
        args: the demo's arguments.
        name: the row (a key of :data:`MODELS`).

    Returns:
        A :class:`~dinov2_cell.eval.postprocess.PostProcess`.
    """
    from dinov2_cell.eval.postprocess import PostProcess, parse_block_weights

    fused = name != "cellprofiler" and args.block_weights != "raw"
    return PostProcess(args.normalize, args.feature_select, parse_block_weights(args.block_weights) if fused else None)


def evaluate_all(args, paths: dict[str, str], out: str) -> dict:
    """Step 5: challenge kNN + copairs mAP for every variant; writes OUT/eval/<variant>/ and returns the scores."""
    from dinov2_cell.eval.knn_wells import evaluate, write_outputs
    from dinov2_cell.eval.map import map_scores
    from dinov2_cell.profiles.io import read_profiles

    results = {}
    for name, path in paths.items():
        df = read_profiles(path)
        post = postprocess(args, name)
        opts = dict(normalize=post.normalize, feature_select=post.feature_select, block_weights=post.block_weights)
        knn = evaluate(df, **opts)
        # all compounds for consistency: with ~40 compounds, few targets have two *active* ones
        mp = map_scores(df, null_size=args.null_size, seed=args.seed, consistency_active_only=False, **opts)
        write_outputs(knn, os.path.join(out, name), map_result=mp, overwrite=True)
        labels = df.loc[df["Metadata_pert_iname"] != "DMSO", "Metadata_broad_sample"]
        results[name] = {
            "label": model_label(name, args),
            "postprocess": post.describe(),
            "knn": knn,
            "map": {k: mp[k]["summary"] for k in ("activity", "consistency")},
            "chance": 1.0 / max(labels.nunique(), 1),
        }
    return results


def _map_cell(summary: dict) -> str:
    values = [s["fraction_retrieved"] for s in summary.values() if s.get("n")]
    return "-" if not values else f"{100 * sum(values) / len(values):.0f}"


LABEL_WIDTH = 64


def format_results(results: dict) -> str:
    """The comparison table printed at the end (kNN accuracy %, fraction retrieved by mAP %)."""
    head = f"{'model':<{LABEL_WIDTH}}{'kNN mean':>9}" + "".join(f"{c:>12}" for c in COMBINATIONS)
    head += f"{'mAP act.':>10}{'mAP cons.':>10}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        combos = r["knn"]["combinations"]
        row = f"{r.get('label', MODELS[name]):<{LABEL_WIDTH}}{100 * r['knn']['mean']['accuracy']:>9.1f}"
        row += "".join(f"{100 * combos[c]['accuracy']:>12.1f}" if c in combos else f"{'-':>12}" for c in COMBINATIONS)
        row += f"{_map_cell(r['map']['activity']):>10}{_map_cell(r['map']['consistency']):>10}"
        lines.append(row)
    chance = next(iter(results.values()))["chance"]
    lines.append(f"{'chance (1 / number of compounds)':<{LABEL_WIDTH}}{100 * chance:>9.1f}")
    lines.append(
        "kNN: top-1 compound accuracy %, DMSO omitted, plate-wise folds; mAP: % of compounds retrieved at "
        "corrected p < 0.05 (activity: vs DMSO; consistency: same target, all compounds)"
    )
    if "cellprofiler" in results:
        lines.append(
            f"CellProfiler: families {', '.join(CP_FAMILIES)} (colocalization: {', '.join(CP_CORRELATIONS)}; no "
            "Costes, no intensity Zernikes), median per well, per-plate mad_robustize vs DMSO, feature selection "
            "(the profiling recipe), then the post-processing below"
        )
    posts = {r["postprocess"] for name, r in results.items() if name != "cellprofiler" and "postprocess" in r}
    for name, r in results.items():
        if "postprocess" in r and (name == "cellprofiler" or len(posts) > 1):
            lines.append(f"post-processing, {r.get('label', name)}: {r['postprocess']}")
    if len(posts) == 1:
        lines.append(f"post-processing of every ViT row: {posts.pop()}")
    return "\n".join(lines)


def report(
    results: dict, runs: dict[str, str], paths: dict[str, str], out: str, elapsed: dict, probe: list | None = None
) -> str:
    """Step 6: OUT/report/README.md with loss curves, health curves, the kNN probe along training, kNN per
    combination and a 2-D projection (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from dinov2_cell.profiles.io import feature_columns, read_profiles

    rdir = os.path.join(out, "report")
    os.makedirs(rdir, exist_ok=True)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, group in zip(axes, ("fluo", "bf")):
        for variant, label in (("la", "local aggregation"), ("nola", "no local aggregation")):
            rows = [
                json.loads(line) for line in open(os.path.join(runs[f"{group}_{variant}"], "training_metrics.json"))
            ]
            ax.plot([r["iteration"] for r in rows], [r["total_loss"] for r in rows], label=f"total, {label}")
            if variant == "la":
                ax.plot(
                    [r["iteration"] for r in rows],
                    [r["local_aggregation_loss"] for r in rows],
                    "--",
                    label="local-aggregation term",
                )
        ax.set_title(f"training loss, {'fluorescent (5 ch)' if group == 'fluo' else 'brightfield (3 ch)'}")
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(rdir, "loss_curves.png"), dpi=110)
    plt.close(fig)

    from dinov2_cell.train.health import collapse_flags

    health = {name: read_health(runs[name]) for name in HEALTH_RUNS}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, (name, label) in enumerate(HEALTH_RUNS.items()):
        rows, color = health[name], f"C{i}"
        it = [r["health_iteration"] for r in rows]
        axes[0].plot(it, [r["health_teacher_entropy_frac"] for r in rows], color=color, label=f"{label}: per sample")
        axes[0].plot(it, [r["health_teacher_batch_entropy_frac"] for r in rows], "--", color=color, label="batch mean")
        axes[1].plot(it, [r["health_rankme"] for r in rows], color=color, label=label)
    axes[0].axhline(0.5, color="k", lw=0.5, ls=":")
    axes[0].set_title("teacher entropy / log K (probe sites)")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_title("RankMe of teacher CLS (probe sites)")
    for ax in axes[:2]:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=6, ncol=2)
    if probe:
        axes[2].plot([p["iteration"] for p in probe], [100 * p["knn_mean_accuracy"] for p in probe], "o-")
        axes[2].axhline(100 * next(iter(results.values()))["chance"], color="k", ls=":", label="chance")
        axes[2].legend(fontsize=7)
    axes[2].set_title("kNN probe of the fluo LA teacher (fluo-only profiles)")
    axes[2].set_xlabel("iteration (0 = random init)")
    axes[2].set_ylabel("kNN mean accuracy (%)")
    fig.tight_layout()
    fig.savefig(os.path.join(rdir, "health_curves.png"), dpi=110)
    plt.close(fig)
    health_md = [
        "| run | iteration | teacher entropy / log K | batch-mean / log K | RankMe | flags |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in HEALTH_RUNS.items():
        for r in [health[name][len(health[name]) // 4], health[name][-1]] if health[name] else []:
            health_md.append(
                f"| {label} | {r['health_iteration']:.0f} | {r['health_teacher_entropy_frac']:.2f} | "
                f"{r['health_teacher_batch_entropy_frac']:.2f} | {r['health_rankme']:.1f} | "
                f"{'; '.join(collapse_flags(r)) or 'none'} |"
            )
    probe_md = ["| iteration | kNN mean accuracy (%) |", "|---|---|"]
    probe_md += [f"| {p['iteration']} | {100 * p['knn_mean_accuracy']:.1f} |" for p in probe or []]

    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        vals = [100 * r["knn"]["combinations"].get(c, {}).get("accuracy", np.nan) for c in COMBINATIONS]
        ax.bar(np.arange(len(COMBINATIONS)) + i * width, vals, width, label=r.get("label", MODELS[name]))
    ax.axhline(100 * next(iter(results.values()))["chance"], color="k", ls=":", label="chance")
    ax.set_xticks(np.arange(len(COMBINATIONS)) + width * (len(results) - 1) / 2, COMBINATIONS)
    ax.set_ylabel("kNN accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(rdir, "knn_by_combination.png"), dpi=110)
    plt.close(fig)

    df = read_profiles(paths["ssl_local_aggregation"])
    x = df[feature_columns(df)].to_numpy(np.float32)
    x = PCA(n_components=min(30, x.shape[1], len(x) - 1), random_state=0).fit_transform(x)
    xy = TSNE(n_components=2, perplexity=min(30, len(x) // 4), random_state=0, init="pca").fit_transform(x)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    target = df["Metadata_target"].fillna("").replace("", "none").where(df["Metadata_pert_iname"] != "DMSO", "DMSO")
    top = [t for t in target.value_counts().index if t not in ("DMSO", "none")][:9]
    for t in ["DMSO", *top, "other"]:
        m = (target == t) if t != "other" else ~target.isin(["DMSO", *top])
        axes[0].scatter(xy[m, 0], xy[m, 1], s=8, label=t, c="lightgrey" if t == "other" else None)
    axes[0].set_title("well embeddings (t-SNE), by compound target")
    axes[0].legend(fontsize=6, markerscale=1.5)
    for line in sorted(df["Metadata_cell_line"].unique()):
        m = (df["Metadata_cell_line"] == line).to_numpy()
        axes[1].scatter(xy[m, 0], xy[m, 1], s=8, label=line)
    axes[1].set_title("well embeddings (t-SNE), by cell line")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(rdir, "embedding_tsne.png"), dpi=110)
    plt.close(fig)

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
        "Per-variant fold-level results: `../<variant>/knn_folds.csv`, `knn.json`, `map_*.csv`.",
    ]
    path = os.path.join(rdir, "README.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(md) + "\n")
    os.replace(path + ".tmp", path)
    return path


def run_demo(args) -> dict:
    """Runs steps 1-6 and returns the scores."""
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    plates_dir, runs_dir = os.path.join(out, "plates"), os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    elapsed = {}
    t0 = time.time()
    generate(args, plates_dir)
    elapsed["synthetic plates"] = time.time() - t0
    t0 = time.time()
    runs = train(args, plates_dir, runs_dir)
    elapsed["4 trainings (fluo/bf x local aggregation on/off)"] = time.time() - t0
    for group in ("fluo", "bf"):
        runs[f"{group}_random"] = random_init_run(
            runs[f"{group}_la"], os.path.join(runs_dir, f"{group}_random"), args.seed
        )
    t0 = time.time()
    paths = profiles(args, plates_dir, runs, os.path.join(out, "profiles"), elapsed)
    elapsed["profiles (3 ViT variants + CellProfiler)"] = time.time() - t0
    t0 = time.time()
    probe = checkpoint_probe(
        args, plates_dir, runs["fluo_la"], runs["fluo_random"], os.path.join(out, "profiles", "checkpoint_probe")
    )
    elapsed[f"kNN probe ({len(probe)} fluo checkpoints)"] = time.time() - t0
    t0 = time.time()
    results = evaluate_all(args, paths, os.path.join(out, "eval"))
    elapsed["kNN + mAP (4 variants)"] = time.time() - t0
    table = format_results(results)
    path = report(results, runs, paths, out, elapsed, probe)
    print(table)
    print(f"\nreport: {path}")
    summary = {
        name: {"knn_mean_accuracy": r["knn"]["mean"]["accuracy"], "chance": r["chance"]} for name, r in results.items()
    }
    summary["checkpoint_probe"] = probe
    summary["final_health"] = {name: (read_health(runs[name]) or [{}])[-1] for name in HEALTH_RUNS}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return results


def main(argv=None) -> int:
    """CLI entry: parse, then run the demo."""
    from dinov2_cell.cli import setup_logging

    args = get_args_parser().parse_args(argv)
    if args.block_weights != "raw":
        from dinov2_cell.cli import UsageError
        from dinov2_cell.eval.postprocess import parse_block_weights

        try:
            parse_block_weights(args.block_weights)
        except ValueError as e:
            raise UsageError(f"--block-weights: {e}") from None
    setup_logging(args.debug)
    logging.getLogger("copairs").setLevel(logging.WARNING)  # per-step INFO lines drown the demo's own
    t0 = time.time()
    run_demo(args)
    print(f"demo finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from dinov2_cell.cli import run_main

    sys.exit(run_main(main, prog="python -m dinov2_cell.demo"))
