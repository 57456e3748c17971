"""Inputs of the evaluation: profile tables, folders of per-plate profiles and challenge submissions.

Any table with ``Metadata_Plate`` and ``Metadata_Well`` is accepted; the profile Metadata columns it lacks (e.g. the
cell line of CPJUMP1's published profiles, or everything but the compound in a January-layout challenge submission)
are joined from the packaged CPJUMP1 metadata. A final-layout submission (``ID``, ``feature_1`` ...) has neither: its
IDs are mapped to plates and wells through the organisers' metadata_test.csv (``metadata_test=``), then the rest is
joined the same way.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import pandas as pd

from dinov2_cell.columns import META_PREFIX, PLATE, PROFILE_METADATA, WELL

logger = logging.getLogger("dinov2_cell.eval")


def is_submission(df: pd.DataFrame) -> bool:
    """Whether a table is a challenge submission, in the final layout (ID, feature_1, ...) or the January one
    (Metadata_broad_sample, _Plate, _Well, feature_0, ...).

    Args:
        df: a table.

    Returns:
        True for either of the organisers' layouts.
    """
    from dinov2_cell.profiles.submission import detect_format

    return detect_format(df) is not None


PROFILE_EXTENSIONS = (".parquet", ".csv", ".csv.gz", ".tsv", ".tsv.gz")


def expand_profile_paths(paths: Sequence[str]) -> list[str]:
    """Profile files named by ``paths``: files as given, folders replaced by their profile files (sorted).

    Args:
        paths: files and/or folders (e.g. CPJUMP1's ``<plate>_normalized_feature_select_negcon_batch.csv.gz``).

    Returns:
        The files.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no profile file.
    """
    out = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, f)
                for f in os.listdir(path)
                if f.lower().endswith(PROFILE_EXTENSIONS) and not f.startswith(".")
            )
            if not found:
                raise FileNotFoundError(f"{path}: no profile file ({', '.join(PROFILE_EXTENSIONS)}) in this folder")
            out += found
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise FileNotFoundError(f"no such profiles file or folder: {path}")
    return out


def add_missing_metadata(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Join the packaged CPJUMP1 well metadata for the profile Metadata columns the table lacks (e.g. the cell line
    of CPJUMP1's published profiles).

    Args:
        df: a profile table with Metadata_Plate and Metadata_Well.
        source: name of the table in error messages.

    Returns:
        The table (unchanged when nothing is missing), the joined columns placed after its own Metadata columns.

    Raises:
        ValueError: a plate or well the packaged metadata does not cover (named).
    """
    missing = [c for c in PROFILE_METADATA if c not in df.columns]
    if not missing or PLATE not in df.columns or WELL not in df.columns:
        return df
    from dinov2_cell.data.metadata import well_metadata

    plates = sorted(df[PLATE].astype(str).unique())
    try:
        meta = well_metadata(plates)[[PLATE, WELL] + missing]
    except (ValueError, KeyError) as e:
        raise ValueError(f"{source}: lacks {missing} and the packaged CPJUMP1 metadata cannot supply them ({e})")
    keys = df[[PLATE, WELL]].astype(str)
    joined = keys.merge(meta, on=[PLATE, WELL], how="left", validate="many_to_one", indicator=True)
    lost = (joined["_merge"] != "both").to_numpy()
    if lost.any():
        r = joined[lost].iloc[0]
        raise ValueError(f"{source}: well {r[PLATE]} {r[WELL]} is not in the packaged CPJUMP1 plate map")
    logger.info("%s: %s joined from the packaged CPJUMP1 metadata", source, ", ".join(missing))
    own_meta = [c for c in df.columns if str(c).startswith(META_PREFIX)]
    others = [c for c in df.columns if c not in own_meta]
    added = joined[missing].set_axis(df.index)
    return pd.concat([df[own_meta], added, df[others]], axis=1)


def load_tables(paths: Sequence[str] | str, metadata_test: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read one or several profile tables (files or folders, e.g. CPJUMP1's per-plate published profiles).

    Each file is read by :func:`load_table` (Metadata columns the profiles need but a file lacks are joined from the
    packaged CPJUMP1 metadata). Several files are stacked on their common columns
    (features present in only some files are dropped, with a log line).

    Args:
        paths: a path or a list of paths (files and/or folders).
        metadata_test: the organisers' metadata_test.csv, to read final-layout submissions (see :func:`load_table`).

    Returns:
        The table.
    """
    files = expand_profile_paths([paths] if isinstance(paths, str) else list(paths))
    frames = [load_table(f, metadata_test=metadata_test) for f in files]
    if len(frames) == 1:
        return frames[0]
    common = [c for c in frames[0].columns if all(c in f.columns for f in frames[1:])]
    n_all = len(set().union(*(f.columns for f in frames)))
    if len(common) < n_all:
        logger.warning(
            "%d files: %d columns are not in every file; kept the %d common ones",
            len(files),
            n_all - len(common),
            len(common),
        )
    return pd.concat([f[common] for f in frames], ignore_index=True)


def load_table(path: str, metadata_test: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read one profile table or challenge submission, with the missing profile Metadata columns joined.

    Args:
        path: profiles (.parquet, .csv, .csv.gz, .tsv) or a submission CSV (its cell lines, compound names and targets
            come from the packaged CPJUMP1 metadata).
        metadata_test: the organisers' metadata_test.csv; needed for a final-layout submission (``ID``,
            ``feature_1`` ...), whose IDs it maps to plates and wells.

    Returns:
        The table (a final-layout submission gains ``Metadata_ID``, ``Metadata_Plate`` and ``Metadata_Well``).

    Raises:
        ValueError: a final-layout submission without ``metadata_test``, or with IDs the file does not have.
    """
    from dinov2_cell.profiles.submission import FINAL, detect_format, read_submission, submission_wells

    df = read_submission(path)
    fmt = detect_format(df)
    if fmt == FINAL:
        if metadata_test is None:
            raise ValueError(
                f"{path}: a final-layout challenge submission (ID, feature_1, ...): pass --metadata-test FILE (the "
                "organisers' metadata_test.csv) to map its IDs to plates and wells"
            )
        df = submission_wells(df, metadata_test, source=path)
    if fmt is not None:
        logger.info("%s: challenge submission (%s layout)", path, fmt)
    return add_missing_metadata(df, path)
