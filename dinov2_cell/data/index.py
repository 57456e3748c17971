"""Index Cell Painting plates under a root: (plate, well, site, channel) -> image file, then one row per site.

Two sources give the same index (a "long" table, one row per image file, columns :data:`INDEX_COLUMNS`): CellProfiler
LoadData CSVs (``loaddata.py``) and raw Opera Phenix folders (``phenix.py``).

Discovery (:func:`discover`): one walk of ``root`` (symlinks followed, hidden folders skipped) finds every LoadData CSV
and every folder holding Phenix TIFFs. ``root`` may also be a single CSV file. With ``source="auto"`` each plate is
indexed from its CSV when one exists (``load_data_with_illum.csv`` preferred over ``load_data.csv`` unless
``illum="no"``), else from its Phenix folder.

Checks (each raises :class:`~dinov2_cell.data.errors.DataIndexError` naming the file/column, or with
``on_error="skip"`` drops and counts the bad item): a requested channel missing from a CSV, an unknown channel name,
a site lacking some channel file, a plate with no sites, a (plate, well, site, channel) given twice, and wells with
more sites than the plate's usual count (the most common highest site number over its wells, or ``sites_per_well``;
wells with fewer sites are normal: CPJUMP1 has wells with 7 or 8 of 9 sites, and they are kept). With
``on_error="skip"`` an unusable LoadData CSV is counted and skipped, and (``source="auto"``) its plate is read from its
Phenix folder when there is one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.data.errors import DataIndexError, SkipLog, check_on_error
from dinov2_cell.data.loaddata import ILLUM_MODES, INDEX_COLUMNS, LOAD_DATA_NAMES, read_load_data_csv
from dinov2_cell.data.names import (
    PHENIX_CHANNELS,
    PHENIX_RE,
    parse_well,
    phenix_filename,
    plate_from_folder,
    resolve_channels,
)
from dinov2_cell.data.phenix import scan_phenix_folder

logger = logging.getLogger("dinov2_cell.data")

SOURCES = ("auto", "csv", "scan")
SITE_KEYS = [PLATE, WELL, SITE]


@dataclass
class Discovery:
    """What one walk of ``root`` found.

    Attributes:
        root: the root searched.
        csvs: LoadData CSV files, sorted.
        phenix: plate barcode -> list of (folder, sorted Phenix file names), folders sorted.
    """

    root: Path
    csvs: list[Path] = field(default_factory=list)
    phenix: dict[str, list[tuple[Path, list[str]]]] = field(default_factory=dict)


def discover(root: str | os.PathLike) -> Discovery:
    """Find LoadData CSVs and Phenix image folders under ``root`` (one walk).

    Args:
        root: a folder, or one CSV file.

    Returns:
        A :class:`Discovery`.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset root does not exist: {root}")
    found = Discovery(root=root.resolve())
    if root.is_file():
        found.csvs.append(root.resolve())
        return found
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or two links to one folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        tiffs = []
        for name in filenames:
            low = name.lower()
            if low in LOAD_DATA_NAMES:
                found.csvs.append(Path(dirpath).resolve() / name)
            elif (low.endswith(".tiff") or low.endswith(".tif")) and PHENIX_RE.match(name):
                tiffs.append(name)
        if tiffs:
            folder = Path(dirpath).resolve()
            found.phenix.setdefault(plate_from_folder(folder), []).append((folder, sorted(tiffs)))
    found.csvs.sort()
    for plate in found.phenix:
        found.phenix[plate].sort()
    return found


def _pick_csvs(csvs: Sequence[Path], illum: str) -> list[Path]:
    # In one folder keep a single LoadData file: with_illum (if illum is wanted) else the plain one.
    by_dir: dict[Path, list[Path]] = {}
    for p in csvs:
        by_dir.setdefault(p.parent, []).append(p)
    chosen = []
    for folder, files in sorted(by_dir.items()):
        names = {f.name.lower(): f for f in files}
        order = LOAD_DATA_NAMES if illum != "no" else LOAD_DATA_NAMES[2:] + LOAD_DATA_NAMES[:2]
        named = [names[n] for n in order if n in names]
        # a CSV given directly as root (any name) is kept as is
        chosen.append(named[0] if named else files[0])
        chosen.extend(f for f in files if f.name.lower() not in LOAD_DATA_NAMES)
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# Whole root


