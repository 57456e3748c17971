"""CellProfiler measurements of segmented objects with cp_measure, named as CellProfiler names them.

:func:`measure_objects` measures every object of every compartment (``Cells``, ``Cytoplasm``, ``Nuclei``) in every
channel with cp_measure's core functions (``Intensity``, ``AreaShape`` with Zernike shape moments and Feret
diameters, ``Texture``, ``Granularity``, ``RadialDistribution``, intensity Zernikes) and the colocalization measures
between every pair of channels; :class:`MeasureSettings` says which and with what parameters. Names follow
CellProfiler's ``Compartment_Family_Feature_Channel[_parameters]`` convention (see
:mod:`dinov2_cell.profiles.cellprofiler`); position features are dropped (:func:`is_position_feature`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
FAMILIES = ("intensity", "sizeshape", "texture", "granularity", "radial_distribution", "radial_zernikes", "correlation")
CORRELATIONS = ("pearson", "costes", "manders_fold", "rwc")
OBJECT_NUMBER = "Metadata_ObjectNumber"
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
