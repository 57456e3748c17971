"""Argument and image checks shared by the cell augmentations (per-sample and batched)."""

from __future__ import annotations

import math

import torch

ROTATION_MODES = ("none", "right_angles", "any")
ELASTIC_FRAMES = ("crop", "site")


def _check_prob(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentations.{name} must be a probability in [0, 1], got {p}")
    return p


def _check_nonneg(name: str, v: float) -> float:
    v = float(v)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ValueError(f"augmentations.{name} must be a finite number >= 0, got {v}")
    return v


def _coin(p: float) -> bool:
    # Always draw, even for p in {0, 1}, so the RNG stream does not depend on the probabilities' values.
    return bool(torch.rand(()) < p)


def check_image(img: torch.Tensor, name: str = "image", values: bool = True) -> torch.Tensor:
    """Validate a C x H x W intensity image and return it as float32 in [0, 1].

    Args:
        img: floating-point tensor C x H x W, intensities in [0, 1].
        name: how error messages call the image (e.g. "other_site").
        values: also check the intensities (NaN/inf, range); False checks only type and shape.

    Returns:
        The image as float32 (the same tensor when it already is float32 and in range).

    Raises:
        TypeError: not a floating-point torch tensor.
        ValueError: wrong number of dimensions, empty, a channel holding NaN/inf (the message names the channel), or
            intensities outside [0, 1] by more than 1e-3 (rounding excursions within that are clamped).
    """
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor C x H x W, got {type(img).__name__}")
    if img.ndim != 3:
        raise ValueError(f"{name}: expected a C x H x W tensor, got shape {tuple(img.shape)}")
    if not img.is_floating_point():
        raise TypeError(
            f"{name}: expected floating-point intensities in [0, 1], got dtype {img.dtype} "
            "(divide 16-bit images by 65535 or normalise them in the dataset)"
        )
    if img.numel() == 0:
        raise ValueError(f"{name}: empty image of shape {tuple(img.shape)}")
    img = img.float()
    if not values:
        return img
    # Per-channel min and max propagate NaN, so they give the NaN/inf check and the range check in two cheap passes
    # (aminmax and isfinite are ~10x slower on CPU).
    flat = img.reshape(img.shape[0], -1)
    if check_channel_range(name, flat.amin(dim=1), flat.amax(dim=1)):
        img = img.clamp(0.0, 1.0)
    return img


def check_channel_range(name: str, lo: torch.Tensor, hi: torch.Tensor) -> bool:
    """Check per-channel minima and maxima of an image or a batch (NaN/inf, then the [0, 1] range with 1e-3 slack).

    Args:
        name: what to call the input in error messages.
        lo: per-channel minimum (NaN propagates into it).
        hi: per-channel maximum.

    Returns:
        Whether values lie slightly outside [0, 1], so the caller should clamp.

    Raises:
        ValueError: a channel holds NaN/inf, or lies outside [0, 1] by more than 1e-3 (the message names it).
    """
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    if bad.any():
        channels = bad.nonzero().flatten().tolist()
        raise ValueError(f"{name}: channel(s) {channels} contain NaN or inf values")
    tol = 1e-3
    if bool((lo < -tol).any() or (hi > 1 + tol).any()):
        c = int(torch.maximum(-lo, hi - 1).argmax())
        raise ValueError(
            f"{name}: intensities must lie in [0, 1]; channel {c} spans [{float(lo[c]):.4g}, {float(hi[c]):.4g}]"
        )
    return bool((lo < 0).any() or (hi > 1).any())


# ----------------------------------------------------------------------------------------------------- crops