def index_plates(
    root: str | os.PathLike,
    *,
    plates: Sequence[str] | None = None,
    channels: str | Sequence[str] | None = "fluo",
    source: str = "auto",
    illum: str = "auto",
    on_error: str = "raise",
    channel_map: Mapping[int, str] | None = None,
    skips: SkipLog | None = None,
    discovery: Discovery | None = None,
) -> pd.DataFrame:
    """Index every requested plate under ``root`` (long table, one row per image file).

    Args:
        root: folder with LoadData CSVs and/or Phenix folders, or one CSV file.
        plates: barcodes to index (``None`` = all found). A requested plate that is not found is an error.
        channels: channel spec (see :func:`resolve_channels`); the default is ``fluo``.
        source: ``auto`` (CSV when a plate has one, else Phenix scan), ``csv``, or ``scan``.
        illum: ``auto`` / ``yes`` / ``no``: use illumination columns of LoadData CSVs.
        on_error: ``raise`` or ``skip``.
        channel_map: Phenix channel number -> name (default :data:`PHENIX_CHANNELS`).
        skips: :class:`SkipLog` for skipped items (a new one when ``None``).
        discovery: a previous :func:`discover` result for ``root`` (saves the walk).

    Returns:
        Long index sorted by plate, well, site, channel order; columns :data:`INDEX_COLUMNS`.

    Raises:
        DataIndexError: plate not found, nothing found, or any check of the module docstring.
        ValueError: bad ``source``/``illum``/``on_error`` or channel name.
    """
    check_on_error(on_error)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if illum not in ILLUM_MODES:
        raise ValueError(f"illum must be one of {ILLUM_MODES}, got {illum!r}")
    skips = skips if skips is not None else SkipLog("CPJUMP1 index")
    found = discovery or discover(root)
    wanted_plates = None if plates is None else list(dict.fromkeys(plates))

    parts: list[pd.DataFrame] = []
    csv_plates: dict[str, Path] = {}
    if source in ("auto", "csv"):
        for csv in _pick_csvs(found.csvs, illum):
            try:
                df = read_load_data_csv(
                    csv,
                    channels=channels,
                    root=found.root,
                    illum=illum,
                    plates=wanted_plates,
                    on_error=on_error,
                    skips=skips,
                    known_dirs=[f for folders in found.phenix.values() for f, _ in folders],
                )
            except DataIndexError as e:
                if on_error == "raise":
                    raise
                skips.record("unusable LoadData CSVs", str(e))
                continue
            for plate in pd.unique(df[PLATE]):
                if plate in csv_plates:
                    raise DataIndexError(
                        f"plate {plate} is described by several LoadData CSVs: {csv_plates[plate]} and {csv}"
                    )
                csv_plates[plate] = csv
            parts.append(df)
    if source in ("auto", "scan"):
        for plate, folders in sorted(found.phenix.items()):
            if plate in csv_plates or (wanted_plates is not None and plate not in wanted_plates):
                continue
            if len(folders) > 1:
                names = ", ".join(str(f) for f, _ in folders)
                msg = f"plate {plate} has images in several folders ({names})"
                if on_error == "raise":
                    raise DataIndexError(msg + "; point root at one of them or use a LoadData CSV")
                skips.record("duplicate plate folders", msg + f"; using the last one, {folders[-1][0]}")
                folders = folders[-1:]
            folder, files = folders[0]
            parts.append(
                scan_phenix_folder(
                    folder,
                    files,
                    plate=plate,
                    channels=channels,
                    channel_map=channel_map,
                    on_error=on_error,
                    skips=skips,
                )
            )
    index = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=INDEX_COLUMNS)
    index[SITE] = index[SITE].astype(int)
    for col in (PLATE, WELL, "channel", "path", "illum_path", "origin"):
        index[col] = index[col].astype(str)  # same dtypes whichever source a plate came from

    present = set(index[PLATE])
    if wanted_plates is not None:
        missing = [p for p in wanted_plates if p not in present]
        for plate in missing:
            where = "LoadData CSV" if source == "csv" else "LoadData CSV or Phenix folder"
            msg = f"plate {plate}: no sites found under {found.root} (no {where} with images of it)"
            if on_error == "raise":
                raise DataIndexError(msg)
            skips.record("empty plates", msg)
    if index.empty:
        raise DataIndexError(
            f"no images found under {found.root} (source={source}; looked for {', '.join(LOAD_DATA_NAMES)} "
            "and Phenix folders with rRRcCCfFFpPP-chN...tiff files)"
        )
    order = (
        {c: i for i, c in enumerate(resolve_channels(channels, extra=index["channel"].unique()))} if channels else {}
    )
    index["_ch"] = index["channel"].map(order).fillna(len(order)) if order else 0
    index = index.sort_values([PLATE, WELL, SITE, "_ch", "channel"], kind="stable")
    return index.drop(columns="_ch").reset_index(drop=True)


