"""The demo's steps in order (:func:`run_demo`), with their wall times and the final summary."""

from __future__ import annotations

import json
import os
import time

from dinov2_cell.demo.report_page import HEALTH_RUNS, read_health, report
from dinov2_cell.demo.scoring import evaluate_all, format_results
from dinov2_cell.demo.steps import checkpoint_probe, generate, profiles, random_init_run, train


def run_demo(args) -> dict:
    """Runs steps 1-7 and returns the scores (call :func:`dinov2_cell.demo.options.validate` first)."""
    from dinov2_cell.atomic import write_text

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
    write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1))
    return results
