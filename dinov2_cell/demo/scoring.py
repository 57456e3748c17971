"""The demo's scoring: one post-processing for every row, the challenge kNN and copairs mAP, the printed table."""

from __future__ import annotations

import os

from dinov2_cell.demo.steps import CP_CORRELATIONS, CP_FAMILIES

MODELS = {
    "ssl_local_aggregation": "SSL, local aggregation (the method)",
    "ssl_no_local_aggregation": "SSL, local aggregation off",
    "random_init": "random-init ViT (no training)",
    "cellprofiler": "CellProfiler features (cp_measure + pycytominer)",
}
COMBINATIONS = ("U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549")
# One post-processing for every row of the table (CellProfiler included). Defaults measured on the demo's plates,
# see docs/benchmarks.md ("Post-processing").
DEFAULT_NORMALIZE = "none"
DEFAULT_FEATURE_SELECT = True
DEFAULT_BLOCK_WEIGHTS = "fluo=1,bf=0.5"
LABEL_WIDTH = 64


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
