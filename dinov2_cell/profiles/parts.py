"""Per-plate work split into resumable parts, the run-config guard, and well metadata.

A profile run (embeddings or baseline features) writes one Parquet *part* per plate under ``<out>/parts/``, each
atomically, and skips plates whose part already exists; so an interrupted run resumes, and a SLURM array can give
each task a subset of plates (``--plates`` / ``--shard``) and one final call merges the parts.

A run's options are stored once in ``<out>/run_config.json``; a later call on the same folder with different options
is refused (its parts would be mixed with incompatible ones) unless ``overwrite``.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import pandas as pd

from dinov2_cell.columns import META_PREFIX, PLATE, PROFILE_METADATA, WELL
from dinov2_cell.profiles.io import read_profiles, write_json, write_table

logger = logging.getLogger("dinov2_cell.profiles")

RUN_CONFIG = "run_config.json"
PARTS_DIR = "parts"
# Key of run_config.json describing merged outputs (e.g. which profile column each submission feature is); it is
# written after the merge and is not part of the options compared by the guard.
OUTPUTS_KEY = "outputs"


def part_path(out_dir: str, plate: str) -> str:
    """Path of a plate's part: ``<out_dir>/parts/<plate>.parquet``.

    Args:
        out_dir: run folder.
        plate: barcode.

    Returns:
        The path.
    """
    if not plate or os.sep in plate or plate.startswith("."):
        raise ValueError(f"bad plate name {plate!r} for a file name")
    return os.path.join(out_dir, PARTS_DIR, f"{plate}.parquet")


def parts_present(out_dir: str) -> list[str]:
    """Plates that have a part in ``out_dir``, sorted.

    Args:
        out_dir: run folder.

    Returns:
        Barcodes.
    """
    folder = os.path.join(out_dir, PARTS_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(f[: -len(".parquet")] for f in os.listdir(folder) if f.endswith(".parquet") and not f.startswith("."))


def config_differences(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs.

    Args:
        a: one config.
        b: the other.
        prefix: key prefix (recursion).

    Returns:
        The differing keys (a key absent on one side counts).
    """
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += config_differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def check_run_config(out_dir: str, config: dict, overwrite: bool = False) -> None:
    """Record ``config`` in ``<out_dir>/run_config.json``, or check it equals the one already there.

    Args:
        out_dir: run folder (created).
        config: JSON-serialisable options that determine the parts' content.
        overwrite: replace a different earlier config (its parts are then recomputed by the caller).

    Raises:
        FileExistsError: the folder holds a run with other options (the differing keys are named).
    """
    import json

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RUN_CONFIG)
    normalized = json.loads(json.dumps(config))
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        differing = config_differences({k: v for k, v in saved.items() if k != OUTPUTS_KEY}, normalized)
        if not differing:
            return
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} holds a run with different options ({', '.join(differing[:8])} differ; see {path}); "
                "use another output folder or pass overwrite=True / --overwrite to recompute every plate"
            )
    write_json(normalized, path, overwrite=True)


def record_output(out_dir: str, name: str, info: dict) -> None:
    """Describe a merged output under ``"outputs"`` in ``<out_dir>/run_config.json`` (rewritten atomically).

    Args:
        out_dir: run folder (its run config must exist).
        name: the output's file name.
        info: JSON-able description.
    """
    import json

    path = os.path.join(out_dir, RUN_CONFIG)
    saved = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    saved.setdefault(OUTPUTS_KEY, {})[name] = info
    write_json(saved, path, overwrite=True)


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


def merge_parts(out_dir: str, plates: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate the parts of ``plates`` (default: every part present), sorted by plate and well.

    Args:
        out_dir: run folder.
        plates: barcodes; each must have a part.

    Returns:
        The profile table.

    Raises:
        FileNotFoundError: parts missing (the plates are named), or no part at all.
        ValueError: parts with different feature columns.
    """
    plates = parts_present(out_dir) if plates is None else sorted(set(plates))
    if not plates:
        raise FileNotFoundError(f"{out_dir}: no per-plate parts in {os.path.join(out_dir, PARTS_DIR)}")
    missing = [p for p in plates if not os.path.isfile(part_path(out_dir, p))]
    if missing:
        raise FileNotFoundError(
            f"{out_dir}: no part for plate(s) {missing}; run those plates first (or merge only the plates present)"
        )
    frames = [pd.read_parquet(part_path(out_dir, p)) for p in plates]
    first = list(frames[0].columns)
    for p, f in zip(plates, frames):
        if list(f.columns) != first:
            raise ValueError(f"part of plate {p} has other columns than part of plate {plates[0]}")
    return pd.concat(frames, ignore_index=True).sort_values([PLATE, WELL]).reset_index(drop=True)


def write_part(df: pd.DataFrame, out_dir: str, plate: str, overwrite: bool = False) -> str:
    """Write a plate's part atomically.

    Args:
        df: the plate's profile table.
        out_dir: run folder.
        plate: barcode.
        overwrite: replace an existing part.

    Returns:
        The path.
    """
    return write_table(df, part_path(out_dir, plate), overwrite=overwrite)
