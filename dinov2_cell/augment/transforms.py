"""Cell Painting augmentations on float32 C x H x W tensors with intensities in [0, 1], for any channel count.

Paper: Dai et al., "Self-supervised Representation Learning with Local Aggregation for Image-based Profiling",
Sec. 3.2.2 and appendix 6. Every random draw uses torch's global RNG, which DataLoader seeds differently in every
worker (`base_seed + worker_id`), so workers never repeat each other and a fixed `torch.manual_seed` reproduces.

Each random transform has `sample_params(...)` (draws the randomness, returns None when the transform is skipped)
and `apply(img, params)` (deterministic), so tests can check the formulas against a hand computation;
`__call__` is `apply(img, sample_params(...))`.

Reading of the paper where it is ambiguous:
- Contrast centre. Eq. for mu_c sums the *input* channel I_c, but the contrast step centres the brightness-adjusted
  channel x_c^(b) and the text says "adjusted according to its mean". We centre on the mean of the
  brightness-adjusted channel (mu_c = beta_c * mean(I_c)): contrast is then a mean-preserving stretch, as in
  torchvision's adjust_contrast which the paper's jitter replaces. With the literal reading the contrast step would
  also move the brightness (output mean mu_c * (beta_c * gamma_c + 1 - gamma_c)).
- Clipping after jitter: yes, to [0, 1]. The noise model is defined on [0, 1] (a Poisson rate must be >= 0),
  un-jittered views are in [0, 1] so jittered views must not carry out-of-range values the network could use as a
  shortcut, and torchvision's ColorJitter (upstream) clamps too. The paper's formula has no clip between brightness
  and contrast, so we clip once, after contrast.
- Elastic parameters are in pixels of the crop being deformed (518 px global crops, 98 px local crops at paper
  settings) with `frame="crop"`, or in pixels of the site with `frame="site"` (`augmentations.elastic_frame`): the
  field is then defined on the site and read at the crop's pixels, so a crop covering h x w site pixels resized to
  n x n gets alpha * k^2 and sigma * k in its own pixels, k = n / h (n / w along x), i.e. the same deformation of the
  specimen whichever crop shows it. Out-of-image samples reflect at the border so intensities stay within the
  input's range.
- No centring/normalisation: inputs are already in [0, 1]; outputs stay in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop as _TVRandomResizedCrop


# The transforms live in three modules by kind; this module keeps the crop and the jitter and re-exports the rest,
# so `from dinov2_cell.augment.transforms import X` reaches every transform.
from dinov2_cell.augment.checks import (  # noqa: F401
    ROTATION_MODES,
    ELASTIC_FRAMES,
    _check_prob,
    _check_nonneg,
    _coin,
    check_image,
)
from dinov2_cell.augment.geometry import (  # noqa: F401
    _gaussian_kernel1d,
    elastic_displacement,
    _base_grid,
    dihedral_matrix,
    apply_dihedral,
    warp,
    SiteField,
    site_elastic_field,
    ElasticDeform,
    RandomRotate,
    RandomFlip,
)
from dinov2_cell.augment.noise import (  # noqa: F401
    _PoissonTable,
    _poisson_table,
    poisson,
    microscope_noise,
    MicroscopeNoise,
)


class RandomResizedCrop:
    """Random resized crop of a C x H x W tensor (torchvision's area/aspect sampling), antialiased bilinear resize.

    Bilinear (not upstream's bicubic) because its weights are convex: the output stays within the input's
    intensity range, so no clamp is needed, and it is cheaper on 5-channel float images.

    Args:
        size: output side length (square output).
        scale: range of the crop area as a fraction of the image area (upstream's `crops.*_crops_scale`).
        ratio: range of the crop aspect ratio.
    """

    def __init__(self, size: int, scale: Sequence[float], ratio: Tuple[float, float] = (3 / 4, 4 / 3)):
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if self.size < 1 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"RandomResizedCrop: bad size {size} or scale {tuple(scale)} (need 0 < lo <= hi <= 1)")

    def sample_params(self, img: torch.Tensor) -> Tuple[int, int, int, int]:
        """Draw (top, left, height, width) of the crop with torchvision's sampler (torch global RNG)."""
        return _TVRandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))

    def apply(self, img: torch.Tensor, params: Tuple[int, int, int, int]) -> torch.Tensor:
        """Crop `img` at `params` and resize to size x size."""
        top, left, h, w = params
        crop = img[None, :, top : top + h, left : left + w]
        return F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)[0]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img, self.sample_params(img))


