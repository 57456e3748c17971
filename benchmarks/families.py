"""What each feature set sees: kNN and activity mAP per synthetic phenotype family, for fixed models.

For each phenotype family (cell count, size/shape, texture, spatial distribution of organelles, intensity) plates are
generated where only that family carries compound effects (every other family's weight 0), plus plates with all
families. The same trained models (e.g. a primary-benchmark seed's ``random_init``, ``ssl_nola`` and ``ssl_la``
runs, trained on all-family plates) embed every plate set (fluorescent-only profiles); CellProfiler features are
measured on the same plates. Every feature set gets the same post-processing (per-plate ``mad_robustize`` against
DMSO) and is scored with the challenge kNN (mean of the 4 train->test combinations) and copairs activity mAP
(fraction of compounds retrieved, mean of the two cell lines).

    python benchmarks/families.py --out /work/families --runs /work/primary/seed1001/runs --seed 901
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

VIT_RUNS = ("random_init", "ssl_nola", "ssl_la")
CP_FAMILIES = ("intensity", "sizeshape", "texture")  # cp_measure families (the calibration benchmark's set)
NORMALIZE = "mad_robustize"


def variants() -> dict:
    """Plate variant -> phenotype family weights (``all``: the calibrated defaults)."""
    from dinov2_cell.synthetic.biology import PHENOTYPE_FAMILIES

    out = {"all": {}}
    for fam in PHENOTYPE_FAMILIES:
        out[fam] = {other: 0.0 for other in PHENOTYPE_FAMILIES if other != fam}
    return out


def plates_for(args, name: str, weights: dict) -> str:
    """Synthetic plates of one variant (data seed ``--seed``), generated once."""
    from dinov2_cell.synthetic import generate_plates
    from dinov2_cell.synthetic.biology import DEFAULT_PHENOTYPE, default_plates

    folder = os.path.join(args.out, name, "plates")
    if os.path.isfile(os.path.join(folder, "synthetic_truth.csv")):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    pheno = DEFAULT_PHENOTYPE
    if weights:
        import dataclasses

        base = dict(DEFAULT_PHENOTYPE.family_weights)
        pheno = dataclasses.replace(DEFAULT_PHENOTYPE, family_weights=tuple(sorted({**base, **weights}.items())))
    generate_plates(
        folder,
        plates=default_plates(2 * args.plates_per_line),
        wells=args.wells,
        size=args.size,
        missing_sites=0.1,
        seed=args.seed,
        phenotype=pheno,
        workers=1,
        progress=False,
    )
    return folder


def score(df, null_size: int, seed: int) -> dict:
    """kNN mean and activity fraction retrieved / mean mAP after the shared post-processing."""
    from dinov2_cell.eval.knn_wells import evaluate
    from dinov2_cell.eval.map import map_scores

    logging.getLogger("copairs").setLevel(logging.WARNING)
    knn = evaluate(df, normalize=NORMALIZE)
    mp = map_scores(df, normalize=NORMALIZE, null_size=null_size, seed=seed, consistency=False)
    per_line = [v for k, v in mp["activity"]["summary"].items() if k != "all" and v.get("n")]
    return {
        "knn_mean": knn["mean"]["accuracy"],
        "retrieved": sum(v["fraction_retrieved"] for v in per_line) / len(per_line),
        "map_mean": sum(v["mean_average_precision"] for v in per_line) / len(per_line),
    }


def run_variant(args, name: str, weights: dict) -> dict:
    """Every feature set on one plate variant; cached in ``<out>/<name>/scores.json``."""
    from dinov2_cell.atomic import write_text
    from dinov2_cell.embed import embed_plates
    from dinov2_cell.profiles.io import read_profiles

    path = os.path.join(args.out, name, "scores.json")
    scores = json.load(open(path)) if os.path.isfile(path) else {}
    plates = plates_for(args, name, weights)
    for run in VIT_RUNS:
        if run in scores:
            continue
        t0 = time.time()
        prof = embed_plates(
            {"fluo": os.path.join(args.runs, run)},
            plates,
            os.path.join(args.out, name, "profiles", run),
            progress=False,
            submission=False,
            device="cpu",
        )
        scores[run] = score(read_profiles(prof), args.null_size, args.seed)
        write_text(path, json.dumps(scores, indent=1))
        print(f"[families] {name} {run}: {scores[run]} ({time.time() - t0:.0f} s)", flush=True)
    if "cellprofiler" not in scores and not args.no_cellprofiler:
        from dinov2_cell.profiles.cellprofiler import CellProfilerFeaturiser, MeasureSettings
        from dinov2_cell.profiles.driver import PlateSource, run_profiles
        from dinov2_cell.synthetic.biology import default_plates

        t0 = time.time()
        featuriser = CellProfilerFeaturiser(
            measure=MeasureSettings(families=CP_FAMILIES),
            num_workers=0,
            sites_per_well=args.cp_sites_per_well,
            progress=False,
        )
        prof = run_profiles(
            featuriser,
            PlateSource(plates, channels="fluo"),
            os.path.join(args.out, name, "profiles", "cellprofiler"),
            default_plates(2 * args.plates_per_line),
            progress=False,
        )
        scores["cellprofiler"] = score(read_profiles(prof), args.null_size, args.seed)
        write_text(path, json.dumps(scores, indent=1))
        print(f"[families] {name} cellprofiler: {scores['cellprofiler']} ({time.time() - t0:.0f} s)", flush=True)
    return scores


def table(results: dict, args) -> str:
    """Markdown table: rows = plate variant, columns = feature set (kNN mean %, retrieved %)."""
    sets = [*VIT_RUNS] + ([] if args.no_cellprofiler else ["cellprofiler"])
    lines = [
        "| compound effects in | " + " | ".join(f"{s} kNN / retrieved" for s in sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for name, scores in results.items():
        cells = [
            f"{100 * scores[s]['knn_mean']:.1f} / {100 * scores[s]['retrieved']:.0f}" if s in scores else "-"
            for s in sets
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/families.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (resumed)")
    p.add_argument("--runs", required=True, help="folder holding the random_init, ssl_nola and ssl_la run folders")
    p.add_argument("--seed", type=int, default=901, help="data seed of the plates (default 901, a tuning seed)")
    p.add_argument("--plates-per-line", type=int, default=3)
    p.add_argument("--wells", type=int, default=64)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--cp-sites-per-well", type=int, default=1, help="CellProfiler: first N sites per well")
    p.add_argument("--no-cellprofiler", action="store_true", help="ViT feature sets only")
    p.add_argument("--null-size", type=int, default=2000)
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated plate variants to run (default all); the "
        "report covers every variant with results on disk",
    )
    args = p.parse_args(argv)
    for run in VIT_RUNS:
        ckpt = os.path.join(args.runs, run, "eval", "final", "teacher_checkpoint.pth")
        if not os.path.isfile(ckpt):
            p.error(f"--runs: {ckpt} not found")
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    wanted = args.variants.split(",") if args.variants else list(variants())
    unknown = sorted(set(wanted) - set(variants()))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(variants())}")
    for name, weights in variants().items():
        if name in wanted:
            results[name] = run_variant(args, name, weights)
        elif os.path.isfile(os.path.join(args.out, name, "scores.json")):
            results[name] = json.load(open(os.path.join(args.out, name, "scores.json")))
        else:
            continue
        from dinov2_cell.atomic import write_text

        md = (
            f"# Phenotype families: what each feature set sees\n\nModels: `{args.runs}`; plates: data seed "
            f"{args.seed}, {2 * args.plates_per_line} plates x {args.wells} wells, {args.size} px; CellProfiler "
            f"families {', '.join(CP_FAMILIES)} on the first {args.cp_sites_per_well} site(s) per well; every "
            f"feature set per-plate {NORMALIZE} vs DMSO. kNN mean % / % of compounds retrieved vs DMSO.\n\n"
            + table(results, args)
            + "\n"
        )
        write_text(os.path.join(args.out, "families.md"), md)
        write_text(os.path.join(args.out, "families.json"), json.dumps(results, indent=1))
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
