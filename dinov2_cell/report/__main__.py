"""``python -m dinov2_cell.report RUN_DIR``: loss, health and kNN-probe curves of a training run, while it runs or
after, as PNGs and a short README.md in RUN_DIR/report/ (or --out)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from dinov2_cell.cli import HelpFormatter, common_parser, run_main, setup_logging

PROG = "python -m dinov2_cell.report"
logger = logging.getLogger("dinov2_cell.report")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.report``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Training report of a run folder (the --out of python -m dinov2_cell.run.train): loss "
        "curves, teacher health (entropies, RankMe), the in-training kNN probe when it ran, and the log's warnings. "
        "Reads training_metrics.json and logs/log.txt; a run still writing them is fine (rerun to refresh). For an "
        "evaluation report of profiles use python -m dinov2_cell.eval.knn_wells PROFILES --report DIR.",
        formatter_class=HelpFormatter,
        parents=[common_parser()],
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run folder")
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default: RUN_DIR/report)")
    p.add_argument("--log", default=None, metavar="FILE", help="log file (default: RUN_DIR/logs/log.txt)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (the error policy is :func:`dinov2_cell.cli.run_main`'s).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    from dinov2_cell.cli import UsageError
    from dinov2_cell.report.training import write_training_report

    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    if args.log is not None and not os.path.isfile(args.log):
        raise UsageError(f"--log {args.log}: no such file")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: not a folder")
    result = write_training_report(args.run_dir, args.out, args.log)
    t = result["training"]
    last = t.last_iteration
    print(
        f"{args.run_dir}: {'finished' if t.finished else 'in progress (or stopped)'}, last logged iteration "
        f"{'-' if last is None else last}{f' of {t.total_iterations}' if t.total_iterations else ''}; "
        f"{len(t.health)} health computation(s), {len(t.probe)} kNN probe(s), {len(t.warnings)} warning(s)"
    )
    print(f"report: {result['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
