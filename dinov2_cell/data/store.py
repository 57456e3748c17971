"""A prepared, memory-mappable store of Cell Painting sites: one uint16 ``.npy`` array per plate.

Layout of a store folder::

    store.json                    {"format": "dinov2_cell-plate-store", "version": 1, "channel_names": [...]}
    plates/<PLATE>.npy            uint16 array (n_sites, C, H, W), channels in store.json order
    plates/<PLATE>.index.csv      Metadata_Plate, Metadata_Well, Metadata_Site, ok   (line i = array row i)
    plates/<PLATE>.illum.npy      float32 (C, H, W) illumination functions (only when the source had them)
    plates/<PLATE>.percentiles.npy float64 (n_sites, 2, C, len(STORE_PERCENTILES)): per-site, per-channel percentiles
                                  of the raw image [0] and of the illumination-corrected image [1] (the same numbers
                                  the percentile normaliser computes), so reading normalises without estimating them
    plates/<PLATE>.json           completion marker: shape, channels, counts (written last)

Why this format: reading is the bottleneck of training (a fluorescent site is 5 x 1080 x 1080 x 2 bytes in 5
files). In a per-plate ``.npy`` one site is a single contiguous slab: reading it is one sequential read of exactly the
bytes needed, with no file open, TIFF parsing or decompression per channel, and ``np.load(mmap_mode="r")`` maps the
whole plate without reading it, so DataLoader workers share the page cache. ``.npy`` needs nothing beyond numpy, is
portable, and is easy to inspect. Raw uint16 values are kept (no normalization baked in) so any normalization can be
chosen at training time, and illumination functions are copied so the store is self-contained. Chunked/compressed
formats (zarr, HDF5) would save ~2x disk at the cost of decompression on every read, and need extra dependencies.

Writing is resumable per plate: each plate is written to a temporary file and renamed when complete; the
``<PLATE>.json`` marker is written (atomically) last, and a plate whose marker exists is skipped on the next run.
Sites that could not be read (only with ``on_error="skip"``) keep a zero-filled row and ``ok = 0`` in the index; the
reader drops them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.atomic import atomic_path, write_text
from dinov2_cell.data.errors import DataIndexError, DataReadError, SkipLog, check_on_error
from dinov2_cell.data.intensity import DEFAULT_PERCENTILES, apply_illumination, channel_percentiles
from dinov2_cell.data.readers import read_illum, read_tiff

logger = logging.getLogger("dinov2_cell.data")

STORE_FORMAT = "dinov2_cell-plate-store"
STORE_VERSION = 1
MARKER = "store.json"
# Percentiles precomputed per site and channel at prepare time (the normaliser's defaults and common alternatives).
STORE_PERCENTILES = tuple(sorted({*DEFAULT_PERCENTILES, 0.0, 0.5, 1.0, 2.0, 98.0, 99.0, 99.5, 100.0}))


def is_store(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a prepared store folder (has ``store.json``).

    Args:
        path: a folder (or None).

    Returns:
        True for a store.
    """
    return path is not None and (Path(path) / MARKER).is_file()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


# ----------------------------------------------------------------------------------------------------------------
# Reading


