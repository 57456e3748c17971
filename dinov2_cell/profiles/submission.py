"""The Cell Line Transferability challenge submission CSV: writer and check.

The organisers' format: columns ``Metadata_broad_sample`` (compound, e.g. ``BRD-A86665761-001-01-1``),
``Metadata_Plate`` (e.g. ``BR00117012``), ``Metadata_Well`` (e.g. ``A01``), then ``feature_0`` ... ``feature_{n-1}``;
one row for each compound-containing well of the 24 compound plates of ``2020_11_04_CPJUMP1`` (DMSO wells hold no
compound and are left out: 320 of the 384 wells of a plate); no missing or infinite value.

:func:`write_submission` writes it from a profile table (``feature_i`` = the i-th feature column of the profile, in
the profile's order; :func:`feature_map` gives that correspondence, which the profiling driver records in the run
config). :func:`check_submission` checks an existing file against the packaged CPJUMP1 plate map and returns every
problem, one line per problem class (command line: ``python -m dinov2_cell.profiles.validate_submission``).
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.atomic import atomic_path
from dinov2_cell.columns import BROAD, PLATE, WELL
from dinov2_cell.profiles.io import check_profiles, is_control, read_profiles

KEY_COLUMNS = (BROAD, PLATE, WELL)
FEATURE_PREFIX = "feature_"
_FEATURE_RE = re.compile(r"^feature_(\d+)$")


def feature_map(profiles: pd.DataFrame, feature_cols: Sequence[str] | None = None) -> dict[str, str]:
    """``{"feature_0": <first profile feature column>, ...}`` in the profile's feature order.

    Args:
        profiles: a profile table.
        feature_cols: features to export (default: every feature column).

    Returns:
        Submission column -> profile column.
    """
    feats = list(feature_cols) if feature_cols is not None else check_profiles(profiles, source="submission")
    return {f"{FEATURE_PREFIX}{i}": c for i, c in enumerate(feats)}


def submission_table(profiles: pd.DataFrame, feature_cols: Sequence[str] | None = None) -> pd.DataFrame:
    """The submission rows of a profile table: compound wells only, sorted by plate and well.

    Args:
        profiles: a profile table with Metadata_broad_sample, Metadata_Plate, Metadata_Well and features.
        feature_cols: features to export (default: every feature column, in table order).

    Returns:
        DataFrame with the organisers' columns (features as float64).

    Raises:
        ValueError: a missing column, a NaN/inf feature, a duplicated well (named), or no compound well at all.
    """
    feats = check_profiles(profiles, required=KEY_COLUMNS, source="submission")
    feats = list(feature_cols) if feature_cols is not None else feats
    compound = profiles[~is_control(profiles)]
    if compound.empty:
        raise ValueError("submission: the profiles hold no compound well (only DMSO or an empty table)")
    keys = compound[list(KEY_COLUMNS)].astype(str).reset_index(drop=True)
    values = compound[feats].to_numpy(dtype=np.float64)
    block = pd.DataFrame(values, columns=list(feature_map(compound, feats)))
    return pd.concat([keys, block], axis=1).sort_values([PLATE, WELL]).reset_index(drop=True)


def write_submission(
    profiles: pd.DataFrame,
    path: str | os.PathLike,
    overwrite: bool = False,
    feature_cols: Sequence[str] | None = None,
) -> str:
    """Write the submission CSV of a profile table atomically (see :func:`submission_table`).

    Args:
        profiles: a profile table.
        path: destination ``.csv``.
        overwrite: replace an existing file.
        feature_cols: features to export (default: all).

    Returns:
        The path written.
    """
    table = submission_table(profiles, feature_cols)
    with atomic_path(path, overwrite=overwrite, suffix="") as tmp:
        table.to_csv(tmp, index=False)  # pandas writes the shortest repr: each float64 reads back equal
    return os.fspath(path)


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


def check_submission(submission: pd.DataFrame | str | os.PathLike, plates: Sequence[str] | None = None) -> list[str]:
    """Every problem of a submission, one message per problem class (empty list: the file is valid).

    Classes: column names/order; non-finite or non-numeric features; duplicated wells; DMSO or unknown wells;
    ``Metadata_broad_sample`` differing from the packaged plate map; compound wells missing.

    Args:
        submission: the CSV path or its table.
        plates: the compound plates the file must cover (default: all 24).

    Returns:
        Problem messages.
    """
    source = os.fspath(submission) if not isinstance(submission, pd.DataFrame) else "submission"
    df = read_profiles(submission)
    problems = []
    cols = [str(c) for c in df.columns]
    if cols[:3] != list(KEY_COLUMNS):
        return [f"{source}: the first columns must be {list(KEY_COLUMNS)}, got {cols[:3]}"]
    feats = cols[3:]
    bad_names = [(i, c) for i, c in enumerate(feats) if c != f"{FEATURE_PREFIX}{i}"]
    if not feats:
        return [f"{source}: no feature column after {list(KEY_COLUMNS)}"]
    if bad_names:
        i, c = bad_names[0]
        return [
            f"{source}: column {i + 4} is {c!r}, expected {FEATURE_PREFIX}{i} (features are feature_0 ... "
            f"feature_{len(feats) - 1}, in order); {len(bad_names)} misnamed"
        ]
    values = df[feats].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        problems.append(
            f"{source}: {int(bad.sum())} missing, infinite or non-numeric feature value(s), first {feats[c]} at "
            f"{df[PLATE].iloc[r]} {df[WELL].iloc[r]}"
        )
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
        by_plate = missing.groupby(PLATE).size()
        absent = [p for p, n in by_plate.items() if n == (expected[PLATE] == p).sum()]
        partial = {p: int(n) for p, n in by_plate.items() if p not in absent}
        text = f"{source}: {len(missing)} compound well(s) missing"
        if absent:
            text += f"; plates absent: {_few(absent, 8)}"
        if partial:
            text += f"; wells missing on {_few([f'{p} ({n})' for p, n in partial.items()], 8)}"
        problems.append(text + " (use --plates to check a partial submission)")
    return problems
