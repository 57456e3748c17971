"""Naming vocabulary of Cell Painting plates: channel names and groups, well names, Opera Phenix file names.

Canonical channel order: fluorescent ``DNA, ER, RNA, AGP, Mito`` then brightfield ``Brightfield, HighZBF, LowZBF``
(``Brightfield`` is the in-focus plane, ``HighZBF`` / ``LowZBF`` the planes above / below focus).
Groups: ``fluo`` (5), ``bf`` (3), ``all`` (8, fluo then bf), or an explicit comma-separated list of names.

Phenix channel numbers map to names through :data:`PHENIX_CHANNELS`: ch1 Mito, ch2 AGP, ch3 RNA, ch4 ER, ch5 DNA,
ch6 HighZBF, ch7 LowZBF, ch8 Brightfield. The fluorescent channels follow the CPJUMP1 acquisition (Alexa 647, 568,
488 long, 488, Hoechst); the order of the three brightfield planes (ch6-ch8) is an ASSUMPTION that has not been
confirmed; LoadData CSVs name the planes and remove the ambiguity (pass ``channel_map`` to override).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

FLUO_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
BF_CHANNELS = ("Brightfield", "HighZBF", "LowZBF")
ALL_CHANNELS = FLUO_CHANNELS + BF_CHANNELS
CHANNEL_GROUPS = {"fluo": FLUO_CHANNELS, "bf": BF_CHANNELS, "all": ALL_CHANNELS}

# Phenix channel number -> channel name (brightfield plane order ch6-ch8 assumed, not confirmed; see module docstring).
PHENIX_CHANNELS = {1: "Mito", 2: "AGP", 3: "RNA", 4: "ER", 5: "DNA", 6: "HighZBF", 7: "LowZBF", 8: "Brightfield"}

PHENIX_RE = re.compile(r"^r(\d+)c(\d+)f(\d+)p(\d+)-ch(\d+)sk\d+fk\d+fl\d+\.tiff?$", re.IGNORECASE)

_ROW_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_WELL_RE = re.compile(r"^([A-Za-z]{1,2})0*(\d+)$")


def resolve_channels(channels: str | Sequence[str] | None, extra: Iterable[str] = ()) -> list[str]:
    """Turn a channel spec into a list of channel names in the requested (or canonical group) order.

    Args:
        channels: ``"fluo"``, ``"bf"``, ``"all"``, a comma-separated string of names, or a list of names. Names are
            matched case-insensitively to the canonical ones (:data:`ALL_CHANNELS`). ``None`` = ``"fluo"``.
        extra: further valid names (e.g. non-standard channels found in a LoadData CSV).

    Returns:
        List of names.

    Raises:
        ValueError: unknown or repeated channel name (the message lists the valid names and groups).
    """
    if channels is None:
        channels = "fluo"
    if isinstance(channels, str):
        key = channels.strip()
        if key.lower() in CHANNEL_GROUPS:
            return list(CHANNEL_GROUPS[key.lower()])
        names = [c.strip() for c in key.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in channels]
        if len(names) == 1 and names[0].lower() in CHANNEL_GROUPS:
            return list(CHANNEL_GROUPS[names[0].lower()])
    if not names:
        raise ValueError("empty channel list")
    known = {c.lower(): c for c in list(ALL_CHANNELS) + list(extra)}
    out = []
    for name in names:
        canon = known.get(name.lower())
        if canon is None:
            raise ValueError(
                f"unknown channel {name!r}; valid names: {', '.join(known.values())}; groups: "
                f"{', '.join(CHANNEL_GROUPS)}"
            )
        if canon in out:
            raise ValueError(f"channel {canon!r} requested twice in {channels!r}")
        out.append(canon)
    return out


def well_name(row: int, col: int) -> str:
    """Row/column numbers (1-based) -> well name, e.g. (1, 1) -> "A01", (16, 24) -> "P24".

    Args:
        row: 1-based row.
        col: 1-based column.

    Returns:
        The well name.
    """
    if not 1 <= row <= 26 or col < 1:
        raise ValueError(f"row {row} / column {col} out of range for a well name")
    return f"{_ROW_LETTERS[row - 1]}{col:02d}"


def parse_well(name: str) -> tuple[int, int]:
    """Well name -> (row, col), 1-based; accepts "A01", "a1", "P24".

    Args:
        name: the well name.

    Returns:
        (row, col).

    Raises:
        ValueError: not a well name.
    """
    m = _WELL_RE.match(str(name).strip())
    if not m or len(m.group(1)) != 1:
        raise ValueError(f"not a well name: {name!r}")
    return _ROW_LETTERS.index(m.group(1).upper()) + 1, int(m.group(2))


def normalize_well(name: str) -> str:
    """Canonical well name ("a1" -> "A01").

    Args:
        name: the well name.

    Returns:
        Canonical form.
    """
    return well_name(*parse_well(name))


def phenix_filename(row: int, col: int, site: int, channel: int, plane: int = 1) -> str:
    """The Opera Phenix file name of one image, e.g. ``r01c01f01p01-ch1sk1fk1fl1.tiff``.

    Args:
        row: 1-based row.
        col: 1-based column.
        site: 1-based field (site).
        channel: Phenix channel number.
        plane: z plane.

    Returns:
        The file name.
    """
    return f"r{row:02d}c{col:02d}f{site:02d}p{plane:02d}-ch{channel}sk1fk1fl1.tiff"


def plate_from_folder(folder: str | os.PathLike) -> str:
    """Plate barcode of a Phenix folder: ``.../BR00116991__2020-11-05T19_51_35-Measurement1/Images`` -> BR00116991.

    Args:
        folder: the folder holding the TIFFs (an ``Images`` folder is named after its parent).

    Returns:
        The barcode.
    """
    p = Path(folder)
    name = p.parent.name if p.name.lower() == "images" else p.name
    return name.split("__")[0]


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
