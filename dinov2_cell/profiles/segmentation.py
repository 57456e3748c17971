"""Nuclei, cell and cytoplasm segmentation of one Cell Painting site, in the manner of CellProfiler's modules.

* **Nuclei** (IdentifyPrimaryObjects): the DNA image is smoothed with a Gaussian (sigma = smallest nucleus
  diameter / 3.5, CellProfiler's automatic smoothing), thresholded globally (Otsu, or minimum cross-entropy = Li),
  holes are filled, and touching nuclei are declumped by intensity: local maxima of the smoothed image at least
  ``min_diameter / 1.5`` apart (CellProfiler's automatic maxima suppression distance) seed a watershed of the
  inverted smoothed image inside the foreground. Objects smaller than a disc of ``min_diameter / 2`` radius (about
  a quarter of the smallest nucleus) and objects whose contrast over the background is below ``min_snr`` times the
  image's noise level are discarded (the latter is what makes an empty, noise-only site yield no nucleus instead
  of noise blobs). Nuclei touching the border are discarded when less than half of a typical nucleus is inside the
  field (``border="half"``, the default; CellProfiler's pipelines discard every border object, ``border="discard"``,
  which on small fields such as 96 px crops loses most cells).
* **Cells** (IdentifySecondaryObjects, propagation): the cell image (mean of the AGP and RNA channels, each scaled by
  its 99.9th percentile) is smoothed and thresholded (Otsu, lowered by ``cell_threshold_factor`` because cytoplasm
  is much dimmer than membranes and nucleoli); each nucleus then grows into the foreground by a compact watershed
  of the image gradient (``compactness`` plays the role of CellProfiler's propagation regularisation: 0 follows
  edges only, large values give Voronoi-like cells). A cell always contains its whole nucleus and has its label.
* **Cytoplasm** (IdentifyTertiaryObjects): cell minus nucleus, same label (empty when the cell is its nucleus).

Sizes: ``nucleus_diameter=(min, max)`` in pixels; :func:`estimate_nucleus_diameter` estimates a typical diameter
from a few sites (median equivalent diameter of the thresholded DNA components), which :class:`SegmentationSettings`
turns into a range ``(0.7 d, 2 d)`` when ``nucleus_diameter`` is ``None``.

Bad sites are reported through :class:`SiteSkipped` with a reason (``"empty"``: no nucleus; ``"saturated"``: a
channel with more than ``max_saturated_fraction`` of its pixels at the image maximum; ``"blank channel"``: a
constant channel, e.g. a missing file read as zeros), so callers count skips per reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

NUCLEI_CHANNEL = "DNA"
CELL_CHANNELS = ("AGP", "RNA")
THRESHOLD_METHODS = ("otsu", "li")
BORDER_POLICIES = ("keep", "discard", "half")


class SiteSkipped(Exception):
    """A site that cannot be segmented; ``reason`` is a short category used for counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SegmentationSettings:
    """Segmentation parameters (recorded in a run's configuration).

    Args:
        nucleus_diameter: (min, max) nucleus diameter in pixels, or None to use ``typical_diameter``.
        typical_diameter: typical nucleus diameter in pixels when ``nucleus_diameter`` is None.
        threshold: ``"otsu"`` or ``"li"`` (minimum cross-entropy) for nuclei and cells.
        min_snr: least object contrast over the background, in units of the DNA image's noise std.
        cell_threshold_factor: the cell threshold is this fraction of the automatic one.
        compactness: watershed compactness of the cell propagation.
        max_saturated_fraction: a channel with more than this fraction of pixels at its maximum is saturated.
        border: nuclei touching the image border: ``"keep"``, ``"discard"`` (CellProfiler's default) or ``"half"``
            (discard those with less than half the median area of the other nuclei: mostly outside the field).
    """

    nucleus_diameter: tuple[float, float] | None = None
    typical_diameter: float = 10.0
    threshold: str = "otsu"
    min_snr: float = 5.0
    cell_threshold_factor: float = 0.5
    compactness: float = 0.01
    max_saturated_fraction: float = 0.25
    border: str = "half"

    def __post_init__(self):
        if self.threshold not in THRESHOLD_METHODS:
            raise ValueError(f"unknown threshold method {self.threshold!r}; choose from {THRESHOLD_METHODS}")
        if self.border not in BORDER_POLICIES:
            raise ValueError(f"unknown border policy {self.border!r}; choose from {BORDER_POLICIES}")
        lo, hi = self.diameter_range
        if not 0 < lo < hi:
            raise ValueError(f"nucleus diameter range must satisfy 0 < min < max, got ({lo}, {hi})")

    @property
    def diameter_range(self) -> tuple[float, float]:
        """(min, max) nucleus diameter in pixels."""
        if self.nucleus_diameter is not None:
            return float(self.nucleus_diameter[0]), float(self.nucleus_diameter[1])
        return 0.7 * float(self.typical_diameter), 2.0 * float(self.typical_diameter)

    def describe(self) -> dict:
        """JSON-able settings (the effective diameter range included)."""
        out = asdict(self)
        out["nucleus_diameter"] = list(self.diameter_range)
        return out


