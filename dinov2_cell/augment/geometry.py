"""Geometric cell augmentations: elastic deformation (crop or site frame), the dihedral group, warping, rotations and
flips; the readings of the paper are in `transforms.py`'s docstring."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from dinov2_cell.augment.checks import ELASTIC_FRAMES, ROTATION_MODES, _check_nonneg, _check_prob, _coin


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
