"""Convert plates (LoadData CSVs or Phenix folders) into a prepared, memory-mappable store (see ``store.py``).

Usage::

    python -m dinov2_cell.data.prepare --data-root /data/cpg0000-jump-pilot/source_4 --out /scratch/cpjump1_store \\
        --plates BR00116991,BR00116995 --channels all --num-workers 4

Then read it with ``CPJUMP1:root=/scratch/cpjump1_store:channels=fluo`` (or ``store=...`` beside a ``root=``).
The conversion is resumable: plates already complete in ``--out`` are skipped, each plate is written to a temporary
file and renamed when done, so an interrupted run loses at most the plate in progress; ``--overwrite`` rewrites complete
plates instead of skipping them. ``--num-workers N`` writes N plates at a time in worker processes. Raw uint16 values (and the
illumination functions, when the LoadData CSVs name them) are stored; normalization happens at read time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from dinov2_cell.columns import PLATE
from dinov2_cell.cli import (
    HelpFormatter,
    UsageError,
    common_parser,
    data_parser,
    output_parser,
    rename_flags,
    run_main,
    setup_logging,
    workers_parser,
)
from dinov2_cell.data import index as idx
from dinov2_cell.data.errors import SkipLog, check_on_error
from dinov2_cell.data.loaddata import ILLUM_MODES
from dinov2_cell.data.names import resolve_channels
from dinov2_cell.data.store import forget_plate, init_store, plate_is_complete, write_plate

logger = logging.getLogger("dinov2_cell.data")

PROG = "python -m dinov2_cell.data.prepare"


def prepare_store(
    root: str | Path,
    out: str | Path,
    *,
    plates: Sequence[str] | None = None,
    channels: str | Sequence[str] = "all",
    source: str = "auto",
    illum: str = "auto",
    on_error: str = "raise",
    progress: bool = True,
    overwrite: bool = False,
    num_workers: int = 0,
) -> dict:
    """Write the requested plates under ``root`` into the store ``out``.

    Args:
        root: folder with LoadData CSVs and/or Phenix folders (or one LoadData CSV).
        out: store folder (created; reopened when it is already a store with the same channels).
        plates: barcodes (``None`` = all found).
        channels: channel spec (default ``all``, so fluo and bf models can share one store).
        source: ``auto`` / ``csv`` / ``scan`` (see ``index.py``).
        illum: ``auto`` / ``yes`` / ``no``: copy illumination functions named by LoadData CSVs.
        on_error: ``raise`` or ``skip`` (unreadable sites stored as ``ok = 0`` and counted).
        progress: show progress bars.
        overwrite: rewrite plates already complete in the store (default: skip them, so a run resumes).
        num_workers: write this many plates at a time in worker processes (0 or 1: in this process).

    Returns:
        ``{"store": path, "written": [plates], "skipped_complete": [plates], "skips": {kind: count}}``.

    Raises:
        DataIndexError: index problems (missing column/channel, empty plate, ...), or ``out`` unusable.
        DataReadError: an unreadable image with ``on_error="raise"``.
    """
    check_on_error(on_error)
    skips = SkipLog("prepare")
    names = resolve_channels(channels)
    long = idx.index_plates(
        root, plates=plates, channels=names, source=source, illum=illum, on_error=on_error, skips=skips
    )
    sites = idx.site_table(long, names, on_error=on_error, skips=skips)
    store = init_store(out, names)  # only once the input is known to be usable: no empty store left behind
    plate_list = list(dict.fromkeys(sites[PLATE]))
    todo, complete = [], []
    for plate in plate_list:
        if plate_is_complete(store, plate, names):
            if not overwrite:
                logger.info("plate %s already complete in %s; skipped (--overwrite rewrites it)", plate, store)
                complete.append(plate)
                continue
            forget_plate(store, plate)
        todo.append(plate)
    jobs = [(store, p, sites[sites[PLATE] == p], names, on_error, progress and num_workers <= 1) for p in todo]
    bar = tqdm(total=len(jobs), desc="plates", unit="plate", disable=not progress)
    if num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs))) as pool:
            results = []
            for res in pool.map(_write_one, jobs):
                results.append(res)
                bar.update(1)
    else:
        results = []
        for job in jobs:
            results.append(_write_one(job))
            bar.update(1)
    bar.close()
    for _, counts in results:
        for kind, n in counts.items():
            skips.counts[kind] += n
    skips.log_summary()
    return {"store": str(store), "written": todo, "skipped_complete": complete, "skips": dict(skips.counts)}


def _write_one(job) -> tuple[str, dict]:
    # One plate (in this process or a worker): its name and its skip counts.
    store, plate, sites, names, on_error, progress = job
    skips = SkipLog(f"prepare {plate}")
    write_plate(store, plate, sites, names, on_error=on_error, skips=skips, progress=progress)
    return plate, dict(skips.counts)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dinov2_cell.data.prepare``.

    Returns:
        The parser.
    """
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert Cell Painting plates (LoadData CSVs or Phenix folders) into a memory-mappable store "
        "(one uint16 .npy per plate + index + per-site percentiles); resumable per plate.",
        formatter_class=HelpFormatter,
        parents=[
            data_parser(plates_help="comma-separated barcodes (default: every plate found)"),
            output_parser(help="store folder to create or resume"),
            workers_parser(0),
            common_parser(),
        ],
    )
    g = p.add_argument_group("conversion")
    g.add_argument("--channels", default="all", help="fluo, bf, all, or comma-separated channel names")
    g.add_argument("--source", default="auto", choices=idx.SOURCES, help="index plates from CSVs, folders, or both")
    g.add_argument("--illum", default="auto", choices=ILLUM_MODES, help="copy illumination functions")
    g.add_argument("--on-error", default="raise", choices=("raise", "skip"), help="on unreadable input")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, convert the plates, print a JSON summary.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status 0 (bad input raises; :func:`cli` turns it into one ``error:`` line and status 2).
    """
    argv = rename_flags(sys.argv[1:] if argv is None else argv, {"--root": "--data-root"})  # old spelling
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    if args.plates is not None and not args.plates:
        raise UsageError("--plates is empty; give comma-separated barcodes or leave it out for every plate")
    result = prepare_store(
        args.data_root,
        args.out,
        plates=args.plates,
        channels=args.channels,
        source=args.source,
        illum=args.illum,
        on_error=args.on_error,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        num_workers=args.num_workers,
    )
    print(json.dumps(result, indent=1))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """:func:`main` under the project's error policy (one ``error:`` line naming the culprit, exit 2 on bad input).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    return run_main(main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(cli())
