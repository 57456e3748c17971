"""16-bit microscope images -> float32 in [0, 1]: illumination correction and intensity normalization.

Order of operations for one site (C x H x W):

1. Illumination correction (only when illumination functions are given): ``corrected = raw / illum`` per channel,
   the CellProfiler ``CorrectIlluminationApply`` "Divide" rule. Illumination functions are float arrays of the image
   shape (the Cell Painting Gallery stores them as ``.npy``); non-positive or non-finite values are an error.
2. Normalization to [0, 1], one of:

   * ``percentile`` (default): per image and per channel, ``(x - p_low) / (p_high - p_low)`` clipped to [0, 1], with
     ``p_low = 0.1`` and ``p_high = 99.9`` percentiles by default. Why this default: Cell Painting intensities drift
     between plates and sites (exposure, staining, lamp), and a few hot pixels or debris are far brighter than cells.
     Percentiles map the camera offset and background to ~0 and the brightest cells to ~1, so the training noise
     model (Poisson shot noise on [0, 1] intensities plus a dark offset and Gaussian read noise, see
     ``configs/cell_default_config.yaml``) sees a zero background and a full dynamic range in every channel,
     while outliers saturate instead of compressing the signal. Trade-off: global intensity changes of a whole
     image are normalized away; use ``plate`` to keep them.
   * ``plate``: the same scaling with per-plate, per-channel percentiles pooled over a sample of the plate's sites
     (keeps intensity differences between wells of a plate, removes plate-to-plate drift).
   * ``bitdepth``: ``x / (2**bit_depth - 1)`` clipped to [0, 1] (fixed scale; keeps every intensity difference,
     including plate drift; dim channels stay dim).

Percentiles are exact (numpy's default "linear" interpolation) over the pixels they are computed on. To stay cheap
on 1080 x 1080 images they are computed on a regular sub-grid of the image (every ``stride``-th row and column) with
the stride chosen so that about 65k pixels are used (stride 1, i.e. all pixels, up to 256 x 256); pass ``stride=1``
for exact full-image percentiles. For integer images the percentiles come from a histogram (``np.bincount``), which
gives the same numbers as ``np.percentile`` at a fraction of the cost.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from dinov2_cell.data import fused

NORMALIZATIONS = ("percentile", "plate", "bitdepth")
DEFAULT_PERCENTILES = (0.1, 99.9)
_TARGET_SAMPLES = 65536
# Elements per block of the scaling pass (512 KB of float32: fits a core's L2 cache).
_BLOCK_ELEMENTS = 131072


def auto_stride(height: int, width: int, target: int = _TARGET_SAMPLES) -> int:
    """Sub-grid stride so that about ``target`` pixels are used for percentile estimates.

    Args:
        height: image height.
        width: image width.
        target: wanted number of pixels.

    Returns:
        The stride (>= 1).
    """
    return max(1, int(math.floor(math.sqrt(height * width / target))))


def channel_percentiles(image: np.ndarray, q: Sequence[float], stride: int | None = None) -> np.ndarray:
    """Per-channel percentiles of a C x H x W (or H x W) array.

    Args:
        image: array, integer or float. Integer arrays use a histogram (exact, fast); float arrays ``np.percentile``.
        q: percentiles in [0, 100].
        stride: sub-grid stride (``None`` = :func:`auto_stride`; 1 = every pixel).

    Returns:
        float64 array of shape (C, len(q)) (C = 1 for a 2-D input).
    """
    arr = image[None] if image.ndim == 2 else image
    if stride is None:
        stride = auto_stride(arr.shape[-2], arr.shape[-1])
    q = np.asarray(q, dtype=np.float64)
    out = np.empty((arr.shape[0], len(q)), dtype=np.float64)
    for c in range(arr.shape[0]):
        sub = arr[c, ::stride, ::stride]
        out[c] = _percentiles(sub, q)
    return out


def _percentiles(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    n = values.size
    if n == 0:
        raise ValueError("cannot compute percentiles of an empty image")
    if values.dtype.kind == "u" and values.dtype.itemsize <= 2:
        # Histogram path: sorted value at rank k = first bin whose cumulative count exceeds k.
        pos = q / 100.0 * (n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        ranked = fused.ranked_values(values, np.concatenate([lo, hi]))  # compiled, no copy of the view
        if ranked is None:
            cum = np.cumsum(np.bincount(values.reshape(-1), minlength=1))
            ranked = np.concatenate([np.searchsorted(cum, lo, side="right"), np.searchsorted(cum, hi, side="right")])
        v_lo = ranked[: len(q)].astype(np.float64)
        v_hi = ranked[len(q) :].astype(np.float64)
        # numpy's "linear" interpolation rule, operation for operation (from the upper neighbour when the weight is
        # >= 0.5), so the result equals np.percentile exactly rather than to the last bit.
        t = pos - lo
        diff = v_hi - v_lo
        return np.where(t >= 0.5, v_hi - diff * (1 - t), v_lo + diff * t)
    return np.percentile(values.reshape(-1).astype(np.float64, copy=False), q)


def apply_illumination(raw: np.ndarray, illum: np.ndarray | None) -> np.ndarray:
    """Divide each channel by its illumination function (CellProfiler's "Divide").

    Args:
        raw: C x H x W image (any numeric dtype).
        illum: C x H x W float illumination functions, or ``None`` (returns ``raw`` unchanged).

    Returns:
        float32 C x H x W when ``illum`` is given, else ``raw``.
    """
    if illum is None:
        return raw
    out = raw.astype(np.float32)
    np.divide(out, illum, out=out)
    return out


def scale_to_unit(image: np.ndarray, low, high, inplace: bool = False) -> torch.Tensor:
    """``clip((x - low) / (high - low), 0, 1)`` per channel, as a float32 tensor.

    Channels with ``high <= low`` (a constant image) become all zeros rather than NaN. With numba installed this is
    one compiled pass (:mod:`dinov2_cell.data.fused`, bit-identical). Otherwise it is computed in place on one
    float32 buffer (convert, multiply, add, clip), block by block so that each block stays in the CPU cache through
    the four operations: on a 5 x 1080 x 1080 site this is faster and far less variable than whole-array torch ops
    under CPU contention with DataLoader workers. The clip is torch's ``clamp_`` on the same buffer (about half the
    time of ``np.clip`` on a cached block; identical values), the other three steps numpy's.

    Args:
        image: C x H x W array (uint16 or float).
        low: per-channel lower bound, shape (C,).
        high: per-channel upper bound, shape (C,).
        inplace: a float32 ``image`` may be overwritten (saves a copy; used for arrays the caller owns).

    Returns:
        float32 tensor C x H x W sharing memory with the buffer.
    """
    s, b = _unit_factors(low, high)
    owned = image.dtype == np.float32 and inplace and image.flags.c_contiguous and image.flags.writeable
    if image.ndim == 2:
        return scale_to_unit(image[None], low, high, inplace)[0]
    if image.ndim != 3:
        raise ValueError(f"expected a C x H x W image, got shape {image.shape}")
    out = image if owned else np.empty(image.shape, dtype=np.float32)
    out_t = torch.from_numpy(out)
    _scale_box(image, out, out_t, s, b, (0, image.shape[1], 0, image.shape[2]))
    return out_t


def _unit_factors(low, high) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale, bias) per channel, ``(x - low) / (high - low) = x * scale + bias``; 0, 0 where high <= low."""
    low = np.asarray(low, dtype=np.float64).reshape(-1)
    high = np.asarray(high, dtype=np.float64).reshape(-1)
    span = high - low
    safe = span > 0
    scale = np.where(safe, 1.0 / np.where(safe, span, 1.0), 0.0)
    return scale.astype(np.float32), (-low * scale).astype(np.float32)


