"""The profiling driver: one per-plate loop for every kind of well profile.

A *featuriser* turns the images of one plate into one row per well; the driver does everything around it, the same
way for the SSL teachers, the CellProfiler features and the classical baseline:

1. **Run-config guard.** ``<out>/run_config.json`` records the featuriser's name and :meth:`Featuriser.describe`,
   the data source and the metadata source; a later call on the same folder with other settings is refused (its
   parts would be mixed with incompatible ones) unless ``overwrite``.
2. **Plates.** The given barcodes, else every plate under the data root; ``shard="I/N"`` keeps plates I, I+N, ...
   (SLURM array tasks).
3. **Skip finished.** A plate whose part ``<out>/parts/<plate>.parquet`` exists is skipped, so a killed run
   resumes where it stopped.
4. **Per plate:** build the plate's dataset (:meth:`PlateSource.open`, or the featuriser's own ``open_plate`` when it
   needs several channel groups), :meth:`Featuriser.featurise_plate`, attach the per-well metadata (packaged CPJUMP1
   files or a user table), write the part atomically (plus ``parts/<plate>.stats.json`` when the featuriser puts a
   ``"stats"`` dict in the table's ``attrs``).
5. **Merge.** Parts -> :meth:`Featuriser.finalize` (cross-plate steps) -> ``<out>/profiles.parquet`` and, when asked,
   ``<out>/submission.csv``; each *variant* (a named post-merge transform, e.g. cross-plate alignment) adds
   ``profiles_<name>.parquet`` / ``submission_<name>.csv``. An existing merged file is kept when it holds exactly the
   same plates, otherwise replaced only with ``overwrite``.

This module does not import torch: a featuriser that needs it imports it itself.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import pandas as pd

from dinov2_cell.columns import PLATE, WELL
from dinov2_cell.profiles.io import feature_columns, write_json, write_table
from dinov2_cell.profiles.sites import (  # noqa: F401  (re-exported: featurisers import them from here)
    DatasetFactory,
    PlateSource,
    default_dataset_factory,
    site_index,
)
from dinov2_cell.profiles.parts import (
    PARTS_DIR,
    attach_metadata,
    check_run_config,
    merge_parts,
    part_path,
    parts_present,
    record_output,
    well_metadata_for,
    write_part,
)

logger = logging.getLogger("dinov2_cell.profiles")

PROFILES_NAME = "profiles.parquet"
SUBMISSION_NAME = "submission.csv"


# ----------------------------------------------------------------------------------------------------- featurisers


@runtime_checkable
class Featuriser(Protocol):
    """What the driver needs from a featuriser.

    Attributes:
        name: short identifier (recorded in the run config, used in log lines).
    """

    name: str

    def describe(self) -> dict:
        """JSON-able settings that determine the features (a change refuses reuse of the output folder)."""

    def featurise_plate(self, plate: str, dataset) -> pd.DataFrame:
        """One row per well of ``plate``: Metadata_Plate, Metadata_Well (+ own Metadata_ columns) and features."""

    def finalize(self, merged: pd.DataFrame) -> pd.DataFrame:
        """Cross-plate steps on the merged table (identity for per-plate featurisers)."""


class BaseFeaturiser:
    """Convenience base class: identity :meth:`finalize`; subclasses set ``name`` and implement the rest."""

    name = "features"

    def describe(self) -> dict:  # pragma: no cover - always overridden
        """JSON-able settings of the featuriser."""
        raise NotImplementedError

    def featurise_plate(self, plate: str, dataset) -> pd.DataFrame:  # pragma: no cover - always overridden
        """Well table of one plate.

        Args:
            plate: barcode.
            dataset: the plate's dataset.
        """
        raise NotImplementedError

    def finalize(self, merged: pd.DataFrame) -> pd.DataFrame:
        """Identity.

        Args:
            merged: every plate's wells.

        Returns:
            ``merged``.
        """
        return merged


def open_plate(featuriser, source: PlateSource, plate: str):
    """The dataset handed to ``featuriser.featurise_plate``: its own ``open_plate(source, plate)`` if it has one.

    Args:
        featuriser: the featuriser.
        source: the data source.
        plate: barcode.

    Returns:
        Whatever the featuriser expects (by default one dataset of the plate).
    """
    own = getattr(featuriser, "open_plate", None)
    return own(source, plate) if callable(own) else source.open([plate])


# ---------------------------------------------------------------------------------------------------------- driver


def shard_plates(plates: Sequence[str], shard: str | tuple[int, int] | None) -> list[str]:
    """Plates of shard ``I/N``: the sorted plates I, I+N, I+2N, ...

    Args:
        plates: barcodes.
        shard: ``"I/N"``, ``(I, N)`` or ``None`` (all).

    Returns:
        The shard's plates, sorted.

    Raises:
        ValueError: malformed shard or I outside [0, N).
    """
    plates = sorted(set(plates))
    if shard is None:
        return plates
    try:
        i, n = (int(x) for x in shard.split("/")) if isinstance(shard, str) else (int(shard[0]), int(shard[1]))
    except (ValueError, TypeError):
        raise ValueError(f"--shard {shard!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {shard!r}: need I/N with 0 <= I < N")
    return plates[i::n]


def _metadata_label(metadata) -> str:
    if metadata is None:
        return "packaged CPJUMP1"
    return os.path.abspath(os.fspath(metadata)) if isinstance(metadata, (str, os.PathLike)) else "table"


def run_config(featuriser: Featuriser, source: PlateSource, metadata=None) -> dict:
    """The run config recorded in ``<out>/run_config.json``.

    Args:
        featuriser: the featuriser.
        source: the data source.
        metadata: metadata table/path or ``None`` (packaged).

    Returns:
        JSON-able dict.
    """
    return {
        "featuriser": featuriser.name,
        "settings": featuriser.describe(),
        "source": source.describe(),
        "metadata": _metadata_label(metadata),
    }


def _check_plate_table(table: pd.DataFrame, plate: str, featuriser: Featuriser) -> None:
    where = f"{featuriser.name} features of plate {plate}"
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{where}: featurise_plate returned {type(table).__name__}, not a DataFrame")
    missing = [c for c in (PLATE, WELL) if c not in table.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}")
    if table.empty:
        raise ValueError(f"{where}: no well (no image found for this plate?)")
    others = sorted(set(table[PLATE].astype(str)) - {plate})
    if others:
        raise ValueError(f"{where}: rows of other plate(s) {others[:3]}")
    if table.duplicated([PLATE, WELL]).any():
        raise ValueError(f"{where}: a well appears twice (one row per well expected)")


def featurise_plates(
    featuriser: Featuriser,
    source: PlateSource,
    out_dir: str,
    plates: Sequence[str],
    metadata=None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Write the part of every plate of ``plates`` that has none yet (all of them with ``overwrite``).

    Args:
        featuriser: the featuriser.
        source: the data source.
        out_dir: run folder.
        plates: barcodes.
        metadata: per-well metadata table/path (default: packaged CPJUMP1 files).
        overwrite: recompute existing parts.
        progress: progress bar over plates.

    Returns:
        The plates featurised in this call.
    """
    todo = [p for p in plates if overwrite or not os.path.isfile(part_path(out_dir, p))]
    if len(todo) < len(plates):
        logger.info("%d of %d plates already have a part; skipped", len(plates) - len(todo), len(plates))
    if not todo:
        return []
    meta = well_metadata_for(todo, metadata)
    bar = _progress(todo, progress)
    for plate in bar:
        table = featuriser.featurise_plate(plate, open_plate(featuriser, source, plate))
        _check_plate_table(table, plate, featuriser)
        stats = table.attrs.get("stats")
        profile = attach_metadata(table, meta[meta[PLATE] == plate])
        if stats:
            write_json(stats, os.path.join(out_dir, PARTS_DIR, f"{plate}.stats.json"), overwrite=True)
        write_part(profile, out_dir, plate, overwrite=overwrite)
        logger.info("plate %s: %d wells, %s features", plate, len(profile), featuriser.name)
    return todo