class PlateStore:
    """Read access to a prepared store.

    Args:
        path: the store folder.

    Raises:
        DataIndexError: not a store, unknown format/version, or a complete-marked plate whose array is missing or has
            the wrong shape.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        marker = self.path / MARKER
        if not marker.is_file():
            raise DataIndexError(f"not a prepared store (no {MARKER}): {self.path}")
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataIndexError(f"cannot read {marker}: {e}") from e
        if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
            raise DataIndexError(f"{marker}: unsupported store format {meta.get('format')!r} v{meta.get('version')}")
        self.channel_names: list[str] = list(meta["channel_names"])
        self.plates: dict[str, dict] = {}
        for pj in sorted((self.path / "plates").glob("*.json")):
            info = json.loads(pj.read_text(encoding="utf-8"))
            npy = self.path / "plates" / f"{info['plate']}.npy"
            if not npy.is_file():
                raise DataIndexError(f"store plate {info['plate']}: marker {pj} exists but {npy} is missing")
            self.plates[info["plate"]] = info
        self._mm: dict[str, np.ndarray] = {}
        self._illum: dict[str, np.ndarray | None] = {}
        self._pct: dict[str, np.ndarray] = {}

    def __getstate__(self):
        # memmaps are reopened lazily in each process (DataLoader workers)
        state = dict(self.__dict__)
        state["_mm"] = {}
        state["_illum"] = {}
        state["_pct"] = {}
        return state

    def site_index(self, plates: Sequence[str] | None = None) -> pd.DataFrame:
        """Sites of complete plates (unreadable rows dropped).

        Args:
            plates: plates to list (``None`` = all complete plates).

        Returns:
            DataFrame with Metadata_Plate, Metadata_Well, Metadata_Site, store_row.

        Raises:
            DataIndexError: a requested plate is not (completely) in the store.
        """
        plates = list(self.plates) if plates is None else list(plates)
        missing = [p for p in plates if p not in self.plates]
        if missing:
            raise DataIndexError(
                f"plate(s) {missing} not in store {self.path} (complete plates: {', '.join(self.plates) or 'none'})"
            )
        parts = []
        for p in plates:
            csv = self.path / "plates" / f"{p}.index.csv"
            df = pd.read_csv(csv, dtype={PLATE: str, WELL: str})
            if len(df) != self.plates[p]["n_sites"]:
                raise DataIndexError(f"{csv}: {len(df)} rows but the plate array has {self.plates[p]['n_sites']} sites")
            df["store_row"] = np.arange(len(df))
            parts.append(df[df["ok"] == 1].drop(columns="ok"))
        out = pd.concat(parts, ignore_index=True)
        out[SITE] = out[SITE].astype(int)
        return out

    def _array(self, plate: str) -> np.ndarray:
        mm = self._mm.get(plate)
        if mm is None:
            path = self.path / "plates" / f"{plate}.npy"
            try:
                mm = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataReadError(f"cannot open store array {path}: {e}", path) from e
            expected = tuple(self.plates[plate]["shape"])
            if mm.shape != expected or mm.dtype != np.uint16:
                raise DataReadError(f"{path}: array {mm.shape} {mm.dtype} does not match its marker {expected}", path)
            self._mm[plate] = mm
        return mm

    def view(self, plate: str, row: int, channels: Sequence[int] | slice) -> np.ndarray:
        """One site without copying it (a read-only view of the memory map when ``channels`` is a slice).

        Args:
            plate: barcode.
            row: row in the plate array.
            channels: channel positions (store order) or a slice.

        Returns:
            uint16 C x H x W array; do not modify it.
        """
        return self._array(plate)[row, channels]

    def read(self, plate: str, row: int, channels: Sequence[int] | slice) -> np.ndarray:
        """Read one site.

        Args:
            plate: barcode.
            row: row in the plate array.
            channels: channel positions (store order) or a slice.

        Returns:
            uint16 C x H x W array (a copy).
        """
        mm = self._array(plate)
        return np.array(mm[row, channels], copy=True)

    def percentiles(
        self, plate: str, row: int, channels: Sequence[int], q: Sequence[float], corrected: bool
    ) -> np.ndarray | None:
        """Percentiles of one site precomputed at prepare time, or None when the store lacks them.

        Args:
            plate: barcode.
            row: row in the plate array.
            channels: channel positions (store order).
            q: the wanted percentiles; each must be one of the stored ones (:data:`STORE_PERCENTILES`).
            corrected: of the image divided by the plate's illumination functions (else of the raw image).

        Returns:
            float64 array (len(channels), len(q)), or None.
        """
        stored = self.plates[plate].get("percentiles")
        if not stored or any(float(v) not in stored for v in q):
            return None
        arr = self._pct.get(plate)
        if arr is None:
            arr = self._pct[plate] = np.load(self.path / "plates" / f"{plate}.percentiles.npy", mmap_mode="r")
        cols = [stored.index(float(v)) for v in q]
        return np.asarray(arr[row, int(bool(corrected))][np.ix_(list(channels), cols)])

    def illum(self, plate: str) -> np.ndarray | None:
        """The plate's illumination functions (C x H x W, store channel order), or None."""
        if plate not in self._illum:
            path = self.path / "plates" / f"{plate}.illum.npy"
            self._illum[plate] = np.load(path) if self.plates[plate].get("illum") else None
        return self._illum[plate]


