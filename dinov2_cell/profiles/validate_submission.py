"""Check a challenge submission CSV: ``python -m dinov2_cell.profiles.validate_submission FILE``.

The checks are :func:`dinov2_cell.profiles.submission.check_submission`'s, for either layout (read from the header,
or ``--submission-format``): the final, scored one (``ID``, ``feature_1`` ...; its IDs are checked against the
organisers' metadata_test.csv given with ``--metadata-test``, the layout alone without it) and the January one
(``Metadata_broad_sample``, ``Metadata_Plate``, ``Metadata_Well``, ``feature_0`` ...; checked against the packaged
CPJUMP1 plate map). Each problem class is one ``error:`` line and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dinov2_cell.cli import HelpFormatter, comma_list, common_parser, run_main, setup_logging
from dinov2_cell.profiles.submission import FINAL, FORMATS, check_submission, detect_format, read_submission

PROG = "python -m dinov2_cell.profiles.validate_submission"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.profiles.validate_submission``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Check a challenge submission CSV. Final layout (the one the challenge scored): ID, feature_1 "
        "... feature_N; one row per ID of the organisers' metadata_test.csv (--metadata-test; without it only the "
        "layout is checked). January layout: Metadata_broad_sample, Metadata_Plate, Metadata_Well, feature_0 ... "
        "feature_{n-1}; one row per compound-containing well of the compound plates (DMSO wells hold no compound and "
        "must be absent); broad_sample as in the packaged CPJUMP1 plate map. Both: finite floats, each ID / well "
        "once. Prints one 'error:' line per problem class and exits 2, or 'ok' and exits 0.",
        formatter_class=HelpFormatter,
        parents=[common_parser()],
    )
    p.add_argument("submission", help="the CSV to check")
    p.add_argument(
        "--submission-format",
        choices=FORMATS,
        default=None,
        help="layout of the submission CSV: final (ID, feature_1 ...; the one the challenge scored) or january "
        "(Metadata_broad_sample, Metadata_Plate, Metadata_Well, feature_0 ...); default: read from the header",
    )
    p.add_argument(
        "--metadata-test",
        default=None,
        metavar="FILE",
        help="the organisers' metadata_test.csv (columns ID, plate, well; found by name): the IDs a final-layout "
        "file must hold",
    )
    p.add_argument(
        "--plates",
        type=comma_list,
        default=None,
        metavar="A,B,...",
        help="plates the file must cover (default: the 24 compound plates of 2020_11_04_CPJUMP1 for the January "
        "layout, every plate of --metadata-test for the final one)",
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
    problems = check_submission(
        args.submission, args.plates, submission_format=args.submission_format, metadata_test=args.metadata_test
    )
    for text in problems:
        print(f"{PROG}: error: {text}", file=sys.stderr)
    if problems:
        return 2
    df = read_submission(args.submission)
    fmt = args.submission_format or detect_format(df)
    if fmt == FINAL:
        scope = (
            f"{len(df)} IDs"
            if args.metadata_test
            else f"{len(df)} rows; layout only, IDs not checked: pass --metadata-test"
        )
        print(f"ok: {args.submission} (final layout, {df.shape[1] - 1} features, {scope})")
    else:
        print(f"ok: {args.submission} (January layout, not the one the challenge scored; {len(df)} compound wells)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