def site_table(
    index: pd.DataFrame,
    channels: Sequence[str],
    *,
    on_error: str = "raise",
    skips: SkipLog | None = None,
    sites_per_well: int | None = None,
) -> pd.DataFrame:
    """Validate a long index and pivot it to one row per site.

    Args:
        index: output of :func:`index_plates`.
        channels: channel names, in output order.
        on_error: ``raise`` or ``skip``.
        skips: :class:`SkipLog` for skipped items.
        sites_per_well: if given, the most sites a well may have; by default the mode of each plate's wells.

    Returns:
        DataFrame sorted by plate, well, site with Metadata_Plate, Metadata_Well, Metadata_Site, then ``path_<ch>``
        and ``illum_<ch>`` ("" when none) per channel.

    Raises:
        DataIndexError: duplicated entry, site missing a channel, empty plate, or a well with too many sites.
    """
    check_on_error(on_error)
    skips = skips if skips is not None else SkipLog("CPJUMP1 index")
    channels = list(channels)
    index = index[index["channel"].isin(channels)]

    dup = index.duplicated(SITE_KEYS + ["channel"], keep=False)
    if dup.any():
        d = index[dup].sort_values(SITE_KEYS + ["channel"])
        first = d.iloc[0]
        same = d[(d[SITE_KEYS + ["channel"]] == first[SITE_KEYS + ["channel"]]).all(axis=1)]
        raise DataIndexError(
            f"plate {first.Metadata_Plate} well {first.Metadata_Well} site {first.Metadata_Site} channel "
            f"{first.channel} is listed {len(same)} times: {', '.join(same['path'])} ({int(dup.sum())} duplicated rows)"
        )

    wide = index.pivot(index=SITE_KEYS, columns="channel", values="path")
    illum = index.pivot(index=SITE_KEYS, columns="channel", values="illum_path")
    origin = index.groupby(SITE_KEYS)["origin"].first()
    for ch in channels:
        if ch not in wide.columns:
            wide[ch] = np.nan
            illum[ch] = ""
    incomplete = wide[channels].isna().any(axis=1)
    if incomplete.any():
        bad = wide[incomplete]
        key = bad.index[0]
        lacking = [c for c in channels if pd.isna(bad.iloc[0][c])]
        msg = (
            f"plate {key[0]} well {key[1]} site {key[2]} lacks channel(s) {', '.join(lacking)} "
            f"({_expected_file(origin[key], key, lacking[0])}); {int(incomplete.sum())} incomplete site(s) in total"
        )
        if on_error == "raise":
            raise DataIndexError(msg)
        skips.record("sites missing a channel", msg, int(incomplete.sum()))
        wide = wide[~incomplete]
    out = wide[channels].rename(columns=lambda c: f"path_{c}")
    ill = illum.loc[out.index, channels].fillna("").rename(columns=lambda c: f"illum_{c}")
    out = pd.concat([out, ill], axis=1).reset_index()
    out.columns.name = None
    out = _check_site_counts(out, on_error, skips, sites_per_well)
    if out.empty:
        raise DataIndexError("no complete sites left after checking the index")
    return out.sort_values(SITE_KEYS).reset_index(drop=True)


def _expected_file(origin: str, key, channel: str) -> str:
    plate, well, site = key
    if origin.lower().endswith((".csv", ".csv.gz")):
        return f"no FileName_Orig{channel} for this site in {origin}"
    inv = {v: k for k, v in PHENIX_CHANNELS.items()}
    if channel in inv:
        r, c = parse_well(well)
        return f"expected file {Path(origin) / phenix_filename(r, c, site, inv[channel])}"
    return f"in folder {origin}"


def _check_site_counts(sites: pd.DataFrame, on_error: str, skips: SkipLog, sites_per_well: int | None) -> pd.DataFrame:
    # A plate's usual site count = the most common highest site number over its wells (ties: the larger). Missing
    # sites (real: wells with 7 or 8 of 9) leave it unchanged; a well with sites beyond it (a second acquisition
    # mixed in, a 16-site well on a 9-site plate) is inconsistent.
    per_well = sites.groupby([PLATE, WELL])[SITE].agg(["size", "max"])
    drop = []
    for plate, wells in per_well.groupby(level=0):
        limit = sites_per_well if sites_per_well is not None else int(wells["max"].mode().max())
        over = wells[(wells["max"] > limit) | (wells["size"] > limit)]
        if len(over):
            well, first = over.index[0][1], over.iloc[0]
            msg = (
                f"plate {plate}: inconsistent site counts: {len(over)} well(s) have more than {limit} sites "
                f"(e.g. well {well} has {int(first['size'])}, up to site {int(first['max'])})"
            )
            if on_error == "raise":
                raise DataIndexError(msg + "; mixed acquisitions of one plate? set sites_per_well or fix the input")
            skips.record("wells with too many sites", msg, len(over))
            drop.extend(over.index.tolist())
        fewer = int((wells["size"] < limit).sum())
        if fewer:
            logger.info("plate %s: %d well(s) have fewer than %d sites (kept)", plate, fewer, limit)
    if drop:
        keys = pd.MultiIndex.from_frame(sites[[PLATE, WELL]])
        sites = sites[~keys.isin(drop)]
    return sites
