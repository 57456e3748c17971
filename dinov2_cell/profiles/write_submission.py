"""Write a challenge submission CSV from a profile table: ``python -m dinov2_cell.profiles.write_submission``.

``python -m dinov2_cell.profiles.write_submission profiles/profiles.parquet --metadata-test metadata_test.csv
--out profiles`` writes ``profiles/submission_final.csv`` in the layout the challenge scored (``ID``, ``feature_1``
... ``feature_N``, one row per ID of the organisers' metadata_test.csv); ``--submission-format january`` writes
``submission_january.csv`` in the January layout instead (no metadata_test.csv needed). ``feature_i`` is the i-th
feature column of the profiles (counted from 1 in the final layout, from 0 in the January one). Layouts, defaults
and errors: :mod:`dinov2_cell.profiles.submission`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from dinov2_cell.cli import HelpFormatter, common_parser, output_parser, run_main, setup_logging
from dinov2_cell.profiles.io import read_profiles
from dinov2_cell.profiles.submission import FORMATS, feature_map, resolve_format, write_submission

PROG = "python -m dinov2_cell.profiles.write_submission"
logger = logging.getLogger("dinov2_cell.profiles")


def output_name(submission_format: str) -> str:
    """``submission_final.csv`` or ``submission_january.csv``.

    Args:
        submission_format: ``final`` or ``january``.

    Returns:
        The file name written under ``--out``.
    """
    return f"submission_{submission_format}.csv"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.profiles.write_submission``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write the challenge submission CSV of a profile table. Final layout (the one the challenge "
        "scored; needs --metadata-test): ID, feature_1 ... feature_N, one row per ID of the organisers' "
        "metadata_test.csv, in its order; written as DIR/submission_final.csv. January layout: "
        "Metadata_broad_sample, Metadata_Plate, Metadata_Well, feature_0 ..., one row per compound well; written "
        "as DIR/submission_january.csv. feature_i is the i-th feature column of the profiles.",
        formatter_class=HelpFormatter,
        parents=[common_parser(), output_parser(help="folder for submission_<format>.csv")],
    )
    p.add_argument("profiles", help="profile table (.parquet, .csv, .csv.gz), e.g. profiles/profiles.parquet")
    p.add_argument(
        "--submission-format",
        choices=FORMATS,
        default=None,
        help="layout of the submission CSV: final (ID, feature_1 ...; the one the challenge scored) or january "
        "(Metadata_broad_sample, Metadata_Plate, Metadata_Well, feature_0 ...); default: final with --metadata-test, "
        "january without it",
    )
    p.add_argument(
        "--metadata-test",
        default=None,
        metavar="FILE",
        help="the organisers' metadata_test.csv (columns ID, plate, well; found by name); IDs are never guessed",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write ``--out/submission_<format>.csv``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    fmt = resolve_format(args.submission_format, args.metadata_test)
    if args.metadata_test is not None and not os.path.isfile(args.metadata_test):
        raise FileNotFoundError(f"--metadata-test: no such file: {args.metadata_test}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise NotADirectoryError(f"--out {args.out}: not a folder")
    path = os.path.join(args.out, output_name(fmt))
    if os.path.exists(path) and not args.overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite (pass --overwrite)")
    profiles = read_profiles(args.profiles)
    # The requested layout as given (None = by --metadata-test), so the writer warns when it falls back to January.
    write_submission(
        profiles,
        path,
        overwrite=args.overwrite,
        submission_format=args.submission_format,
        metadata_test=args.metadata_test,
    )
    names = feature_map(profiles, submission_format=fmt)
    first, last = next(iter(names.items())), list(names.items())[-1]
    print(f"wrote {path} ({fmt} layout; {first[0]} = {first[1]} ... {last[0]} = {last[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