# ------------------------------------------------------------------------------------------- channel jitter


@dataclass
class JitterParams:
    """Per-channel factors of one ChannelJitter draw (float32 tensors of length C)."""

    beta: torch.Tensor
    gamma: torch.Tensor


def channel_jitter(
    img: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, clip: bool = True, inplace: bool = False
) -> torch.Tensor:
    """Channel-aware brightness then contrast (paper Sec. 3.2.2), for given factors.

    I_c^(b) = beta_c * I_c;  mu_c = mean(I_c^(b));  I'_c = (I_c^(b) - mu_c) * gamma_c + mu_c, fused as one affine map
    I'_c = beta_c * gamma_c * I_c + beta_c * mean(I_c) * (1 - gamma_c).

    Args:
        img: C x H x W float tensor.
        beta: C brightness factors.
        gamma: C contrast factors.
        clip: clamp the result to [0, 1] (see the module docstring for why the pipeline does).
        inplace: overwrite `img` instead of allocating.

    Returns:
        The jittered C x H x W tensor.
    """
    c = img.shape[0]
    beta = beta.to(img.dtype).reshape(c)
    gamma = gamma.to(img.dtype).reshape(c)
    mean = img.mean(dim=(1, 2))
    scale = (beta * gamma).view(c, 1, 1)
    shift = (beta * mean * (1 - gamma)).view(c, 1, 1)
    out = img.mul_(scale).add_(shift) if inplace else torch.addcmul(shift, img, scale)
    return out.clamp_(0.0, 1.0) if clip else out


class ChannelJitter:
    """Random channel-aware brightness/contrast jitter, applied to a crop with probability p.

    beta_c ~ U(max(0, 1 - brightness), 1 + brightness), gamma_c ~ U(max(0, 1 - contrast), 1 + contrast), drawn
    independently per channel; result clipped to [0, 1].

    Args:
        brightness: alpha_b of the paper.
        contrast: alpha_c of the paper.
        p: probability of jittering a crop (all its channels).
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, p: float = 0.8):
        self.brightness = _check_nonneg("brightness", brightness)
        self.contrast = _check_nonneg("contrast", contrast)
        self.p = _check_prob("jitter_p", p)

    def ranges(self) -> Tuple[Tuple[float, float], Tuple[float, float]]:
        """The (low, high) ranges of beta and gamma."""
        b, c = self.brightness, self.contrast
        return (max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c)

    def sample_params(self, num_channels: int) -> Optional[JitterParams]:
        """Draw whether to jitter and, if so, the per-channel factors.

        Args:
            num_channels: C.

        Returns:
            JitterParams, or None when the crop is left as is (probability 1 - p).
        """
        if not _coin(self.p):
            return None
        (b_lo, b_hi), (g_lo, g_hi) = self.ranges()
        u = torch.rand(2, num_channels)
        return JitterParams(beta=b_lo + (b_hi - b_lo) * u[0], gamma=g_lo + (g_hi - g_lo) * u[1])

    def apply(self, img: torch.Tensor, params: Optional[JitterParams], inplace: bool = False) -> torch.Tensor:
        """Apply drawn factors (identity for None), overwriting `img` when inplace."""
        return img if params is None else channel_jitter(img, params.beta, params.gamma, clip=True, inplace=inplace)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img, self.sample_params(img.shape[0]))


# ------------------------------------------------------------------------------------------ microscope noise
