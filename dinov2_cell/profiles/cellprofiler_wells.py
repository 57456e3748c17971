"""Per-well CellProfiler features: segment and measure each site of a well, median over the well's cells.

:func:`well_features` handles one well (its sites segmented by :func:`~dinov2_cell.profiles.segmentation.segment_site`
and measured by :func:`~dinov2_cell.profiles.cellprofiler_measure.measure_objects`; bad sites skipped and counted per
reason, or raised with ``on_bad_site="error"``); :func:`aggregate_well` is the median over all cells of the well's
sites (``pycytominer.aggregate``) with the object count. :class:`WellRunner` runs the wells in this process or in a
pool of worker processes that each hold the plate's dataset once.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from dinov2_cell.profiles.cellprofiler_measure import OBJECT_NUMBER, measure_objects
from dinov2_cell.profiles.io import PLATE, WELL
from dinov2_cell.profiles.segmentation import SiteSkipped, segment_site

logger = logging.getLogger("dinov2_cell.profiles")

COUNT_FEATURE = "Image_Count_Cells"
BAD_SITE_POLICIES = ("skip", "error")


def aggregate_well(objects: pd.DataFrame, plate: str, well: str) -> pd.DataFrame:
    """Median of every feature over the objects of one well, with the object count (``pycytominer.aggregate``).

    Args:
        objects: one row per object (index: the object number), one column per feature.
        plate: barcode.
        well: well name.

    Returns:
        One row: Metadata_Plate, Metadata_Well, Metadata_Object_Count and the feature medians.
    """
    from pycytominer import aggregate

    feats = [c for c in objects.columns if not str(c).startswith("Metadata_")]
    table = objects.reset_index()
    table.insert(0, WELL, well)
    table.insert(0, PLATE, plate)
    return aggregate(
        population_df=table,
        strata=[PLATE, WELL],
        features=feats,
        operation="median",
        compute_object_count=True,
        object_feature=OBJECT_NUMBER,
        output_file=None,
        output_type=None,
    )


# Per-process state of the worker pool (set once by the initializer so the dataset is not pickled per task).
_STATE: dict = {}


def _init_worker(dataset, seg, measure, on_bad_site) -> None:
    _STATE.update(dataset=dataset, seg=seg, measure=measure, on_bad_site=on_bad_site)


def _site_objects(index: int) -> pd.DataFrame:
    """Objects of one site with their features (raises SiteSkipped or the dataset's read error)."""
    dataset = _STATE["dataset"]
    names = list(dataset.channel_names)
    image = np.asarray(dataset.get_image(index), dtype=np.float64)
    masks = segment_site(image, names, _STATE["seg"])
    return measure_objects(image, names, masks, _STATE["measure"])


def well_features(args) -> tuple[str, pd.DataFrame | None, int, Counter]:
    """Feature row of one well, in a process set up by :class:`WellRunner` (one argument, for ``pool.map``).

    Args:
        args: ``(plate, well, dataset indices of the well's sites to measure)``.

    Returns:
        ``(well, row or None when no site could be measured, number of sites measured, skips per reason)``; the row
        is :func:`aggregate_well` plus ``Image_Count_Cells`` (mean object count per measured site).

    Raises:
        ValueError: a bad site with ``on_bad_site="error"`` (site named); the dataset's read error likewise.
    """
    plate, well, indices = args
    from dinov2_cell.data.errors import DataReadError

    dataset = _STATE["dataset"]
    frames, counts, skips = [], [], Counter()
    for i in indices:
        where = "plate {}, well {}, site {}".format(*dataset.site_key(i))
        try:
            objects = _site_objects(i)
        except SiteSkipped as e:
            if _STATE["on_bad_site"] == "error":
                raise ValueError(f"{where}: {e}") from e
            logger.info("%s skipped: %s", where, e)
            skips[e.reason] += 1
            continue
        except DataReadError as e:
            if _STATE["on_bad_site"] == "error":
                raise
            logger.warning("%s skipped: %s", where, e)
            skips["unreadable"] += 1
            continue
        frames.append(objects)
        counts.append(len(objects))
    if not frames:
        return well, None, 0, skips
    objects = pd.concat(frames, ignore_index=False)
    row = aggregate_well(objects, plate, well)
    row[COUNT_FEATURE] = float(np.mean(counts))
    return well, row, len(frames), skips


class WellRunner:
    """Runs :func:`well_features` over wells in this process or in a pool of ``num_workers`` processes.

    Args:
        dataset: the plate's dataset (handed to each worker once).
        seg: segmentation settings of the plate.
        measure: measurement settings.
        on_bad_site: ``"skip"`` or ``"error"``.
        num_workers: worker processes (0: this process).
    """

    def __init__(self, dataset, seg, measure, on_bad_site, num_workers):
        self.args = (dataset, seg, measure, on_bad_site)
        self.num_workers = num_workers
        self.pool = None

    def __enter__(self):
        if self.num_workers > 0:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            self.pool = ProcessPoolExecutor(
                self.num_workers, mp_context=ctx, initializer=_init_worker, initargs=self.args
            )
        else:
            _init_worker(*self.args)
        return self

    def map(self, plate: str, tasks):
        """Lazily :func:`well_features` of every ``(well, indices)`` of ``tasks``, in order.

        Args:
            plate: barcode.
            tasks: ``[(well, dataset indices)]``.

        Returns:
            An iterator over the results.
        """
        jobs = [(plate, well, idx) for well, idx in tasks]
        if self.pool is None:
            return map(well_features, jobs)
        return self.pool.map(well_features, jobs)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        return False
