"""The profiling driver: one per-plate loop for every kind of well profile.

A *featuriser* turns the images of one plate into one row per well; the driver does everything around it, the same
way for the SSL teachers, the CellProfiler features and the classical baseline. Every output path is owned by
:class:`~dinov2_cell.profiles.run_folder.RunFolder` (the folder's layout, run config, parts, merge and submission
files); this module decides what to compute:

1. **Checks before writing** (:func:`plan_run`). ``<out>/run_config.json`` records the featuriser's name and
   :meth:`Featuriser.describe`, the data source and the metadata source; a later call on the same folder with other
   settings is refused (its parts would be mixed with incompatible ones) unless ``overwrite``. Then the plates (the
   given barcodes, else every plate under the data root; ``shard="I/N"`` keeps plates I, I+N, ..., for SLURM array
   tasks), the data (root, channels and the plates still to featurise are opened once) and the per-well metadata
   are resolved. Bad input fails here, before anything is written: no folder, run config or part is left behind, so
   the corrected call is not refused as "a run with different options".
2. **Skip finished.** A plate whose part ``<out>/parts/<plate>.parquet`` exists is skipped, so a killed run
   resumes where it stopped.
3. **Per plate:** build the plate's dataset (:meth:`PlateSource.open`, or the featuriser's own ``open_plate`` when it
   needs several channel groups), :meth:`Featuriser.featurise_plate`, attach the per-well metadata (packaged CPJUMP1
   files or a user table), write the part atomically (plus ``parts/<plate>.stats.json`` when the featuriser puts a
   ``"stats"`` dict in the table's ``attrs``). The run config is recorded just before the first part, so a first
   plate that fails leaves the folder as it was.
4. **Merge.** Parts -> :meth:`Featuriser.finalize` (cross-plate steps) -> ``<out>/profiles.parquet`` and, when asked,
   ``<out>/submission.csv``; each *variant* (a named post-merge transform, e.g. cross-plate alignment) adds
   ``profiles_<name>.parquet`` / ``submission_<name>.csv``. An existing merged file is kept when it holds exactly the
   same plates, otherwise replaced only with ``overwrite``.

This module does not import torch: a featuriser that needs it imports it itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import pandas as pd

from dinov2_cell.columns import PLATE, WELL
from dinov2_cell.profiles.parts import attach_metadata, well_metadata_for
from dinov2_cell.profiles.run_folder import PARTS_DIR, PROFILES_NAME, SUBMISSION_NAME, RunFolder  # noqa: F401
from dinov2_cell.profiles.sites import (  # noqa: F401  (re-exported: featurisers import them from here)
    DatasetFactory,
    PlateSource,
    default_dataset_factory,
    site_index,
)

logger = logging.getLogger("dinov2_cell.profiles")


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


@dataclass
class RunPlan:
    """What a call of :func:`run_profiles` will do, resolved and checked before anything is written.

    Attributes:
        config: the run config (see :func:`run_config`).
        plates: every plate of the run, sorted (what the merge step takes).
        todo: the plates featurised by this call (this shard's plates without a part; all of them with overwrite).
        metadata: per-well metadata of ``todo`` (``None`` when ``todo`` is empty).
        record_config: the run config still has to be written (none recorded yet, or ``overwrite`` replaces one).
        overwrite: recompute existing parts.
    """

    config: dict
    plates: list[str]
    todo: list[str]
    metadata: pd.DataFrame | None
    record_config: bool
    overwrite: bool = False


def plan_run(
    featuriser: Featuriser,
    source: PlateSource,
    folder: RunFolder | str,
    plates: Sequence[str] | None = None,
    *,
    shard: str | tuple[int, int] | None = None,
    metadata=None,
    overwrite: bool = False,
) -> RunPlan:
    """Check a run's inputs against its folder and the data; reads only, writes nothing.

    Checked, in this order: the shard spelling; the folder's recorded options; the plates (the data root is indexed
    when no plate is given; otherwise the plates still to featurise are opened once, which checks the root, the
    channels and that each plate has images); the per-well metadata of those plates. A call whose plates all have
    a part opens no dataset.

    Args:
        featuriser: the featuriser.
        source: the data source.
        folder: the run folder.
        plates: barcodes (default: every plate under the data root).
        shard: ``"I/N"``: only plates I, I+N, ...
        metadata: per-well metadata table/path (default: the packaged CPJUMP1 files).
        overwrite: recompute existing parts; a different recorded config is then replaced.

    Returns:
        The plan.

    Raises:
        FileExistsError: the folder holds a run with other settings (``overwrite`` not given).
        ValueError: bad shard, no plate, or no metadata for a plate (named); the dataset's own errors for a missing
            root, unknown channels or a plate without images.
    """
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    shard_plates([], shard)  # a malformed shard fails before the data root is indexed
    config = run_config(featuriser, source, metadata)
    record = folder.check_config(config, overwrite=overwrite)
    if plates is None:
        plates = source.list_plates()
        if not plates:
            raise ValueError(f"{source.data_root}: no plate found")
        listed = True
    else:
        plates = sorted({str(p) for p in plates})
        if not plates:
            raise ValueError("no plate given")
        listed = False
    selected = shard_plates(plates, shard)
    todo = [p for p in selected if overwrite or not folder.has_part(p)]
    if len(todo) < len(selected):
        logger.info("%d of %d plates already have a part; skipped", len(selected) - len(todo), len(selected))
    meta = None
    if todo:
        if not listed:
            source.open(todo)  # the dataset's own checks (root, channels, images of each plate), nothing kept
        meta = well_metadata_for(todo, metadata)
    return RunPlan(config, plates, todo, meta, record, overwrite)


def featurise_plates(
    featuriser: Featuriser,
    source: PlateSource,
    folder: RunFolder | str,
    plan: RunPlan,
    progress: bool = True,
) -> list[str]:
    """Write the part of every plate of ``plan.todo`` (the run config first, when the plan says so).

    Args:
        featuriser: the featuriser.
        source: the data source.
        folder: the run folder.
        plan: output of :func:`plan_run` for the same featuriser, source and folder.
        progress: progress bar over plates.

    Returns:
        The plates featurised in this call.
    """
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    for plate in _progress(plan.todo, progress):
        table = featuriser.featurise_plate(plate, open_plate(featuriser, source, plate))
        _check_plate_table(table, plate, featuriser)
        stats = table.attrs.get("stats")
        profile = attach_metadata(table, plan.metadata[plan.metadata[PLATE] == plate])
        if plan.record_config:
            folder.record_config(plan.config)
            plan.record_config = False
        folder.write_part(profile, plate, overwrite=plan.overwrite, stats=stats)
        logger.info("plate %s: %d wells, %s features", plate, len(profile), featuriser.name)
    return list(plan.todo)


def _progress(items, progress: bool):
    if not progress or len(items) < 2:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="plates", unit="plate")


def run_profiles(
    featuriser: Featuriser | None,
    source: PlateSource | None,
    out_dir: str | RunFolder,
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
    submission_options: Mapping | None = None,
) -> str:
    """The whole per-plate loop (see module docstring): checks, parts, merge.

    Args:
        featuriser: the featuriser (``None`` only with ``merge_only``: identity finalize, no config check).
        source: the data source (``None`` only with ``merge_only``).
        out_dir: run folder (created when the first file is written).
        plates: barcodes (default: every plate under the root; with ``merge_only`` every part present).
        shard: ``"I/N"``: only plates I, I+N, ...; implies no merge.
        metadata: per-well metadata table/path (default: the packaged CPJUMP1 files).
        merge: run the merge step after the parts.
        merge_only: skip featurising; merge the parts present (or ``plates``). With a featuriser, its settings must
            match the folder's run config.
        submission: write the submission CSV(s) in the merge step.
        variants: named post-merge transforms (see :meth:`RunFolder.merge`).
        overwrite: recompute existing parts, replace a run config with other settings and merged outputs.
        progress: progress bars.
        submission_options: further keywords of the submission writer (see :meth:`RunFolder.merge`).

    Returns:
        Path of the merged profiles (the last variant's when there are variants), or of the parts folder when no
        merge was run.

    Raises:
        FileExistsError: the folder holds a run with other settings (``overwrite`` not given).
        ValueError: bad plates, shard, metadata or featuriser output (named).
    """
    folder = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir)
    merge_args = dict(variants=variants, submission=submission, overwrite=overwrite)
    merge_args["submission_options"] = submission_options
    if merge_only:
        if featuriser is not None and source is not None:
            folder.check_same_config(run_config(featuriser, source, metadata))
        finalize = featuriser.finalize if featuriser is not None else None
        return folder.merge(plates, finalize, **merge_args)
    if featuriser is None or source is None:
        raise ValueError("a featuriser and a data source are required unless merge_only")
    plan = plan_run(featuriser, source, folder, plates, shard=shard, metadata=metadata, overwrite=overwrite)
    featurise_plates(featuriser, source, folder, plan, progress=progress)
    if plan.record_config:  # nothing featurised (parts from an earlier call): record the options all the same
        folder.record_config(plan.config)
    if shard is not None or not merge:
        return folder.parts_dir
    return folder.merge(plan.plates, featuriser.finalize, **merge_args)
