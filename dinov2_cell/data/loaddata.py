"""Index CellProfiler LoadData CSVs: (plate, well, site, channel) -> image file (and illumination function).

Files: ``load_data.csv``, ``load_data_with_illum.csv`` (optionally ``.gz``). Columns ``Metadata_Plate``,
``Metadata_Well`` (or ``Metadata_Row`` + ``Metadata_Col``), ``Metadata_Site`` (or ``Metadata_Field``), and per channel
``FileName_Orig<Name>`` + ``PathName_Orig<Name>`` (optionally ``FileName_Illum<Name>`` + ``PathName_Illum<Name>``).
``PathName`` values written on another machine (the Cell Painting Gallery CSVs hold the original absolute paths or
``s3://`` URLs) are re-rooted: the longest trailing part of the path that exists under ``root`` (then under the CSV's
folder and its parents) is used, once per distinct folder; failing that, the image folder found under ``root`` whose
trailing path components match (e.g. ``<BARCODE>__<timestamp>-Measurement1/Images``). Channels are named in the CSV, so
there is no ambiguity about which file is which channel.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.data.errors import DataIndexError, SkipLog, check_on_error
from dinov2_cell.data.names import normalize_well, resolve_channels, well_name

logger = logging.getLogger("dinov2_cell.data")

LOAD_DATA_NAMES = ("load_data_with_illum.csv", "load_data_with_illum.csv.gz", "load_data.csv", "load_data.csv.gz")
ILLUM_MODES = ("auto", "yes", "no")
INDEX_COLUMNS = [PLATE, WELL, SITE, "channel", "path", "illum_path", "origin"]


class _DirResolver:
    """Maps a PathName value (possibly from another machine, possibly s3://) to an existing local folder."""

    def __init__(self, root: Path, csv_path: Path, known_dirs: Sequence[Path] = ()):
        bases = [root if root.is_dir() else root.parent, csv_path.parent]
        bases.extend(csv_path.parent.parents)
        self.bases = list(dict.fromkeys(b for b in bases))
        self.known_dirs = [Path(d) for d in known_dirs]
        self.cache: dict[str, str | None] = {}

    def __call__(self, value: str) -> str | None:
        if value in self.cache:
            return self.cache[value]
        self.cache[value] = found = self._resolve(value)
        return found

    def _resolve(self, value: str) -> str | None:
        text = value.strip()
        if "://" in text:
            text = text.split("://", 1)[1]
        if text and os.path.isabs(text) and os.path.isdir(text):
            return os.path.normpath(text)
        parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
        for base in self.bases:
            if not parts:
                return str(base)
            for k in range(len(parts)):
                cand = base.joinpath(*parts[k:])
                if cand.is_dir():
                    return str(cand)
        # Last resort: an image folder found under root whose trailing components match (e.g. the
        # "<BARCODE>__<timestamp>-Measurement1/Images" tail), if exactly one matches best.
        best, best_k = [], 0
        for d in self.known_dirs:
            k = 0
            while k < min(len(parts), len(d.parts)) and d.parts[-1 - k] == parts[-1 - k]:
                k += 1
            if k > best_k:
                best, best_k = [d], k
            elif k == best_k and k:
                best.append(d)
        if len(best) == 1 and any(p.lower() != "images" for p in parts[len(parts) - best_k :]):
            return str(best[0])
        return None


def _csv_channel_columns(columns: Iterable[str], prefix: str) -> dict[str, str]:
    # channel name as written in the CSV -> column
    return {c[len(prefix) :]: c for c in columns if c.startswith(prefix) and len(c) > len(prefix)}


def csv_channels(csv_path: str | os.PathLike) -> list[str]:
    """Channel names a LoadData CSV provides (from its ``FileName_Orig<Name>`` columns).

    Args:
        csv_path: the CSV.

    Returns:
        Names, in column order.
    """
    cols = pd.read_csv(csv_path, nrows=0).columns
    return list(_csv_channel_columns(cols, "FileName_Orig"))


def read_load_data_csv(
    csv_path: str | os.PathLike,
    *,
    channels: str | Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    illum: str = "auto",
    plates: Sequence[str] | None = None,
    on_error: str = "raise",
    skips: SkipLog | None = None,
    known_dirs: Sequence[str | os.PathLike] = (),
) -> pd.DataFrame:
    """Index one LoadData CSV.

    Args:
        csv_path: ``load_data.csv`` / ``load_data_with_illum.csv`` (or ``.gz``).
        channels: channel spec (see :func:`resolve_channels`); ``None`` = every ``FileName_Orig*`` channel of the CSV.
        root: folder used to re-root ``PathName`` values (default: the CSV's folder).
        illum: ``auto`` (use ``FileName_Illum*`` columns when present), ``yes`` (require them), ``no`` (ignore).
        plates: keep only these plates.
        on_error: ``raise`` or ``skip`` (rows with an empty file name or an unresolvable folder are dropped).
        skips: the :class:`SkipLog` to count skips in.
        known_dirs: image folders found under root (:func:`discover`), matched by their trailing path components
            when a ``PathName`` cannot be found under ``root``.

    Returns:
        Long index (:data:`INDEX_COLUMNS`), one row per (site, channel).

    Raises:
        DataIndexError: unreadable CSV, missing column, unresolvable folder, bad site/well value (names the CSV and
            the column).
    """
    csv_path = Path(csv_path).resolve()
    check_on_error(on_error)
    skips = skips or SkipLog("LoadData index")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many types for corrupt/empty files; report them with the file name
        raise DataIndexError(f"cannot read LoadData CSV {csv_path}: {e}") from e
    if df.empty:
        raise DataIndexError(f"LoadData CSV {csv_path} has no rows (empty plate)")
    cols = list(df.columns)

    def need(*names: str) -> str:
        for n in names:
            if n in df.columns:
                return n
        raise DataIndexError(f"{csv_path}: missing column {' or '.join(names)} (has: {', '.join(cols)})")

    plate_col = need(PLATE)
    if WELL in df.columns:
        wells_raw = df[WELL]
        try:
            wells = wells_raw.map(normalize_well)
        except ValueError as e:
            raise DataIndexError(f"{csv_path}: column Metadata_Well: {e}") from e
    else:
        row_col, col_col = need("Metadata_Row"), need("Metadata_Col")
        try:
            wells = pd.Series(
                [well_name(int(r), int(c)) for r, c in zip(df[row_col], df[col_col])], index=df.index, dtype=object
            )
        except ValueError as e:
            raise DataIndexError(f"{csv_path}: columns Metadata_Row/Metadata_Col: {e}") from e
    site_col = need(SITE, "Metadata_Field")
    try:
        sites = df[site_col].astype(int)
    except ValueError as e:
        raise DataIndexError(f"{csv_path}: column {site_col} must hold integers: {e}") from e

    orig = _csv_channel_columns(cols, "FileName_Orig")
    lower_to_csv = {k.lower(): k for k in orig}
    wanted = list(orig) if channels is None else resolve_channels(channels, extra=orig)
    if illum not in ILLUM_MODES:
        raise ValueError(f"illum must be one of {ILLUM_MODES}, got {illum!r}")
    resolver = _DirResolver(Path(root).resolve() if root is not None else csv_path.parent, csv_path, known_dirs)

    keep = np.ones(len(df), dtype=bool)
    if plates is not None:
        keep &= df[plate_col].isin(list(plates)).to_numpy()
    if not keep.any():
        return pd.DataFrame(columns=INDEX_COLUMNS)

    pieces = []
    for ch in wanted:
        csv_name = lower_to_csv.get(ch.lower())
        if csv_name is None:
            raise DataIndexError(
                f"{csv_path}: channel {ch!r} missing: no column FileName_Orig{ch} "
                f"(channels in this CSV: {', '.join(orig) or 'none'})"
            )
        fcol, pcol = f"FileName_Orig{csv_name}", need(f"PathName_Orig{csv_name}")
        paths = _join_paths(df[fcol], df[pcol], resolver, csv_path, pcol, keep, on_error, skips, "image")
        illum_paths = pd.Series([""] * len(df), index=df.index, dtype=object)
        ifile, ipath = f"FileName_Illum{csv_name}", f"PathName_Illum{csv_name}"
        if illum != "no" and ifile in df.columns:
            illum_paths = _illum_paths(df[ifile], df[need(ipath)], resolver, csv_path, keep, illum)
        elif illum == "yes":
            raise DataIndexError(f"{csv_path}: illum='yes' but there is no column {ifile}")
        pieces.append(
            pd.DataFrame(
                {
                    PLATE: df[plate_col],
                    WELL: wells,
                    SITE: sites,
                    "channel": ch,
                    "path": paths,
                    "illum_path": illum_paths,
                    "origin": str(csv_path),
                }
            )[keep]
        )
    out = pd.concat(pieces, ignore_index=True)
    return out[out["path"].notna()].reset_index(drop=True)


def _join_paths(files, dirs, resolver, csv_path, pcol, keep, on_error, skips, what) -> pd.Series:
    result = pd.Series([None] * len(files), index=files.index, dtype=object)
    fcol = files.name
    empty = (files.str.strip() == "").to_numpy() & keep
    if empty.any():
        first = int(np.flatnonzero(empty)[0])
        msg = f"{csv_path}: column {fcol} is empty in {int(empty.sum())} row(s) (first: data row {first + 1})"
        if on_error == "raise":
            raise DataIndexError(msg)
        skips.record(f"sites without {what} file", msg, int(empty.sum()))
    resolved = {d: resolver(d) for d in pd.unique(dirs[keep & ~empty])}
    for d, r in resolved.items():
        if r is None:
            n = int(((dirs == d).to_numpy() & keep & ~empty).sum())
            msg = f"{csv_path}: folder {d!r} of column {pcol} not found (tried it under {resolver.bases[0]} and the CSV's folders)"
            if on_error == "raise":
                raise DataIndexError(msg)
            skips.record(f"sites with missing {what} folder", msg, n)
    ok = keep & ~empty
    dir_vals = dirs.map(resolved)
    ok &= dir_vals.notna().to_numpy()
    # resolved folders are already normalized; joining strings (no per-row normpath) keeps 600k-file batches fast
    result[ok] = dir_vals[ok].astype(str) + os.sep + files[ok].str.strip()
    return result


def _illum_paths(files, dirs, resolver, csv_path, keep, illum: str) -> pd.Series:
    # Illumination functions: few distinct files (one per plate and channel), so each is checked here. Gallery users
    # often download images without the illum/ folder: with illum="auto" a missing function means no correction
    # (logged), with illum="yes" it is an error naming the file.
    result = pd.Series([""] * len(files), index=files.index, dtype=object)
    f = files.str.strip()
    usable = keep & (f != "").to_numpy()
    if illum == "yes" and (keep & ~usable).any():
        raise DataIndexError(f"{csv_path}: illum='yes' but column {files.name} is empty in some rows")
    pairs = pd.DataFrame({"d": dirs, "f": f})[usable].drop_duplicates()
    for d, name in pairs.itertuples(index=False):
        folder = resolver(d)
        path = None if folder is None else os.path.join(folder, name)
        if path is None or not os.path.isfile(path):
            msg = f"{csv_path}: illumination file {name} (column {files.name}, folder {d}) not found"
            if illum == "yes":
                raise DataIndexError(msg)
            logger.warning("%s; reading without illumination correction (illum=auto; illum=yes makes it an error)", msg)
            continue
        result[usable & (dirs == d).to_numpy() & (f == name).to_numpy()] = path
    return result