def _scale_box(src: np.ndarray, out: np.ndarray, out_t: torch.Tensor, s, b, box) -> None:
    """``out[:, box] = clip(float32(src[:, box]) * s + b, 0, 1)``: the compiled pass, else numpy.

    The numpy path works on row blocks of ~_BLOCK_ELEMENTS that stay in the CPU cache through convert, multiply, add
    and clip: the same element-wise operations (bit-identical results) with one trip to memory instead of four.
    ``src`` may be ``out`` (in place: no conversion copy).
    """
    if fused.scale_clip(src, out, s, b, box):  # one compiled pass when numba is installed; same bits
        return
    r0, r1, c0, c1 = box
    rows = max(1, _BLOCK_ELEMENTS // max(1, c1 - c0))
    cs = slice(c0, c1)
    for c in range(src.shape[0]):
        sc, bc = s[c], b[c]  # scalars: faster than broadcasting (C, 1, 1) factors
        for r in range(r0, r1, rows):
            rs = slice(r, min(r + rows, r1))
            o = out[c, rs, cs]
            if src is not out:
                np.copyto(o, src[c, rs, cs], casting="unsafe")
            np.multiply(o, sc, out=o)
            np.add(o, bc, out=o)
            out_t[c, rs, cs].clamp_(0.0, 1.0)


# Tile side of RawSite's deferred conversion: 5 x 128 x 128 float32 (320 KB) stays in a core's L2 cache.
_TILE = 128


class RawSite:
    """A site before normalisation: its raw pixels and per-channel (low, high), converted to [0, 1] on demand.

    Training only looks at crops, so the dataset hands the augmentation this object instead of the float32 site
    (``augmentations`` accept either): :meth:`crop` converts just the ``_TILE`` x ``_TILE`` tiles a crop touches,
    once each (crops of one site overlap), with the same element-wise operations as :func:`scale_to_unit`, so every
    pixel is bit-identical to normalise-then-crop. ``pixels`` may be a read-only memory map of a prepared store:
    only the tiles read are paged in.

    Args:
        pixels: C x H x W array (uint16, or float32 after illumination correction).
        low: per-channel lower bound, shape (C,).
        high: per-channel upper bound, shape (C,).
    """

    def __init__(self, pixels: np.ndarray, low, high):
        if pixels.ndim != 3:
            raise ValueError(f"RawSite: expected a C x H x W image, got shape {pixels.shape}")
        self.pixels = pixels
        self.low = np.asarray(low, dtype=np.float64).reshape(-1)
        self.high = np.asarray(high, dtype=np.float64).reshape(-1)
        if self.low.shape != (pixels.shape[0],) or self.high.shape != (pixels.shape[0],):
            raise ValueError(
                f"RawSite: bounds of shape {self.low.shape}/{self.high.shape} for {pixels.shape[0]} channels"
            )
        self._s, self._b = _unit_factors(self.low, self.high)  # as scale_to_unit: bit-identical results
        self._out: np.ndarray | None = None
        self._out_t: torch.Tensor | None = None
        self._done: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.pixels.shape)

    def _convert(self, r0: int, r1: int, c0: int, c1: int) -> None:
        if self._out is None:
            self._out = np.empty(self.pixels.shape, dtype=np.float32)  # pages are only touched when written
            self._out_t = torch.from_numpy(self._out)
            _, h, w = self.pixels.shape
            self._done = np.zeros((-(-h // _TILE), -(-w // _TILE)), dtype=bool)
        last = -(-c1 // _TILE)
        for ti in range(r0 // _TILE, -(-r1 // _TILE)):
            tj = c0 // _TILE
            while tj < last:
                if self._done[ti, tj]:
                    tj += 1
                    continue
                run = tj  # a run of tiles still to convert in this tile row: one box, one call
                while tj < last and not self._done[ti, tj]:
                    tj += 1
                self._done[ti, run:tj] = True
                box = (ti * _TILE, (ti + 1) * _TILE, run * _TILE, tj * _TILE)
                _scale_box(self.pixels, self._out, self._out_t, self._s, self._b, box)

    def crop(self, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """The normalised pixels of a box, float32 in [0, 1] (a view; the caller must not write to it).

        Args:
            top: first row.
            left: first column.
            height: rows.
            width: columns.

        Returns:
            float32 tensor C x height x width.
        """
        _, h, w = self.pixels.shape
        if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= h and left + width <= w):
            raise ValueError(f"RawSite.crop: box ({top}, {left}, {height}, {width}) outside the {h} x {w} site")
        self._convert(top, top + height, left, left + width)
        return self._out_t[:, top : top + height, left : left + width]

    def to_tensor(self) -> torch.Tensor:
        """The whole normalised site, float32 C x H x W in [0, 1] (what the dataset's get_image returns)."""
        _, h, w = self.pixels.shape
        return self.crop(0, 0, h, w)


class Normalizer:
    """Base class: maps an (illumination-corrected) C x H x W array of one plate to a float32 tensor in [0, 1]."""

    name = "base"

    def __call__(self, image: np.ndarray, plate: str, inplace: bool = False) -> torch.Tensor:
        """Normalize one image.

        Args:
            image: C x H x W array.
            plate: plate barcode (used by per-plate normalizers).
            inplace: a float32 ``image`` may be overwritten.

        Returns:
            float32 tensor C x H x W in [0, 1].
        """
        raise NotImplementedError

    def site_bounds(self, image: np.ndarray, plate: str) -> np.ndarray:
        """The per-channel (low, high) this normaliser maps to (0, 1) for ``image``, as a (C, 2) float64 array.

        Args:
            image: C x H x W array.
            plate: plate barcode.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class PercentileNormalizer(Normalizer):
    """Per-image, per-channel percentile scaling (the default).

    Args:
        low: lower percentile (default 0.1).
        high: upper percentile (default 99.9).
        stride: sub-grid stride for the percentile estimate; ``None`` = automatic (~65k pixels), 1 = exact.
    """

    name = "percentile"

    def __init__(self, low: float = DEFAULT_PERCENTILES[0], high: float = DEFAULT_PERCENTILES[1], stride=None):
        _check_percentiles(low, high)
        self.low = float(low)
        self.high = float(high)
        self.stride = stride

    def __call__(self, image: np.ndarray, plate: str, inplace: bool = False) -> torch.Tensor:
        return self.scale(image, self.site_bounds(image, plate), inplace)

    def site_bounds(self, image: np.ndarray, plate: str) -> np.ndarray:
        """This image's (low, high) percentiles per channel, (C, 2)."""
        return channel_percentiles(image, (self.low, self.high), self.stride)

    def scale(self, image: np.ndarray, percentiles: np.ndarray, inplace: bool = False) -> torch.Tensor:
        """Scale with this image's (low, high) percentiles already known (e.g. precomputed by a prepared store).

        Args:
            image: C x H x W array.
            percentiles: (C, 2) array of the image's ``low`` and ``high`` percentiles per channel.
            inplace: a float32 ``image`` may be overwritten.

        Returns:
            float32 tensor C x H x W in [0, 1].
        """
        return scale_to_unit(image, percentiles[:, 0], percentiles[:, 1], inplace)


class BitDepthNormalizer(Normalizer):
    """Fixed scaling ``x / (2**bit_depth - 1)``, clipped to [0, 1].

    Args:
        bit_depth: bits of the camera data (16 for Phenix 16-bit TIFFs; 12 for 12-bit cameras stored in 16 bits).
    """

    name = "bitdepth"

    def __init__(self, bit_depth: int = 16):
        if not 1 <= int(bit_depth) <= 32:
            raise ValueError(f"bit_depth must be in 1..32, got {bit_depth}")
        self.bit_depth = int(bit_depth)

    def __call__(self, image: np.ndarray, plate: str, inplace: bool = False) -> torch.Tensor:
        b = self.site_bounds(image, plate)
        return scale_to_unit(image, b[:, 0], b[:, 1], inplace)

    def site_bounds(self, image: np.ndarray, plate: str) -> np.ndarray:
        """(0, 2**bit_depth - 1) for every channel, (C, 2)."""
        c = image.shape[0]
        return np.stack([np.zeros(c), np.full(c, float(2**self.bit_depth - 1))], axis=1)


class PlateNormalizer(Normalizer):
    """Per-plate, per-channel percentile scaling with precomputed bounds.

    Args:
        bounds: plate -> array (C, 2) of (low, high) intensities, e.g. from :func:`plate_bounds`.
        low: the lower percentile the bounds were computed with (recorded for ``repr``).
        high: the upper percentile the bounds were computed with.
    """

    name = "plate"

    def __init__(self, bounds: Mapping[str, np.ndarray], low: float = DEFAULT_PERCENTILES[0], high=None):
        self.low = float(low)
        self.high = float(DEFAULT_PERCENTILES[1] if high is None else high)
        self.bounds = {p: np.asarray(b, dtype=np.float64) for p, b in bounds.items()}

    def __call__(self, image: np.ndarray, plate: str, inplace: bool = False) -> torch.Tensor:
        b = self.site_bounds(image, plate)
        return scale_to_unit(image, b[:, 0], b[:, 1], inplace)

    def site_bounds(self, image: np.ndarray, plate: str) -> np.ndarray:
        """The plate's (low, high) per channel, (C, 2), checked against ``image``'s channel count."""
        try:
            b = self.bounds[plate]
        except KeyError:
            raise KeyError(f"no per-plate normalization statistics for plate {plate!r}") from None
        if b.shape != (image.shape[0], 2):
            raise ValueError(f"plate {plate}: statistics have shape {b.shape}, image has {image.shape[0]} channels")
        return b


def plate_bounds(images: Sequence[np.ndarray], low: float, high: float, stride: int | None = None) -> np.ndarray:
    """Per-channel (low, high) percentiles pooled over several images of one plate.

    Args:
        images: C x H x W arrays (same C).
        low: lower percentile.
        high: upper percentile.
        stride: sub-grid stride per image (``None`` = automatic).

    Returns:
        float64 array (C, 2).
    """
    _check_percentiles(low, high)
    if not images:
        raise ValueError("plate_bounds needs at least one image")
    c = images[0].shape[0]
    bounds = np.empty((c, 2))
    for ch in range(c):
        st = stride or auto_stride(images[0].shape[-2], images[0].shape[-1])
        pooled = np.concatenate([im[ch, ::st, ::st].reshape(-1) for im in images])
        bounds[ch] = _percentiles(pooled, np.asarray([low, high], dtype=np.float64))
    return bounds


def make_normalizer(
    name: str | Normalizer,
    *,
    percentile_low=DEFAULT_PERCENTILES[0],
    percentile_high=DEFAULT_PERCENTILES[1],
    bit_depth=16,
) -> Normalizer | str:
    """Build a per-image normalizer from its name.

    ``plate`` cannot be built here (it needs statistics from the data); it is returned as the string ``"plate"`` for
    the dataset to complete.

    Args:
        name: ``percentile``, ``plate``, ``bitdepth``, or a :class:`Normalizer` instance (returned unchanged).
        percentile_low: lower percentile for percentile/plate.
        percentile_high: upper percentile for percentile/plate.
        bit_depth: bits for ``bitdepth``.

    Returns:
        A Normalizer, or ``"plate"``.

    Raises:
        ValueError: unknown name (lists the valid ones).
    """
    if isinstance(name, Normalizer):
        return name
    key = str(name).strip().lower()
    if key == "percentile":
        return PercentileNormalizer(percentile_low, percentile_high)
    if key == "bitdepth":
        return BitDepthNormalizer(bit_depth)
    if key == "plate":
        _check_percentiles(percentile_low, percentile_high)
        return "plate"
    raise ValueError(f"unknown normalize {name!r}; valid: {', '.join(NORMALIZATIONS)}")


def _check_percentiles(low: float, high: float) -> None:
    if not (0.0 <= float(low) < float(high) <= 100.0):
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
