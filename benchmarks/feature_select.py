"""Benchmark: the recipe's feature selection, ours vs ``pycytominer.feature_select``, on a wide ViT-like table.

SSL profiles hold thousands of features (CLS + mean patch of two blocks: 3,472 in the demo). pycytominer's
``correlation_threshold`` builds a long table of every feature pair and applies a Python function to each pair above
the threshold; :func:`dinov2_cell.profiles.recipe.select_features` runs the same operations with its own array
version of that one (``correlation_excluded``). Both are timed in this one run on the same table (best of
``--repeats``), and the kept columns are checked to be identical.

    .venv/bin/python benchmarks/feature_select.py [--wells 96] [--features 3472] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _table(wells: int, features: int, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    # low-rank structure plus noise, like ViT tokens: many pairs above 0.9, most below
    latent = rng.normal(size=(wells, 6))
    x = latent @ rng.normal(size=(6, features)) + 0.4 * rng.normal(size=(wells, features))
    df = pd.DataFrame(x, columns=[f"fluo_p0_{i:04d}" for i in range(features)])
    df.insert(0, "Metadata_Well", [f"W{i:03d}" for i in range(wells)])
    df.insert(0, "Metadata_Plate", "P1")
    return df


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wells", type=int, default=96)
    p.add_argument("--features", type=int, default=3472)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from pycytominer import feature_select

    from dinov2_cell.profiles.recipe import RecipeSettings, select_features

    df = _table(args.wells, args.features, seed=0)
    settings = RecipeSettings()
    feats = [c for c in df.columns if not c.startswith("Metadata_")]

    def ours():
        return select_features(df, settings)[0]

    def theirs():
        return feature_select(
            df,
            features=feats,
            operation=list(settings.operations),
            na_cutoff=settings.na_cutoff,
            corr_threshold=settings.corr_threshold,
        )

    times = {}
    outs = {}
    for name, fn in (("pycytominer.feature_select", theirs), ("ours (select_features)", ours)):
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            outs[name] = fn()
            best = min(best, time.perf_counter() - t)
        times[name] = best
    same = list(outs["pycytominer.feature_select"].columns) == list(outs["ours (select_features)"].columns)
    kept = sum(not c.startswith("Metadata_") for c in outs["ours (select_features)"].columns)
    print(f"{args.wells} wells x {args.features} features -> {kept} kept; same columns: {same}")
    for name, t in times.items():
        print(f"{name:<28}{t:>8.2f} s")
    print(f"speed-up: {times['pycytominer.feature_select'] / times['ours (select_features)']:.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
