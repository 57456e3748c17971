"""Index raw Opera Phenix image folders: (plate, well, site, channel) -> image file.

Layout: ``<BARCODE>__<timestamp>-Measurement<N>/Images/rRRcCCfFFpPP-chNsk1fk1fl1.tiff``. The plate barcode is the
folder name before ``__``; rows r01..r16 -> A..P, columns c01..c24, sites f01..; only plane p01 is used. Channel
numbers map to names through :data:`~dinov2_cell.data.names.PHENIX_CHANNELS` (or a ``channel_map``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.data.errors import DataIndexError, SkipLog
from dinov2_cell.data.loaddata import INDEX_COLUMNS
from dinov2_cell.data.names import PHENIX_CHANNELS, PHENIX_RE, plate_from_folder, resolve_channels, well_name


def scan_phenix_folder(
    folder: str | os.PathLike,
    files: Sequence[str] | None = None,
    *,
    plate: str | None = None,
    channels: str | Sequence[str] | None = None,
    channel_map: Mapping[int, str] | None = None,
    on_error: str = "raise",
    skips: SkipLog | None = None,
) -> pd.DataFrame:
    """Index one Phenix image folder.

    Args:
        folder: folder with ``rRRcCCfFFpPP-chN...tiff`` files.
        files: its file names (listed when ``None``).
        plate: barcode (default: from the folder name, :func:`plate_from_folder`).
        channels: channel spec; ``None`` = every mapped channel present.
        channel_map: Phenix channel number -> name (default :data:`PHENIX_CHANNELS`).
        on_error: ``raise`` or ``skip`` (files of planes other than p01 are then dropped and counted).
        skips: the :class:`SkipLog` to count skips in.

    Returns:
        Long index (:data:`INDEX_COLUMNS`).

    Raises:
        DataIndexError: planes other than p01 (z-stacks are not supported).
    """
    folder = Path(folder).resolve()
    skips = skips or SkipLog("Phenix index")
    cmap = dict(PHENIX_CHANNELS if channel_map is None else channel_map)
    if files is None:
        files = sorted(f for f in os.listdir(folder) if PHENIX_RE.match(f))
    plate = plate or plate_from_folder(folder)
    wanted = None if channels is None else set(resolve_channels(channels, extra=cmap.values()))
    rows, other_planes = [], []
    for name in files:
        m = PHENIX_RE.match(name)
        if m is None:
            continue
        r, c, f, p, ch = (int(g) for g in m.groups())
        if p != 1:
            other_planes.append(name)
            continue
        ch_name = cmap.get(ch)
        if ch_name is None or (wanted is not None and ch_name not in wanted):
            continue
        rows.append((plate, well_name(r, c), f, ch_name, str(folder / name)))
    if other_planes:
        msg = f"{folder}: {len(other_planes)} file(s) of z-planes other than p01 (e.g. {other_planes[0]}); only p01 is read"
        if on_error == "raise":
            raise DataIndexError(msg + " (z-stacks are not supported; use on_error=skip to ignore them)")
        skips.record("files of other z-planes", msg, len(other_planes))
    out = pd.DataFrame(rows, columns=[PLATE, WELL, SITE, "channel", "path"])
    out[SITE] = out[SITE].astype(int)
    out["illum_path"] = ""
    out["origin"] = str(folder)
    return out[INDEX_COLUMNS]
