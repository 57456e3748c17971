"""Low-level readers for one image file and one illumination function, with errors that name the file.

Images must be single-page, 2-D, uint16 TIFFs (what the Opera Phenix writes and the Cell Painting Gallery serves).
Uncompressed TIFFs need only ``tifffile``; compressed ones (LZW, Deflate, ...) also need the optional
``imagecodecs`` package, and the error says so.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import tifffile

from dinov2_cell.data.errors import DataReadError

IMAGE_DTYPE = np.dtype(np.uint16)


def read_tiff(path: str | os.PathLike, out: np.ndarray | None = None, expected_shape=None) -> np.ndarray:
    """Read a single-page 2-D uint16 TIFF.

    Args:
        path: the file.
        out: optional C-contiguous uint16 array of the image shape to decode into (saves a copy when stacking
            channels).
        expected_shape: optional (H, W) the image must have.

    Returns:
        The H x W uint16 array (``out`` when given).

    Raises:
        DataReadError: missing file, not a TIFF / corrupt, compression without imagecodecs, several pages, wrong
            dtype or shape. The message names the file.
    """
    path = os.fspath(path)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = tif.pages
            page = pages[0]
            if len(pages) != 1:
                raise DataReadError(f"{path}: expected a single-page TIFF, found {len(pages)} pages", path)
            shape = tuple(page.shape)
            if len(shape) != 2:
                raise DataReadError(f"{path}: expected a 2-D (H, W) image, got shape {shape}", path)
            if page.dtype != IMAGE_DTYPE:
                raise DataReadError(f"{path}: expected dtype uint16, got {page.dtype}", path)
            if expected_shape is not None and shape != tuple(expected_shape):
                raise DataReadError(
                    f"{path}: image shape {shape} differs from {tuple(expected_shape)} (other images of this plate)",
                    path,
                )
            if out is not None and out.shape != shape:
                raise DataReadError(f"{path}: image shape {shape} differs from {out.shape} (other channels)", path)
            return page.asarray(out=out)
    except DataReadError:
        raise
    except FileNotFoundError:
        raise DataReadError(f"missing image file: {path}", path) from None
    except KeyError as e:
        # tifffile raises KeyError('<COMPRESSION.LZW: 5> requires the imagecodecs package') for compressed data.
        if "imagecodecs" in str(e):
            raise DataReadError(
                f"{path}: compressed TIFF needs the optional 'imagecodecs' package (pip install imagecodecs): {e}",
                path,
            ) from e
        raise DataReadError(f"cannot read TIFF {path}: {e!r}", path) from e
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, struct.error) as e:
        raise DataReadError(f"cannot read TIFF {path}: {e}", path) from e


def read_illum(path: str | os.PathLike, expected_shape=None) -> np.ndarray:
    """Read an illumination function (``.npy``, or a TIFF) as float32.

    Args:
        path: the file.
        expected_shape: (H, W) of the images it corrects.

    Returns:
        H x W float32 array, all values finite and > 0.

    Raises:
        DataReadError: missing/unreadable file, wrong shape, or values that would make the division meaningless.
    """
    path = os.fspath(path)
    try:
        if path.lower().endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            arr = tifffile.imread(path)
    except FileNotFoundError:
        raise DataReadError(f"missing illumination file: {path}", path) from None
    except Exception as e:  # any decoder failure is reported the same way, with the file name
        raise DataReadError(f"cannot read illumination file {path}: {e}", path) from e
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise DataReadError(f"{path}: illumination function must be 2-D, got shape {arr.shape}", path)
    if expected_shape is not None and arr.shape != tuple(expected_shape):
        raise DataReadError(f"{path}: illumination shape {arr.shape} differs from image shape {expected_shape}", path)
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)) or float(arr.min()) <= 0:
        raise DataReadError(f"{path}: illumination function has non-finite or non-positive values", path)
    return arr
