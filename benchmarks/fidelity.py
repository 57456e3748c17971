"""Fidelity benchmark: the paper's ablation directions on synthetic plates, with confidence intervals over seeds.

Every arm is scored with the challenge kNN protocol (:func:`dinov2_cell.eval.knn_wells.evaluate`: top-1 compound
accuracy, plate-wise folds, the 4 train->test cell-line combinations and their mean) and copairs phenotypic activity
mAP (:func:`dinov2_cell.eval.map.map_scores`: fraction of compounds retrieved against DMSO at corrected p < 0.05).
Each seed ``s`` regenerates the synthetic plates with data seed ``s`` and trains every model with training seed
``s``, so the spread over seeds covers both sources of variation.

Arms (trained models are shared between the arms that only differ in post-processing):

* ``random_init``: randomly initialised ViTs (fluorescent + brightfield), no training;
* ``ssl_cls``: separate fluorescent and brightfield models with local aggregation, CLS token only per site;
* ``ssl``: the same models, CLS + mean patch token per site, 9 sites concatenated on the 3x3 grid (the method);
* ``joint_8ch``: one model on all 8 channels (fluorescent config with ``in_chans=8``, local aggregation on);
* ``no_local_aggregation``: separate models trained with ``local_aggregation.loss_weight=0``;
* ``site_mean``: the method's models, the 9 grid site vectors averaged instead of concatenated;
* ``aligned``: the method's profiles with cross-plate alignment (USES PLATE-LAYOUT KNOWLEDGE);
* ``fluo_plate_norm`` / ``fluo_percentile_norm``: fluorescent-only profiles of a fluorescent model trained and
  embedded with per-plate normalisation / per-image 0.1-99.9 percentile scaling (the tiny configs' choice: the
  fluorescent part of the method's profiles);
* ``center_ema``: the method with upstream's DINO centre (EMA momentum 0.9) instead of the tiny configs' batch
  centring (``dino.center_momentum=0``);
* ``classical``: the hand-made per-channel intensity/texture statistics (:mod:`dinov2_cell.profiles.baseline`).

Outputs under ``--out``: ``seed<s>/`` (plates, training runs, profiles: every step skipped when complete),
``results/<arm>/seed<s>.json`` (one per finished arm and seed, written atomically; a rerun skips it), and after each
seed ``fidelity.md``, ``fidelity.png`` and ``summary.json`` from whatever results exist.

Confidence intervals are two-sided 95 % Student t intervals over seeds (mean +- t_{0.975, n-1} * sd / sqrt(n), sd with
ddof=1). A paper direction "A beats B" is judged on the paired per-seed difference A - B: ``holds`` when its CI lies
above 0, ``reversed`` when below, ``unresolved`` when it contains 0 (or fewer than 2 paired seeds exist).

    python benchmarks/fidelity.py --out /work/fidelity_cpu                    # CPU preset (~22 min on 2 idle cores)
    python benchmarks/fidelity.py --out runs/fid_gpu --preset gpu             # one H200, ~8 minutes (not yet run)
    python benchmarks/fidelity.py --out /tmp/fid --preset toy --arms random_init,classical --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _path in (REPO, HERE):
    if _path not in sys.path:  # run as a script from any folder
        sys.path.insert(0, _path)

# The design, pipeline and report live in sibling modules; their names are re-exported here for the scripts that
# reuse them (primary.py, calibration.py) and for the tests.
from bench_stats import t_interval, verdict  # noqa: E402,F401
from fidelity_design import (  # noqa: E402,F401
    ARMS,
    COMBINATIONS,
    DIRECTIONS,
    PRESETS,
    PROFILE_SETS,
    RANDOM,
    TRAININGS,
)
from fidelity_pipeline import SeedPipeline, load_results, post_process, result_path, score  # noqa: E402,F401
from fidelity_report import format_markdown, plot, summarise, write_report  # noqa: E402,F401

logger = logging.getLogger("dinov2_cell.fidelity")

PROG = "python benchmarks/fidelity.py"


def run_benchmark(args) -> str:
    """Every requested (arm, seed), seeds outermost (so a partial run has complete seeds), then the report."""
    from dinov2_cell.atomic import write_text

    timings_by_seed = {}
    t_all = time.time()
    for seed in args.seeds:
        pipe = SeedPipeline(args, seed)
        timings_by_seed[seed] = pipe.timings
        for arm in args.arms:
            path = result_path(args.out, arm, seed)
            if os.path.isfile(path):
                print(f"[fidelity] {arm} seed {seed}: done earlier, skipped", flush=True)
                continue
            t0 = time.time()
            _, set_name, how = ARMS[arm]
            df = post_process(pipe.profiles(set_name or "classical"), how, args.align_alpha)
            t1 = time.time()
            res = score(df, args.null_size, seed)
            pipe.timings[f"seed {seed}: scoring"] = pipe.timings.get(f"seed {seed}: scoring", 0.0) + time.time() - t1
            res.update(arm=arm, seed=seed, seconds=time.time() - t0, n_features=int(df.shape[1]))
            write_text(path, json.dumps(res, indent=1))
            print(
                f"[fidelity] {arm} seed {seed}: kNN mean {100 * res['knn_mean']:.1f} %, mAP activity "
                f"{100 * res['map_activity']:.0f} % ({time.time() - t0:.0f} s; {time.time() - t_all:.0f} s elapsed)",
                flush=True,
            )
        with open(os.path.join(pipe.dir, "timings.json"), "a") as f:  # appended per invocation (resumed runs)
            f.write(json.dumps(pipe.timings) + "\n")
        path = write_report(args, timings_by_seed)
        print(f"[fidelity] seed {seed} complete; report {path}", flush=True)
        if args.clean_plates:
            shutil.rmtree(pipe.plates_dir, ignore_errors=True)
    return write_report(args, timings_by_seed)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    from dinov2_cell.cli import comma_list, common_parser

    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parser()],
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed when it exists)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu", help="size preset (default cpu)")
    p.add_argument("--seeds", type=comma_list, help="comma-separated seeds (data and training); default per preset")
    p.add_argument("--arms", type=comma_list, help=f"comma-separated arms (default all: {','.join(ARMS)})")
    p.add_argument("--plates-per-line", type=int, help="synthetic plates per cell line (>= 2)")
    p.add_argument("--wells", type=int, help="wells per plate (<= 384; 384 = all)")
    p.add_argument("--size", type=int, help="site side in pixels")
    p.add_argument("--epochs", type=int, help="training epochs of 10 iterations per model")
    p.add_argument("--align-alpha", type=float, default=0.5, help="cross-plate alignment weight (default 0.5)")
    p.add_argument("--null-size", type=int, default=2000, help="copairs null size (default 2000)")
    p.add_argument("--device", default=None, help="embedding device (default: cuda if available, else cpu)")
    p.add_argument("--clean-plates", action="store_true", help="delete each seed's plates once it is complete")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/MKL threads of this process and its training subprocesses (default 1: on the shared 2-core machine "
        "torch's default 2 threads made a training step 14x and a classical site 20x slower under load)",
    )
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the results on disk")
    return p


def resolve_args(args) -> argparse.Namespace:
    """Fill preset defaults and check the options (UsageError names the bad flag)."""
    from dinov2_cell.cli import UsageError

    preset = PRESETS[args.preset]
    for key in ("plates_per_line", "wells", "size", "epochs"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.overrides = list(preset["overrides"])
    args.workers = int(preset["workers"])
    try:
        args.seeds = [int(s) for s in (args.seeds or preset["seeds"].split(","))]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {args.seeds}")
    args.arms = list(args.arms or ARMS)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise UsageError(f"--arms: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    if args.plates_per_line < 2:
        raise UsageError("--plates-per-line must be >= 2 (plate-wise folds need 2 plates per cell line)")
    if not 1 <= args.wells <= 384:
        raise UsageError(f"--wells must be in 1..384, got {args.wells}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.epochs < 1 or args.size < 16:
        raise UsageError("--epochs must be >= 1 and --size >= 16")
    if not 0.0 <= args.align_alpha <= 1.0:
        raise UsageError(f"--align-alpha must be in [0, 1], got {args.align_alpha}")
    args.out = os.path.abspath(args.out)
    return args


def main(argv=None) -> int:
    """CLI entry."""
    from dinov2_cell.cli import setup_logging

    args = resolve_args(build_parser().parse_args(argv))
    setup_logging(args.debug)
    os.makedirs(args.out, exist_ok=True)
    keys = ("preset", "plates_per_line", "wells", "size", "epochs", "overrides", "align_alpha", "null_size")
    settings = {k: getattr(args, k) for k in keys}
    settings_path = os.path.join(args.out, "settings.json")
    if os.path.isfile(settings_path):
        with open(settings_path) as f:
            earlier = json.load(f)
        # A key missing from an older settings file (written before it was recorded) is taken as agreeing.
        if any(earlier.get(k, v) != v for k, v in settings.items()):
            from dinov2_cell.cli import UsageError

            raise UsageError(
                f"{settings_path}: the folder holds a run with other settings {earlier}; use another --out"
            )
    else:
        from dinov2_cell.atomic import write_text

        write_text(settings_path, json.dumps(settings, indent=1))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by the training subprocesses
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    path = write_report(args, {}) if args.report_only else run_benchmark(args)
    print(f"[fidelity] report: {path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    from dinov2_cell.cli import run_main

    sys.exit(run_main(main, prog=PROG))
