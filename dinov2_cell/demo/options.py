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
import os

from dinov2_cell.demo.scoring import DEFAULT_BLOCK_WEIGHTS, DEFAULT_FEATURE_SELECT, DEFAULT_NORMALIZE
from dinov2_cell.demo.steps import DEMO_PLATES

SIZE_RANGE = (16, 4096)  # the synthetic generator's site sizes


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


def validate(args) -> list[str]:
    """Check every option that would otherwise fail after files were written; nothing is created here.

    Args:
        args: parsed options.

    Returns:
        The plate barcodes the demo will generate.

    Raises:
        UsageError: the first bad option, named, with what would be accepted.
    """
    from dinov2_cell.cli import UsageError
    from dinov2_cell.data import metadata as md
    from dinov2_cell.demo.steps import plate_request
    from dinov2_cell.eval.postprocess import parse_block_weights
    from dinov2_cell.synthetic import default_plates, select_wells

    if args.block_weights != "raw":
        try:
            parse_block_weights(args.block_weights)
        except ValueError as e:
            raise UsageError(f"--block-weights: {e}") from None
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    request = plate_request(args.plates)
    known = md.compound_plates()
    if isinstance(request, int):
        try:
            plates = default_plates(request)
        except ValueError as e:
            raise UsageError(str(e) if "--plates" in str(e) else f"--plates {request}: {e}") from None
    else:
        bad = [p for p in request if p not in known]
        if bad:
            raise UsageError(f"--plates: not compound plates of CPJUMP1: {bad}; choose among {', '.join(known)}")
        plates = list(dict.fromkeys(request))
    lines = md.plate_cell_lines(plates)
    per_line = {line: sum(1 for p in plates if lines[p] == line) for line in sorted(set(lines.values()))}
    if max(per_line.values(), default=0) < 2:
        raise UsageError(
            f"--plates {','.join(plates)}: the kNN protocol's plate-wise folds need >= 2 plates of one cell line "
            f"(plates per cell line: {per_line})"
        )
    try:
        select_wells(args.wells)
    except ValueError as e:
        raise UsageError(f"--wells {args.wells}: {e}") from None
    if not SIZE_RANGE[0] <= args.size <= SIZE_RANGE[1]:
        raise UsageError(f"--size {args.size}: must be in {SIZE_RANGE[0]}..{SIZE_RANGE[1]} pixels")
    return plates
