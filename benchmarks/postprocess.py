"""Post-processing grid on a demo's profiles: kNN mean of every row under each normalisation / selection / fusion.

Reads ``<demo>/profiles/<row>/profiles.parquet`` (the three ViT rows: fluorescent + brightfield blocks) and
``<demo>/profiles/cellprofiler/profiles.parquet``, and prints one table: rows = feature sets, columns = the
post-processing variants (normalisation x feature selection x, for the fused ViT profiles, block fusion). The
demo's defaults are chosen on it by a rule fixed before looking: the variant with the highest mean kNN over the
three ViT rows (the CellProfiler row gets the same normalisation and selection and is shown for reference).

    python benchmarks/postprocess.py demo_output [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

ROWS = ("ssl_local_aggregation", "ssl_no_local_aggregation", "random_init", "cellprofiler")
NORMALIZE = ("none", "mad_robustize", "spherize")
FUSION = {"raw concat": None, "fluo only": {"bf": 0.0}, "scaled, bf 0.5": {"bf": 0.5}, "scaled, bf 1": {}}


def grid(demo: str) -> list[dict]:
    """kNN mean of every (row, normalisation, selection, fusion); fusion only varies for the ViT rows."""
    from dinov2_cell.eval.knn_wells import evaluate
    from dinov2_cell.profiles.io import read_profiles

    out = []
    for row in ROWS:
        path = os.path.join(demo, "profiles", row, "profiles.parquet")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: run the demo first (python -m dinov2_cell.demo --out {demo})")
        df = read_profiles(path)
        fusions = {"-": None} if row == "cellprofiler" else FUSION
        for norm, fs, (fname, weights) in itertools.product(NORMALIZE, (False, True), fusions.items()):
            try:
                value = evaluate(df, normalize=norm, feature_select=fs, block_weights=weights)["mean"]["accuracy"]
            except ValueError as e:  # e.g. spherize with fewer DMSO wells than features
                print(f"{row:<26} {norm:<14} fs={fs!s:<5} {fname:<15} not applicable: {e}", flush=True)
                continue
            out.append(dict(row=row, normalize=norm, feature_select=fs, fusion=fname, knn_mean=value))
            print(f"{row:<26} {norm:<14} fs={fs!s:<5} {fname:<15} kNN {100 * out[-1]['knn_mean']:.1f}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/postprocess.py", description=__doc__.split("\n\n")[0])
    p.add_argument("demo", help="a demo output folder")
    p.add_argument("--json", default=None, help="also write the grid as JSON")
    args = p.parse_args(argv)
    rows = grid(args.demo)
    vit = [r for r in rows if r["row"] != "cellprofiler"]
    keys = sorted({(r["normalize"], r["feature_select"], r["fusion"]) for r in vit})
    means = {}
    for k in keys:
        vals = [r["knn_mean"] for r in vit if (r["normalize"], r["feature_select"], r["fusion"]) == k]
        if len(vals) == 3:  # a variant must apply to all three ViT rows
            means[k] = sum(vals) / 3
    print("\nmean kNN over the three ViT rows, by variant (best first):")
    for k, v in sorted(means.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * v:5.1f}  normalize={k[0]}, feature_select={k[1]}, fusion={k[2]}")
    if args.json:
        from dinov2_cell.atomic import write_text

        write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
