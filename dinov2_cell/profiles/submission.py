"""The Cell Line Transferability challenge submission CSV in its two layouts: writer, reader and check.

* ``final`` -- the scored layout (the organisers' page as updated in February 2025, when evaluation opened on
  Kaggle): a column ``ID`` holding the ``ID`` values of the organisers' ``metadata_test.csv`` (which maps each ID to a
  plate and well of the 24 compound plates), then ``feature_1`` ... ``feature_N`` (floats, used in the given order);
  one row per ID, in the order of metadata_test.csv; no missing or infinite value. metadata_test.csv is handed to
  challenge participants and not published elsewhere, so the IDs are never guessed: the user supplies the file.
* ``january`` -- the page's January 2025 version, not the scored one: ``Metadata_broad_sample`` (compound, e.g.
  ``BRD-A86665761-001-01-1``), ``Metadata_Plate`` (e.g. ``BR00117012``), ``Metadata_Well`` (e.g. ``A01``), then
  ``feature_0`` ... ``feature_{n-1}``; one row for each compound-containing well of the 24 compound plates of
  ``2020_11_04_CPJUMP1`` (DMSO wells hold no compound and are left out: 320 of the 384 wells of a plate). It needs
  nothing but the packaged plate map.

Which layout: ``submission_format`` when given; otherwise ``final`` when a metadata_test.csv is given and ``january``
without one (with a warning that the January layout was not the scored one), so that a profiling run without the
organisers' file still writes a checkable submission and one with it writes the scored file.

:func:`write_submission` writes either from a profile table (``feature_i`` = the i-th feature column of the profile,
counted from 1 in the final layout and from 0 in the January one; :func:`feature_map` gives that correspondence,
which the profiling driver records in the run config). :func:`check_submission` checks an existing file and returns
every problem, one line per problem class (command lines: ``python -m dinov2_cell.profiles.write_submission`` and
``python -m dinov2_cell.profiles.validate_submission``). :func:`submission_wells` maps a final-layout file's IDs back
to plates and wells (what ``knn_wells`` does to score it).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.atomic import atomic_path
from dinov2_cell.columns import BROAD, META_PREFIX, PLATE, WELL
from dinov2_cell.profiles.io import check_profiles, is_control, read_profiles

logger = logging.getLogger("dinov2_cell.profiles")

FINAL = "final"
JANUARY = "january"
FORMATS = (FINAL, JANUARY)
ID = "ID"
KEY_COLUMNS = (BROAD, PLATE, WELL)  # the January layout's first columns
FEATURE_PREFIX = "feature_"
FIRST_FEATURE = {FINAL: 1, JANUARY: 0}  # feature_1 ... in the final layout, feature_0 ... in the January one
# Column names searched in metadata_test.csv (case-insensitive, first match wins).
METADATA_TEST_COLUMNS = {
    "ID": ("ID",),
    "plate": ("Metadata_Plate", "plate", "plate_barcode", "Metadata_Barcode", "barcode"),
    "well": ("Metadata_Well", "well", "well_position", "Metadata_Well_Position"),
}
_WELL_RE = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,2})$")


def resolve_format(submission_format: str | None, metadata_test=None) -> str:
    """The layout to write or read: ``submission_format``, else ``final`` with a metadata_test.csv, else ``january``.

    Args:
        submission_format: ``final``, ``january`` or None.
        metadata_test: the organisers' metadata_test.csv (path or table), or None.

    Returns:
        ``final`` or ``january``.

    Raises:
        ValueError: an unknown layout, or ``final`` without metadata_test.csv.
    """
    if submission_format is None:
        return FINAL if metadata_test is not None else JANUARY
    if submission_format not in FORMATS:
        raise ValueError(f"unknown submission format {submission_format!r}; choose from {list(FORMATS)}")
    if submission_format == FINAL and metadata_test is None:
        raise ValueError(
            "the final submission format needs the organisers' metadata_test.csv (--metadata-test FILE): its IDs "
            "are not public and are never guessed; --submission-format january writes the January layout instead"
        )
    return submission_format


def feature_names(n: int, submission_format: str = JANUARY) -> list[str]:
    """``feature_0 ... feature_{n-1}`` (January) or ``feature_1 ... feature_n`` (final).

    Args:
        n: number of features.
        submission_format: ``final`` or ``january``.

    Returns:
        The column names.
    """
    if submission_format not in FORMATS:
        raise ValueError(f"unknown submission format {submission_format!r}; choose from {list(FORMATS)}")
    first = FIRST_FEATURE[submission_format]
    return [f"{FEATURE_PREFIX}{i}" for i in range(first, first + n)]


def feature_map(
    profiles: pd.DataFrame, feature_cols: Sequence[str] | None = None, submission_format: str = JANUARY
) -> dict[str, str]:
    """``{"feature_0": <first profile feature column>, ...}`` in the profile's feature order.

    Args:
        profiles: a profile table.
        feature_cols: features to export (default: every feature column).
        submission_format: ``january`` (``feature_0`` first, the default) or ``final`` (``feature_1`` first).

    Returns:
        Submission column -> profile column.
    """
    feats = list(feature_cols) if feature_cols is not None else check_profiles(profiles, source="submission")
    return dict(zip(feature_names(len(feats), submission_format), feats))


def canonical_well(well) -> str:
    """``"a1"``, ``"A1"``, ``"A001"`` -> ``"A01"`` (row letters upper-case, column number on two digits).

    Args:
        well: a well name.

    Returns:
        The canonical name.

    Raises:
        ValueError: not a well name.
    """
    m = _WELL_RE.match(str(well).strip())
    if not m:
        raise ValueError(f"{well!r} is not a well name (e.g. A01)")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def _find_column(columns: Sequence[str], what: str, source: str) -> str:
    names = METADATA_TEST_COLUMNS[what]
    lower = {str(c).strip().lower(): c for c in columns}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    raise ValueError(
        f"{source}: no {what} column (looked for {', '.join(names)}, any case); its columns: {list(columns)[:12]}"
    )


def read_metadata_test(metadata_test: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The organisers' metadata_test.csv as ``ID``, ``Metadata_Plate``, ``Metadata_Well`` (canonical wells), in the
    file's row order.

    The columns are found by name (case-insensitive): ``ID``; the plate from ``Metadata_Plate``, ``plate``,
    ``plate_barcode``, ``Metadata_Barcode`` or ``barcode``; the well from ``Metadata_Well``, ``well`` or
    ``well_position``. Every value is read as text (an ID ``007`` stays ``007``).

    Args:
        metadata_test: path (CSV/TSV, optionally gzipped) or table.

    Returns:
        A new table with the three columns.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a column not found (the file and the names looked for are named), an empty ID, a well name that
            is not one, a duplicated ID or a well given twice.
    """
    if isinstance(metadata_test, pd.DataFrame):
        source, raw = "metadata_test", metadata_test.astype(str)
    else:
        source = os.fspath(metadata_test)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"no such metadata_test file: {source}")
        sep = "\t" if ".tsv" in source.lower() else ","
        raw = pd.read_csv(source, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")  # BOM-safe
    cols = {what: _find_column(list(raw.columns), what, source) for what in METADATA_TEST_COLUMNS}
    out = pd.DataFrame(
        {
            ID: raw[cols["ID"]].astype(str).str.strip(),
            PLATE: raw[cols["plate"]].astype(str).str.strip(),
        }
    )
    try:
        out[WELL] = [canonical_well(w) for w in raw[cols["well"]]]
    except ValueError as e:
        raise ValueError(f"{source}: column {cols['well']!r}: {e}") from None
    empty = out[ID].eq("") | out[PLATE].eq("")
    if empty.any():
        raise ValueError(
            f"{source}: {int(empty.sum())} row(s) with an empty ID or plate, first at row {empty.idxmax() + 2}"
        )
    dup = out[ID].duplicated(keep=False)
    if dup.any():
        raise ValueError(f"{source}: {int(dup.sum())} rows share an ID, e.g. {_few(out.loc[dup, ID].unique())}")
    dup = out.duplicated([PLATE, WELL], keep=False)
    if dup.any():
        where = _few(f"{p} {w}" for p, w in out.loc[dup, [PLATE, WELL]].drop_duplicates().itertuples(index=False))
        raise ValueError(
            f"{source}: {int(dup.sum())} rows share a plate and well ({cols['plate']!r}, {cols['well']!r}): {where}"
        )
    return out.reset_index(drop=True)


def _canonical_keys(profiles: pd.DataFrame, source: str) -> pd.DataFrame:
    try:
        wells = [canonical_well(w) for w in profiles[WELL]]
    except ValueError as e:
        raise ValueError(f"{source}: column {WELL}: {e}") from None
    keys = pd.DataFrame({PLATE: profiles[PLATE].astype(str).str.strip().to_numpy(), WELL: wells})
    dup = keys.duplicated(keep=False)
    if dup.any():
        raise ValueError(f"{source}: {int(dup.sum())} rows name the same well once written canonically (e.g. A1, A01)")
    return keys


def _final_table(profiles: pd.DataFrame, feats: list[str], metadata_test) -> pd.DataFrame:
    ids = read_metadata_test(metadata_test)
    meta_name = "metadata_test" if isinstance(metadata_test, pd.DataFrame) else os.fspath(metadata_test)
    keys = _canonical_keys(profiles, "submission").assign(_row=np.arange(len(profiles)))
    joined = ids.merge(keys, on=[PLATE, WELL], how="left", validate="one_to_one")
    lost = joined["_row"].isna().to_numpy()
    try:
        compound = ~is_control(profiles)
    except ValueError:  # a bare table (plate, well, features): every well is expected to have an ID
        compound = np.ones(len(profiles), dtype=bool)
    named = set(zip(ids[PLATE], ids[WELL]))
    on_test_plates = keys[PLATE].isin(set(ids[PLATE])).to_numpy()
    has_id = np.array([k in named for k in zip(keys[PLATE], keys[WELL])], dtype=bool)
    extra = keys[compound & on_test_plates & ~has_id]
    if lost.any() or len(extra):
        parts = []
        if lost.any():
            miss = joined[lost]
            by_plate = ", ".join(f"{p} ({n})" for p, n in miss.groupby(PLATE).size().items())
            eg = _few(f"{i} = {p} {w}" for i, p, w in miss[[ID, PLATE, WELL]].itertuples(index=False))
            parts.append(f"{int(lost.sum())} ID(s) of {meta_name} without a profile (by plate: {by_plate}; e.g. {eg})")
        if len(extra):
            by_plate = ", ".join(f"{p} ({n})" for p, n in extra.groupby(PLATE).size().items())
            eg = _few(f"{p} {w}" for p, w in extra[[PLATE, WELL]].itertuples(index=False))
            parts.append(
                f"{len(extra)} compound well(s) of the profiles on its plates without an ID (by plate: {by_plate}; "
                f"e.g. {eg})"
            )
        raise ValueError("submission: " + "; ".join(parts) + " (is metadata_test.csv from the same plates?)")
    skipped = len(profiles) - len(ids)
    if skipped:
        logger.info("submission: %d profile well(s) without an ID left out (controls, other plates)", skipped)
    rows = joined["_row"].astype(int).to_numpy()
    values = profiles[feats].to_numpy(dtype=np.float64)[rows]
    block = pd.DataFrame(values, columns=feature_names(len(feats), FINAL))
    return pd.concat([ids[[ID]], block], axis=1)


def submission_table(
    profiles: pd.DataFrame,
    feature_cols: Sequence[str] | None = None,
    *,
    submission_format: str | None = None,
    metadata_test: str | os.PathLike | pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The submission rows of a profile table.

    Final layout: one row per ID of metadata_test.csv, in its order, with the profile of the ID's plate and well.
    January layout: compound wells only, sorted by plate and well.

    Args:
        profiles: a profile table with Metadata_Plate, Metadata_Well, features (and, for the January layout and to
            tell controls from compounds, Metadata_broad_sample / Metadata_pert_iname).
        feature_cols: features to export (default: every feature column, in table order).
        submission_format: ``final``, ``january`` or None (final when ``metadata_test`` is given, else January).
        metadata_test: the organisers' metadata_test.csv (path or table); needed for the final layout.

    Returns:
        DataFrame with the layout's columns (features as float64).

    Raises:
        ValueError: a missing column, a NaN/inf feature, a duplicated well (named), no compound well at all
            (January), or IDs without a profile / compound wells of the ID plates without an ID (final; one message
            listing both).
    """
    fmt = resolve_format(submission_format, metadata_test)
    if fmt == FINAL:
        feats = check_profiles(profiles, required=(PLATE, WELL), source="submission")
        feats = list(feature_cols) if feature_cols is not None else feats
        return _final_table(profiles, feats, metadata_test)
    feats = check_profiles(profiles, required=KEY_COLUMNS, source="submission")
    feats = list(feature_cols) if feature_cols is not None else feats
    compound = profiles[~is_control(profiles)]
    if compound.empty:
        raise ValueError("submission: the profiles hold no compound well (only DMSO or an empty table)")
    keys = compound[list(KEY_COLUMNS)].astype(str).reset_index(drop=True)
    values = compound[feats].to_numpy(dtype=np.float64)
    block = pd.DataFrame(values, columns=feature_names(len(feats), JANUARY))
    return pd.concat([keys, block], axis=1).sort_values([PLATE, WELL]).reset_index(drop=True)


def write_submission(
    profiles: pd.DataFrame,
    path: str | os.PathLike,
    overwrite: bool = False,
    feature_cols: Sequence[str] | None = None,
    *,
    submission_format: str | None = None,
    metadata_test: str | os.PathLike | pd.DataFrame | None = None,
) -> str:
    """Write the submission CSV of a profile table atomically (see :func:`submission_table`).

    Without ``metadata_test`` and ``submission_format`` the January layout is written, with a warning that the
    challenge scored the final one.

    Args:
        profiles: a profile table.
        path: destination ``.csv``.
        overwrite: replace an existing file.
        feature_cols: features to export (default: all).
        submission_format: ``final``, ``january`` or None (final when ``metadata_test`` is given, else January).
        metadata_test: the organisers' metadata_test.csv (path or table).

    Returns:
        The path written.
    """
    fmt = resolve_format(submission_format, metadata_test)
    table = submission_table(profiles, feature_cols, submission_format=fmt, metadata_test=metadata_test)
    with atomic_path(path, overwrite=overwrite, suffix="") as tmp:
        table.to_csv(tmp, index=False)  # pandas writes the shortest repr: each float64 reads back equal
    if fmt == JANUARY and submission_format is None:
        logger.warning(
            "%s: January layout (Metadata_broad_sample, Metadata_Plate, Metadata_Well, feature_0 ...), not the one "
            "the challenge scored; write the final layout (ID, feature_1 ...) with the organisers' metadata_test.csv: "
            "python -m dinov2_cell.profiles.write_submission PROFILES --metadata-test metadata_test.csv --out DIR",
            os.fspath(path),
        )
    return os.fspath(path)


def read_submission(submission: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A submission CSV with its ``ID`` and ``Metadata_*`` columns read as text (an ID ``007`` stays ``007``).

    Args:
        submission: path or table.

    Returns:
        A new table.
    """
    if isinstance(submission, pd.DataFrame) or not os.fspath(submission).lower().endswith((".csv", ".csv.gz")):
        df = read_profiles(submission)  # its own errors: no such file, unknown extension
    else:
        path = os.fspath(submission)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such submission file: {path}")
        header = pd.read_csv(path, nrows=0).columns
        text = {c: str for c in header if str(c) == ID or str(c).startswith(META_PREFIX)}
        df = read_profiles(pd.read_csv(path, dtype=text))
    if ID in df.columns:
        df[ID] = df[ID].astype(object).where(df[ID].notna(), "").astype(str).str.strip()
    return df


def detect_format(df: pd.DataFrame) -> str | None:
    """The layout of a table from its columns: ``final`` (``ID``, ``feature_1`` ...), ``january``
    (``Metadata_broad_sample``, ``Metadata_Plate``, ``Metadata_Well``, ``feature_0`` ...) or None.

    Args:
        df: a table.

    Returns:
        The layout name, or None for anything else (e.g. a profile table).
    """
    cols = [str(c) for c in df.columns]
    if len(cols) > 1 and cols[0] == ID and cols[1] == f"{FEATURE_PREFIX}1":
        return FINAL
    if cols[:3] == list(KEY_COLUMNS) and len(cols) > 3 and cols[3] == f"{FEATURE_PREFIX}0":
        return JANUARY
    return None


def submission_wells(submission: pd.DataFrame, metadata_test, source: str = "submission") -> pd.DataFrame:
    """A final-layout submission with each ID's plate and well: ``Metadata_ID``, ``Metadata_Plate``,
    ``Metadata_Well``, then its features.

    Args:
        submission: a final-layout table (:func:`read_submission`).
        metadata_test: the organisers' metadata_test.csv (path or table).
        source: name of the submission in error messages.

    Returns:
        A new table, rows in the submission's order.

    Raises:
        ValueError: an ID that metadata_test.csv does not have (named).
    """
    ids = read_metadata_test(metadata_test)
    sub_ids = submission[ID].astype(str).str.strip()
    joined = pd.DataFrame({ID: sub_ids.to_numpy()}).merge(ids, on=ID, how="left", validate="many_to_one")
    lost = joined[PLATE].isna()
    if lost.any():
        raise ValueError(
            f"{source}: {int(lost.sum())} ID(s) not in metadata_test.csv, e.g. {_few(joined.loc[lost, ID])}"
        )
    feats = [c for c in submission.columns if c != ID]
    keys = pd.DataFrame(
        {f"{META_PREFIX}ID": joined[ID].to_numpy(), PLATE: joined[PLATE].to_numpy(), WELL: joined[WELL].to_numpy()}
    )
    return pd.concat([keys, submission[feats].reset_index(drop=True)], axis=1)


def _expected(plates: Sequence[str] | None) -> pd.DataFrame:
    from dinov2_cell.data.metadata import compound_plates, well_metadata

    plates = compound_plates() if plates is None else list(plates)
    unknown = sorted(set(plates) - set(compound_plates()))
    if unknown:
        raise ValueError(f"--plates: {unknown} are not compound plates of 2020_11_04_CPJUMP1")
    meta = well_metadata(plates)
    return meta.loc[meta[BROAD].astype(str).str.strip() != "", [PLATE, WELL, BROAD]].reset_index(drop=True)


def _few(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def check_submission(
    submission: pd.DataFrame | str | os.PathLike,
    plates: Sequence[str] | None = None,
    *,
    submission_format: str | None = None,
    metadata_test: str | os.PathLike | pd.DataFrame | None = None,
) -> list[str]:
    """Every problem of a submission, one message per problem class (empty list: the file is valid).

    The layout is ``submission_format`` or, when None, read from the header (:func:`detect_format`).

    Final layout classes: column names/order (``ID``, ``feature_1`` ... ``feature_N``); non-finite or non-numeric
    features; empty or duplicated IDs; with ``metadata_test``: IDs it does not have, IDs of plates outside
    ``plates``, and its IDs missing (plates entirely absent named apart from partial plates). Without
    ``metadata_test`` only the layout is checked.

    January layout classes: column names/order; non-finite or non-numeric features; duplicated wells (a plate and
    well given twice, whatever the features); DMSO wells, and rows of plates outside the expected compound plates;
    ``Metadata_broad_sample`` differing from the packaged plate map; compound wells missing (absent plates named
    apart from partial ones).

    Args:
        submission: the CSV path or its table.
        plates: the plates the file must cover (default: all 24 compound plates for the January layout, every
            plate of metadata_test.csv for the final one).
        submission_format: ``final``, ``january`` or None (from the header).
        metadata_test: the organisers' metadata_test.csv (path or table), for the final layout's IDs.

    Returns:
        Problem messages.
    """
    source = os.fspath(submission) if not isinstance(submission, pd.DataFrame) else "submission"
    df = read_submission(submission)
    fmt = submission_format if submission_format is not None else detect_format(df)
    if fmt is None and len(df.columns):
        # Misnamed features still tell the layout by the first column; the layout check then names the bad column.
        fmt = {ID: FINAL, BROAD: JANUARY}.get(str(df.columns[0]))
    if fmt is None:
        cols = [str(c) for c in df.columns][:4]
        return [
            f"{source}: unknown layout (first columns {cols}); the final layout starts {ID}, feature_1 and the "
            f"January one {', '.join(KEY_COLUMNS)}, feature_0"
        ]
    if fmt not in FORMATS:
        raise ValueError(f"unknown submission format {fmt!r}; choose from {list(FORMATS)}")
    if fmt == FINAL:
        return _check_final(df, source, plates, metadata_test)
    return _check_january(df, source, plates)


def _check_layout(df: pd.DataFrame, source: str, keys: Sequence[str], fmt: str) -> tuple[list[str], list[str]]:
    """(feature columns, [the one layout problem]) of a table whose first columns must be ``keys``."""
    cols = [str(c) for c in df.columns]
    n = len(keys)
    if cols[:n] != list(keys):
        return [], [f"{source}: the first column(s) must be {list(keys)}, got {cols[:n]}"]
    feats = cols[n:]
    if not feats:
        return [], [f"{source}: no feature column after {list(keys)}"]
    expected = feature_names(len(feats), fmt)
    bad_names = [(i, c, e) for i, (c, e) in enumerate(zip(feats, expected)) if c != e]
    if bad_names:
        i, c, e = bad_names[0]
        return [], [
            f"{source}: column {i + n + 1} is {c!r}, expected {e} (features are {expected[0]} ... {expected[-1]}, in "
            f"order); {len(bad_names)} misnamed"
        ]
    return feats, []


def _finite(df: pd.DataFrame, feats: list[str], source: str, where) -> list[str]:
    values = df[feats].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if not bad.any():
        return []
    r, c = np.argwhere(bad)[0]
    return [
        f"{source}: {int(bad.sum())} missing, infinite or non-numeric feature value(s), first {feats[c]} at {where(r)}"
    ]


def _missing_text(source: str, missing: pd.DataFrame, expected: pd.DataFrame, what: str, hint: str) -> str:
    """One line for the expected rows a file lacks: plates entirely absent apart from partial ones."""
    by_plate = missing.groupby(PLATE).size()
    per_plate = expected.groupby(PLATE).size()
    absent = [p for p, n in by_plate.items() if n == per_plate[p]]
    partial = {p: int(n) for p, n in by_plate.items() if p not in absent}
    text = f"{source}: {len(missing)} {what} missing"
    if absent:
        text += f"; plates absent: {_few(absent, 8)}"
    if partial:
        text += (
            f"; partial plates (missing/expected): {_few([f'{p} ({n}/{per_plate[p]})' for p, n in partial.items()], 8)}"
        )
    return text + f" ({hint})"


def _check_final(df: pd.DataFrame, source: str, plates: Sequence[str] | None, metadata_test) -> list[str]:
    feats, problems = _check_layout(df, source, [ID], FINAL)
    if problems:
        return problems
    ids = df[ID].astype(str)
    problems += _finite(df, feats, source, lambda r: f"ID {ids.iloc[r]}")
    empty = ids.eq("")
    if empty.any():
        problems.append(
            f"{source}: {int(empty.sum())} row(s) with an empty ID, first at line {int(empty.argmax()) + 2}"
        )
    dup = ids.duplicated(keep="first") & ~empty
    if dup.any():
        problems.append(
            f"{source}: {int(dup.sum())} duplicated ID(s) (each ID exactly once): {_few(ids[dup].unique())}"
        )
    if metadata_test is None:
        return problems
    meta = read_metadata_test(metadata_test)
    meta_name = "metadata_test.csv" if isinstance(metadata_test, pd.DataFrame) else os.fspath(metadata_test)
    if plates is not None:
        unknown = sorted(set(plates) - set(meta[PLATE]))
        if unknown:
            raise ValueError(f"--plates: {unknown} are not plates of {meta_name}")
        expected = meta[meta[PLATE].isin(set(plates))]
    else:
        expected = meta
    got = set(ids[~empty])
    foreign = sorted(got - set(meta[ID]))
    if foreign:
        problems.append(f"{source}: {len(foreign)} ID(s) not in {meta_name}: {_few(foreign)}")
    outside = meta[meta[ID].isin(got) & ~meta[ID].isin(set(expected[ID]))]
    if len(outside):
        problems.append(
            f"{source}: {len(outside)} row(s) of plate(s) outside the expected plates: "
            f"{_few(sorted(set(outside[PLATE])))}"
        )
    missing = expected[~expected[ID].isin(got)]
    if len(missing):
        problems.append(
            _missing_text(
                source, missing, expected, f"ID(s) of {meta_name}", "use --plates to check a partial submission"
            )
        )
    return problems


def _check_january(df: pd.DataFrame, source: str, plates: Sequence[str] | None) -> list[str]:
    feats, problems = _check_layout(df, source, KEY_COLUMNS, JANUARY)
    if problems:
        return problems
    problems += _finite(df, feats, source, lambda r: f"{df[PLATE].iloc[r]} {df[WELL].iloc[r]}")
    # A well is identified by (plate, well): two rows of one well are a duplicate whatever their features.
    dup = df.duplicated([PLATE, WELL], keep="first")
    if dup.any():
        where = _few(f"{p} {w}" for p, w in df.loc[dup, [PLATE, WELL]].itertuples(index=False))
        problems.append(f"{source}: {int(dup.sum())} duplicated well(s) (each well exactly once): {where}")
    expected = _expected(plates)
    got = df.drop_duplicates([PLATE, WELL])
    joined = got[[PLATE, WELL, BROAD]].merge(
        expected, on=[PLATE, WELL], how="outer", suffixes=("", "_platemap"), indicator=True
    )
    extra = joined[joined["_merge"] == "left_only"]
    if len(extra):
        known = set(expected[PLATE])
        dmso = extra[extra[PLATE].isin(known)]
        other = extra[~extra[PLATE].isin(known)]
        if len(dmso):
            where = _few(f"{p} {w}" for p, w in dmso[[PLATE, WELL]].itertuples(index=False))
            problems.append(f"{source}: {len(dmso)} DMSO well(s), not compound-containing (leave them out): {where}")
        if len(other):
            problems.append(
                f"{source}: {len(other)} row(s) of plate(s) outside the expected compound plates: "
                f"{_few(sorted(set(other[PLATE])))}"
            )
    both = joined[joined["_merge"] == "both"]
    wrong = both[both[BROAD].astype(str) != both[f"{BROAD}_platemap"].astype(str)]
    if len(wrong):
        r = wrong.iloc[0]
        problems.append(
            f"{source}: {len(wrong)} well(s) whose {BROAD} differs from the packaged plate map, e.g. {r[PLATE]} "
            f"{r[WELL]}: {r[BROAD]!r} != {r[f'{BROAD}_platemap']!r}"
        )
    missing = joined[joined["_merge"] == "right_only"]
    if len(missing):
        problems.append(
            _missing_text(source, missing, expected, "compound well(s)", "use --plates to check a partial submission")
        )
    return problems
