"""Index Cell Painting plates: (plate, well, site, channel) -> image file, from LoadData CSVs or Phenix folders.

Two sources give the same index (a "long" table, one row per image file):

* **CellProfiler LoadData CSVs** (``load_data.csv``, ``load_data_with_illum.csv``, optionally ``.gz``): columns
  ``Metadata_Plate``, ``Metadata_Well`` (or ``Metadata_Row`` + ``Metadata_Col``), ``Metadata_Site`` (or
  ``Metadata_Field``), and per channel ``FileName_Orig<Name>`` + ``PathName_Orig<Name>`` (optionally
  ``FileName_Illum<Name>`` + ``PathName_Illum<Name>``). ``PathName`` values written on another machine (the
  Cell Painting Gallery CSVs hold the original absolute paths or ``s3://`` URLs) are re-rooted: the longest trailing
  part of the path that exists under ``root`` (then under the CSV's folder and its parents) is used, once per distinct
  folder; failing that, the image folder found under ``root`` whose trailing path components match (e.g.
  ``<BARCODE>__<timestamp>-Measurement1/Images``). Channels are named in the CSV, so there is no ambiguity about which
  file is which channel.
* **Raw Opera Phenix folders** (``<BARCODE>__<timestamp>-Measurement<N>/Images/rRRcCCfFFpPP-chNsk1fk1fl1.tiff``):
  the plate barcode is the folder name before ``__``; rows r01..r16 -> A..P, columns c01..c24, sites f01..; only plane
  p01 is used. Channel numbers map to names through :data:`PHENIX_CHANNELS`:
  ch1 Mito, ch2 AGP, ch3 RNA, ch4 ER, ch5 DNA, ch6 HighZBF, ch7 LowZBF, ch8 Brightfield. The fluorescent channels
  follow the CPJUMP1 acquisition (Alexa 647, 568, 488 long, 488, Hoechst); the order of the three brightfield planes
  (ch6-ch8) is an ASSUMPTION that has not been confirmed; LoadData CSVs name the planes and remove the ambiguity
  (pass ``channel_map`` to override).

Discovery (:func:`discover`): one walk of ``root`` (symlinks followed, hidden folders skipped) finds every LoadData CSV
and every folder holding Phenix TIFFs. ``root`` may also be a single CSV file. With ``source="auto"`` each plate is
indexed from its CSV when one exists (``load_data_with_illum.csv`` preferred over ``load_data.csv`` unless
``illum="no"``), else from its Phenix folder.

Checks (each raises :class:`~dinov2_cell.data.errors.DataIndexError` naming the file/column, or with
``on_error="skip"`` drops and counts the bad item): a requested channel missing from a CSV, an unknown channel name,
a site lacking some channel file, a plate with no sites, a (plate, well, site, channel) given twice, and wells with
more sites than the plate's usual count (the most common highest site number over its wells, or ``sites_per_well``;
wells with fewer sites are normal: CPJUMP1 has wells with 7 or 8 of 9 sites, and they are kept). With ``on_error="skip"`` an unusable LoadData CSV is counted and
skipped, and (``source="auto"``) its plate is read from its Phenix folder when there is one.

Canonical channel order: fluorescent ``DNA, ER, RNA, AGP, Mito`` then brightfield ``Brightfield, HighZBF, LowZBF``
(``Brightfield`` is the in-focus plane, ``HighZBF`` / ``LowZBF`` the planes above / below focus).
Groups: ``fluo`` (5), ``bf`` (3), ``all`` (8, fluo then bf), or an explicit comma-separated list of names.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from dinov2_cell.data.errors import DataIndexError, SkipLog, check_on_error

logger = logging.getLogger("dinov2_cell.data")

FLUO_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
BF_CHANNELS = ("Brightfield", "HighZBF", "LowZBF")
ALL_CHANNELS = FLUO_CHANNELS + BF_CHANNELS
CHANNEL_GROUPS = {"fluo": FLUO_CHANNELS, "bf": BF_CHANNELS, "all": ALL_CHANNELS}

# Phenix channel number -> channel name (brightfield plane order ch6-ch8 assumed, not confirmed; see module docstring).
PHENIX_CHANNELS = {1: "Mito", 2: "AGP", 3: "RNA", 4: "ER", 5: "DNA", 6: "HighZBF", 7: "LowZBF", 8: "Brightfield"}

PHENIX_RE = re.compile(r"^r(\d+)c(\d+)f(\d+)p(\d+)-ch(\d+)sk\d+fk\d+fl\d+\.tiff?$", re.IGNORECASE)
LOAD_DATA_NAMES = ("load_data_with_illum.csv", "load_data_with_illum.csv.gz", "load_data.csv", "load_data.csv.gz")
SOURCES = ("auto", "csv", "scan")
ILLUM_MODES = ("auto", "yes", "no")

INDEX_COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "channel", "path", "illum_path", "origin"]
SITE_KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]

_ROW_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_WELL_RE = re.compile(r"^([A-Za-z]{1,2})0*(\d+)$")


# ----------------------------------------------------------------------------------------------------------------
# Names


def resolve_channels(channels: str | Sequence[str] | None, extra: Iterable[str] = ()) -> list[str]:
    """Turn a channel spec into a list of channel names in the requested (or canonical group) order.

    Args:
        channels: ``"fluo"``, ``"bf"``, ``"all"``, a comma-separated string of names, or a list of names. Names are
            matched case-insensitively to the canonical ones (:data:`ALL_CHANNELS`). ``None`` = ``"fluo"``.
        extra: further valid names (e.g. non-standard channels found in a LoadData CSV).

    Returns:
        List of names.

    Raises:
        ValueError: unknown or repeated channel name (the message lists the valid names and groups).
    """
    if channels is None:
        channels = "fluo"
    if isinstance(channels, str):
        key = channels.strip()
        if key.lower() in CHANNEL_GROUPS:
            return list(CHANNEL_GROUPS[key.lower()])
        names = [c.strip() for c in key.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in channels]
        if len(names) == 1 and names[0].lower() in CHANNEL_GROUPS:
            return list(CHANNEL_GROUPS[names[0].lower()])
    if not names:
        raise ValueError("empty channel list")
    known = {c.lower(): c for c in list(ALL_CHANNELS) + list(extra)}
    out = []
    for name in names:
        canon = known.get(name.lower())
        if canon is None:
            raise ValueError(
                f"unknown channel {name!r}; valid names: {', '.join(known.values())}; groups: "
                f"{', '.join(CHANNEL_GROUPS)}"
            )
        if canon in out:
            raise ValueError(f"channel {canon!r} requested twice in {channels!r}")
        out.append(canon)
    return out


def well_name(row: int, col: int) -> str:
    """Row/column numbers (1-based) -> well name, e.g. (1, 1) -> "A01", (16, 24) -> "P24".

    Args:
        row: 1-based row.
        col: 1-based column.

    Returns:
        The well name.
    """
    if not 1 <= row <= 26 or col < 1:
        raise ValueError(f"row {row} / column {col} out of range for a well name")
    return f"{_ROW_LETTERS[row - 1]}{col:02d}"


def parse_well(name: str) -> tuple[int, int]:
    """Well name -> (row, col), 1-based; accepts "A01", "a1", "P24".

    Args:
        name: the well name.

    Returns:
        (row, col).

    Raises:
        ValueError: not a well name.
    """
    m = _WELL_RE.match(str(name).strip())
    if not m or len(m.group(1)) != 1:
        raise ValueError(f"not a well name: {name!r}")
    return _ROW_LETTERS.index(m.group(1).upper()) + 1, int(m.group(2))


def normalize_well(name: str) -> str:
    """Canonical well name ("a1" -> "A01").

    Args:
        name: the well name.

    Returns:
        Canonical form.
    """
    return well_name(*parse_well(name))


def phenix_filename(row: int, col: int, site: int, channel: int, plane: int = 1) -> str:
    """The Opera Phenix file name of one image, e.g. ``r01c01f01p01-ch1sk1fk1fl1.tiff``.

    Args:
        row: 1-based row.
        col: 1-based column.
        site: 1-based field (site).
        channel: Phenix channel number.
        plane: z plane.

    Returns:
        The file name.
    """
    return f"r{row:02d}c{col:02d}f{site:02d}p{plane:02d}-ch{channel}sk1fk1fl1.tiff"


def plate_from_folder(folder: str | os.PathLike) -> str:
    """Plate barcode of a Phenix folder: ``.../BR00116991__2020-11-05T19_51_35-Measurement1/Images`` -> BR00116991.

    Args:
        folder: the folder holding the TIFFs (an ``Images`` folder is named after its parent).

    Returns:
        The barcode.
    """
    p = Path(folder)
    name = p.parent.name if p.name.lower() == "images" else p.name
    return name.split("__")[0]


# ----------------------------------------------------------------------------------------------------------------
# Discovery


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
# LoadData CSVs


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

    plate_col = need("Metadata_Plate")
    if "Metadata_Well" in df.columns:
        wells_raw = df["Metadata_Well"]
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
    site_col = need("Metadata_Site", "Metadata_Field")
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
                    "Metadata_Plate": df[plate_col],
                    "Metadata_Well": wells,
                    "Metadata_Site": sites,
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


# ----------------------------------------------------------------------------------------------------------------
# Phenix folders


def scan_phenix_folder(
    folder: str | os.PathLike,
    files: Sequence[str] | None = None,
    *,
    plate: str | None = None,
    channels: str | Sequence[str] | None = None,
    channel_map: Mapping[int, str] | None = None,
    on_error: str = "raise",
    skips: SkipLog | None = None,
) -> pd.DataFrame:
    """Index one Phenix image folder.

    Args:
        folder: folder with ``rRRcCCfFFpPP-chN...tiff`` files.
        files: its file names (listed when ``None``).
        plate: barcode (default: from the folder name, :func:`plate_from_folder`).
        channels: channel spec; ``None`` = every mapped channel present.
        channel_map: Phenix channel number -> name (default :data:`PHENIX_CHANNELS`).
        on_error: ``raise`` or ``skip`` (files of planes other than p01 are then dropped and counted).
        skips: the :class:`SkipLog` to count skips in.

    Returns:
        Long index (:data:`INDEX_COLUMNS`).

    Raises:
        DataIndexError: planes other than p01 (z-stacks are not supported).
    """
    folder = Path(folder).resolve()
    skips = skips or SkipLog("Phenix index")
    cmap = dict(PHENIX_CHANNELS if channel_map is None else channel_map)
    if files is None:
        files = sorted(f for f in os.listdir(folder) if PHENIX_RE.match(f))
    plate = plate or plate_from_folder(folder)
    wanted = None if channels is None else set(resolve_channels(channels, extra=cmap.values()))
    rows, other_planes = [], []
    for name in files:
        m = PHENIX_RE.match(name)
        if m is None:
            continue
        r, c, f, p, ch = (int(g) for g in m.groups())
        if p != 1:
            other_planes.append(name)
            continue
        ch_name = cmap.get(ch)
        if ch_name is None or (wanted is not None and ch_name not in wanted):
            continue
        rows.append((plate, well_name(r, c), f, ch_name, str(folder / name)))
    if other_planes:
        msg = f"{folder}: {len(other_planes)} file(s) of z-planes other than p01 (e.g. {other_planes[0]}); only p01 is read"
        if on_error == "raise":
            raise DataIndexError(msg + " (z-stacks are not supported; use on_error=skip to ignore them)")
        skips.record("files of other z-planes", msg, len(other_planes))
    out = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site", "channel", "path"])
    out["Metadata_Site"] = out["Metadata_Site"].astype(int)
    out["illum_path"] = ""
    out["origin"] = str(folder)
    return out[INDEX_COLUMNS]


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
            for plate in pd.unique(df["Metadata_Plate"]):
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
    index["Metadata_Site"] = index["Metadata_Site"].astype(int)
    for col in ("Metadata_Plate", "Metadata_Well", "channel", "path", "illum_path", "origin"):
        index[col] = index[col].astype(str)  # same dtypes whichever source a plate came from

    present = set(index["Metadata_Plate"])
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
    index = index.sort_values(["Metadata_Plate", "Metadata_Well", "Metadata_Site", "_ch", "channel"], kind="stable")
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
    per_well = sites.groupby(["Metadata_Plate", "Metadata_Well"])["Metadata_Site"].agg(["size", "max"])
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
        keys = pd.MultiIndex.from_frame(sites[["Metadata_Plate", "Metadata_Well"]])
        sites = sites[~keys.isin(drop)]
    return sites