# ----------------------------------------------------------------------------------------------------------------
# Writing


def init_store(out: str | os.PathLike, channels: Sequence[str]) -> Path:
    """Create (or reopen) a store folder for ``channels``.

    Args:
        out: the store folder.
        channels: channel names the store holds.

    Returns:
        The resolved store path.

    Raises:
        DataIndexError: ``out`` is a store with other channels, or a non-empty folder that is not a store.
    """
    out = Path(out).expanduser().resolve()
    marker = out / MARKER
    if marker.is_file():
        meta = json.loads(marker.read_text(encoding="utf-8"))
        if list(meta.get("channel_names", [])) != list(channels):
            raise DataIndexError(
                f"store {out} holds channels {meta.get('channel_names')}, not {list(channels)}; use another --out"
            )
        return out
    if out.exists() and any(out.iterdir()):
        raise DataIndexError(f"--out {out} exists, is not empty and is not a store; refusing to write into it")
    (out / "plates").mkdir(parents=True, exist_ok=True)
    meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "channel_names": list(channels)}
    write_text(marker, json.dumps(meta, indent=1) + "\n")
    return out


def plate_is_complete(out: Path, plate: str, channels: Sequence[str]) -> bool:
    """Whether ``plate`` is already fully written in the store at ``out``.

    Args:
        out: store folder.
        plate: barcode.
        channels: expected channels.

    Returns:
        True when its marker exists, names the same channels, and the array has the recorded shape.
    """
    pj = out / "plates" / f"{plate}.json"
    npy = out / "plates" / f"{plate}.npy"
    if not (pj.is_file() and npy.is_file()):
        return False
    info = json.loads(pj.read_text(encoding="utf-8"))
    if info.get("channels") != list(channels):
        return False
    try:
        shape = np.load(npy, mmap_mode="r").shape
    except (OSError, ValueError):
        return False
    return list(shape) == list(info.get("shape", []))


def forget_plate(out: Path, plate: str) -> None:
    """Remove ``plate``'s completion marker so that it counts as absent until it is written again (``--overwrite``).

    Args:
        out: store folder.
        plate: barcode.
    """
    (Path(out) / "plates" / f"{plate}.json").unlink(missing_ok=True)


