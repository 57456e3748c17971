"""The fidelity benchmark's report: per-arm intervals, direction verdicts, Markdown and PNG."""

from __future__ import annotations

import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _path in (REPO, HERE):
    if _path not in sys.path:  # run as a script from any folder
        sys.path.insert(0, _path)

from bench_stats import t_interval, verdict  # noqa: E402
from fidelity_design import ARMS, COMBINATIONS, DIRECTIONS  # noqa: E402
from fidelity_pipeline import load_results  # noqa: E402


def summarise(results: list[dict]) -> dict:
    """Per-arm CIs of every metric and the paired verdict of every paper direction.

    Args:
        results: per (arm, seed) result dicts (``arm``, ``seed``, ``knn_mean``, ``knn`` per combination,
            ``map_activity``).

    Returns:
        ``{"arms": {arm: {metric: ci, "seeds": [...]}}, "directions": [...]}`` with metrics ``knn_mean``,
        ``knn <combination>`` and ``map_activity``.
    """
    by_arm: dict[str, dict[int, dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[int(r["seed"])] = r

    def metric(r: dict, name: str):
        if name.startswith("knn "):
            return r["knn"].get(name[4:])
        return r.get(name)

    metrics = ["knn_mean", *[f"knn {c}" for c in COMBINATIONS], "map_activity"]
    arms = {}
    for arm, seeds in by_arm.items():
        arms[arm] = {"seeds": sorted(seeds)}
        for m in metrics:
            vals = [metric(seeds[s], m) for s in sorted(seeds)]
            arms[arm][m] = t_interval([v for v in vals if v is not None and not math.isnan(v)])
    directions = []
    for name, better, worse, source in DIRECTIONS:
        entry = {"direction": name, "better": better, "worse": worse, "source": source}
        common = sorted(set(by_arm.get(better, {})) & set(by_arm.get(worse, {})))
        entry["seeds"] = common
        for m in ("knn_mean", "map_activity"):
            diffs = [metric(by_arm[better][s], m) - metric(by_arm[worse][s], m) for s in common]
            ci = t_interval(diffs)
            entry[m] = {"diff": ci, "verdict": verdict(ci), "per_seed": diffs}
        directions.append(entry)
    return {"arms": arms, "directions": directions}


def _fmt(ci: dict, scale: float = 100.0) -> str:
    if ci["n"] == 0:
        return "-"
    if ci["n"] < 2:
        return f"{scale * ci['mean']:.1f} (n=1)"
    return f"{scale * ci['mean']:.1f} ± {scale * ci['half_width']:.1f}"


def format_markdown(summary: dict, meta: dict) -> str:
    """The Markdown report: per-arm table (mean ± CI half width), direction verdicts, settings.

    Args:
        summary: :func:`summarise` output.
        meta: settings and progress (preset, sizes, seeds requested, complete/incomplete arms, timings).

    Returns:
        Markdown text.
    """
    arms = summary["arms"]
    lines = [
        "# Fidelity benchmark: paper ablation directions on synthetic plates",
        "",
        f"Settings: {meta['settings']}.",
        "",
        "Mean ± half width of the two-sided 95 % Student t interval over seeds (t_{0.975, n-1} · sd / √n, sd with "
        "ddof 1); each seed = its own synthetic plates (data seed) and its own training seed. kNN: top-1 compound "
        "accuracy %, DMSO omitted, plate-wise folds, mean of the 4 train->test combinations and each; mAP: % of "
        "compounds retrieved vs DMSO (copairs activity, corrected p < 0.05, mean over cell lines).",
        "",
    ]
    if meta.get("incomplete"):
        lines += [f"**PARTIAL RESULTS**: {meta['incomplete']}", ""]
    head = "| arm | seeds | kNN mean | " + " | ".join(COMBINATIONS) + " | mAP activity |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for arm, (desc, _, _) in ARMS.items():
        if arm not in arms:
            continue
        a = arms[arm]
        cells = [_fmt(a["knn_mean"]), *[_fmt(a[f"knn {c}"]) for c in COMBINATIONS], _fmt(a["map_activity"])]
        lines.append(f"| {arm}: {desc} | {','.join(map(str, a['seeds']))} | " + " | ".join(cells) + " |")
    if meta.get("chance"):
        lines += ["", f"Chance (1 / number of compounds): {100 * meta['chance']:.1f} %."]
    lines += [
        "",
        "## Paper directions (paired per-seed difference better - worse, 95 % t interval)",
        "",
        "| direction | source | seeds | Δ kNN mean | verdict (kNN) | Δ mAP activity | verdict (mAP) |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in summary["directions"]:
        k, m = d["knn_mean"], d["map_activity"]
        lines.append(
            f"| {d['direction']} ({d['better']} vs {d['worse']}) | {d['source']} | {len(d['seeds'])} | "
            f"{_fmt(k['diff'])} | {k['verdict']} | {_fmt(m['diff'])} | {m['verdict']} |"
        )
    lines += [
        "",
        "holds: the CI of the difference lies above 0; reversed: below 0; unresolved: it contains 0 (or < 2 seeds).",
    ]
    if meta.get("timings"):
        lines += ["", "Wall time per seed (s, shared machine): " + meta["timings"]]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str, chance: float | None = None) -> None:
    """PNG: kNN mean and mAP activity per arm with 95 % t intervals, and the paired direction differences.

    Args:
        summary: :func:`summarise` output.
        path: PNG path (written atomically).
        chance: kNN chance level (1 / number of compounds), drawn when given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dinov2_cell.atomic import atomic_path

    arms = [a for a in ARMS if a in summary["arms"]]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, m, title in zip(axes[:2], ("knn_mean", "map_activity"), ("kNN mean accuracy (%)", "mAP activity (%)")):
        cis = [summary["arms"][a][m] for a in arms]
        y = np.arange(len(arms))
        mean = [100 * c["mean"] for c in cis]
        err = [0 if math.isnan(c["half_width"]) else 100 * c["half_width"] for c in cis]
        ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3)
        if chance and m == "knn_mean":
            ax.axvline(100 * chance, color="k", ls=":", lw=0.8, label="chance")
            ax.legend(fontsize=8)
        ax.set_yticks(y, arms)
        ax.invert_yaxis()
        ax.set_title(title + ", 95 % t CI over seeds")
        ax.grid(axis="x", alpha=0.3)
    dirs = summary["directions"]
    y = np.arange(len(dirs))
    for off, m, label in ((-0.15, "knn_mean", "kNN mean"), (0.15, "map_activity", "mAP activity")):
        mean = [100 * d[m]["diff"]["mean"] for d in dirs]
        err = [0 if math.isnan(d[m]["diff"]["half_width"]) else 100 * d[m]["diff"]["half_width"] for d in dirs]
        axes[2].errorbar(mean, y + off, xerr=err, fmt="o", capsize=3, label=label)
    axes[2].axvline(0, color="k", lw=0.8)
    axes[2].set_yticks(y, [f"{d['better']} - {d['worse']}" for d in dirs], fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_title("paper directions: paired difference (points)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix="") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_report(args, timings_by_seed: dict) -> str:
    """Summary JSON, Markdown and PNG from the results on disk; returns the Markdown path."""
    from dinov2_cell.atomic import write_text

    results = [r for r in load_results(args.out) if r["arm"] in args.arms and int(r["seed"]) in args.seeds]
    summary = summarise(results)
    done = {(r["arm"], int(r["seed"])) for r in results}
    missing = [f"{a}/seed{s}" for s in args.seeds for a in args.arms if (a, s) not in done]
    meta = {
        "settings": f"preset {args.preset}; {2 * args.plates_per_line} synthetic 9-site plates "
        f"({args.plates_per_line} U2OS + {args.plates_per_line} A549), {args.wells} wells per plate, {args.size} px "
        f"sites, {args.epochs * 10} training iterations per model (tiny configs"
        + (f", overrides {' '.join(args.overrides)}" if args.overrides else "")
        + f"), alignment alpha {args.align_alpha:g}, seeds requested {','.join(map(str, args.seeds))}",
        "incomplete": f"missing (arm/seed): {', '.join(missing)}" if missing else "",
        "chance": results[0]["chance"] if results else None,
        "timings": "; ".join(
            f"seed {s}: " + ", ".join(f"{k.split(': ', 1)[-1]} {v:.0f}" for k, v in t.items())
            for s, t in sorted(timings_by_seed.items())
            if t
        ),
    }
    write_text(os.path.join(args.out, "summary.json"), json.dumps({"meta": meta, **summary}, indent=1))
    md_path = os.path.join(args.out, "fidelity.md")
    write_text(md_path, format_markdown(summary, meta) + "\n![fidelity](fidelity.png)\n")
    if results:
        plot(summary, os.path.join(args.out, "fidelity.png"), meta["chance"])
    return md_path
