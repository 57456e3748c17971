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

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop as _TVRandomResizedCrop

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
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
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
    if bool((lo < 0).any() or (hi > 1).any()):
        img = img.clamp(0.0, 1.0)
    return img


# ----------------------------------------------------------------------------------------------------- crops


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


class _PoissonTable:
    """Exact Poisson sampler for rates in [0, max_rate], 2-3x faster than torch.poisson on CPU.

    Rate lam = q * STEP + r with r in [0, STEP). Poisson(lam) = Poisson(q * STEP) + Poisson(r) (independent sum).
    - Poisson(q * STEP): inverse CDF with a guide table (Chen & Asau): cell floor(u * GUIDE) of row q stores the
      answer, or flags that a CDF jump falls inside the cell; flagged draws (~1.5 %) step through the CDF.
    - Poisson(r): an arrival happens with probability 1 - exp(-r) <= 1 - exp(-STEP), so candidates are drawn sparsely
      (geometric gaps at that bound), accepted with probability (1 - exp(-r)) / bound, and accepted ones get their
      count from Poisson(r) conditioned on >= 1, by inverse CDF.
    Exact up to the float32 resolution (~6e-8) of the uniform draws and of the stored CDF: tail probabilities below
    that are not resolved (torch.poisson has the same limit in float32). Dense work runs in cache-sized chunks: large temporaries cost more in page faults
    than in arithmetic on CPU.
    """

    STEP = 1.0 / 32  # power of two: lam / STEP and lam - q * STEP are exact in float32
    GUIDE = 512
    CHUNK = 1 << 17

    def __init__(self, max_rate: float):
        self.max_rate = float(max_rate)
        rows = int(math.floor(self.max_rate / self.STEP)) + 1
        lam = torch.arange(rows, dtype=torch.float64) * self.STEP
        # Enough counts that the tail beyond is far below 2**-24 at the largest rate.
        kmax = int(self.max_rate + 12 * math.sqrt(self.max_rate + 1) + 12)
        k = torch.arange(kmax, dtype=torch.float64)
        logpmf = k[None] * torch.log(lam[:, None].clamp_min(1e-300)) - lam[:, None] - torch.lgamma(k + 1)[None]
        logpmf[0, 1:] = -math.inf  # Poisson(0) is 0
        logpmf[0, 0] = 0.0
        cdf = torch.cumsum(torch.exp(logpmf), dim=1).float()
        cdf[:, -1] = 2.0  # fold the tail into the last count: every u < 1 stops there
        self.rows, self.kmax = rows, kmax
        self.cdf = cdf.contiguous()  # rows x kmax, float32 as compared at run time
        # Cell m = [m/G, (m+1)/G): lo = #{k: cdf_k <= m/G}, hi = #{k: cdf_k < (m+1)/G}; the inverse CDF
        # #{k: cdf_k <= u} of every u in the cell lies in [lo, hi]. Store lo when lo == hi, else -(lo + 1).
        edges = torch.arange(self.GUIDE + 1, dtype=torch.float64) / self.GUIDE
        c64 = cdf.double()
        lo = torch.searchsorted(c64, edges[None, :-1].expand(rows, -1).contiguous(), right=True)
        hi = torch.searchsorted(c64, edges[None, 1:].expand(rows, -1).contiguous(), right=False)
        self.guide = torch.where(lo == hi, lo, -(lo + 1)).float().contiguous()  # exact small integers

    def sample(
        self,
        rate: torch.Tensor,
        out: Optional[torch.Tensor] = None,
        scale: float = 1.0,
        offset: float = 0.0,
        noise_std: float = 0.0,
    ) -> torch.Tensor:
        """out = scale * Poisson(rate) + offset + noise_std * N(0, 1), elementwise.

        Args:
            rate: contiguous float32 tensor of rates in [0, max_rate].
            out: contiguous float32 tensor of the same shape to write into; may be `rate` itself.
            scale: multiplies the counts.
            offset: added to every element.
            noise_std: std of added Gaussian noise (0: none drawn).

        Returns:
            `out` (a new tensor when None).
        """
        flat = rate.reshape(-1)
        n = flat.numel()
        res_pos, res_cnt = self._residual_arrivals(flat)  # reads the rates before `out` may overwrite them
        out = torch.empty_like(flat) if out is None else out
        out_flat = out.view(-1)
        amb_pos, amb_u, amb_q, amb_k = [], [], [], []
        for start in range(0, n, self.CHUNK):
            t = flat[start : start + self.CHUNK] * (1.0 / self.STEP)
            q = t.floor_().clamp_(0, self.rows - 1)
            u = torch.rand(q.numel())
            idx = torch.floor(u * self.GUIDE).add_(q, alpha=self.GUIDE).long()
            k = self.guide.take(idx)
            amb = (k < 0).nonzero().flatten()
            if amb.numel():
                k[amb] = -1.0 - k[amb]
                amb_k.append(k[amb])
                amb_pos.append(amb + start)
                amb_u.append(u[amb])
                amb_q.append(q[amb])
            if scale != 1.0:
                k.mul_(scale)
            if offset:
                k.add_(offset)
            if noise_std:
                k.add_(torch.randn(k.numel()), alpha=noise_std)
            out_flat[start : start + self.CHUNK] = k
        if amb_pos:
            # Walk the CDF from the guide's lower bound; out already holds that bound, so add the steps taken.
            pos, u, base, k0 = (
                torch.cat(amb_pos),
                torch.cat(amb_u),
                torch.cat(amb_q).long() * self.kmax,
                torch.cat(amb_k),
            )
            extra = torch.zeros(pos.numel())
            while True:
                step = u >= self.cdf.take(base + (k0 + extra).long())
                if not bool(step.any()):
                    break
                extra += step
            out_flat.index_add_(0, pos, extra.mul_(scale))
        if res_pos.numel():
            out_flat.index_add_(0, res_pos, res_cnt.mul_(scale))
        return out

    def _residual_arrivals(self, flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Positions and counts (float32) of the Poisson(r) part, r = rate - floor(rate / STEP) * STEP."""
        n = flat.numel()
        bound = -math.expm1(-self.STEP)
        expected = n * bound
        num = int(expected + 8 * math.sqrt(expected) + 16)
        pieces, start = [], -1
        while True:
            gaps = torch.empty(num).geometric_(bound).long()  # >= 1: trials up to and including the first success
            p = torch.cumsum(gaps, 0).add_(start)
            pieces.append(p[p < n])
            if int(p[-1]) >= n:
                break
            start = int(p[-1])
        pos = torch.cat(pieces)
        # Same float32 operations as the dense pass, so q and r agree with it.
        t = flat[pos] * (1.0 / self.STEP)
        r = (t - t.floor().clamp(0, self.rows - 1)).double() * self.STEP
        p_hit = -torch.expm1(-r)
        hit = torch.rand(pos.numel(), dtype=torch.float64) * bound < p_hit
        pos, r, p_hit = pos[hit], r[hit], p_hit[hit]
        # Count given >= 1: inverse CDF of P(j | j >= 1) = exp(-r) r^j / j! / (1 - exp(-r)), j = 1, 2, ...
        v = torch.rand(pos.numel(), dtype=torch.float64)
        term = torch.exp(-r) * r / p_hit
        cum = term.clone()
        j = torch.ones_like(r)
        active = (v >= cum).nonzero().flatten()
        while active.numel():
            j[active] += 1
            term[active] *= r[active] / j[active]
            cum[active] += term[active]
            active = active[v[active] >= cum[active]]
        return pos, j.float()


@functools.lru_cache(maxsize=8)
def _poisson_table(max_rate: float) -> _PoissonTable:
    return _PoissonTable(max_rate)


def poisson(rate: torch.Tensor, max_rate: float) -> torch.Tensor:
    """Exact Poisson draws for rates in [0, max_rate] (torch global RNG).

    Uses a cached table sampler when max_rate <= 64 (the paper's noise has max_rate = 1 / sigma_shot = 10), else
    torch.poisson.

    Args:
        rate: tensor of rates, any shape; values must lie in [0, max_rate].
        max_rate: upper bound of the rates (sizes the table).

    Returns:
        float32 counts, same shape as `rate`.
    """
    rate = rate.float().contiguous()
    if max_rate <= 64:
        return _poisson_table(float(max_rate)).sample(rate).view(rate.shape)
    return torch.poisson(rate)


def microscope_noise(img: torch.Tensor, shot: float, dark: float, read: float, inplace: bool = False) -> torch.Tensor:
    """Microscope noise of appendix 6.1: I <- clip(Poisson(I / shot) * shot + dark + N(0, read^2), 0, 1).

    Args:
        img: C x H x W float32 tensor in [0, 1] (values outside are clamped first: the model is defined on [0, 1]).
        shot: sigma_shot (> 0).
        dark: sigma_dark, constant dark-current offset.
        read: sigma_read, std of the Gaussian read noise.
        inplace: overwrite `img` (must be contiguous) instead of allocating.

    Returns:
        The noisy image in [0, 1], same shape.
    """
    max_rate = 1.0 / shot
    if inplace and img.is_contiguous() and img.dtype == torch.float32:
        rate = img.clamp_(0.0, 1.0).mul_(max_rate)
        out = img
    else:
        rate = img.float().clamp(0.0, 1.0).mul_(max_rate).contiguous()
        out = rate
    if max_rate <= 64:
        _poisson_table(float(max_rate)).sample(rate, out=out, scale=shot, offset=dark, noise_std=read)
    else:
        counts = torch.poisson(rate)
        out.copy_(counts.mul_(shot).add_(dark).add_(torch.randn(out.shape), alpha=read))
    return out.clamp_(0.0, 1.0)


class MicroscopeNoise:
    """Shot + dark-current + read noise (appendix 6.1), applied to a crop with probability p.

    Args:
        shot: sigma_shot, photons = I / sigma_shot.
        dark: sigma_dark offset.
        read: sigma_read, Gaussian read-noise std.
        p: probability of noising a crop.
    """

    def __init__(self, shot: float = 0.1, dark: float = 0.05, read: float = 0.01, p: float = 0.5):
        self.shot = _check_nonneg("noise_shot", shot)
        if self.shot == 0:
            raise ValueError("augmentations.noise_shot must be > 0 (photons = I / noise_shot)")
        self.dark = _check_nonneg("noise_dark", dark)
        self.read = _check_nonneg("noise_read", read)
        self.p = _check_prob("noise_p", p)

    def sample_params(self) -> bool:
        """Whether to noise this crop (the noise itself is drawn in apply)."""
        return _coin(self.p)

    def apply(self, img: torch.Tensor, params: bool, inplace: bool = False) -> torch.Tensor:
        """Noise `img` if params (overwriting it when inplace), else return it unchanged."""
        return microscope_noise(img, self.shot, self.dark, self.read, inplace=inplace) if params else img

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img, self.sample_params())


# ---------------------------------------------------------------------------------------- elastic + rotation


def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(4.0 * sigma))  # scipy.ndimage.gaussian_filter's default truncate=4
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def elastic_displacement(height: int, width: int, alpha: float, sigma: float, min_coarse_sigma: float = 6.0):
    """Displacement fields (dx, dy) = alpha * (G_sigma * N(0, 1)) on a height x width pixel grid (appendix 6.2).

    The exact formulation smooths full-resolution white noise with a sigma-pixel Gaussian (costly at sigma = 40 px).
    We draw the noise on a grid of stride s = floor(sigma / min_coarse_sigma) pixels instead, smooth it with a
    Gaussian of sigma / s coarse pixels, scale by alpha / s and upsample bilinearly. This has the same statistics:
    with a normalised Gaussian, sum_x G_sigma(x)^2 = 1 / (4 pi sigma^2) in 2-D, so the exact field has per-pixel std
    alpha / (2 sigma sqrt(pi)) and covariance alpha^2 G_{sigma sqrt 2}(r), i.e. autocorrelation exp(-r^2 / (4 sigma^2));
    on the coarse grid std = (alpha / s) / (2 (sigma / s) sqrt(pi)) and the autocorrelation at r = s * r_c is
    exp(-r_c^2 / (4 (sigma / s)^2)), the same. The noise is drawn on a grid padded by the kernel radius and filtered
    without padding, so the field is stationary up to the image border (no reflect-padding artefacts). Bilinear
    upsampling of a field whose correlation length is >= 6 coarse pixels loses < 0.3 % of the variance. For
    sigma < 2 * min_coarse_sigma, s = 1 and this is the exact formulation.

    Args:
        height: H in pixels.
        width: W in pixels.
        alpha: elasticity coefficient (pixels).
        sigma: Gaussian smoothing std in pixels (> 0).
        min_coarse_sigma: smallest smoothing std, in coarse pixels, allowed by the choice of stride.

    Returns:
        float32 tensor 2 x H x W: dx (along width), dy (along height), in pixels.
    """
    s = max(1, int(sigma // min_coarse_sigma))
    sc = sigma / s
    kern = _gaussian_kernel1d(sc)
    rad = (kern.numel() - 1) // 2
    nh = -(-(height - 1) // s) + 1
    nw = -(-(width - 1) // s) + 1
    noise = torch.randn(2, 1, nh + 2 * rad, nw + 2 * rad)
    field = F.conv2d(noise, kern.view(1, 1, 1, -1))
    field = F.conv2d(field, kern.view(1, 1, -1, 1))  # 2 x 1 x nh x nw
    field = field.mul_(alpha / s)
    if s > 1:
        field = F.interpolate(field, size=((nh - 1) * s + 1, (nw - 1) * s + 1), mode="bilinear", align_corners=True)
    return field[:, 0, :height, :width]


@functools.lru_cache(maxsize=16)
def _base_grid(height: int, width: int) -> torch.Tensor:
    # Pixel centres in grid_sample's [-1, 1] coordinates (align_corners=False: pixel i spans [i - 0.5, i + 0.5], so
    # x_norm = (2 i + 1) / W - 1), as an (H * W) x 2 matrix of (x, y).
    xs = (2 * torch.arange(width, dtype=torch.float32) + 1) / width - 1
    ys = (2 * torch.arange(height, dtype=torch.float32) + 1) / height - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def dihedral_matrix(hflip: bool, vflip: bool, quarter_turns: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Read matrix A of "flip, then rotate by quarter_turns * 90 degrees counter-clockwise" on a square image.

    Output pixel p reads the input at c + A (p - c), c the centre, coordinates (x right, y down).

    Args:
        hflip: flip left-right.
        vflip: flip top-bottom.
        quarter_turns: number of torch.rot90(..., dims=(1, 2)) turns applied after the flips.

    Returns:
        A as a 2 x 2 nested tuple of ints in {-1, 0, 1}.
    """
    a = ((-1 if hflip else 1, 0), (0, -1 if vflip else 1))
    for _ in range(quarter_turns % 4):
        # rot(z)(p) = z(c + R (p - c)) with R = [[0, -1], [1, 0]], so A <- A R.
        a = ((a[0][1], -a[0][0]), (a[1][1], -a[1][0]))
    return a


def apply_dihedral(img: torch.Tensor, a: Tuple[Tuple[int, int], Tuple[int, int]]) -> torch.Tensor:
    """Exact flip/transpose of a square C x H x W image by read matrix `a` (see dihedral_matrix); one copy at most."""
    if a[0][1] == 0:  # diagonal: flips only
        dims = [d for d, v in ((2, a[0][0]), (1, a[1][1])) if v == -1]
        return torch.flip(img, dims) if dims else img
    # Off-diagonal: y(px, py) = x(b py, c px) = t(c px, b py) with t the transpose.
    dims = [d for d, v in ((2, a[1][0]), (1, a[0][1])) if v == -1]
    t = img.transpose(1, 2)
    return torch.flip(t, dims).contiguous() if dims else t.contiguous()


def warp(
    img: torch.Tensor,
    displacement: Optional[torch.Tensor] = None,
    angle: float = 0.0,
    dihedral: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None,
    site_field: Optional["SiteField"] = None,
) -> torch.Tensor:
    """Resample every channel bilinearly at displaced, rotated (and flipped) positions, in one pass.

    Output pixel p = (x, y) reads the input at c + A R(angle) (p - c) + (dx(p), dy(p)), c the image centre, A the
    dihedral read matrix. Reading at R(angle) (p - c) shows the content turned counter-clockwise on screen (y points
    down), like torch.rot90(img, 1, dims=(1, 2)) for angle = 90. Positions outside the image reflect at the border,
    so the output stays within the input's intensity range.

    Args:
        img: C x H x W float tensor.
        displacement: optional 2 x H x W field (dx, dy) in pixels (see elastic_displacement).
        angle: rotation in degrees, counter-clockwise.
        dihedral: optional read matrix from dihedral_matrix (square images).
        site_field: optional site-frame elastic field (see SiteField), evaluated at the rotated read positions, i.e.
            the crop is deformed in the site's frame first, then flipped and rotated (exactly, not only in law).

    Returns:
        A new C x H x W tensor.
    """
    _, h, w = img.shape
    m = torch.eye(2, dtype=torch.float64)
    if angle:
        th = math.radians(angle)
        m = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
    if dihedral is not None:
        m = torch.tensor(dihedral, dtype=torch.float64) @ m
    # Same map in normalised coordinates: u = (2 / W) (x - c_x), so M_norm = S M S^-1 with S = diag(2 / W, 2 / H).
    s = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64)
    m_norm = (s[:, None] * m / s[None, :]).float()
    grid = (_base_grid(h, w) @ m_norm.T).view(h, w, 2)
    if displacement is not None:
        grid.addcmul_(displacement.permute(1, 2, 0), s.float())
    if site_field is not None:
        grid = grid + site_field.displacement(grid[None])[0]
    out = F.grid_sample(img[None], grid[None], mode="bilinear", padding_mode="reflection", align_corners=False)
    return out[0]


@dataclass
class SiteField:
    """Elastic displacement fields defined in site pixels for a batch of crops, read at any crop position.

    Node (i, j) of `coarse` (N x 2 x nh x nw, values in site pixels) sits at site offset ((j - margin) * stride,
    (i - margin) * stride) from the top-left corner of its crop's box; `box_hw` (N x 2, site pixels) is the box each
    crop was cut from. A crop resized to n x n reads the field at its pixels' site positions, bilinearly, and
    converts the displacement to its own pixels (x n / w, y n / h): the deformation of the specimen does not depend
    on how large the crop is or how much it was resized. Built by `site_elastic_field`.
    """

    coarse: torch.Tensor
    stride: int
    margin: int
    box_hw: torch.Tensor

    def displacement(self, grid: torch.Tensor) -> torch.Tensor:
        """The fields at read positions, in grid_sample's normalised crop coordinates.

        Args:
            grid: N x H x W x 2 read positions (x, y) of each crop in [-1, 1] (align_corners=False convention);
                positions outside (arbitrary-angle rotations) read the field on the margin.

        Returns:
            N x H x W x 2 displacements (dx, dy) to add to `grid`.
        """
        n = grid.shape[0]
        hw = self.box_hw.to(device=grid.device, dtype=torch.float32).view(n, 1, 1, 2)
        w_site, h_site = hw[..., 1], hw[..., 0]
        nh, nw = self.coarse.shape[-2:]
        # Site offset from the box corner -> coarse node coordinate -> align_corners=True normalised coordinate.
        cx = ((grid[..., 0] + 1) * 0.5 * w_site / self.stride + self.margin) * (2.0 / (nw - 1)) - 1
        cy = ((grid[..., 1] + 1) * 0.5 * h_site / self.stride + self.margin) * (2.0 / (nh - 1)) - 1
        d = F.grid_sample(
            self.coarse, torch.stack([cx, cy], dim=-1), mode="bilinear", padding_mode="border", align_corners=True
        )
        return torch.stack([d[:, 0] * (2.0 / w_site), d[:, 1] * (2.0 / h_site)], dim=-1)


def site_elastic_field(
    box_hw: torch.Tensor,
    alpha: float,
    sigma: float,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
    min_coarse_sigma: float = 6.0,
    margin_fraction: float = 0.21,
) -> SiteField:
    """Independent elastic fields alpha * (G_sigma * N(0, 1)) in site pixels over the boxes of N crops.

    Same construction as `elastic_displacement` (noise on a grid of stride floor(sigma / min_coarse_sigma) site
    pixels, Gaussian of sigma / stride coarse pixels, scaled by alpha / stride, bilinear interpolation), hence the
    same statistics in site pixels: std alpha / (2 sigma sqrt(pi)), autocorrelation exp(-r^2 / (4 sigma^2)). The grid
    covers each box plus a margin of `margin_fraction` of its longer side (0.21: what a rotation by any angle reads
    beyond the box; 0 is enough for flips and right-angle turns, and draws about half the noise).

    Args:
        box_hw: N x 2 (height, width) of the crops' boxes in site pixels.
        alpha: elasticity coefficient (site pixels).
        sigma: smoothness in site pixels (> 0).
        generator: random generator (None: torch's global RNG).
        device: device of the fields.
        min_coarse_sigma: smallest smoothing std, in coarse pixels, allowed by the choice of stride.
        margin_fraction: margin around the boxes, as a fraction of the longer box side.

    Returns:
        A SiteField.
    """
    box_hw = torch.as_tensor(box_hw, dtype=torch.float32).reshape(-1, 2)
    n = box_hw.shape[0]
    s = max(1, int(sigma // min_coarse_sigma))
    kern = _gaussian_kernel1d(sigma / s).to(device)
    rad = (kern.numel() - 1) // 2
    h_max, w_max = float(box_hw[:, 0].max()), float(box_hw[:, 1].max())
    margin = int(math.ceil(margin_fraction * max(h_max, w_max) / s))
    nh = int(math.ceil(h_max / s)) + 1 + 2 * margin
    nw = int(math.ceil(w_max / s)) + 1 + 2 * margin
    noise = torch.randn(2 * n, 1, nh + 2 * rad, nw + 2 * rad, generator=generator, device=device)
    field = F.conv2d(noise, kern.view(1, 1, 1, -1))
    field = F.conv2d(field, kern.view(1, 1, -1, 1)).mul_(alpha / s)
    return SiteField(field.view(n, 2, nh, nw), s, margin, box_hw.to(device))


class ElasticDeform:
    """Elastic deformation (appendix 6.2) with probability p.

    Args:
        alpha: elasticity coefficient in pixels (alpha = 0: identity).
        sigma: smoothness of the displacement field in pixels.
        p: probability of deforming a crop.
        frame: "crop" (alpha, sigma in pixels of the image deformed) or "site" (in pixels of the site the crop was
            cut from; see SiteField).
    """

    def __init__(self, alpha: float = 1200.0, sigma: float = 40.0, p: float = 0.5, frame: str = "site"):
        self.alpha = _check_nonneg("elastic_alpha", alpha)
        self.sigma = _check_nonneg("elastic_sigma", sigma)
        if self.sigma == 0:
            raise ValueError("augmentations.elastic_sigma must be > 0 (pixels)")
        self.p = _check_prob("elastic_p", p)
        if frame not in ELASTIC_FRAMES:
            raise ValueError(f"augmentations.elastic_frame must be one of {ELASTIC_FRAMES}, got {frame!r}")
        self.frame = frame

    def field_std(self) -> float:
        """Per-pixel std of each displacement component: alpha / (2 sigma sqrt(pi))."""
        return self.alpha / (2 * self.sigma * math.sqrt(math.pi))

    def sample_params(
        self, height: int, width: int, box_hw: Optional[Tuple[float, float]] = None, any_angle: bool = True
    ):
        """Draw the field, or None when the crop is not deformed (or alpha = 0).

        Args:
            height: H of the crop in its pixels.
            width: W of the crop in its pixels.
            box_hw: (height, width) of the box the crop was cut from, in site pixels (frame "site"; None: the crop
                is the whole site at site resolution).
            any_angle: the crop may be read at arbitrary-angle rotated positions (frame "site": the field then covers
                a margin around the box).

        Returns:
            None, a 2 x H x W displacement in crop pixels (frame "crop"), or a SiteField (frame "site").
        """
        if not _coin(self.p) or self.alpha == 0:
            return None
        if self.frame == "site":
            box = [box_hw if box_hw is not None else (height, width)]
            return site_elastic_field(box, self.alpha, self.sigma, margin_fraction=0.21 if any_angle else 0.0)
        return elastic_displacement(height, width, self.alpha, self.sigma)

    def apply(self, img: torch.Tensor, params) -> torch.Tensor:
        """Warp `img` by the field (identity for None)."""
        if params is None:
            return img
        return warp(img, site_field=params) if isinstance(params, SiteField) else warp(img, params)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img, self.sample_params(img.shape[1], img.shape[2]))


class RandomRotate:
    """Random rotation: 'none', 'right_angles' (uniform over 0/90/180/270 degrees, exact) or 'any' (uniform angle in
    [0, 360), bilinear, reflected corners).

    Args:
        mode: one of ROTATION_MODES.
    """

    def __init__(self, mode: str = "right_angles"):
        if mode not in ROTATION_MODES:
            raise ValueError(f"augmentations.rotation must be one of {ROTATION_MODES}, got {mode!r}")
        self.mode = mode

    def sample_params(self) -> float:
        """The angle in degrees (a multiple of 90 for 'right_angles', 0 for 'none')."""
        if self.mode == "right_angles":
            return 90.0 * int(torch.randint(4, ()))
        if self.mode == "any":
            return 360.0 * float(torch.rand(()))
        return 0.0

    def apply(self, img: torch.Tensor, angle: float) -> torch.Tensor:
        """Rotate `img` by `angle` degrees counter-clockwise (multiples of 90: exact pixel permutation)."""
        if angle % 90 == 0:
            k = int(angle // 90) % 4
            return torch.rot90(img, k, dims=(1, 2)) if k else img
        return warp(img, angle=angle)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img, self.sample_params())


class RandomFlip:
    """Independent horizontal and vertical flips (exact pixel permutations).

    Args:
        hflip_p: probability of flipping left-right.
        vflip_p: probability of flipping top-bottom.
    """

    def __init__(self, hflip_p: float = 0.5, vflip_p: float = 0.5):
        self.hflip_p = _check_prob("hflip_p", hflip_p)
        self.vflip_p = _check_prob("vflip_p", vflip_p)

    def sample_params(self) -> Tuple[bool, bool]:
        """(flip left-right, flip top-bottom)."""
        return _coin(self.hflip_p), _coin(self.vflip_p)

    def apply(self, img: torch.Tensor, params: Tuple[bool, bool]) -> torch.Tensor:
        """Flip `img` as drawn (one copy at most)."""
        dims = [d for d, f in ((2, params[0]), (1, params[1])) if f]
        return torch.flip(img, dims) if dims else img

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.apply(img, self.sample_params())
