"""CellProfiler features through cp_measure, and the JUMP profiling recipe through pycytominer.

``python -m dinov2_cell.profiles.cellprofiler --data-root ROOT --out DIR [--plates A,B] [--num-workers N]``

Per site (fluorescent channels, raw intensities after illumination correction, scaled to [0, 1] by the bit depth as
CellProfiler's NamesAndTypes does):

1. segmentation (:mod:`dinov2_cell.profiles.segmentation`): nuclei on DNA, cells grown from them on AGP/RNA,
   cytoplasm = cell minus nucleus;
2. measurement of every object with cp_measure's core functions, in every channel: ``Intensity``, ``AreaShape``
   (size/shape, Zernike shape moments, Feret diameters), ``Texture`` (Haralick, scale 3, 256 grey levels, 4
   directions), ``Granularity`` (16 spectrum bins), ``RadialDistribution`` (4 rings and intensity Zernikes), and
   ``Correlation`` (Pearson and slope, Costes, Manders, RWC) between every pair of channels;
3. the object count of the site (``Image_Count_Cells``, averaged over a well's sites).

Names follow CellProfiler's ``Compartment_Family_Feature_Channel[_parameters]`` convention (e.g.
``Cells_Intensity_MeanIntensity_DNA``, ``Nuclei_Texture_Contrast_DNA_3_00_256``, ``Cytoplasm_Granularity_1_Mito``,
``Cells_RadialDistribution_FracAtD_RNA_1of4``, ``Cells_Correlation_Pearson_DNA_ER``,
``Nuclei_Correlation_Manders_AGP_DNA``), so pycytominer's blocklist and the CPJUMP1 profiles' columns line up.
Object position features (``Location_*``, ``AreaShape_Center_*``, bounding box corners, spatial moments other than
the area) are not kept: they say where a cell lies in the field, not what it looks like.

Per well: the median over all cells of all its sites (``pycytominer.aggregate``), ``Metadata_Object_Count`` and
``Metadata_n_sites`` / ``Metadata_n_sites_skipped``. These per-plate tables are the run's parts (atomic, resumable,
through :mod:`dinov2_cell.profiles.driver`). The merge step (:meth:`CellProfilerFeaturiser.finalize`) runs the
recipe of :mod:`dinov2_cell.profiles.recipe`: per-plate ``mad_robustize`` against DMSO wells, then feature
selection; the merged table has no NaN.

Bad sites are skipped and counted per reason in the plate's ``stats.json`` (an empty site: no nucleus; a saturated
channel; a blank channel; an unreadable file, whose error names the site); a well whose sites are all skipped is
left out and counted. ``--on-bad-site error`` stops at the first one instead, naming the site.

``--sites-per-well N`` measures only the first N sites of each well (in site-number order, among the sites present)
when the full plate would cost too much (the demo); the limit is part of the run's recorded settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.cli import (
    HelpFormatter,
    comma_list,
    common_parser,
    data_parser,
    output_parser,
    positive_int,
    run_main,
    setup_logging,
    workers_parser,
)
from dinov2_cell.profiles.driver import BaseFeaturiser, PlateSource, run_profiles, site_index
from dinov2_cell.profiles.io import PLATE, SITE, WELL
from dinov2_cell.profiles.recipe import NORMALIZE_METHODS, RecipeSettings, run_recipe
from dinov2_cell.profiles.segmentation import (
    SegmentationSettings,
    SiteSkipped,
    estimate_nucleus_diameter,
    segment_site,
)

logger = logging.getLogger("dinov2_cell.profiles")

COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
FAMILIES = ("intensity", "sizeshape", "texture", "granularity", "radial_distribution", "radial_zernikes", "correlation")
CORRELATIONS = ("pearson", "costes", "manders_fold", "rwc")
OBJECT_NUMBER = "Metadata_ObjectNumber"
COUNT_FEATURE = "Image_Count_Cells"
BAD_SITE_POLICIES = ("skip", "error")
_POSITION = re.compile(
    r"^(Location_|Center_[XYZ]$|BoundingBox(Minimum|Maximum)_|SpatialMoment_(?!0_0$))",
)


@dataclass(frozen=True)
class MeasureSettings:
    """cp_measure settings (recorded in a run's configuration).

    Args:
        families: measurement families to compute (see :data:`FAMILIES`).
        correlations: colocalization measures of the ``correlation`` family (see :data:`CORRELATIONS`); Costes'
            thresholds take most of the measurement time (85 % of a 96 px site in ``benchmarks/cellprofiler.py``).
        compartments: objects to measure.
        texture_scale: Haralick co-occurrence distance (pixels).
        gray_levels: Haralick grey levels.
        granular_spectrum: granularity spectrum length.
        radial_bins: radial distribution rings.
        zernike_degree: degree of the intensity Zernike moments.
        costes_scale_max: integer range of the images for Costes' thresholds (65535: 16-bit images scaled to [0, 1]).
    """

    families: tuple[str, ...] = FAMILIES
    correlations: tuple[str, ...] = CORRELATIONS
    compartments: tuple[str, ...] = COMPARTMENTS
    texture_scale: int = 3
    gray_levels: int = 256
    granular_spectrum: int = 16
    radial_bins: int = 4
    zernike_degree: int = 9
    costes_scale_max: int = 65535

    def __post_init__(self):
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"unknown measurement families {unknown or '(none given)'}; choose from {FAMILIES}")
        bad_corr = [c for c in self.correlations if c not in CORRELATIONS]
        if bad_corr or ("correlation" in self.families and not self.correlations):
            raise ValueError(f"unknown correlation measures {bad_corr or '(none given)'}; choose from {CORRELATIONS}")
        bad = [c for c in self.compartments if c not in COMPARTMENTS]
        if bad or not self.compartments:
            raise ValueError(f"unknown compartments {bad or '(none given)'}; choose from {COMPARTMENTS}")

    def describe(self) -> dict:
        """JSON-able settings."""
        out = asdict(self)
        out["families"], out["compartments"] = list(self.families), list(self.compartments)
        out["correlations"] = list(self.correlations)
        return out


# ------------------------------------------------------------------------------------------------------- naming


def channel_feature_name(compartment: str, key: str, channel: str) -> str:
    """CellProfiler name of a per-channel cp_measure result.

    Args:
        compartment: ``Cells``, ``Cytoplasm`` or ``Nuclei``.
        key: cp_measure key (e.g. ``Intensity_MeanIntensity``, ``Contrast_3_00_256``, ``Granularity_1``,
            ``RadialDistribution_FracAtD_1of4``).
        channel: channel name.

    Returns:
        e.g. ``Cells_Intensity_MeanIntensity_DNA``, ``Cells_Texture_Contrast_DNA_3_00_256``,
        ``Cells_Granularity_1_DNA``, ``Cells_RadialDistribution_FracAtD_DNA_1of4``.
    """
    parts = key.split("_")
    if parts[0] in ("Intensity", "Granularity", "Location"):
        return f"{compartment}_{key}_{channel}"
    if parts[0] == "RadialDistribution":
        return f"{compartment}_{parts[0]}_{parts[1]}_{channel}" + "".join(f"_{p}" for p in parts[2:])
    # Texture keys come without their family: Feature_scale_direction_levels.
    return f"{compartment}_Texture_{parts[0]}_{channel}" + "".join(f"_{p}" for p in parts[1:])


def shape_feature_name(compartment: str, key: str) -> str:
    """``<compartment>_AreaShape_<key>`` (``Zernike_n_m`` and Feret diameters included).

    Args:
        compartment: object name.
        key: cp_measure key.

    Returns:
        The name.
    """
    return f"{compartment}_AreaShape_{key}"


def correlation_feature_name(compartment: str, key: str, first: str, second: str) -> str:
    """CellProfiler name of a colocalization result of the channel pair (first, second).

    Directional results (``_1``: first over second, ``_2``: second over first) put the measured channel first, as
    CellProfiler does (``Correlation_Manders_DNA_ER`` and ``Correlation_Manders_ER_DNA``).

    Args:
        compartment: object name.
        key: cp_measure key (``Correlation_Pearson``, ``Correlation_Slope``, ``Correlation_Costes_1``, ...).
        first: first channel.
        second: second channel.

    Returns:
        The name.
    """
    if key.endswith("_2"):
        return f"{compartment}_{key[:-2]}_{second}_{first}"
    if key.endswith("_1"):
        return f"{compartment}_{key[:-2]}_{first}_{second}"
    return f"{compartment}_{key}_{first}_{second}"


def is_position_feature(key: str) -> bool:
    """Whether a cp_measure key describes where an object is rather than what it looks like.

    Args:
        key: cp_measure key.

    Returns:
        True for ``Location_*``, ``Center_X/Y/Z``, bounding box corners and spatial moments other than ``0_0``.
    """
    return bool(_POSITION.match(key))


# ------------------------------------------------------------------------------------------------- measurement


def _contiguous(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.segmentation import relabel_sequential

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) and ids[-1] == len(ids):
        return labels, ids
    return relabel_sequential(labels)[0], ids


def measure_objects(
    image: np.ndarray,
    channel_names: Sequence[str],
    masks: dict[str, np.ndarray],
    settings: MeasureSettings = MeasureSettings(),
) -> pd.DataFrame:
    """Measure every object of every compartment in every channel with cp_measure.

    Args:
        image: C x H x W float image.
        channel_names: channel names of ``image``.
        masks: compartment -> label image; label i is the same cell in every compartment.
        settings: measurement settings.

    Returns:
        One row per object label present in any compartment (index: the label), one column per feature; a
        compartment in which an object is absent (e.g. a cell without cytoplasm) has NaN in its columns.
    """
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    core = get_core_measurements(sanitize=False)
    corr = get_correlation_measurements(sanitize=False)
    fam = set(settings.families)
    names = list(channel_names)
    all_ids = np.unique(np.concatenate([np.unique(masks[c]) for c in settings.compartments]))
    all_ids = all_ids[all_ids > 0]
    columns: dict[str, np.ndarray] = {}

    def put(name: str, ids: np.ndarray, values) -> None:
        col = np.full(len(all_ids), np.nan)
        col[np.searchsorted(all_ids, ids)] = np.asarray(values, dtype=np.float64)
        columns[name] = col

    channel_funcs = []
    if "intensity" in fam:
        channel_funcs.append((core["intensity"], {}))
    if "texture" in fam:
        channel_funcs.append((core["texture"], dict(scale=settings.texture_scale, gray_levels=settings.gray_levels)))
    if "granularity" in fam:
        channel_funcs.append((core["granularity"], dict(granular_spectrum_length=settings.granular_spectrum)))
    if "radial_distribution" in fam:
        channel_funcs.append((core["radial_distribution"], dict(bin_count=settings.radial_bins)))
    if "radial_zernikes" in fam:
        channel_funcs.append((core["radial_zernikes"], dict(zernike_degree=settings.zernike_degree)))
    for comp in settings.compartments:
        labels, ids = _contiguous(np.asarray(masks[comp]))
        if len(ids) == 0:
            continue
        if "sizeshape" in fam:
            for func in (core["sizeshape"], core["zernike"], core["feret"]):
                for key, values in func(labels, None).items():
                    if not is_position_feature(key):
                        put(shape_feature_name(comp, key), ids, values)
        for c, ch in enumerate(names):
            pixels = np.asarray(image[c], dtype=np.float64)
            for func, kwargs in channel_funcs:
                for key, values in func(labels, pixels, **kwargs).items():
                    if not is_position_feature(key):
                        put(channel_feature_name(comp, key, ch), ids, values)
        if "correlation" in fam:
            for a, b in combinations(range(len(names)), 2):
                p1, p2 = np.asarray(image[a], dtype=np.float64), np.asarray(image[b], dtype=np.float64)
                for kind in settings.correlations:
                    extra = {"scale_max": settings.costes_scale_max} if kind == "costes" else {}
                    for key, values in corr[kind](pixels_1=p1, pixels_2=p2, masks=labels, **extra).items():
                        put(correlation_feature_name(comp, key, names[a], names[b]), ids, values)
    return pd.DataFrame(columns, index=pd.Index(all_ids, name=OBJECT_NUMBER))


# --------------------------------------------------------------------------------------------------- featuriser


def _aggregate_well(objects: pd.DataFrame, plate: str, well: str) -> pd.DataFrame:
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
        with _WellRunner(dataset, seg, self.measure, self.on_bad_site, self.num_workers) as runner:
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


def _well_task(args) -> tuple[str, pd.DataFrame | None, int, Counter]:
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
    row = _aggregate_well(objects, plate, well)
    row[COUNT_FEATURE] = float(np.mean(counts))
    return well, row, len(frames), skips


class _WellRunner:
    """Runs :func:`_well_task` over wells in this process or in a pool of ``num_workers`` processes."""

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
        jobs = [(plate, well, idx) for well, idx in tasks]
        if self.pool is None:
            return map(_well_task, jobs)
        return self.pool.map(_well_task, jobs)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        return False


# ------------------------------------------------------------------------------------------------------------ CLI


def _diameter(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in pixels, got {value!r}") from None
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.profiles.cellprofiler``."""
    p = argparse.ArgumentParser(
        prog="python -m dinov2_cell.profiles.cellprofiler",
        description="CellProfiler features (cp_measure) of every site, well medians, and the JUMP recipe "
        "(pycytominer: per-plate DMSO normalisation, feature selection). Writes DIR/parts/<plate>.parquet (raw well "
        "medians, resumable) and DIR/profiles.parquet.",
        formatter_class=HelpFormatter,
        parents=[data_parser(), output_parser(), workers_parser(default=0), common_parser()],
    )
    g = p.add_argument_group("CellProfiler features")
    g.add_argument(
        "--nucleus-diameter",
        type=_diameter,
        default=None,
        metavar="MIN,MAX",
        help="nucleus diameter range in pixels (default: estimated on a few sites of each plate)",
    )
    g.add_argument("--threshold", choices=("otsu", "li"), default="otsu", help="threshold of nuclei and cells")
    g.add_argument(
        "--families",
        type=comma_list,
        default=list(FAMILIES),
        metavar="A,B",
        help=f"measurement families, from {','.join(FAMILIES)}",
    )
    g.add_argument(
        "--correlations",
        type=comma_list,
        default=list(CORRELATIONS),
        metavar="A,B",
        help=f"colocalization measures of the correlation family, from {','.join(CORRELATIONS)} (costes is slow)",
    )
    g.add_argument(
        "--sites-per-well",
        type=positive_int,
        default=None,
        metavar="N",
        help="measure only the first N sites of each well, in site order (default: all sites)",
    )
    g.add_argument("--normalize", choices=NORMALIZE_METHODS, default="mad_robustize", help="per-plate, DMSO reference")
    g.add_argument("--on-bad-site", choices=BAD_SITE_POLICIES, default="skip", help="empty/saturated/unreadable site")
    g.add_argument("--metadata", default=None, help="per-well metadata CSV/Parquet (default: packaged CPJUMP1)")
    g.add_argument("--submission", action="store_true", help="also write DIR/submission.csv")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    seg = SegmentationSettings(nucleus_diameter=args.nucleus_diameter, threshold=args.threshold)
    featuriser = CellProfilerFeaturiser(
        segmentation=seg,
        measure=MeasureSettings(families=tuple(args.families), correlations=tuple(args.correlations)),
        recipe=RecipeSettings(normalize=args.normalize),
        num_workers=args.num_workers,
        on_bad_site=args.on_bad_site,
        sites_per_well=args.sites_per_well,
        progress=not args.no_progress,
    )
    if not os.path.exists(args.data_root):
        raise FileNotFoundError(f"--data-root {args.data_root}: no such file or folder")
    path = run_profiles(
        featuriser,
        PlateSource(args.data_root, channels="fluo"),
        args.out,
        args.plates,
        metadata=args.metadata,
        submission=args.submission,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, prog="python -m dinov2_cell.profiles.cellprofiler"))