def noise_std(image: np.ndarray) -> float:
    """Pixel noise std from horizontal neighbour differences (median absolute difference, robust to edges).

    Args:
        image: 2-D image.

    Returns:
        The estimated std of independent pixel noise.
    """
    d = np.diff(np.asarray(image, dtype=np.float64), axis=1)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def _threshold(values: np.ndarray, method: str) -> float:
    from skimage.filters import threshold_li, threshold_otsu

    return float(threshold_otsu(values) if method == "otsu" else threshold_li(values))


def check_site(image: np.ndarray, channel_names: Sequence[str], max_saturated_fraction: float = 0.25) -> None:
    """Refuse blank or saturated channels (see module docstring).

    Args:
        image: C x H x W site.
        channel_names: channel names.
        max_saturated_fraction: saturation limit.

    Raises:
        SiteSkipped: with reason ``"blank channel"`` or ``"saturated"`` (the channel is named).
    """
    for c, name in enumerate(channel_names):
        ch = image[c]
        lo, hi = float(ch.min()), float(ch.max())
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            raise SiteSkipped("blank channel", f"channel {name} is constant ({hi:g}): missing or blank image")
        at_max = float(np.mean(ch >= hi))
        if at_max > max_saturated_fraction:
            raise SiteSkipped(
                "saturated", f"channel {name}: {at_max:.0%} of pixels at the maximum (> {max_saturated_fraction:.0%})"
            )


def estimate_nucleus_diameter(dna_images: Sequence[np.ndarray], threshold: str = "otsu") -> float:
    """Typical nucleus diameter in pixels: median equivalent diameter of the thresholded DNA components.

    Args:
        dna_images: a few DNA images of the plate.
        threshold: ``"otsu"`` or ``"li"``.

    Returns:
        The diameter (pixels).

    Raises:
        ValueError: no component in any image.
    """
    diameters = []
    for img in dna_images:
        img = np.asarray(img, dtype=np.float64)
        if img.max() - img.min() <= 0:
            continue
        smooth = ndi.gaussian_filter(img, 1.0)
        labels, n = ndi.label(ndi.binary_fill_holes(smooth > _threshold(smooth, threshold)))
        if n == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        areas = areas[areas >= 9]  # a few pixels of noise are not nuclei
        diameters.extend(np.sqrt(4.0 * areas / np.pi))
    if not diameters:
        raise ValueError("cannot estimate the nucleus size: no foreground object in the DNA images given")
    return float(np.median(diameters))


