"""How a plate's images are read, chosen once per plate: TIFF files (LoadData CSV or Phenix scan) or a prepared store.

Every reader is a :class:`PlateReader`: the sites of one plate (``sites``: Metadata_Plate, Metadata_Well,
Metadata_Site, sorted by well and site) and, for site ``i`` of that table, ``read_raw(i)`` (uint16 C x H x W, no
correction), ``illumination(i, shape)`` (float32 C x H x W functions or None), ``read(i)`` (the image the normaliser
sees: illumination-corrected when functions exist), ``site_percentiles(i, q)`` (precomputed per-channel percentiles
when the reader has them) and ``file_paths(i)``.

* :class:`TiffPlateReader` reads one uint16 TIFF per channel; its files come from a LoadData CSV
  (``loaddata.py``) or a Phenix folder scan (``phenix.py``): the two indexers give the same site table, so one reader
  serves both (``indexed_from`` says which). Illumination functions named by the CSV are read once and cached in an
  LRU shared by every reader of a dataset.
* :class:`StorePlateReader` reads one contiguous slab of a prepared store (``store.py``), with the illumination
  functions and per-site percentiles written at prepare time.

:func:`open_plate_readers` picks the reader of every requested plate: a plate complete in the store is read from it,
any other plate is indexed under ``root`` (its LoadData CSV when it has one, else its Phenix folder).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.data import index as idx
from dinov2_cell.data.errors import DataIndexError, SkipLog
from dinov2_cell.data.intensity import apply_illumination
from dinov2_cell.data.readers import read_illum, read_tiff
from dinov2_cell.data.store import PlateStore

# A few plates' worth of illumination functions (8 x 1080 x 1080 float32 = 37 MB per plate).
ILLUM_CACHE_ENTRIES = 4


class PlateReader:
    """The sites of one plate and how to read them (``i`` is a row of :attr:`sites`).

    Attributes:
        plate: barcode.
        kind: ``"tiff"`` or ``"store"`` (the ``source`` column of the dataset's index).
        sites: Metadata_Plate, Metadata_Well, Metadata_Site of each site, sorted by well and site.
    """

    plate: str
    kind: str
    sites: pd.DataFrame
    # names of the per-site arrays (first axis = site) that :meth:`keep_sites` subsets
    _per_site: tuple[str, ...] = ()

    def read_raw(self, i: int) -> np.ndarray:
        """Read one site.

        Args:
            i: row of :attr:`sites`.

        Returns:
            uint16 C x H x W image (no illumination correction).

        Raises:
            DataReadError: missing or unreadable input (names the file).
        """
        raise NotImplementedError

    def illumination(self, i: int, shape) -> np.ndarray | None:
        """Illumination functions of one site.

        Args:
            i: row of :attr:`sites`.
            shape: (H, W) of its images.

        Returns:
            float32 C x H x W functions (ones for channels without one), or None when the site has none.
        """
        return None

    def read(self, i: int) -> np.ndarray:
        """Site ``i`` as the normaliser sees it.

        Args:
            i: row of :attr:`sites`.

        Returns:
            uint16 C x H x W (possibly a read-only view), or float32 divided by its illumination functions.
        """
        raw = self.read_raw(i)
        return apply_illumination(raw, self.illumination(i, raw.shape[1:]))

    def site_percentiles(self, i: int, q: Sequence[float]) -> np.ndarray | None:
        """Per-channel percentiles of :meth:`read` precomputed when the plate was prepared.

        Args:
            i: row of :attr:`sites`.
            q: percentiles in [0, 100].

        Returns:
            float64 (C, len(q)) array, or None when not available.
        """
        return None

    def file_paths(self, i: int) -> list[str]:
        """Image files of one site.

        Args:
            i: row of :attr:`sites`.

        Returns:
            Paths in channel order (empty when the reader does not read files).
        """
        return []

    def keep_sites(self, mask: np.ndarray) -> PlateReader:
        """Keep only the sites where ``mask`` is True (e.g. a wells filter), in place.

        Args:
            mask: boolean array, one value per row of :attr:`sites`.

        Returns:
            This reader.
        """
        self.sites = self.sites[mask].reset_index(drop=True)
        for name in self._per_site:
            setattr(self, name, getattr(self, name)[mask])
        return self


class IllumCache:
    """LRU of illumination stacks shared by the readers of one dataset (emptied when pickled to a worker)."""

    def __init__(self, entries: int = ILLUM_CACHE_ENTRIES):
        self.entries = int(entries)
        self._items: OrderedDict = OrderedDict()

    def get(self, key, load):
        """The cached value of ``key``, computed by ``load()`` on a miss.

        Args:
            key: hashable key.
            load: zero-argument function giving the value.

        Returns:
            The value.
        """
        if key not in self._items:
            self._items[key] = load()
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return self._items[key]

    def __getstate__(self):
        return {"entries": self.entries, "_items": OrderedDict()}


class TiffPlateReader(PlateReader):
    """One plate read from uint16 TIFF files, one per channel.

    Args:
        plate: barcode.
        sites: this plate's rows of :func:`dinov2_cell.data.index.site_table` (``path_<ch>``, ``illum_<ch>``).
        channels: channel names in output order.
        illum_mode: ``auto`` / ``yes`` / ``no``.
        cache: illumination cache shared with the dataset's other readers.
        indexed_from: ``"csv"`` (LoadData) or ``"scan"`` (Phenix folder), for messages.
    """

    kind = "tiff"
    _per_site = ("_dir_idx", "_names", "_illum_idx")

    def __init__(
        self,
        plate: str,
        sites: pd.DataFrame,
        channels: Sequence[str],
        illum_mode: str = "auto",
        cache: IllumCache | None = None,
        indexed_from: str = "csv",
    ):
        self.plate = plate
        self.indexed_from = indexed_from
        self.illum_mode = illum_mode
        self.cache = cache if cache is not None else IllumCache()
        sites = sites.sort_values([WELL, SITE], kind="stable").reset_index(drop=True)
        self.sites = sites[idx.SITE_KEYS].copy()
        # Compact per-site arrays (no per-site Python objects): cheap to pickle to DataLoader workers and free of
        # the copy-on-read growth that lists of strings cause in forked workers.
        n, c = len(sites), len(channels)
        dir_codes: dict[str, int] = {}
        ill_codes: dict[str, int] = {"": 0}
        self._dir_idx = np.empty((n, c), dtype=np.int32)
        names = np.empty((n, c), dtype=object)
        self._illum_idx = np.zeros((n, c), dtype=np.int32)
        for k, ch in enumerate(channels):
            full = sites[f"path_{ch}"].to_numpy()
            self._dir_idx[:, k] = [dir_codes.setdefault(os.path.dirname(p), len(dir_codes)) for p in full]
            names[:, k] = [os.path.basename(p).encode() for p in full]
            ill = sites[f"illum_{ch}"].fillna("").to_numpy() if f"illum_{ch}" in sites else [""] * n
            self._illum_idx[:, k] = [ill_codes.setdefault(p, len(ill_codes)) for p in ill]
        self._dirs = list(dir_codes)
        self._names = names.astype(bytes) if n else np.zeros((0, c), dtype="S1")
        self._illum_paths = list(ill_codes)
        self._shape: tuple | None = None

    def file_paths(self, i: int) -> list[str]:
        return [os.path.join(self._dirs[d], n.decode()) for d, n in zip(self._dir_idx[i], self._names[i])]

    def read_raw(self, i: int) -> np.ndarray:
        paths = self.file_paths(i)
        start = 0
        if self._shape is None:
            first = read_tiff(paths[0])
            self._shape = first.shape
            out = np.empty((len(paths),) + self._shape, dtype=np.uint16)
            out[0] = first
            start = 1
        else:
            out = np.empty((len(paths),) + self._shape, dtype=np.uint16)
        for c in range(start, len(paths)):
            read_tiff(paths[c], out=out[c], expected_shape=self._shape)
        return out

    def illumination(self, i: int, shape) -> np.ndarray | None:
        if self.illum_mode == "no":
            return None
        key = tuple(int(k) for k in self._illum_idx[i])
        if not any(key):
            return None

        def load():
            stack = np.ones((len(key),) + tuple(shape), dtype=np.float32)
            for c, k in enumerate(key):
                if k:
                    stack[c] = read_illum(self._illum_paths[k], shape)
            return stack

        return self.cache.get(("tiff", self.plate, key), load)


class StorePlateReader(PlateReader):
    """One plate read from a prepared store.

    Args:
        store: the opened store.
        plate: barcode (complete in the store).
        channels: channel names in output order (a subset of the store's).
        illum_mode: ``auto`` / ``yes`` / ``no``.
        cache: illumination cache shared with the dataset's other readers.
    """

    kind = "store"
    _per_site = ("_rows",)

    def __init__(
        self,
        store: PlateStore,
        plate: str,
        channels: Sequence[str],
        illum_mode: str = "auto",
        cache: IllumCache | None = None,
    ):
        self.store = store
        self.plate = plate
        self.illum_mode = illum_mode
        self.cache = cache if cache is not None else IllumCache()
        table = store.site_index([plate])
        table = table.sort_values([WELL, SITE], kind="stable").reset_index(drop=True)
        self.sites = table[idx.SITE_KEYS].copy()
        self._rows = table["store_row"].to_numpy(np.int64)
        pos = [store.channel_names.index(ch) for ch in channels]
        contiguous = pos == list(range(pos[0], pos[0] + len(pos)))
        self._channels = slice(pos[0], pos[0] + len(pos)) if contiguous else pos
        self._channel_pos = pos

    def read_raw(self, i: int) -> np.ndarray:
        return self.store.read(self.plate, int(self._rows[i]), self._channels)

    def illumination(self, i: int, shape=None) -> np.ndarray | None:
        if self.illum_mode == "no":
            return None

        def load():
            full = self.store.illum(self.plate)
            return None if full is None else np.ascontiguousarray(full[self._channel_pos])

        return self.cache.get(("store", self.plate), load)

    def read(self, i: int) -> np.ndarray:
        # Without illumination functions this is a read-only view of the memory-mapped plate: the normaliser's
        # float conversion is then the only pass over the site (no intermediate uint16 copy).
        view = self.store.view(self.plate, int(self._rows[i]), self._channels)
        return apply_illumination(view, self.illumination(i))

    def site_percentiles(self, i: int, q: Sequence[float]) -> np.ndarray | None:
        corrected = self.illum_mode != "no" and bool(self.store.plates[self.plate].get("illum"))
        return self.store.percentiles(self.plate, int(self._rows[i]), self._channel_pos, q, corrected)


def open_plate_readers(
    *,
    root: str | os.PathLike | None,
    store: PlateStore | None,
    plates: Sequence[str] | None,
    channels: Sequence[str],
    cell_line_plates: Sequence[str] | None = None,
    wells: Sequence[str] | None = None,
    source: str = "auto",
    illum: str = "auto",
    on_error: str = "raise",
    channel_map: Mapping[int, str] | None = None,
    sites_per_well: int | None = None,
    skips: SkipLog | None = None,
) -> list[PlateReader]:
    """One reader per plate, sorted by barcode: the store's for plates it holds, TIFF files under ``root`` otherwise.

    Args:
        root: folder with LoadData CSVs and/or Phenix folders (or one CSV); None = store only.
        store: opened prepared store, or None.
        plates: barcodes (None = every plate found).
        channels: channel names in output order.
        cell_line_plates: when given, keep only these plates (a cell-line filter).
        wells: keep only these (canonical) wells.
        source: ``auto`` / ``csv`` / ``scan`` (see ``index.py``).
        illum: ``auto`` / ``yes`` / ``no``.
        on_error: ``raise`` or ``skip``.
        channel_map: Phenix channel number -> name.
        sites_per_well: the most sites a well may have.
        skips: :class:`SkipLog` for skipped items.

    Returns:
        The readers (each with at least one site); empty when nothing was found.

    Raises:
        DataIndexError: no site left in the requested wells, a plate missing from the store without a ``root``, a channel missing from the
            store, or an index check failed.
    """
    skips = skips if skips is not None else SkipLog("CPJUMP1")
    cache = IllumCache()
    keep_line = None if cell_line_plates is None else set(cell_line_plates)
    readers: list[PlateReader] = []
    store_plates: list[str] = []
    if store is not None:
        missing = [c for c in channels if c not in store.channel_names]
        if missing:
            raise DataIndexError(
                f"store {store.path} lacks channel(s) {missing} (has {', '.join(store.channel_names)})"
            )
        wanted = list(store.plates) if plates is None else list(plates)
        if plates is None and keep_line is not None:
            wanted = [p for p in wanted if p in keep_line]
        store_plates = [p for p in wanted if p in store.plates]
        if root is None and len(store_plates) < len(wanted):
            lacking = [p for p in wanted if p not in store.plates]
            raise DataIndexError(
                f"plate(s) {lacking} not in store {store.path} "
                f"(complete plates: {', '.join(store.plates) or 'none'}); run prepare for them or give root="
            )
        readers.extend(StorePlateReader(store, p, channels, illum, cache) for p in store_plates)
    if root is not None:
        tiff_plates = None if plates is None else [p for p in plates if p not in store_plates]
        if tiff_plates is None or tiff_plates:
            long = idx.index_plates(
                root,
                plates=tiff_plates,
                channels=channels,
                source=source,
                illum=illum,
                on_error=on_error,
                channel_map=channel_map,
                skips=skips,
            )
            long = long[~long[PLATE].isin(store_plates)]
            if plates is None and keep_line is not None:
                long = long[long[PLATE].isin(keep_line)]
            if len(long):
                table = idx.site_table(long, channels, on_error=on_error, skips=skips, sites_per_well=sites_per_well)
                origin = long.groupby(PLATE)["origin"].first()
                for plate, rows in table.groupby(PLATE, sort=True):
                    how = "csv" if str(origin[plate]).lower().endswith((".csv", ".csv.gz")) else "scan"
                    readers.append(TiffPlateReader(plate, rows, channels, illum, cache, indexed_from=how))
    if not readers:
        return []
    if wells is not None:
        kept = []
        for s in readers:
            mask = s.sites[WELL].isin(list(wells)).to_numpy()
            if mask.any():
                kept.append(s.keep_sites(mask))
        if not kept:
            raise DataIndexError(f"none of the wells {list(wells)} has sites")
        readers = kept
    return sorted(readers, key=lambda s: s.plate)
