"""The output folder of a profiling run: its layout, run config, per-plate parts, merge and submission files.

Layout under the folder::

    run_config.json             options that define the parts (+ "outputs": what each merged output holds)
    parts/<plate>.parquet       one well table per plate, written atomically (a run resumes from them)
    parts/<plate>.stats.json    per-plate statistics of the featuriser, when it reports any
    profiles.parquet            the merged, finalized table
    submission.csv              the challenge submission of profiles.parquet (when asked)
    profiles_<variant>.parquet  / submission_<variant>.csv: a named post-merge transform of the table

:class:`RunFolder` is the one place that knows these names. It reads without writing (``saved_config``,
:meth:`RunFolder.check_config`, ``parts_present``) so a caller can check everything before the folder is created,
and writes only through :mod:`dinov2_cell.atomic` (via :mod:`dinov2_cell.profiles.io`). This module does not import
torch.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Mapping, Sequence

import pandas as pd

from dinov2_cell.columns import PLATE, WELL
from dinov2_cell.profiles.io import feature_columns, write_json, write_table

logger = logging.getLogger("dinov2_cell.profiles")

RUN_CONFIG = "run_config.json"
PARTS_DIR = "parts"
PROFILES_NAME = "profiles.parquet"
SUBMISSION_NAME = "submission.csv"
# Key of run_config.json describing merged outputs (e.g. which profile column each submission feature is); it is
# written after the merge and is not part of the options compared by the guard.
OUTPUTS_KEY = "outputs"


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


def _as_json(config: dict) -> dict:
    # Round trip so that tuples, numpy scalars etc. compare as they will read back from the file.
    return json.loads(json.dumps(config))


class RunFolder:
    """A profiling run's output folder (see module docstring). Nothing is created until something is written.

    Args:
        path: the folder (``--out``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    # ------------------------------------------------------------------------------------------------- layout

    @property
    def config_path(self) -> str:
        """``<folder>/run_config.json``."""
        return os.path.join(self.path, RUN_CONFIG)

    @property
    def parts_dir(self) -> str:
        """``<folder>/parts``."""
        return os.path.join(self.path, PARTS_DIR)

    def part_path(self, plate: str) -> str:
        """Path of a plate's part: ``<folder>/parts/<plate>.parquet``.

        Args:
            plate: barcode.

        Returns:
            The path.

        Raises:
            ValueError: a barcode that cannot be a file name.
        """
        if not plate or os.sep in plate or plate.startswith("."):
            raise ValueError(f"bad plate name {plate!r} for a file name")
        return os.path.join(self.parts_dir, f"{plate}.parquet")

    def stats_path(self, plate: str) -> str:
        """Path of a plate's statistics: ``<folder>/parts/<plate>.stats.json``.

        Args:
            plate: barcode.

        Returns:
            The path.
        """
        return self.part_path(plate)[: -len(".parquet")] + ".stats.json"

    def merged_paths(self, variant: str | None = None) -> tuple[str, str]:
        """(profiles Parquet, submission CSV) of the run, or of one of its variants.

        Args:
            variant: variant name (``None`` = the plain merge).

        Returns:
            The two paths.
        """
        if variant is None:
            return os.path.join(self.path, PROFILES_NAME), os.path.join(self.path, SUBMISSION_NAME)
        return (
            os.path.join(self.path, f"profiles_{variant}.parquet"),
            os.path.join(self.path, f"submission_{variant}.csv"),
        )

    def has_part(self, plate: str) -> bool:
        """Whether ``plate`` has a part.

        Args:
            plate: barcode.

        Returns:
            True when ``parts/<plate>.parquet`` exists.
        """
        return os.path.isfile(self.part_path(plate))

    def parts_present(self) -> list[str]:
        """Plates that have a part, sorted.

        Returns:
            Barcodes.
        """
        if not os.path.isdir(self.parts_dir):
            return []
        return sorted(
            f[: -len(".parquet")]
            for f in os.listdir(self.parts_dir)
            if f.endswith(".parquet") and not f.startswith(".")
        )

    # --------------------------------------------------------------------------------------------- run config

    def _read_config_file(self) -> dict | None:
        if not os.path.isfile(self.config_path):
            return None
        with open(self.config_path, encoding="utf-8") as f:
            return json.load(f)

    def saved_config(self) -> dict | None:
        """The recorded options (without the ``outputs`` descriptions), or ``None`` when none is recorded.

        Returns:
            The options.
        """
        saved = self._read_config_file()
        if saved is None:
            return None
        return {k: v for k, v in saved.items() if k != OUTPUTS_KEY}

    def check_config(self, config: dict, overwrite: bool = False) -> bool:
        """Check ``config`` against the recorded one; writes nothing.

        Args:
            config: JSON-serialisable options that determine the parts' content.
            overwrite: a different recorded config may be replaced (its parts are then recomputed by the caller).

        Returns:
            True when ``config`` must be recorded (none yet, or a different one that ``overwrite`` replaces).

        Raises:
            FileExistsError: the folder holds a run with other options and ``overwrite`` is False (the differing
                keys are named).
        """
        saved = self.saved_config()
        if saved is None:
            return True
        differing = config_differences(saved, _as_json(config))
        if not differing:
            return False
        if not overwrite:
            raise FileExistsError(
                f"{self.path} holds a run with different options ({', '.join(differing[:8])} differ; see "
                f"{self.config_path}); use another output folder or pass overwrite=True / --overwrite to recompute "
                "every plate"
            )
        return True

    def record_config(self, config: dict) -> str:
        """Write ``config`` as the folder's run config (atomically; the folder is created).

        Args:
            config: JSON-serialisable options.

        Returns:
            The path written.
        """
        return write_json(_as_json(config), self.config_path, overwrite=True)

    def check_same_config(self, config: dict) -> None:
        """Refuse a merge whose featuriser settings differ from the ones that wrote the parts (no config: accepted).

        Args:
            config: the merging featuriser's run config.

        Raises:
            ValueError: the recorded options differ (the differing keys are named).
        """
        saved = self.saved_config()
        if saved is None:
            return
        differing = config_differences(saved, _as_json(config))
        if differing:
            raise ValueError(
                f"{self.path}: its parts were written with other settings ({', '.join(differing[:8])} differ; see "
                f"{self.config_path})"
            )

    def record_output(self, name: str, info: dict) -> None:
        """Describe a merged output under ``"outputs"`` in the run config (rewritten atomically).

        Args:
            name: the output's file name.
            info: JSON-able description.
        """
        saved = self._read_config_file() or {}
        saved.setdefault(OUTPUTS_KEY, {})[name] = info
        write_json(saved, self.config_path, overwrite=True)

    # -------------------------------------------------------------------------------------------------- parts

    def write_part(self, df: pd.DataFrame, plate: str, overwrite: bool = False, stats: dict | None = None) -> str:
        """Write a plate's part atomically, after its statistics when there are any.

        Args:
            df: the plate's profile table.
            plate: barcode.
            overwrite: replace an existing part.
            stats: JSON-able per-plate statistics (``parts/<plate>.stats.json``, always replaced).

        Returns:
            The part's path.
        """
        path = self.part_path(plate)
        if stats:
            write_json(stats, self.stats_path(plate), overwrite=True)
        return write_table(df, path, overwrite=overwrite)

    def merge_parts(self, plates: Sequence[str] | None = None) -> pd.DataFrame:
        """Concatenate the parts of ``plates`` (default: every part present), sorted by plate and well.

        Args:
            plates: barcodes; each must have a part.

        Returns:
            The profile table.

        Raises:
            FileNotFoundError: parts missing (the plates are named), or no part at all.
            ValueError: parts with different feature columns.
        """
        plates = self.parts_present() if plates is None else sorted(set(plates))
        if not plates:
            raise FileNotFoundError(f"{self.path}: no per-plate parts in {self.parts_dir}")
        missing = [p for p in plates if not self.has_part(p)]
        if missing:
            raise FileNotFoundError(
                f"{self.path}: no part for plate(s) {missing}; run those plates first (or merge only the plates "
                "present)"
            )
        frames = [pd.read_parquet(self.part_path(p)) for p in plates]
        first = list(frames[0].columns)
        for p, f in zip(plates, frames):
            if list(f.columns) != first:
                raise ValueError(f"part of plate {p} has other columns than part of plate {plates[0]}")
        return pd.concat(frames, ignore_index=True).sort_values([PLATE, WELL]).reset_index(drop=True)

    # -------------------------------------------------------------------------------------------------- merge

    def merge(
        self,
        plates: Sequence[str] | None = None,
        finalize: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        variants: Mapping[str, Callable[[pd.DataFrame], pd.DataFrame]] | None = None,
        submission: bool = False,
        overwrite: bool = False,
        submission_options: Mapping | None = None,
    ) -> str:
        """Merge step: parts -> ``finalize`` -> ``profiles.parquet`` (+ variants, + submission CSVs).

        An existing merged file is kept when it holds exactly the same plates, otherwise replaced only with
        ``overwrite``; an existing submission is kept unless ``overwrite``.

        Args:
            plates: barcodes to merge (default: every part present; each must have a part).
            finalize: cross-plate step on the merged table (default: identity).
            variants: ``{name: transform}`` applied to the finalized table, each written as
                ``profiles_<name>.parquet``.
            submission: also write the challenge submission CSV of each output.
            overwrite: replace merged outputs that hold other plates.
            submission_options: further keywords of
                :func:`~dinov2_cell.profiles.submission.write_submission` (e.g. another format).

        Returns:
            Path of the last profiles file written or kept (the last variant's when there are variants).

        Raises:
            FileNotFoundError: a plate has no part.
            FileExistsError: a merged file holds other plates and ``overwrite`` is False.
        """
        plates = self.parts_present() if plates is None else sorted(set(plates))
        table = self.merge_parts(plates)
        if finalize is not None:
            table = finalize(table)
        outputs = [(self.merged_paths(), table)]
        for name, transform in (variants or {}).items():
            outputs.append((self.merged_paths(name), transform(table)))
        # Every output is computed before the first is written, so a failing variant leaves nothing half-merged.
        for (prof_path, sub_path), df in outputs:
            self._write_merged(prof_path, df, plates, overwrite)
            if submission and (overwrite or not os.path.exists(sub_path)):
                self._write_submission(df, prof_path, sub_path, overwrite, submission_options)
        return outputs[-1][0][0]

    def _write_merged(self, path: str, df: pd.DataFrame, plates: list[str], overwrite: bool) -> None:
        if os.path.exists(path) and not overwrite:
            existing = sorted(pd.read_parquet(path, columns=[PLATE])[PLATE].astype(str).unique())
            if existing != plates:
                raise FileExistsError(
                    f"{path} exists with plates {existing[:5]}... != {plates[:5]}...; pass --overwrite to replace it"
                )
            logger.info("%s already holds these %d plates; kept", path, len(plates))
            return
        write_table(df, path, overwrite=overwrite)
        logger.info("wrote %s (%d wells, %d plates)", path, len(df), len(plates))

    def _write_submission(
        self, df: pd.DataFrame, prof_path: str, sub_path: str, overwrite: bool, options: Mapping | None
    ) -> None:
        from dinov2_cell.profiles.submission import write_submission

        write_submission(df, sub_path, overwrite=overwrite, **dict(options or {}))
        # feature_i of the submission is the i-th feature column of the profiles it was written from
        info = {"profiles": os.path.basename(prof_path), "features": feature_columns(df)}
        self.record_output(os.path.basename(sub_path), info)
        logger.info("wrote %s", sub_path)
