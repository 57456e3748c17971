"""One compiled pass for ``clip(x * s + b, 0, 1)`` per channel: the float32 conversion of a site.

Normalising a 5 x 1080 x 1080 uint16 site is bound by memory traffic: numpy needs a conversion pass and then a
multiply, an add and a clip over a float32 buffer (cache-blocked in :func:`dinov2_cell.data.intensity.scale_to_unit`,
still about twice the time of a bare ``astype(float32)``). This module compiles the four steps into one loop with
numba, reading each raw pixel once and writing each float once. The arithmetic is the same float32 operations in the
same order (convert, multiply by ``s``, add ``b``, clip), without fused multiply-add contraction (numba's default
``fastmath=False``), so the output is bit-identical to the numpy path; ``tests/data/test_fused.py`` checks it.

numba is optional: without it (or with ``DINOV2_CELL_NUMBA=0`` in the environment) :func:`scale_clip` returns
False, :func:`ranked_values` None, and callers use their numpy path. Compiled code is cached on disk (numba ``cache=True``), so a new process
(a DataLoader worker) loads it instead of compiling again.
"""

from __future__ import annotations

import logging
import os

import numpy as np

logger = logging.getLogger("dinov2_cell.data")

# Dtypes compiled for: camera data (uint8/uint16) and illumination-corrected float32 sites.
_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_kernel = None
_ranks = None
_tried = False


def _import_numba():
    """``import numba``, also after upstream DINOv2 replaced ``builtins.print``.

    ``dinov2.distributed.enable`` swaps ``builtins.print`` for a rank-filtering wrapper defined in
    ``dinov2.distributed``; numba registers the builtin ``print`` by looking it up in its module and fails on the
    wrapper ("module 'dinov2.distributed' has no attribute 'print'"). The wrapper keeps the real print in its closure:
    it is put back for the import only.
    """
    import builtins

    current = builtins.print
    if getattr(current, "__module__", "builtins") == "builtins":
        import numba

        return numba
    original = None
    for cell in getattr(current, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if getattr(value, "__module__", None) == "builtins" and getattr(value, "__name__", None) == "print":
            original = value
    if original is None:
        raise ImportError("builtins.print is replaced by a function that does not wrap the builtin print")
    builtins.print = original
    try:
        import numba
    finally:
        builtins.print = current
    return numba


def _compile():
    numba = _import_numba()

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def kernel(src, dst, scale, bias, r0, r1, c0, c1):  # pragma: no cover - compiled; its output is tested
        # Whole arrays and a box rather than views of a tile, and each row a 1-D slice walked from index 0: that is
        # the form LLVM vectorises (indexing the 3-D arrays from r0/c0 compiles to code ~5x slower than numpy).
        zero = np.float32(0.0)
        one = np.float32(1.0)
        for c in range(src.shape[0]):
            s = scale[c]
            b = bias[c]
            for i in range(r0, r1):
                src_row = src[c, i, c0:c1]
                dst_row = dst[c, i, c0:c1]
                for j in range(src_row.shape[0]):
                    v = np.float32(src_row[j]) * s + b
                    # NaN compares false both ways and stays NaN, as torch's clamp leaves it
                    if v < zero:
                        v = zero
                    elif v > one:
                        v = one
                    dst_row[j] = v

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def ranks(values, wanted, out):  # pragma: no cover - compiled; its output is tested against np.percentile
        # Histogram of the (strided) 2-D view, no copy; then one walk of the cumulative counts: the value at sorted
        # rank k is the first bin whose cumulative count exceeds k.
        hist = np.zeros(65536, np.int64)
        for i in range(values.shape[0]):
            row = values[i]
            for j in range(row.shape[0]):
                hist[row[j]] += 1
        order = np.argsort(wanted)
        k = 0
        cum = 0
        for v in range(65536):
            cum += hist[v]
            while k < order.shape[0] and wanted[order[k]] < cum:
                out[order[k]] = v
                k += 1
            if k == order.shape[0]:
                break

    return kernel, ranks


def available() -> bool:
    """Whether the compiled pass can be used (numba importable and not disabled by ``DINOV2_CELL_NUMBA=0``)."""
    global _kernel, _ranks, _tried
    if os.environ.get("DINOV2_CELL_NUMBA", "1").strip() == "0":
        return False
    if not _tried:
        _tried = True
        try:
            _kernel, _ranks = _compile()
        except ImportError as e:
            logger.debug("numba not installed (%s): normalisation uses the numpy path", e)
            _kernel = _ranks = None
        except Exception as e:  # e.g. no writable cache folder for cache=True: slower, never wrong
            logger.warning("numba unusable (%s: %s): normalisation uses the numpy path", type(e).__name__, e)
            _kernel = _ranks = None
    return _kernel is not None


def scale_clip(
    src: np.ndarray, dst: np.ndarray, scale: np.ndarray, bias: np.ndarray, box: tuple[int, int, int, int] | None = None
) -> bool:
    """``dst[c] = clip(float32(src[c]) * scale[c] + bias[c], 0, 1)`` in one compiled pass, if possible.

    Args:
        src: C x H x W array, uint8, uint16 or float32 (any strides; may be a read-only memory map).
        dst: float32 C x H x W array of the same shape (may be ``src`` itself for float32).
        scale: float32 array (C,).
        bias: float32 array (C,).
        box: (top, bottom, left, right) rows and columns to write, every channel; ``None`` = the whole image.

    Returns:
        True when ``dst`` was written; False when the compiled pass is unavailable or does not apply to these
        arrays (then nothing was written and the caller uses numpy).
    """
    if src.dtype not in _DTYPES or dst.dtype != np.float32 or src.shape != dst.shape or src.ndim != 3:
        return False
    if not dst.flags.writeable or not available():
        return False
    r0, r1, c0, c1 = box if box is not None else (0, src.shape[1], 0, src.shape[2])
    r0, r1, c0, c1 = max(0, r0), min(src.shape[1], r1), max(0, c0), min(src.shape[2], c1)
    _kernel(src, dst, np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(bias, np.float32), r0, r1, c0, c1)
    return True


def ranked_values(values: np.ndarray, ranks: np.ndarray) -> np.ndarray | None:
    """The values at sorted ranks ``ranks`` of an unsigned 8/16-bit array, from a compiled histogram, if possible.

    Args:
        values: 1-D or 2-D uint8/uint16 array (any strides: a sub-grid view is read in place).
        ranks: int64 ranks in [0, values.size).

    Returns:
        int64 array like ``ranks`` (``np.sort(values, axis=None)[ranks]``), or None when the compiled pass is
        unavailable or does not apply (the caller uses numpy).
    """
    if values.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)) or values.ndim not in (1, 2):
        return None
    if not available():
        return None
    out = np.zeros(len(ranks), dtype=np.int64)
    _ranks(values if values.ndim == 2 else values[None], np.ascontiguousarray(ranks, np.int64), out)
    return out
