"""The profile table format, its validation and atomic writes (the submission CSV: :mod:`.submission`).

A *profile table* has one row per well: ``Metadata_*`` columns (strings) and numeric feature columns. Every numeric
column whose name does not start with ``Metadata_`` is a feature, which is the convention pycytominer and copairs
use, so CellProfiler profiles from the Cell Painting Gallery are read the same way as ours.

Columns our profiles always carry (:data:`PROFILE_METADATA`): Metadata_Plate, Metadata_Well, Metadata_broad_sample,
Metadata_pert_iname, Metadata_target, Metadata_cell_line. DMSO wells have ``Metadata_pert_iname == "DMSO"`` and an
empty ``Metadata_broad_sample`` (CPJUMP1 plate map convention). :func:`is_control` finds the negative controls: by a
user's pandas query when one is given, else by the JUMP convention ``Metadata_control_type == "negcon"`` when that
column is present, else by the DMSO spellings above (and ``Metadata_broad_sample == "DMSO"``, as some published
profiles spell it); :func:`control_rule` says which rule applies and :func:`mark_controls` writes the result into
``Metadata_control_type`` so that pycytominer's ``samples="Metadata_control_type == 'negcon'"`` selects the same wells.

Writes go through :mod:`dinov2_cell.atomic` (a temporary file in the destination folder renamed into place), so a
crash never leaves a half-written file under the final name; an existing file is never replaced unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import numpy as np
import pandas as pd

from dinov2_cell.atomic import atomic_path
from dinov2_cell.cli import HelpFormatter  # noqa: F401  (re-exported: CLIs of this package import it from here)
from dinov2_cell.columns import (  # noqa: F401  (re-exported: the profile table's vocabulary)
    BROAD,
    CELL_LINE,
    CELL_LINES,
    CONTROL_NAME,
    META_PREFIX,
    PERT,
    PLATE,
    PROFILE_METADATA,
    SITE,
    TARGET,
    WELL,
)

CONTROL_TYPE = "Metadata_control_type"  # JUMP / CPJUMP1 plate map column
NEGCON = "negcon"  # its value for negative controls (DMSO on the compound plates)


def metadata_columns(df: pd.DataFrame) -> list[str]:
    """Columns whose name starts with ``Metadata_``, in table order.

    Args:
        df: a profile table.

    Returns:
        The metadata column names.
    """
    return [c for c in df.columns if str(c).startswith(META_PREFIX)]


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Feature columns: every numeric (non-boolean) column that is not a ``Metadata_`` column, in table order.

    Args:
        df: a profile table.

    Returns:
        The feature column names.
    """
    out = []
    for c, dtype in zip(df.columns, df.dtypes):  # not df[c]: a column lookup each costs ~0.1 ms on wide tables
        if str(c).startswith(META_PREFIX):
            continue
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            out.append(c)
    return out


def check_profiles(
    df: pd.DataFrame,
    required: Iterable[str] = (PLATE, WELL),
    source: str = "profiles",
    unique_wells: bool = True,
) -> list[str]:
    """Validate a profile table and return its feature columns.

    Args:
        df: the table.
        required: metadata columns that must be present.
        source: what to call the table in error messages (e.g. its file name).
        unique_wells: require one row per (Metadata_Plate, Metadata_Well).

    Returns:
        The feature column names.

    Raises:
        ValueError: a required column is missing, there is no feature column, a feature holds NaN/inf (the message
            names the column and the first bad plate/well), or a (plate, well) appears twice.
    """
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing metadata column(s) {missing}; present: {metadata_columns(df)}")
    feats = feature_columns(df)
    if not feats:
        non_numeric = [c for c in df.columns if not str(c).startswith(META_PREFIX)]
        raise ValueError(
            f"{source}: no numeric feature column (non-Metadata_ numeric columns); non-numeric others: {non_numeric[:5]}"
        )
    values = df[feats].to_numpy(dtype=np.float64, copy=False)
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        col = feats[cols[0]]
        where = _row_label(df, rows[0])
        n_cols = len(np.unique(cols))
        raise ValueError(
            f"{source}: feature column {col!r} has NaN/inf (first at {where}); {bad.sum()} bad values in {n_cols} "
            "column(s)"
        )
    if unique_wells and PLATE in df.columns and WELL in df.columns:
        dup = df.duplicated([PLATE, WELL], keep=False)
        if dup.any():
            first = df.loc[dup, [PLATE, WELL]].iloc[0]
            raise ValueError(
                f"{source}: {int(dup.sum())} rows share a (Metadata_Plate, Metadata_Well), e.g. "
                f"{first[PLATE]} {first[WELL]}; profiles must have one row per well"
            )
    return feats