def write_plate(
    out: Path,
    plate: str,
    sites: pd.DataFrame,
    channels: Sequence[str],
    *,
    on_error: str = "raise",
    skips: SkipLog | None = None,
    progress: bool = True,
) -> dict:
    """Write one plate into the store.

    Args:
        out: store folder (from :func:`init_store`).
        plate: barcode.
        sites: this plate's rows of :func:`dinov2_cell.data.index.site_table` (``path_<ch>``, ``illum_<ch>`` columns).
        channels: channel names (store order).
        on_error: ``raise`` or ``skip`` (unreadable sites: zero row, ``ok = 0``, counted).
        skips: :class:`SkipLog`.
        progress: tqdm bar over the plate's sites.

    Returns:
        The plate's marker dict.

    Raises:
        DataReadError: an unreadable site (``on_error="raise"``); the partial file is removed.
        DataIndexError: no readable site, or several illumination files for one channel of the plate.
    """
    check_on_error(on_error)
    skips = skips or SkipLog("prepare")
    sites = sites.sort_values([WELL, SITE]).reset_index(drop=True)
    n, c = len(sites), len(channels)
    paths = sites[[f"path_{ch}" for ch in channels]].to_numpy()
    plates_dir = out / "plates"
    final = plates_dir / f"{plate}.npy"

    # The first readable site fixes the image shape of the plate.
    shape, first_ok = None, 0
    for first_ok in range(n):
        try:
            shape = read_tiff(paths[first_ok, 0]).shape
            break
        except DataReadError as e:
            if on_error == "raise":
                raise
            skips.record("unreadable sites", str(e))
    if shape is None:
        raise DataIndexError(f"plate {plate}: no readable site")

    illum = _plate_illum(plate, sites, channels, shape)
    for stale in plates_dir.glob(f".{plate}.*"):  # temporaries of this plate left by a killed run
        stale.unlink(missing_ok=True)
    ok = np.ones(n, dtype=np.int8)
    # Per-site percentiles of the image as the percentile normaliser sees it (raw, and divided by the illumination
    # functions when the plate has them), so that reading from the store skips the per-image estimate.
    pct = np.zeros((n, 2, c, len(STORE_PERCENTILES)), dtype=np.float64)
    with atomic_path(final, suffix="") as tmp:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(n, c) + tuple(shape))
        try:
            for r in tqdm(range(n), desc=f"prepare {plate}", unit="site", disable=not progress, leave=False):
                if r < first_ok:  # already found unreadable (and counted) while looking for the plate's shape
                    mm[r] = 0
                    ok[r] = 0
                    continue
                try:
                    for ch in range(c):
                        read_tiff(paths[r, ch], out=mm[r, ch], expected_shape=shape)
                except DataReadError as e:
                    if on_error == "raise":
                        raise DataReadError(
                            f"plate {plate} well {sites.at[r, 'Metadata_Well']} site {sites.at[r, 'Metadata_Site']}: "
                            f"{e}",
                            e.path,
                        ) from e
                    skips.record("unreadable sites", str(e))
                    mm[r] = 0
                    ok[r] = 0
                    continue
                pct[r, 0] = channel_percentiles(mm[r], STORE_PERCENTILES)
                pct[r, 1] = (
                    pct[r, 0]
                    if illum is None
                    else channel_percentiles(apply_illumination(mm[r], illum), STORE_PERCENTILES)
                )
            mm.flush()
        finally:
            del mm
    _save_npy(plates_dir / f"{plate}.percentiles.npy", pct)
    if illum is not None:
        _save_npy(plates_dir / f"{plate}.illum.npy", illum)
    index = sites[[PLATE, WELL, SITE]].assign(ok=ok)
    write_text(plates_dir / f"{plate}.index.csv", index.to_csv(index=False, lineterminator="\n"))
    info = {
        "plate": plate,
        "n_sites": int(n),
        "n_failed": int(n - ok.sum()),
        "shape": [int(n), int(c)] + [int(s) for s in shape],
        "channels": list(channels),
        "illum": illum is not None,
        "percentiles": list(STORE_PERCENTILES),
    }
    write_text(plates_dir / f"{plate}.json", json.dumps(info, indent=1) + "\n")
    return info


def _plate_illum(plate: str, sites: pd.DataFrame, channels: Sequence[str], shape) -> np.ndarray | None:
    cols = [f"illum_{ch}" for ch in channels]
    if not all(col in sites.columns for col in cols):
        return None
    have = [sorted(set(sites[col]) - {""}) for col in cols]
    if not any(have):
        return None
    stack = np.ones((len(channels),) + tuple(shape), dtype=np.float32)
    for k, (ch, files) in enumerate(zip(channels, have)):
        if len(files) > 1:
            raise DataIndexError(
                f"plate {plate}: channel {ch} uses {len(files)} illumination files ({files[0]}, {files[1]}, ...); "
                "the store keeps one per plate and channel"
            )
        if files:
            stack[k] = read_illum(files[0], shape)
    return stack
