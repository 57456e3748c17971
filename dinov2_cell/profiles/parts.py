"""Per-well metadata of a profiling run: which table describes each well, and joining it to a plate's features.

The run's output folder (parts, run config, merge) is :class:`dinov2_cell.profiles.run_folder.RunFolder`; its names
are re-exported here for code that imported them from this module.
"""

from __future__ import annotations

import logging
from typing import Sequence

import pandas as pd

from dinov2_cell.columns import META_PREFIX, PLATE, PROFILE_METADATA, WELL
from dinov2_cell.profiles.io import read_profiles
from dinov2_cell.profiles.run_folder import OUTPUTS_KEY, PARTS_DIR, RUN_CONFIG, config_differences  # noqa: F401

logger = logging.getLogger("dinov2_cell.profiles")


def well_metadata_for(plates: Sequence[str], metadata: pd.DataFrame | str | None = None) -> pd.DataFrame:
    """Per-well metadata for ``plates``: the packaged CPJUMP1 files, or a user table.

    Args:
        plates: barcodes.
        metadata: ``None`` = :func:`dinov2_cell.data.metadata.well_metadata` (compound plates of CPJUMP1), or a
            DataFrame / CSV / Parquet path with at least Metadata_Plate and Metadata_Well.

    Returns:
        DataFrame with one row per (plate, well), Metadata_ columns only.

    Raises:
        ValueError: a plate the packaged metadata does not cover (the message says to pass a metadata table), or a
            user table without the key columns.
    """
    plates = sorted(set(plates))
    if metadata is None:
        from dinov2_cell.data.metadata import well_metadata

        try:
            meta = well_metadata(plates)
        except ValueError as e:
            raise ValueError(f"no packaged well metadata for these plates ({e}); pass a metadata table (--metadata)")
    else:
        meta = read_profiles(metadata)
        for col in (PLATE, WELL):
            if col not in meta.columns:
                raise ValueError(f"metadata table: missing column {col}")
        meta = meta[meta[PLATE].astype(str).isin(plates)]
    meta = meta[[c for c in meta.columns if str(c).startswith(META_PREFIX)]].copy()
    meta[PLATE] = meta[PLATE].astype(str)
    meta[WELL] = meta[WELL].astype(str)
    if meta.duplicated([PLATE, WELL]).any():
        raise ValueError("metadata table: a (Metadata_Plate, Metadata_Well) appears twice")
    return meta


def attach_metadata(wells: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """Join per-well metadata to a well table (features keep their order, metadata columns go first).

    Args:
        wells: table with Metadata_Plate, Metadata_Well and features.
        metadata: output of :func:`well_metadata_for`.

    Returns:
        The joined table; the :data:`PROFILE_METADATA` columns are always present ("" when the metadata lacks one).

    Raises:
        ValueError: a well of ``wells`` has no metadata row (plate and well named).
    """
    meta_cols = [c for c in metadata.columns if c not in (PLATE, WELL)]
    keys = wells[[PLATE, WELL]].merge(metadata, on=[PLATE, WELL], how="left", indicator=True)
    lost = keys["_merge"] != "both"
    if lost.any():
        first = keys.loc[lost].iloc[0]
        raise ValueError(
            f"no metadata for {int(lost.sum())} well(s), e.g. plate {first[PLATE]} well {first[WELL]}; "
            "is the plate map right for these plates?"
        )
    keys = keys.drop(columns="_merge")
    for c in PROFILE_METADATA:
        if c not in keys.columns:
            keys[c] = ""
    ordered = list(PROFILE_METADATA) + [c for c in meta_cols if c not in PROFILE_METADATA]
    # Metadata the well table brings itself (e.g. Metadata_n_sites) follows the joined metadata.
    own_meta = [c for c in wells.columns if str(c).startswith(META_PREFIX) and c not in ordered]
    features = wells.drop(columns=[c for c in wells.columns if str(c).startswith(META_PREFIX)])
    parts = [
        keys[ordered].reset_index(drop=True),
        wells[own_meta].reset_index(drop=True),
        features.reset_index(drop=True),
    ]
    return pd.concat(parts, axis=1)
