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
5. the challenge kNN protocol (4 train->test cell-line combinations) and copairs mAP for each -> OUT/eval/<model>
6. a kNN probe of the fluorescent local-aggregation teacher at checkpoints along its run
7. a report (Markdown + PNG): loss and training-health curves, the kNN probe curve, kNN per combination, a 2-D
   projection of the well embeddings -> OUT/report

Every option is checked before anything is written: a bad one ends in one error line and leaves no folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from dinov2_cell.demo.scoring import DEFAULT_BLOCK_WEIGHTS, DEFAULT_FEATURE_SELECT, DEFAULT_NORMALIZE
from dinov2_cell.demo.steps import DEMO_PLATES


def get_args_parser() -> argparse.ArgumentParser:
    """Demo options; the defaults take about 10 minutes on 2 CPU cores."""
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


def main(argv=None) -> int:
    """CLI entry: parse, check every option, then run the demo."""
    from dinov2_cell.cli import setup_logging
    from dinov2_cell.demo.checks import validate
    from dinov2_cell.demo.pipeline import run_demo

    args = get_args_parser().parse_args(argv)
    validate(args)  # a bad option leaves no trace: nothing under --out exists before this passes
    setup_logging(args.debug)
    logging.getLogger("copairs").setLevel(logging.WARNING)  # per-step INFO lines drown the demo's own
    t0 = time.time()
    run_demo(args)
    print(f"demo finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from dinov2_cell.cli import run_main

    sys.exit(run_main(main, prog="python -m dinov2_cell.demo"))
