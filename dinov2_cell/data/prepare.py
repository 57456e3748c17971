"""Convert plates (LoadData CSVs or Phenix folders) into a prepared, memory-mappable store (see ``store.py``).

Usage::

    python -m dinov2_cell.data.prepare --root /data/cpg0000-jump-pilot/source_4 --out /scratch/cpjump1_store \\
        --plates BR00116991,BR00116995 --channels all

Then read it with ``CPJUMP1:root=/scratch/cpjump1_store:channels=fluo`` (or ``store=...`` beside a ``root=``).
The conversion is resumable: plates already complete in ``--out`` are skipped, each plate is written to a temporary
file and renamed when done, so an interrupted run loses at most the plate in progress. Raw uint16 values (and the
illumination functions, when the LoadData CSVs name them) are stored; normalization happens at read time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from dinov2_cell.data import index as idx
from dinov2_cell.data.errors import DataIndexError, DataReadError, SkipLog, check_on_error
from dinov2_cell.data.loaddata import ILLUM_MODES
from dinov2_cell.data.names import resolve_channels
from dinov2_cell.data.store import init_store, plate_is_complete, write_plate

logger = logging.getLogger("dinov2_cell.data")


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
    plate_list = list(dict.fromkeys(sites["Metadata_Plate"]))
    written, complete = [], []
    for plate in tqdm(plate_list, desc="plates", unit="plate", disable=not progress):
        if plate_is_complete(store, plate, names):
            logger.info("plate %s already complete in %s; skipped", plate, store)
            complete.append(plate)
            continue
        write_plate(
            store,
            plate,
            sites[sites["Metadata_Plate"] == plate],
            names,
            on_error=on_error,
            skips=skips,
            progress=progress,
        )
        written.append(plate)
    skips.log_summary()
    return {"store": str(store), "written": written, "skipped_complete": complete, "skips": dict(skips.counts)}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dinov2_cell.data.prepare``."""
    p = argparse.ArgumentParser(
        prog="python -m dinov2_cell.data.prepare",
        description="Convert Cell Painting plates (LoadData CSVs or Phenix folders) into a memory-mappable store "
        "(one uint16 .npy per plate + index); resumable per plate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--root", required=True, help="folder with LoadData CSVs and/or Phenix image folders, or a CSV")
    p.add_argument("--out", required=True, help="store folder to create or resume")
    p.add_argument("--plates", default=None, help="comma-separated barcodes (default: every plate found)")
    p.add_argument("--channels", default="all", help="fluo, bf, all, or comma-separated channel names")
    p.add_argument("--source", default="auto", choices=idx.SOURCES, help="index plates from CSVs, folders, or both")
    p.add_argument("--illum", default="auto", choices=ILLUM_MODES, help="copy illumination functions")
    p.add_argument("--on-error", default="raise", choices=("raise", "skip"), help="on unreadable input")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status (0 ok, 2 bad input).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    plates = None if args.plates is None else [p.strip() for p in args.plates.split(",") if p.strip()]
    try:
        result = prepare_store(
            args.root,
            args.out,
            plates=plates,
            channels=args.channels,
            source=args.source,
            illum=args.illum,
            on_error=args.on_error,
            progress=not args.no_progress,
        )
    except (DataIndexError, DataReadError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