def _row_label(df: pd.DataFrame, i: int) -> str:
    parts = [f"{c}={df[c].iloc[i]}" for c in (PLATE, WELL) if c in df.columns]
    return ", ".join(parts) if parts else f"row {i}"


def query_mask(df: pd.DataFrame, query: str) -> np.ndarray:
    """Rows selected by a pandas query string (``DataFrame.query`` syntax, as pycytominer's ``samples``).

    Args:
        df: a table.
        query: e.g. ``"Metadata_pert_iname == 'DMSO'"`` or ``"Metadata_control_type == 'negcon'"``.

    Returns:
        Boolean numpy array, one entry per row.

    Raises:
        ValueError: the query does not parse, names a missing column, or does not give one boolean per row.
    """
    try:
        result = df.reset_index(drop=True).eval(query, engine="python")
    except Exception as e:  # noqa: BLE001  (pandas raises many types for a bad expression; all are bad input)
        cols = metadata_columns(df)
        raise ValueError(f"control query {query!r}: {type(e).__name__}: {e} (metadata columns: {cols})") from None
    if not isinstance(result, pd.Series) or len(result) != len(df) or not pd.api.types.is_bool_dtype(result.dtype):
        raise ValueError(f"control query {query!r} must give one True/False per row (a comparison, e.g. col == 'x')")
    return result.fillna(False).to_numpy(dtype=bool)


def control_rule(df: pd.DataFrame, query: str | None = None) -> str:
    """Which rule :func:`is_control` applies to this table, in words (for logs, errors and run records).

    Args:
        df: a profile table.
        query: a control query (pandas syntax) that overrides the column conventions.

    Returns:
        e.g. ``"Metadata_control_type == 'negcon'"``.
    """
    if query is not None:
        return f"query {query!r}"
    if CONTROL_TYPE in df.columns:
        return f"{CONTROL_TYPE} == {NEGCON!r}"
    return f"{PERT} == {CONTROL_NAME!r} or an empty {BROAD}"


def is_control(df: pd.DataFrame, query: str | None = None) -> np.ndarray:
    """Boolean mask of negative control (DMSO) wells.

    The first rule that applies: ``query`` (a pandas query string) when given; ``Metadata_control_type == "negcon"``
    (case-insensitive) when that column is present (the JUMP convention); else ``Metadata_pert_iname`` is "DMSO"
    (case-insensitive) or ``Metadata_broad_sample`` is empty, missing or "DMSO" (the CPJUMP1 plate map convention).

    Args:
        df: a profile table.
        query: optional pandas query string selecting the controls.

    Returns:
        Boolean numpy array, one entry per row.

    Raises:
        ValueError: a bad query, or no column to tell controls by.
    """
    if query is not None:
        return query_mask(df, query)
    if CONTROL_TYPE in df.columns:
        kind = df[CONTROL_TYPE].astype("string").str.strip().str.lower()
        return kind.eq(NEGCON).fillna(False).to_numpy(dtype=bool)
    if PERT not in df.columns and BROAD not in df.columns:
        raise ValueError(
            f"cannot tell the negative control (DMSO) wells: need column {CONTROL_TYPE}, {PERT} or {BROAD}, or a "
            "control query (--control-query)"
        )
    mask = np.zeros(len(df), dtype=bool)
    if PERT in df.columns:
        mask |= df[PERT].astype("string").str.upper().eq(CONTROL_NAME).fillna(False).to_numpy(dtype=bool)
    if BROAD in df.columns:
        b = df[BROAD].astype("string")
        mask |= (b.isna() | b.str.strip().eq("") | b.str.upper().eq(CONTROL_NAME)).fillna(True).to_numpy(dtype=bool)
    return mask


