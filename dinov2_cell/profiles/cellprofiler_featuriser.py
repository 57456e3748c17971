"""The CellProfiler featuriser of the profiling driver: well medians per plate, the JUMP recipe at the merge.

:class:`CellProfilerFeaturiser` opens a plate's fluorescent channels (illumination-corrected, scaled by the bit
depth), estimates the nucleus size on a few sites unless it is given, picks the sites of each well (all, or the first
``sites_per_well``), runs :func:`~dinov2_cell.profiles.cellprofiler_wells.well_features` over the wells and reports
the skipped sites in the part's ``stats``; its :meth:`~CellProfilerFeaturiser.finalize` is the recipe of
:mod:`dinov2_cell.profiles.recipe`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict

import numpy as np
import pandas as pd

from dinov2_cell.profiles.cellprofiler_measure import MeasureSettings
from dinov2_cell.profiles.cellprofiler_wells import BAD_SITE_POLICIES, WellRunner
from dinov2_cell.profiles.driver import BaseFeaturiser, PlateSource, site_index
from dinov2_cell.profiles.io import SITE, WELL
from dinov2_cell.profiles.recipe import RecipeSettings, run_recipe
from dinov2_cell.profiles.segmentation import SegmentationSettings, estimate_nucleus_diameter

logger = logging.getLogger("dinov2_cell.profiles")


class CellProfilerFeaturiser(BaseFeaturiser):
    """Segmentation + cp_measure per site, median per well, pycytominer recipe at the merge (see module docstring).

    Args:
        segmentation: segmentation settings (without ``nucleus_diameter``, the size is estimated per plate).
        measure: cp_measure settings.
        recipe: normalisation and feature selection settings.
        num_workers: worker processes over wells (0: in this process).
        on_bad_site: ``"skip"`` (count and go on) or ``"error"``.
        diameter_sites: sites read per plate to estimate the nucleus size.
        sites_per_well: measure only the first N sites of each well, in site-number order (``None``: all).
        progress: progress bar over wells.
    """

    name = "cellprofiler"

    def __init__(
        self,
        segmentation: SegmentationSettings | None = None,
        measure: MeasureSettings = MeasureSettings(),
        recipe: RecipeSettings = RecipeSettings(),
        num_workers: int = 0,
        on_bad_site: str = "skip",
        diameter_sites: int = 8,
        sites_per_well: int | None = None,
        progress: bool = True,
    ):
        if on_bad_site not in BAD_SITE_POLICIES:
            raise ValueError(f"unknown bad-site policy {on_bad_site!r}; choose from {BAD_SITE_POLICIES}")
        if sites_per_well is not None and int(sites_per_well) < 1:
            raise ValueError(f"sites_per_well must be >= 1 (or None for all sites), got {sites_per_well}")
        self.sites_per_well = None if sites_per_well is None else int(sites_per_well)
        self.segmentation = segmentation or SegmentationSettings()
        self.measure = measure
        self.recipe = recipe
        self.num_workers = int(num_workers)
        self.on_bad_site = on_bad_site
        self.diameter_sites = int(diameter_sites)
        self.progress = progress

    def describe(self) -> dict:
        """JSON-able settings (recorded in the run config; a change refuses reuse of an output folder)."""
        out = {
            "segmentation": (
                self.segmentation.describe()
                if self.segmentation.nucleus_diameter is not None
                else {**self.segmentation.describe(), "nucleus_diameter": "estimated per plate"}
            ),
            "measure": self.measure.describe(),
            "recipe": self.recipe.describe(),
            "aggregate": "median",
            "image_scale": "bitdepth",
            "on_bad_site": self.on_bad_site,
            "diameter_sites": self.diameter_sites,
        }
        # Recorded only when set, so folders of full-plate runs made before the option existed stay reusable.
        if self.sites_per_well is not None:
            out["sites_per_well"] = self.sites_per_well
        return out

    def select_sites(self, index: pd.DataFrame) -> list[tuple[str, list[int]]]:
        """Sites to measure, per well: all of them, or the first ``sites_per_well`` in site-number order.

        Args:
            index: the plate's site table (:func:`~dinov2_cell.profiles.driver.site_index`).

        Returns:
            [(well, dataset indices)], wells sorted.
        """
        order = index.assign(_site=pd.to_numeric(index[SITE], errors="coerce"), _row=np.arange(len(index)))
        order = order.sort_values([WELL, "_site", "_row"], kind="stable")
        tasks = []
        for well, rows in order.groupby(WELL, sort=True)["_row"]:
            picked = [int(i) for i in rows]
            tasks.append((well, picked if self.sites_per_well is None else picked[: self.sites_per_well]))
        return tasks

    def open_plate(self, source: PlateSource, plate: str):
        """The plate's fluorescent channels, illumination-corrected and scaled by the bit depth.

        Args:
            source: the data source.
            plate: barcode.

        Returns:
            The dataset.
        """
        return source.open([plate], channels="fluo", normalize="bitdepth")

    def plate_segmentation(self, dataset) -> SegmentationSettings:
        """Segmentation settings of a plate: the given ones, or a nucleus size estimated on a few of its sites.

        Args:
            dataset: the plate's dataset.

        Returns:
            The settings.
        """
        base = self.segmentation
        if base.nucleus_diameter is not None:
            return base
        names = list(dataset.channel_names)
        if "DNA" not in names:
            raise ValueError(f"nuclei segmentation needs the DNA channel; the dataset has {names}")
        picks = np.unique(np.linspace(0, len(dataset) - 1, min(self.diameter_sites, len(dataset))).astype(int))
        images = []
        for i in picks:
            try:
                images.append(np.asarray(dataset.get_image(int(i)))[names.index("DNA")])
            except Exception as e:  # noqa: BLE001 - a bad site must not stop the estimate; it is skipped later
                logger.warning("nucleus size estimate: site %s unreadable (%s)", dataset.site_key(int(i)), e)
        diameter = estimate_nucleus_diameter(images, base.threshold)
        logger.info("nucleus diameter estimated on %d sites: %.1f px", len(images), diameter)
        return SegmentationSettings(**{**asdict(base), "nucleus_diameter": None, "typical_diameter": diameter})

    def featurise_plate(self, plate: str, dataset) -> pd.DataFrame:
        """Well medians of one plate (see module docstring).

        Args:
            plate: barcode.
            dataset: the plate's dataset (fluorescent channels).

        Returns:
            One row per well with at least one measured site: Metadata_Plate, Metadata_Well, Metadata_Object_Count,
            Metadata_n_sites, Metadata_n_sites_skipped, features; ``attrs["stats"]`` holds the skip counts.
        """
        seg = self.plate_segmentation(dataset)
        index = site_index(dataset)
        tasks = self.select_sites(index)
        rows, skips = [], Counter()
        dropped_wells = []
        with WellRunner(dataset, seg, self.measure, self.on_bad_site, self.num_workers) as runner:
            for well, row, n_ok, well_skips in _progress(runner.map(plate, tasks), len(tasks), self.progress, plate):
                skips.update(well_skips)
                if row is None:
                    dropped_wells.append(well)
                    continue
                row.insert(2, "Metadata_n_sites", str(n_ok))
                row.insert(3, "Metadata_n_sites_skipped", str(sum(well_skips.values())))
                rows.append(row)
        if not rows:
            raise ValueError(f"plate {plate}: no site could be measured (skipped: {dict(skips)})")
        table = pd.concat(rows, ignore_index=True)
        if skips:
            logger.warning("plate %s: skipped sites %s; wells left out: %d", plate, dict(skips), len(dropped_wells))
        table.attrs["stats"] = {
            "sites": int(len(index)),
            "sites_selected": int(sum(len(idx) for _, idx in tasks)),
            "sites_skipped": {k: int(v) for k, v in sorted(skips.items())},
            "wells": int(len(table)),
            "wells_left_out": dropped_wells,
            "segmentation": seg.describe(),
        }
        return table

    def finalize(self, merged: pd.DataFrame) -> pd.DataFrame:
        """Per-plate DMSO normalisation and feature selection (:func:`dinov2_cell.profiles.recipe.run_recipe`).

        Args:
            merged: every plate's well medians with metadata.

        Returns:
            The profile table.
        """
        return run_recipe(merged, self.recipe)


def _progress(items, total: int, progress: bool, plate: str):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=f"{plate} wells", unit="well")
