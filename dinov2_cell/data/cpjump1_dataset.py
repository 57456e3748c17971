"""``CPJUMP1Dataset``: Cell Painting sites as DINOv2 training samples, registered as dataset string ``CPJUMP1``.

Example dataset strings (for upstream's ``make_dataset`` once the loader patch is applied)::

    CPJUMP1:root=/data/cpg0000-jump-pilot/source_4:plates=BR00116991,BR00116995:channels=fluo
    CPJUMP1:root=/data/synthetic:channels=bf:normalize=plate
    CPJUMP1:store=/scratch/cpjump1_store:channels=fluo
    CPJUMP1:root=/data/cpjump1:cell_line=U2OS:on_error=skip

Keys (all optional except one of root/store; values with commas become lists where marked):

=================  ==================  ===========================================================================
key                default             meaning
=================  ==================  ===========================================================================
root               None                folder with LoadData CSVs and/or Phenix folders, a LoadData CSV, or a store
plates             None (all found)    list: barcodes to use
channels           fluo                ``fluo`` (DNA, ER, RNA, AGP, Mito), ``bf`` (Brightfield, HighZBF,
                                       LowZBF), ``all`` (fluo then bf), or a list of names
normalize          percentile          ``percentile`` | ``plate`` | ``bitdepth`` (see ``intensity.py``)
percentile_low     0.1                 lower percentile for percentile/plate
percentile_high    99.9                upper percentile for percentile/plate
bit_depth          16                  for ``bitdepth``
plate_stats_sites  16                  sites sampled per plate for ``plate`` statistics
illum              auto                ``auto`` | ``yes`` | ``no``: illumination correction (division) from
                                       ``FileName_Illum*`` columns or the store: when the files exist (a missing
                                       one is logged and that channel left uncorrected) / required / never
source             auto                ``auto`` | ``csv`` | ``scan``: how plates under root are indexed
on_error           raise               ``raise`` | ``skip`` (bad sites/plates skipped, counted, logged)
store              None                a prepared store (``python -m dinov2_cell.data.prepare``); plates it holds
                                       are read from it, others from root
wells              None                list: keep only these wells
cell_line          None                keep plates of this cell line (U2OS / A549; CPJUMP1 barcodes only)
sites_per_well     None                max sites per well (default: each plate's usual count)
channel_map        None                Phenix channel numbers, e.g. ``1/Mito,2/AGP,...,8/Brightfield``
seed               0                   seed of the site sample used for ``plate`` statistics (sampled per plate
                                       from (seed, barcode): a plate's statistics do not depend on the others)
=================  ==================  ===========================================================================

Discovery: if ``root`` (or ``store``) holds ``store.json`` it is read as a prepared store; otherwise ``root`` is walked
once for LoadData CSVs and Phenix folders and each plate is indexed from its CSV when it has one, else from its folder
(details in ``index.py``). Each plate gets one reader (``plate_readers.py``): the store when it holds the plate, else its
TIFF files. Samples are sorted by plate, well, site.

Samples: ``ds[i]`` returns ``(image_out, target)``. ``image_out`` is the float32 C x H x W tensor in [0, 1] when
``transform`` is None; ``transform(image, other_site=other)`` when the transform has ``wants_other_site = True`` (the
other site is a uniformly random other site of the same well, see :meth:`CPJUMP1Dataset.other_site_index`); else
``transform(image)``. ``target`` is ``{"plate", "well", "site", "index"}`` passed through ``target_transform``.
Random choices use torch's global generator, which DataLoader seeds differently in every worker.
"""

from __future__ import annotations

import logging
import os
import random
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.data import index as idx
from dinov2_cell.data.errors import DataIndexError, DataReadError, SkipLog, check_on_error
from dinov2_cell.data.intensity import (
    DEFAULT_PERCENTILES,
    Normalizer,
    PercentileNormalizer,
    PlateNormalizer,
    RawSite,
    make_normalizer,
    plate_bounds,
)
from dinov2_cell.data.loaddata import ILLUM_MODES
from dinov2_cell.data.names import normalize_well, parse_channel_map, resolve_channels
from dinov2_cell.data.registry import register_dataset, to_list, to_str_or_list
from dinov2_cell.data.plate_readers import PlateReader, open_plate_readers
from dinov2_cell.data.store import PlateStore, is_store