def mark_controls(df: pd.DataFrame, query: str | None = None) -> pd.DataFrame:
    """A copy with ``Metadata_control_type`` set to ``"negcon"`` exactly on the rows :func:`is_control` selects.

    Other rows keep their own value (e.g. CPJUMP1's ``poscon_cp``), except a ``"negcon"`` the query did not select,
    which becomes ``"trt"``; without the column they get ``"trt"``. Everything that calls :func:`is_control`
    afterwards (normalisation, kNN, mAP), and pycytominer with ``samples="Metadata_control_type == 'negcon'"``, then
    uses the same wells.

    Args:
        df: a profile table.
        query: optional pandas query string selecting the controls (default: the column conventions).

    Returns:
        A new table (the column appended after the other Metadata columns when it was absent).

    Raises:
        ValueError: a bad query, or no column to tell controls by.
    """
    mask = is_control(df, query)
    out = df.copy()
    if CONTROL_TYPE in out.columns:
        old = out[CONTROL_TYPE].astype(object).where(out[CONTROL_TYPE].notna(), "").astype(str)
        other = old.where(old.str.strip().str.lower() != NEGCON, "trt")
        out[CONTROL_TYPE] = np.where(mask, NEGCON, other)
    else:
        meta = metadata_columns(out)
        at = out.columns.get_loc(meta[-1]) + 1 if meta else 0
        out.insert(at, CONTROL_TYPE, np.where(mask, NEGCON, "trt"))
    return out


def read_profiles(profiles: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Load a profile table from a DataFrame (copied), Parquet, CSV or TSV (optionally gzipped).

    Metadata columns are read as strings with missing values turned into "" (an empty broad_sample means DMSO);
    feature columns keep their numeric type, so NaN in them is still caught by :func:`check_profiles`.

    Args:
        profiles: a DataFrame or a path.

    Returns:
        A new DataFrame.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: unknown file extension.
    """
    if isinstance(profiles, pd.DataFrame):
        df = profiles.copy()
    else:
        path = os.fspath(profiles)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such profiles file: {path}")
        low = path.lower()
        if low.endswith(".parquet") or low.endswith(".pq"):
            df = pd.read_parquet(path)
        elif low.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")):
            sep = "\t" if ".tsv" in low or low.endswith(".txt") else ","
            header = pd.read_csv(path, sep=sep, nrows=0).columns
            dtypes = {c: str for c in header if str(c).startswith(META_PREFIX)}
            df = pd.read_csv(path, sep=sep, dtype=dtypes)
        else:
            raise ValueError(f"{path}: unknown profile format (use .parquet, .csv, .csv.gz or .tsv)")
    for c in metadata_columns(df):
        if not pd.api.types.is_numeric_dtype(df[c].dtype):
            df[c] = df[c].astype(object).where(df[c].notna(), "").astype(str)
    return df


def write_table(df: pd.DataFrame, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Write a table atomically as Parquet (``.parquet``) or CSV (``.csv``, ``.csv.gz``).

    Args:
        df: the table.
        path: destination.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: unknown extension.
    """
    path = os.fspath(path)
    low = path.lower()
    if not (low.endswith(".parquet") or low.endswith(".csv") or low.endswith(".csv.gz")):
        raise ValueError(f"{path}: unknown table format (use .parquet, .csv or .csv.gz)")
    with atomic_path(path, overwrite=overwrite) as tmp:
        if low.endswith(".parquet"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, compression="gzip" if low.endswith(".gz") else None)
    return path


def write_json(obj, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Write JSON atomically (numpy scalars and arrays converted).

    Args:
        obj: JSON-serialisable object (numpy numbers allowed).
        path: destination.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = os.fspath(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
    return path


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
