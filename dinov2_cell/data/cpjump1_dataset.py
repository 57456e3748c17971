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
normalize          percentile          ``percentile`` | ``plate`` | ``bitdepth`` (see ``normalize.py``)
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
seed               0                   seed of the site sample used for ``plate`` statistics
=================  ==================  ===========================================================================

Discovery: if ``root`` (or ``store``) holds ``store.json`` it is read as a prepared store; otherwise ``root`` is walked
once for LoadData CSVs and Phenix folders and each plate is indexed from its CSV when it has one, else from its folder
(details in ``index.py``). Samples are sorted by plate, well, site.

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
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from dinov2_cell.data import index as idx
from dinov2_cell.data.errors import DataIndexError, DataReadError, SkipLog, check_on_error
from dinov2_cell.data.normalize import (
    DEFAULT_PERCENTILES,
    Normalizer,
    PlateNormalizer,
    apply_illumination,
    make_normalizer,
    plate_bounds,
)
from dinov2_cell.data.readers import read_illum, read_tiff
from dinov2_cell.data.registry import register_dataset, to_list, to_str_or_list
from dinov2_cell.data.store import PlateStore, is_store

logger = logging.getLogger("dinov2_cell.data")

_MAX_SUBSTITUTIONS = 20


def parse_channel_map(value: str | Mapping[int, str] | None) -> dict[int, str] | None:
    """Parse ``"1/Mito,2/AGP,..."`` (or a dict) into {Phenix channel number: name}.

    Args:
        value: the string, a mapping, or None.

    Returns:
        The mapping, or None.

    Raises:
        ValueError: malformed item.
    """
    if value is None or isinstance(value, Mapping):
        return None if value is None else {int(k): str(v) for k, v in value.items()}
    out = {}
    for item in str(value).split(","):
        if not item.strip():
            continue
        num, sep, name = item.partition("/")
        if not sep or not num.strip().isdigit() or not name.strip():
            raise ValueError(f"channel_map item {item!r} is not NUMBER/NAME (e.g. 6/HighZBF)")
        out[int(num)] = name.strip()
    return out


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
            :class:`~dinov2_cell.data.normalize.Normalizer`.
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
        if illum not in idx.ILLUM_MODES:
            raise ValueError(f"illum must be one of {idx.ILLUM_MODES}, got {illum!r}")
        self.illum_mode = illum
        self._skips = SkipLog("CPJUMP1")
        if root is None and store is None:
            raise ValueError("CPJUMP1Dataset needs root= (plates folder, LoadData CSV or store) or store=")
        if root is not None and is_store(root):
            if store is not None and Path(store).resolve() != Path(root).resolve():
                raise ValueError(f"root {root} is a store and store={store} is another one; give one of them")
            store, root = root, None
        plate_list = _as_list(plates)
        well_list = None if wells is None else [idx.normalize_well(w) for w in _as_list(wells)]
        cmap = parse_channel_map(channel_map)
        self._store = PlateStore(store) if store is not None else None
        extra = list(self._store.channel_names) if self._store else []
        extra += list(cmap.values()) if cmap else []
        self.channel_names: list[str] = idx.resolve_channels(channels, extra=extra)

        if cell_line is not None:
            plate_list = self._filter_cell_line(plate_list, cell_line)

        parts = []
        store_plates: list[str] = []
        if self._store is not None:
            missing = [c for c in self.channel_names if c not in self._store.channel_names]
            if missing:
                raise DataIndexError(
                    f"store {self._store.path} lacks channel(s) {missing} (has {', '.join(self._store.channel_names)})"
                )
            wanted = list(self._store.plates) if plate_list is None else plate_list
            if plate_list is None and cell_line is not None:
                wanted = [p for p in wanted if p in self._cell_line_plates]
            store_plates = [p for p in wanted if p in self._store.plates]
            if root is None and len(store_plates) < len(wanted):
                lacking = [p for p in wanted if p not in self._store.plates]
                raise DataIndexError(
                    f"plate(s) {lacking} not in store {self._store.path} "
                    f"(complete plates: {', '.join(self._store.plates) or 'none'}); run prepare for them or give root="
                )
            if store_plates:
                s = self._store.site_index(store_plates)
                s["source"] = "store"
                parts.append(s)
        if root is not None:
            tiff_plates = None if plate_list is None else [p for p in plate_list if p not in store_plates]
            if tiff_plates is None or tiff_plates:
                long = idx.index_plates(
                    root,
                    plates=tiff_plates,
                    channels=self.channel_names,
                    source=source,
                    illum=illum,
                    on_error=on_error,
                    channel_map=cmap,
                    skips=self._skips,
                )
                long = long[~long["Metadata_Plate"].isin(store_plates)]
                if plate_list is None and cell_line is not None:
                    long = long[long["Metadata_Plate"].isin(self._cell_line_plates)]
                if len(long):
                    sites = idx.site_table(
                        long, self.channel_names, on_error=on_error, skips=self._skips, sites_per_well=sites_per_well
                    )
                    sites["source"] = "tiff"
                    parts.append(sites)
        if not parts:
            line = "" if cell_line is None else f", cell_line={cell_line}"
            raise DataIndexError(f"no sites to read (root={root}, store={store}, plates={plate_list}{line})")
        table = pd.concat(parts, ignore_index=True)
        if well_list is not None:
            table = table[table["Metadata_Well"].isin(well_list)]
            if table.empty:
                raise DataIndexError(f"none of the wells {well_list} has sites")
        table = table.sort_values(idx.SITE_KEYS, kind="stable").reset_index(drop=True)
        self._build_arrays(table)
        self._skips.log_summary()

        self.normalizer = make_normalizer(
            normalize, percentile_low=percentile_low, percentile_high=percentile_high, bit_depth=bit_depth
        )
        self._illum_cache: OrderedDict = OrderedDict()
        self._shape: dict[int, tuple] = {}
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

    def _filter_cell_line(self, plate_list, cell_line):
        from dinov2_cell.data import metadata as md

        line = md._canonical_cell_line(cell_line)
        exp = md.read_experiment_metadata()
        self._cell_line_plates = sorted(set(exp.loc[exp["Cell_type"] == line, "Assay_Plate_Barcode"]))
        if plate_list is None:
            return None  # filtered once the plates under root / in the store are known
        kept = [p for p in plate_list if p in self._cell_line_plates]
        if not kept:
            raise DataIndexError(f"none of the plates {plate_list} is a {line} plate")
        return kept

    def _build_arrays(self, table: pd.DataFrame) -> None:
        # Compact per-site arrays (no per-site Python objects): cheap to pickle to DataLoader workers and free of
        # the copy-on-read growth that lists of strings cause in forked workers.
        self.index = table[idx.SITE_KEYS + ["source"]].copy()
        self.plates = list(pd.unique(table["Metadata_Plate"]))
        self._plate_code = pd.Categorical(table["Metadata_Plate"], categories=self.plates).codes.astype(np.int32)
        n, c = len(table), len(self.channel_names)
        self._is_store = (table["source"] == "store").to_numpy()
        self._store_row = table["store_row"].fillna(-1).astype(np.int64).to_numpy() if "store_row" in table else None
        self._dirs: list[str] = []
        self._dir_idx = np.full((n, c), -1, dtype=np.int32)
        self._names = np.zeros((n, c), dtype="S1")
        self._illum_paths: list[str] = [""]
        self._illum_idx = np.zeros((n, c), dtype=np.int32)
        if (~self._is_store).any():
            dir_codes: dict[str, int] = {}
            ill_codes: dict[str, int] = {"": 0}
            names = np.empty((n, c), dtype=object)
            names[:] = b""
            tiff = np.flatnonzero(~self._is_store)
            for k, ch in enumerate(self.channel_names):
                full = table[f"path_{ch}"].to_numpy()[tiff]
                heads = [os.path.dirname(p) for p in full]
                self._dir_idx[tiff, k] = [dir_codes.setdefault(h, len(dir_codes)) for h in heads]
                names[tiff, k] = [os.path.basename(p).encode() for p in full]
                ill = table[f"illum_{ch}"].fillna("").to_numpy()[tiff]
                self._illum_idx[tiff, k] = [ill_codes.setdefault(p, len(ill_codes)) for p in ill]
            self._dirs = list(dir_codes)
            self._illum_paths = list(ill_codes)
            self._names = names.astype(bytes)
        if self._store is not None:
            pos = [self._store.channel_names.index(ch) for ch in self.channel_names]
            contiguous = pos == list(range(pos[0], pos[0] + len(pos)))
            self._store_channels = slice(pos[0], pos[0] + len(pos)) if contiguous else pos
            self._store_channel_pos = pos
        # Well groups: rows are sorted by plate, well, site, so each well is one contiguous run.
        keys = table["Metadata_Plate"].astype(str) + "/" + table["Metadata_Well"].astype(str)
        change = np.r_[True, keys.to_numpy()[1:] != keys.to_numpy()[:-1]]
        starts = np.flatnonzero(change)
        sizes = np.diff(np.r_[starts, n])
        group = np.cumsum(change) - 1
        self._group_start = starts[group].astype(np.int64)
        self._group_size = sizes[group].astype(np.int64)

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
        meta = md.well_metadata(plates) if plates else pd.DataFrame(columns=["Metadata_Plate", "Metadata_Well"])
        return self.index.merge(meta, on=["Metadata_Plate", "Metadata_Well"], how="left")

    def site_key(self, index: int) -> tuple[str, str, int]:
        """(plate, well, site) of sample ``index``."""
        row = self.index.iloc[index]
        return row["Metadata_Plate"], row["Metadata_Well"], int(row["Metadata_Site"])

    def file_paths(self, index: int) -> list[str]:
        """Image files of sample ``index`` in channel order (empty for store samples)."""
        if self._is_store[index]:
            return []
        return [os.path.join(self._dirs[d], n.decode()) for d, n in zip(self._dir_idx[index], self._names[index])]

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
        code = int(self._plate_code[index])
        try:
            if self._is_store[index]:
                return self._store.read(self.plates[code], int(self._store_row[index]), self._store_channels)
            return self._read_tiffs(index, code)
        except DataReadError as e:
            plate, well, site = self.site_key(index)
            raise DataReadError(f"sample {index} (plate {plate}, well {well}, site {site}): {e}", e.path) from e

    def _read_tiffs(self, index: int, code: int) -> np.ndarray:
        paths = self.file_paths(index)
        shape = self._shape.get(code)
        start = 0
        if shape is None:
            first = read_tiff(paths[0])
            shape = self._shape[code] = first.shape
            out = np.empty((len(paths),) + shape, dtype=np.uint16)
            out[0] = first
            start = 1
        else:
            out = np.empty((len(paths),) + shape, dtype=np.uint16)
        for c in range(start, len(paths)):
            read_tiff(paths[c], out=out[c], expected_shape=shape)
        return out

    def illumination(self, index: int, shape) -> np.ndarray | None:
        """Illumination functions (C x H x W float32) of sample ``index``, or None when it has none.

        Args:
            index: sample index.
            shape: (H, W) of its images.

        Returns:
            The stacked functions (cached per plate; channels without a function get ones).
        """
        if self.illum_mode == "no":
            return None
        if self._is_store[index]:
            plate = self.plates[int(self._plate_code[index])]
            key = ("store", plate)
            if key not in self._illum_cache:
                full = self._store.illum(plate)
                self._remember(key, None if full is None else np.ascontiguousarray(full[self._store_channel_pos]))
            return self._illum_cache[key]
        key = tuple(int(k) for k in self._illum_idx[index])
        if not any(key):
            return None
        if key not in self._illum_cache:
            stack = np.ones((len(key),) + tuple(shape), dtype=np.float32)
            for c, k in enumerate(key):
                if k:
                    stack[c] = read_illum(self._illum_paths[k], shape)
            self._remember(key, stack)
        return self._illum_cache[key]

    def _remember(self, key, value) -> None:
        # a few plates' worth of functions (8 x 1080 x 1080 float32 = 37 MB per plate)
        self._illum_cache[key] = value
        self._illum_cache.move_to_end(key)
        while len(self._illum_cache) > 4:
            self._illum_cache.popitem(last=False)

    def get_image(self, index: int) -> torch.Tensor:
        """The normalized image of sample ``index``.

        Args:
            index: sample index.

        Returns:
            float32 tensor C x H x W in [0, 1], channels in :attr:`channel_names` order.

        Raises:
            DataReadError: unreadable input (names the file).
        """
        raw = self.read_raw(index)
        image = apply_illumination(raw, self.illumination(index, raw.shape[1:]))
        # image is a fresh array owned here (raw read or division result): normalize it in place
        return self.normalizer(image, self.plates[int(self._plate_code[index])], inplace=True)

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
                image = self.get_image(index)
                other = self.get_image(self.other_site_index(index)) if wants_other else None
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

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_illum_cache"] = OrderedDict()
        return state

    # ------------------------------------------------------------------------------------------------------------

    def _plate_normalizer(self, low: float, high: float, n_sites: int, seed: int) -> PlateNormalizer:
        bounds = {}
        rng = np.random.default_rng(seed)
        for code, plate in enumerate(tqdm(self.plates, desc="plate statistics", unit="plate", leave=False)):
            members = np.flatnonzero(self._plate_code == code)
            chosen = np.sort(rng.choice(members, size=min(int(n_sites), len(members)), replace=False))
            images = []
            for i in chosen:
                try:
                    raw = self.read_raw(int(i))
                except DataReadError as e:
                    if self.on_error == "raise":
                        raise
                    self._skips.record("unreadable samples (plate statistics)", str(e))
                    continue
                images.append(apply_illumination(raw, self.illumination(int(i), raw.shape[1:])))
            if not images:
                raise DataIndexError(f"plate {plate}: no readable site to compute normalization statistics")
            bounds[plate] = plate_bounds(images, low, high)
        return PlateNormalizer(bounds, low, high)

    def __repr__(self) -> str:
        return (
            f"CPJUMP1Dataset({len(self)} sites, {len(self.plates)} plates, channels={self.channel_names}, "
            f"normalizer={self.normalizer})"
        )


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