def _progress(items, progress: bool):
    if not progress or len(items) < 2:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="plates", unit="plate")


def merged_paths(out_dir: str, variant: str | None = None) -> tuple[str, str]:
    """(profiles Parquet, submission CSV) of a run, or of one of its variants.

    Args:
        out_dir: run folder.
        variant: variant name (``None`` = the plain merge).

    Returns:
        The two paths.
    """
    if variant is None:
        return os.path.join(out_dir, PROFILES_NAME), os.path.join(out_dir, SUBMISSION_NAME)
    return os.path.join(out_dir, f"profiles_{variant}.parquet"), os.path.join(out_dir, f"submission_{variant}.csv")


def merge_run(
    out_dir: str,
    plates: Sequence[str] | None = None,
    finalize: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    variants: Mapping[str, Callable[[pd.DataFrame], pd.DataFrame]] | None = None,
    submission: bool = False,
    overwrite: bool = False,
) -> str:
    """Merge step: parts -> ``finalize`` -> ``profiles.parquet`` (+ variants, + submission CSVs).

    Args:
        out_dir: run folder.
        plates: barcodes to merge (default: every part present; each must have a part).
        finalize: cross-plate step on the merged table (default: identity).
        variants: ``{name: transform}`` applied to the finalized table, each written as ``profiles_<name>.parquet``.
        submission: also write the challenge submission CSV of each output.
        overwrite: replace merged outputs that hold other plates.

    Returns:
        Path of the last profiles file written or kept (the last variant's when there are variants).

    Raises:
        FileNotFoundError: a plate has no part.
        FileExistsError: a merged file holds other plates and ``overwrite`` is False.
    """
    plates = parts_present(out_dir) if plates is None else sorted(set(plates))
    table = merge_parts(out_dir, plates)
    if finalize is not None:
        table = finalize(table)
    outputs = [(merged_paths(out_dir), table)]
    for name, transform in (variants or {}).items():
        outputs.append((merged_paths(out_dir, name), transform(table)))
    for (prof_path, sub_path), df in outputs:
        if os.path.exists(prof_path) and not overwrite:
            existing = sorted(pd.read_parquet(prof_path, columns=[PLATE])[PLATE].astype(str).unique())
            if existing != plates:
                raise FileExistsError(
                    f"{prof_path} exists with plates {existing[:5]}... != {plates[:5]}...; pass --overwrite to "
                    "replace it"
                )
            logger.info("%s already holds these %d plates; kept", prof_path, len(plates))
        else:
            write_table(df, prof_path, overwrite=overwrite)
            logger.info("wrote %s (%d wells, %d plates)", prof_path, len(df), len(plates))
        if submission and (overwrite or not os.path.exists(sub_path)):
            from dinov2_cell.profiles.submission import write_submission

            write_submission(df, sub_path, overwrite=overwrite)
            # feature_i of the submission is the i-th feature column of the profiles it was written from
            info = {"profiles": os.path.basename(prof_path), "features": feature_columns(df)}
            record_output(out_dir, os.path.basename(sub_path), info)
            logger.info("wrote %s", sub_path)
    return outputs[-1][0][0]