logger = logging.getLogger("dinov2_cell.data")

_MAX_SUBSTITUTIONS = 20


@register_dataset("CPJUMP1")
class CPJUMP1Dataset(Dataset):
    """Cell Painting sites (CPJUMP1 or any Phenix / LoadData plates) as multi-channel float tensors.

    Args:
        root: folder with LoadData CSVs and/or Phenix image folders, one LoadData CSV, or a prepared store.
        plates: barcodes to use (``None`` = every plate found); a comma-separated string is accepted.
        channels: ``"fluo"``, ``"bf"``, ``"all"``, or channel names (list or comma-separated).
        transform: image transform (see the module docstring for the ``wants_other_site`` protocol).
        target_transform: applied to the target dict.
        normalize: ``"percentile"`` (default), ``"plate"``, ``"bitdepth"``, or a
            :class:`~dinov2_cell.data.intensity.Normalizer`.
        percentile_low: lower percentile (percentile/plate).
        percentile_high: upper percentile (percentile/plate).
        bit_depth: bits for ``bitdepth``.
        plate_stats_sites: sites sampled per plate to compute ``plate`` statistics.
        illum: ``"auto"``, ``"yes"`` or ``"no"``: illumination correction.
        source: ``"auto"``, ``"csv"`` or ``"scan"``.
        on_error: ``"raise"`` or ``"skip"``.
        store: prepared store folder; its plates are read from it, other plates from ``root``.
        wells: keep only these wells.
        cell_line: keep only plates of this cell line (CPJUMP1 barcodes).
        sites_per_well: the most sites a well may have (default: each plate's usual count).
        channel_map: Phenix channel number -> name, overriding the default.
        seed: seed of the site sample for ``plate`` statistics.

    Raises:
        DataIndexError: nothing to read, or an index check failed (see ``index.py``).
        ValueError: a bad option (unknown channel, normalization, ...).
    """

    dataset_str_converters = {
        "plates": to_list,
        "wells": to_list,
        "channels": to_str_or_list,
        "percentile_low": float,
        "percentile_high": float,
        "bit_depth": int,
        "plate_stats_sites": int,
        "sites_per_well": int,
        "seed": int,
        "channel_map": parse_channel_map,
    }

    def __init__(
        self,
        *,
        root: str | os.PathLike | None = None,
        plates: str | Sequence[str] | None = None,
        channels: str | Sequence[str] = "fluo",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        normalize: str | Normalizer = "percentile",
        percentile_low: float = DEFAULT_PERCENTILES[0],
        percentile_high: float = DEFAULT_PERCENTILES[1],
        bit_depth: int = 16,
        plate_stats_sites: int = 16,
        illum: str = "auto",
        source: str = "auto",
        on_error: str = "raise",
        store: str | os.PathLike | None = None,
        wells: str | Sequence[str] | None = None,
        cell_line: str | None = None,
        sites_per_well: int | None = None,
        channel_map: Mapping[int, str] | str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.transform = transform
        self.target_transform = target_transform
        self.on_error = check_on_error(on_error)
        if illum not in ILLUM_MODES:
            raise ValueError(f"illum must be one of {ILLUM_MODES}, got {illum!r}")
        self.illum_mode = illum
        self._skips = SkipLog("CPJUMP1")
        if root is None and store is None:
            raise ValueError("CPJUMP1Dataset needs root= (plates folder, LoadData CSV or store) or store=")
        if root is not None and is_store(root):
            if store is not None and Path(store).resolve() != Path(root).resolve():
                raise ValueError(f"root {root} is a store and store={store} is another one; give one of them")
            store, root = root, None
        plate_list = _as_list(plates)
        cmap = parse_channel_map(channel_map)
        opened = PlateStore(store) if store is not None else None
        extra = (list(opened.channel_names) if opened else []) + (list(cmap.values()) if cmap else [])
        self.channel_names: list[str] = resolve_channels(channels, extra=extra)
        line_plates = None
        if cell_line is not None:
            plate_list, line_plates = _filter_cell_line(plate_list, cell_line)
        self.readers: list[PlateReader] = open_plate_readers(
            root=root,
            store=opened,
            plates=plate_list,
            channels=self.channel_names,
            cell_line_plates=line_plates,
            wells=None if wells is None else [normalize_well(w) for w in _as_list(wells)],
            source=source,
            illum=illum,
            on_error=on_error,
            channel_map=cmap,
            sites_per_well=sites_per_well,
            skips=self._skips,
        )
        if not self.readers:
            line = "" if cell_line is None else f", cell_line={cell_line}"
            raise DataIndexError(f"no sites to read (root={root}, store={store}, plates={plate_list}{line})")
        self._build_arrays()
        self._skips.log_summary()

        self.normalizer = make_normalizer(
            normalize, percentile_low=percentile_low, percentile_high=percentile_high, bit_depth=bit_depth
        )
        if self.normalizer == "plate":
            self.normalizer = self._plate_normalizer(percentile_low, percentile_high, plate_stats_sites, seed)
        logger.info(
            "CPJUMP1: %d sites, %d wells, %d plates, channels %s, normalize %s",
            len(self),
            len(np.unique(self._group_start)),
            len(self.plates),
            ",".join(self.channel_names),
            self.normalizer,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Index

    def _build_arrays(self) -> None:
        # Per-sample arrays: the reader (= plate) and the row in it; well groups for the other-site choice. Readers
        # are sorted by plate and their sites by well and site, so the table is sorted by plate, well, site.
        self.plates = [src.plate for src in self.readers]
        table = pd.concat([src.sites.assign(source=src.kind) for src in self.readers], ignore_index=True)
        self.index = table[idx.SITE_KEYS + ["source"]]
        sizes = [len(src.sites) for src in self.readers]
        self._plate_code = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        self._row = np.concatenate([np.arange(k, dtype=np.int64) for k in sizes])
        n = len(table)
        keys = table[PLATE].astype(str) + "/" + table[WELL].astype(str)
        change = np.r_[True, keys.to_numpy()[1:] != keys.to_numpy()[:-1]]
        starts = np.flatnonzero(change)
        group_sizes = np.diff(np.r_[starts, n])
        group = np.cumsum(change) - 1
        self._group_start = starts[group].astype(np.int64)
        self._group_size = group_sizes[group].astype(np.int64)

    @property
    def samples(self) -> pd.DataFrame:
        """Alias of :attr:`index`: one row per sample with Metadata_Plate, Metadata_Well, Metadata_Site, source."""
        return self.index

    @property
    def num_channels(self) -> int:
        """Number of channels of every image."""
        return len(self.channel_names)

    @property
    def skipped(self) -> dict[str, int]:
        """Skips counted in this process so far (``on_error="skip"``), per kind."""
        return dict(self._skips.counts)

    def __len__(self) -> int:
        return len(self.index)

    def site_metadata(self) -> pd.DataFrame:
        """:attr:`index` joined with :func:`dinov2_cell.data.metadata.well_metadata` for CPJUMP1 compound plates.

        Returns:
            DataFrame with one row per sample; metadata columns are empty for plates without packaged metadata.
        """
        from dinov2_cell.data import metadata as md

        known = set(md.compound_plates())
        plates = [p for p in self.plates if p in known]
        meta = md.well_metadata(plates) if plates else pd.DataFrame(columns=[PLATE, WELL])
        return self.index.merge(meta, on=[PLATE, WELL], how="left")

    def site_key(self, index: int) -> tuple[str, str, int]:
        """(plate, well, site) of sample ``index``."""
        row = self.index.iloc[index]
        return row[PLATE], row[WELL], int(row[SITE])

    def file_paths(self, index: int) -> list[str]:
        """Image files of sample ``index`` in channel order (empty for store samples)."""
        return self._reader(index).file_paths(int(self._row[index]))

    def _reader(self, index: int) -> PlateReader:
        return self.readers[int(self._plate_code[index])]

    # ------------------------------------------------------------------------------------------------------------
    # Reading

    def read_raw(self, index: int) -> np.ndarray:
        """Read the raw uint16 C x H x W image of sample ``index`` (no illumination correction, no scaling).

        Args:
            index: sample index.

        Returns:
            uint16 array.

        Raises:
            DataReadError: missing/unreadable file or wrong dtype/shape (names the file and the site).
        """
        return self._with_site(index, lambda src, row: src.read_raw(row))

    def read_corrected(self, index: int) -> np.ndarray:
        """Sample ``index`` as the normaliser sees it: uint16, or float32 divided by its illumination functions.

        Args:
            index: sample index.

        Returns:
            C x H x W array; it may be a read-only view of a prepared store (check ``flags.writeable`` before
            modifying it).

        Raises:
            DataReadError: unreadable input (names the file and the site).
        """
        return self._with_site(index, lambda src, row: src.read(row))

    def _with_site(self, index: int, fn):
        try:
            return fn(self._reader(index), int(self._row[index]))
        except DataReadError as e:
            plate, well, site = self.site_key(index)
            raise DataReadError(f"sample {index} (plate {plate}, well {well}, site {site}): {e}", e.path) from e

    def illumination(self, index: int, shape) -> np.ndarray | None:
        """Illumination functions (C x H x W float32) of sample ``index``, or None when it has none.

        Args:
            index: sample index.
            shape: (H, W) of its images.

        Returns:
            The stacked functions (cached per plate; channels without a function get ones).
        """
        return self._with_site(index, lambda src, row: src.illumination(row, shape))

    def get_image(self, index: int) -> torch.Tensor:
        """The normalized image of sample ``index``.

        Args:
            index: sample index.

        Returns:
            float32 tensor C x H x W in [0, 1], channels in :attr:`channel_names` order.

        Raises:
            DataReadError: unreadable input (names the file).
        """
        image = self.read_corrected(index)
        plate = self.plates[int(self._plate_code[index])]
        norm = self.normalizer
        if type(norm) is PercentileNormalizer and norm.stride is None:
            # percentiles precomputed at prepare time (store readers) save the per-image estimate
            p = self._reader(index).site_percentiles(int(self._row[index]), (norm.low, norm.high))
            if p is not None:
                return norm.scale(image, p, inplace=True)
        # in place when image is a fresh float32 array (division result); read-only store views are copied
        return norm(image, plate, inplace=True)

    def get_site(self, index: int) -> RawSite | torch.Tensor:
        """Sample ``index`` before normalisation: its pixels and the per-channel bounds its normaliser maps to [0, 1].

        What training reads: the augmentation cuts its crops first and converts only their pixels
        (:class:`~dinov2_cell.data.intensity.RawSite`), with the same values as cropping :meth:`get_image`.

        Args:
            index: sample index.

        Returns:
            A RawSite, or the normalized tensor (as :meth:`get_image`) for a custom normaliser without ``site_bounds``.

        Raises:
            DataReadError: unreadable input (names the file).
        """
        image = self.read_corrected(index)
        plate = self.plates[int(self._plate_code[index])]
        norm = self.normalizer
        bounds = None
        if type(norm) is PercentileNormalizer and norm.stride is None:
            bounds = self._reader(index).site_percentiles(int(self._row[index]), (norm.low, norm.high))
        if bounds is None:
            try:
                bounds = norm.site_bounds(image, plate)
            except NotImplementedError:
                return norm(image, plate, inplace=True)
        return RawSite(image, bounds[:, 0], bounds[:, 1])

    def other_site_index(self, index: int, rng: Any = None) -> int:
        """A uniformly random other site of the same plate and well (``index`` itself if the well has one site).

        Args:
            index: sample index.
            rng: ``None`` (torch's global generator, seeded per DataLoader worker), a ``torch.Generator``, a
                ``numpy.random.Generator`` or a ``random.Random``.

        Returns:
            Sample index of the other site.
        """
        size = int(self._group_size[index])
        if size <= 1:
            return int(index)
        start = int(self._group_start[index])
        r = _randbelow(size - 1, rng)
        j = start + r
        return j + 1 if j >= index else j

    def sites_of_well(self, index: int) -> np.ndarray:
        """Sample indices of every site in the well of sample ``index`` (sorted)."""
        start = int(self._group_start[index])
        return np.arange(start, start + int(self._group_size[index]))

    def target(self, index: int) -> dict:
        """The target of sample ``index``: ``{"plate", "well", "site", "index"}``."""
        plate, well, site = self.site_key(index)
        return {"plate": plate, "well": well, "site": site, "index": int(index)}

    def __getitem__(self, index: int):
        index = int(index)
        wants_other = bool(getattr(self.transform, "wants_other_site", False))
        for attempt in range(_MAX_SUBSTITUTIONS + 1):
            try:
                # Augmentations that crop before converting (CellDataAugmentation) get the raw site and its bounds.
                read = self.get_site if getattr(self.transform, "accepts_raw_site", False) else self.get_image
                image = read(index)
                other = read(self.other_site_index(index)) if wants_other else None
                break
            except DataReadError as e:
                if self.on_error == "raise":
                    raise
                self._skips.record("unreadable samples (replaced by a random sample)", str(e))
                if attempt == _MAX_SUBSTITUTIONS:
                    raise DataReadError(f"{attempt + 1} unreadable samples in a row; last: {e}", e.path) from e
                if len(self) > 1:  # a uniformly random sample other than the one that failed
                    r = _randbelow(len(self) - 1, None)
                    index = r + 1 if r >= index else r
        if self.transform is None:
            out = image
        elif wants_other:
            out = self.transform(image, other_site=other)
        else:
            out = self.transform(image)
        target = self.target(index)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return out, target

    # ------------------------------------------------------------------------------------------------------------

    def _plate_normalizer(self, low: float, high: float, n_sites: int, seed: int) -> PlateNormalizer:
        bounds = {}
        for code, plate in enumerate(tqdm(self.plates, desc="plate statistics", unit="plate", leave=False)):
            # One generator per plate, seeded by (seed, barcode): a plate's sample, hence its statistics, does not
            # depend on which other plates the dataset holds.
            rng = np.random.default_rng([int(seed), zlib.crc32(plate.encode("utf-8"))])
            members = np.flatnonzero(self._plate_code == code)
            chosen = np.sort(rng.choice(members, size=min(int(n_sites), len(members)), replace=False))
            images = []
            for i in chosen:
                try:
                    images.append(self.read_corrected(int(i)))
                except DataReadError as e:
                    if self.on_error == "raise":
                        raise
                    self._skips.record("unreadable samples (plate statistics)", str(e))
            if not images:
                raise DataIndexError(f"plate {plate}: no readable site to compute normalization statistics")
            bounds[plate] = plate_bounds(images, low, high)
        return PlateNormalizer(bounds, low, high)

    def __repr__(self) -> str:
        return (
            f"CPJUMP1Dataset({len(self)} sites, {len(self.plates)} plates, channels={self.channel_names}, "
            f"normalizer={self.normalizer})"
        )


def _filter_cell_line(plate_list, cell_line) -> tuple[list[str] | None, list[str]]:
    # (the requested plates of this line, or None for "every plate found"; all plates of the line)
    from dinov2_cell.data import metadata as md

    line = md._canonical_cell_line(cell_line)
    exp = md.read_experiment_metadata()
    line_plates = sorted(set(exp.loc[exp["Cell_type"] == line, "Assay_Plate_Barcode"]))
    if plate_list is None:
        return None, line_plates
    kept = [p for p in plate_list if p in line_plates]
    if not kept:
        raise DataIndexError(f"none of the plates {plate_list} is a {line} plate")
    return kept, line_plates


def _as_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _randbelow(n: int, rng) -> int:
    if rng is None:
        return int(torch.randint(n, (1,)).item())
    if isinstance(rng, torch.Generator):
        return int(torch.randint(n, (1,), generator=rng).item())
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    if isinstance(rng, random.Random):
        return rng.randrange(n)
    raise TypeError(f"rng must be None, torch.Generator, numpy Generator or random.Random, got {type(rng).__name__}")