def segment_nuclei(dna: np.ndarray, settings: SegmentationSettings) -> np.ndarray:
    """Label nuclei on a DNA image.

    Args:
        dna: 2-D DNA image.
        settings: segmentation settings.

    Returns:
        int32 label image (0 = background, nuclei 1..N).
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import clear_border, relabel_sequential, watershed

    dna = np.asarray(dna, dtype=np.float64)
    dmin, _ = settings.diameter_range
    smooth = ndi.gaussian_filter(dna, dmin / 3.5)
    thr = _threshold(smooth, settings.threshold)
    fg = ndi.binary_fill_holes(smooth > thr)
    if not fg.any():
        return np.zeros(dna.shape, np.int32)
    # Declump by intensity: one seed per local maximum of the smoothed image, maxima closer than the suppression
    # distance merged.
    distance = max(1, int(round(dmin / 1.5)))
    peaks = peak_local_max(smooth, min_distance=distance, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(dna.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-smooth, markers, mask=fg)
    # Components the peak finder left without a seed (flat tops) still become objects.
    unseeded, n_un = ndi.label(fg & (labels == 0))
    if n_un:
        labels = np.where(unseeded > 0, unseeded + labels.max(), labels)
    labels = _filter_objects(labels, dna, fg, settings)
    if settings.border == "discard":
        labels = clear_border(labels)
    elif settings.border == "half":
        labels = _drop_border_slivers(labels)
    return relabel_sequential(labels)[0].astype(np.int32)


def _drop_border_slivers(labels: np.ndarray) -> np.ndarray:
    n = int(labels.max())
    if n == 0:
        return labels
    area = np.bincount(labels.ravel(), minlength=n + 1)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    inner = np.setdiff1d(np.arange(1, n + 1), edge)
    inner = inner[area[inner] > 0]
    typical = float(np.median(area[inner])) if len(inner) else float(np.median(area[1:][area[1:] > 0]))
    drop = edge[area[edge] < 0.5 * typical]
    lut = np.arange(n + 1, dtype=labels.dtype)
    lut[drop] = 0
    return lut[labels]


def _filter_objects(labels: np.ndarray, dna: np.ndarray, fg: np.ndarray, settings: SegmentationSettings):
    n = int(labels.max())
    if n == 0:
        return labels
    dmin, dmax = settings.diameter_range
    idx = np.arange(1, n + 1)
    area = ndi.sum_labels(np.ones_like(dna), labels, idx)
    mean = ndi.mean(dna, labels, idx)
    background = float(np.median(dna[~fg])) if (~fg).any() else float(dna.min())
    sigma = max(noise_std(dna), 1e-12)
    min_area = np.pi * (dmin / 4.0) ** 2
    keep = (area >= min_area) & ((mean - background) >= settings.min_snr * sigma)
    lut = np.zeros(n + 1, labels.dtype)
    lut[1:][keep] = idx[keep]
    return lut[labels]


def cell_image(image: np.ndarray, channel_names: Sequence[str], channels: Sequence[str] = CELL_CHANNELS) -> np.ndarray:
    """Image that outlines cells: mean of ``channels``, each divided by its 99.9th percentile.

    Args:
        image: C x H x W site.
        channel_names: channel names of ``image``.
        channels: channels to combine (those present are used).

    Returns:
        2-D float64 image.

    Raises:
        ValueError: none of ``channels`` is present.
    """
    present = [c for c in channels if c in channel_names]
    if not present:
        raise ValueError(f"cell segmentation needs one of the channels {list(channels)}; have {list(channel_names)}")
    out = np.zeros(image.shape[1:], np.float64)
    for c in present:
        ch = np.asarray(image[list(channel_names).index(c)], dtype=np.float64)
        out += ch / max(float(np.percentile(ch, 99.9)), 1e-12)
    return out / len(present)


def segment_cells(cell_img: np.ndarray, nuclei: np.ndarray, settings: SegmentationSettings) -> np.ndarray:
    """Grow each nucleus into its cell (see module docstring).

    Args:
        cell_img: 2-D cell outline image (:func:`cell_image`).
        nuclei: nuclei labels.
        settings: segmentation settings.

    Returns:
        int32 cell labels, label i = the cell of nucleus i.
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    if nuclei.max() == 0:
        return np.zeros_like(nuclei)
    dmin, _ = settings.diameter_range
    smooth = ndi.gaussian_filter(np.asarray(cell_img, dtype=np.float64), max(1.0, dmin / 7.0))
    thr = settings.cell_threshold_factor * _threshold(smooth, settings.threshold)
    fg = ndi.binary_fill_holes((smooth > thr) | (nuclei > 0))
    cells = watershed(sobel(smooth), nuclei, mask=fg, compactness=settings.compactness)
    cells[nuclei > 0] = nuclei[nuclei > 0]
    return cells.astype(np.int32)


def segment_site(
    image: np.ndarray, channel_names: Sequence[str], settings: SegmentationSettings
) -> dict[str, np.ndarray]:
    """Nuclei, cells and cytoplasm of one site.

    Args:
        image: C x H x W site (fluorescent channels, any intensity scale).
        channel_names: channel names (must include DNA and AGP or RNA).
        settings: segmentation settings.

    Returns:
        ``{"Nuclei": labels, "Cells": labels, "Cytoplasm": labels}``; object i is the same cell in all three.

    Raises:
        ValueError: DNA missing from ``channel_names`` or a shape mismatch.
        SiteSkipped: a blank or saturated channel, or no nucleus found.
    """
    names = list(channel_names)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != len(names):
        raise ValueError(f"expected a {len(names)} x H x W image for channels {names}, got shape {image.shape}")
    if NUCLEI_CHANNEL not in names:
        raise ValueError(f"nuclei segmentation needs the {NUCLEI_CHANNEL} channel; have {names}")
    check_site(image, names, settings.max_saturated_fraction)
    nuclei = segment_nuclei(image[names.index(NUCLEI_CHANNEL)], settings)
    if nuclei.max() == 0:
        raise SiteSkipped("empty", "no nucleus found")
    cells = segment_cells(cell_image(image, names), nuclei, settings)
    cytoplasm = np.where(nuclei > 0, 0, cells).astype(np.int32)
    return {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cytoplasm}
