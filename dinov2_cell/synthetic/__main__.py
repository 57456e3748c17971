"""``python -m dinov2_cell.synthetic``: write synthetic CPJUMP1-like plates (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Sequence

from dinov2_cell.cli import (
    HelpFormatter,
    UsageError,
    add_legacy_aliases,
    comma_list,
    common_parser,
    fraction,
    output_parser,
    positive_int,
    run_main,
    setup_logging,
    workers_parser,
)

PROG = "python -m dinov2_cell.synthetic"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dinov2_cell.synthetic``.

    Returns:
        The parser.
    """
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write synthetic CPJUMP1-like Cell Painting plates (Phenix TIFFs + LoadData CSVs) in the "
        "Cell Painting Gallery layout, with real barcodes, plate map and compound targets.",
        formatter_class=HelpFormatter,
        parents=[output_parser(help="output root (use it as the dataset root)"), workers_parser(1), common_parser()],
    )
    add_legacy_aliases(p, workers=True)
    g = p.add_argument_group("plates")
    which = g.add_mutually_exclusive_group()
    which.add_argument(
        "--plates", type=comma_list, default=None, metavar="A,B,...", help="comma-separated compound-plate barcodes"
    )
    which.add_argument(
        "--num-plates",
        type=positive_int,
        default=None,
        metavar="N",
        help="number of plates, alternating U2OS/A549 (default: 4 when --plates is not given)",
    )
    g.add_argument("--wells", default="48", help="number of wells, 'all', or comma-separated wells")
    g.add_argument("--sites", type=positive_int, default=9, help="sites per well")
    g.add_argument(
        "--sixteen-site-plates",
        default="real",
        help="'real' (BR00117015/16/17/19 if generated), 'none', or comma-separated barcodes with 16 sites",
    )
    g.add_argument(
        "--missing-site-fraction",
        type=fraction,
        default=0.0,
        metavar="F",
        help="fraction of wells that lose 1-2 sites (embed's --missing-sites says what to do with such wells)",
    )
    # Old spelling, kept hidden for one release: it collided with embed's --missing-sites policy.
    g.add_argument("--missing-sites", dest="missing_site_fraction", type=fraction, help=argparse.SUPPRESS)
    g.add_argument("--size", type=positive_int, default=96, help="image side in pixels")
    g.add_argument("--seed", type=int, default=0, help="random seed (output is byte-identical per seed)")
    g.add_argument(
        "--phenotype",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a compound-phenotype parameter of the calibrated defaults (repeatable), e.g. strength=1.2, "
        "inactive_share=0.2, active_potency=0.4:1.3, family.intensity=0 (see PhenotypeSettings)",
    )
    g.add_argument(
        "--illum",
        choices=("yes", "no"),
        nargs="?",
        const="yes",
        default="no",
        help="write illumination functions + load_data_with_illum.csv (a bare --illum means yes)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, write the plates, print a JSON summary.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status 0 (bad input raises; :func:`cli` turns it into one ``error:`` line and status 2).
    """
    from dinov2_cell.synthetic.biology import PhenotypeSettings
    from dinov2_cell.synthetic.writing import generate_plates

    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    if args.plates is not None and not args.plates:
        raise UsageError("--plates is empty; give comma-separated barcodes or use --num-plates N")
    res = generate_plates(
        args.out,
        plates=args.plates if args.plates is not None else (args.num_plates or 4),
        wells=args.wells,
        sites=args.sites,
        sixteen_site_plates=args.sixteen_site_plates,
        missing_sites=args.missing_site_fraction,
        size=args.size,
        seed=args.seed,
        phenotype=PhenotypeSettings.from_overrides(args.phenotype),
        illum=args.illum == "yes",
        workers=args.num_workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    summary = {k: v for k, v in asdict(res).items() if k in ("out_dir", "plates", "cell_lines", "sites", "n_sites")}
    summary["wells"] = len(res.wells)
    summary["n_images"] = res.n_images
    print(json.dumps(summary, indent=1))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """:func:`main` under the project's error policy (one ``error:`` line, exit 2 on bad input).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    return run_main(main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(cli())
