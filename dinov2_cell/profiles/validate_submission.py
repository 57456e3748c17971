"""Check a challenge submission CSV: ``python -m dinov2_cell.profiles.validate_submission FILE``.

The checks are :func:`dinov2_cell.profiles.submission.check_submission`'s; each problem class is one ``error:`` line
and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import pandas as pd

from dinov2_cell.cli import HelpFormatter, comma_list, common_parser, run_main, setup_logging
from dinov2_cell.columns import PLATE
from dinov2_cell.profiles.submission import check_submission

PROG = "python -m dinov2_cell.profiles.validate_submission"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.profiles.validate_submission``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Check a challenge submission CSV: columns Metadata_broad_sample, Metadata_Plate, Metadata_Well, "
        "feature_0 ... feature_{n-1}; one row per compound-containing well of the compound plates (DMSO wells hold "
        "no compound and must be absent); broad_sample as in the packaged CPJUMP1 plate map; finite floats. Prints "
        "one 'error:' line per problem class and exits 2, or 'ok' and exits 0.",
        formatter_class=HelpFormatter,
        parents=[common_parser()],
    )
    p.add_argument("submission", help="the CSV to check")
    p.add_argument(
        "--plates",
        type=comma_list,
        default=None,
        metavar="A,B,...",
        help="compound plates the file must cover (default: the 24 compound plates of 2020_11_04_CPJUMP1)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: check a submission (one ``error:`` line per problem class, exit 2).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    problems = check_submission(args.submission, args.plates)
    for text in problems:
        print(f"{PROG}: error: {text}", file=sys.stderr)
    if problems:
        return 2
    n = len(pd.read_csv(args.submission, usecols=[PLATE]))
    print(f"ok: {args.submission} ({n} compound wells)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