def run_profiles(
    featuriser: Featuriser | None,
    source: PlateSource | None,
    out_dir: str,
    plates: Sequence[str] | None = None,
    *,
    shard: str | tuple[int, int] | None = None,
    metadata=None,
    merge: bool = True,
    merge_only: bool = False,
    submission: bool = False,
    variants: Mapping[str, Callable[[pd.DataFrame], pd.DataFrame]] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """The whole per-plate loop (see module docstring): guard, plates, parts, merge.

    Args:
        featuriser: the featuriser (``None`` only with ``merge_only``: identity finalize, no config check).
        source: the data source (``None`` only with ``merge_only``).
        out_dir: run folder (created).
        plates: barcodes (default: every plate under the root; with ``merge_only`` every part present).
        shard: ``"I/N"``: only plates I, I+N, ...; implies no merge.
        metadata: per-well metadata table/path (default: the packaged CPJUMP1 files).
        merge: run the merge step after the parts.
        merge_only: skip featurising; merge the parts present (or ``plates``). With a featuriser, its settings must
            match the folder's run config.
        submission: write the submission CSV(s) in the merge step.
        variants: named post-merge transforms (see :func:`merge_run`).
        overwrite: recompute existing parts, replace a run config with other settings and merged outputs.
        progress: progress bars.

    Returns:
        Path of the merged profiles (the last variant's when there are variants), or of the parts folder when no
        merge was run.

    Raises:
        FileExistsError: the folder holds a run with other settings (``overwrite`` not given).
        ValueError: bad plates, shard or featuriser output (named).
    """
    if merge_only:
        if featuriser is not None and source is not None:
            _check_same_config(out_dir, run_config(featuriser, source, metadata))
        return merge_run(
            out_dir,
            plates,
            featuriser.finalize if featuriser is not None else None,
            variants,
            submission,
            overwrite,
        )
    if featuriser is None or source is None:
        raise ValueError("a featuriser and a data source are required unless merge_only")
    os.makedirs(out_dir, exist_ok=True)
    check_run_config(out_dir, run_config(featuriser, source, metadata), overwrite=overwrite)
    plates = sorted(set(plates)) if plates is not None else source.list_plates()
    if not plates:
        raise ValueError(f"{source.data_root}: no plate found")
    todo = shard_plates(plates, shard)
    featurise_plates(featuriser, source, out_dir, todo, metadata=metadata, overwrite=overwrite, progress=progress)
    if shard is not None or not merge:
        return os.path.join(out_dir, PARTS_DIR)
    return merge_run(out_dir, plates, featuriser.finalize, variants, submission, overwrite)


def _check_same_config(out_dir: str, config: dict) -> None:
    """Refuse a merge whose featuriser settings differ from the ones that wrote the parts."""
    import json

    from dinov2_cell.profiles.parts import OUTPUTS_KEY, RUN_CONFIG, config_differences

    path = os.path.join(out_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    saved.pop(OUTPUTS_KEY, None)  # descriptions of merged outputs, not settings
    differing = config_differences(saved, json.loads(json.dumps(config)))
    if differing:
        raise ValueError(
            f"{out_dir}: its parts were written with other settings ({', '.join(differing[:8])} differ; see {path})"
        )
