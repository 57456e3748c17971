"""Cell augmentations on the training device (`augmentations.device: model`).

At 518 px the per-pixel cell augmentations (elastic deformation, flips/rotations, channel jitter, microscope noise)
cost most of a DataLoader worker's CPU time per sample. In `model` mode the loader only reads the sites, draws the
crop boxes, cuts and resizes them (`cheap_resize`) and collates; `DeviceCellAugmentation` then applies the
per-pixel augmentations to the collated crops, batched, on the device the model lives on, at the start of the
training step (`LocalAggregationMetaArch.forward_backward`).

Same laws as the per-sample transforms of `transforms.py` (tests compare them formula by formula): per crop, a flip
pair and a rotation, an elastic field with probability `elastic_p` (elastic, flips and rotation folded into one
bilinear resampling when elastic or an arbitrary angle applies, else an exact copy), channel jitter with probability
`jitter_p` and microscope noise with probability `noise_p`, each drawn independently per crop.

Randomness comes from a dedicated `torch.Generator` on the device, seeded from (seed, rank): crops of one batch and
batches of different ranks get different parameters, and a fixed seed reproduces the run. Training checkpoints carry
the generator's state (`state_dict` / `load_state_dict`), so a resumed run continues its stream.
"""

from __future__ import annotations

import functools
import logging
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from dinov2_cell.augment.checks import check_channel_range
from dinov2_cell.augment.params import AugmentationParams, augmentation_params
from dinov2_cell.augment.transforms import SiteField, _gaussian_kernel1d, site_elastic_field

logger = logging.getLogger("dinov2")

# The collated crop tensors the device augmentation processes (upstream's two plus the other-site views).
CROP_KEYS = ("collated_global_crops", "collated_local_crops", "collated_other_site_crops")
# Suffix of the per-crop box sizes (height, width in site pixels) that model mode sends beside the crops.
SITE_HW_SUFFIX = "_site_hw"


# ---------------------------------------------------------------------------------------------- loader side


def cheap_resize(crop: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a 1 x C x h x w crop to 1 x C x size x size: halvings by 2 x 2 box means, then plain bilinear.

    While the crop is more than twice the output size it is halved (bilinear interpolation to half the size samples
    exactly between pixel pairs, i.e. a 2 x 2 box mean); the remaining factor (<= 2) is a plain bilinear resize,
    whose 2-tap filter still averages every pixel it passes. This is the mip-map approximation of an antialiased
    resize, 2-4x cheaper on CPU than torch's antialiased bilinear (which `RandomResizedCrop` uses in `loader`
    mode); it is slightly sharper, and convex like it (the output stays within the input's range).

    Args:
        crop: 1 x C x h x w float tensor (a view is fine).
        size: output side length.

    Returns:
        A new 1 x C x size x size tensor.
    """
    while min(crop.shape[-2], crop.shape[-1]) > 2 * size:
        half = (crop.shape[-2] // 2, crop.shape[-1] // 2)
        crop = F.interpolate(crop, size=half, mode="bilinear", align_corners=False)
    if crop.shape[-2:] == (size, size):
        return crop.clone()
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------- device side


def elastic_displacement_batch(
    n: int,
    height: int,
    width: int,
    alpha: float,
    sigma: float,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
    min_coarse_sigma: float = 6.0,
) -> torch.Tensor:
    """n independent displacement fields, the batched form of `transforms.elastic_displacement`.

    Same construction (coarse grid of stride floor(sigma / min_coarse_sigma), Gaussian smoothing, bilinear
    upsampling), hence the same statistics; with n = 1 and the same generator state it draws the same noise and
    returns the same field.

    Args:
        n: number of fields.
        height: H in pixels.
        width: W in pixels.
        alpha: elasticity coefficient (pixels).
        sigma: Gaussian smoothing std in pixels (> 0).
        generator: random generator (None: torch's default one of `device`).
        device: where to draw and compute.
        min_coarse_sigma: smallest smoothing std, in coarse pixels, allowed by the choice of stride.

    Returns:
        float32 tensor n x 2 x H x W: dx (along width), dy (along height), in pixels.
    """
    s = max(1, int(sigma // min_coarse_sigma))
    kern = _gaussian_kernel1d(sigma / s).to(device)
    rad = (kern.numel() - 1) // 2
    nh = -(-(height - 1) // s) + 1
    nw = -(-(width - 1) // s) + 1
    noise = torch.randn(2 * n, 1, nh + 2 * rad, nw + 2 * rad, generator=generator, device=device)
    field = F.conv2d(noise, kern.view(1, 1, 1, -1))
    field = F.conv2d(field, kern.view(1, 1, -1, 1))
    field = field.mul_(alpha / s)
    if s > 1:
        field = F.interpolate(field, size=((nh - 1) * s + 1, (nw - 1) * s + 1), mode="bilinear", align_corners=True)
    return field[:, 0, :height, :width].reshape(n, 2, height, width)


@functools.lru_cache(maxsize=16)
def _base_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    # Pixel centres in grid_sample's [-1, 1] coordinates (align_corners=False), (H * W) x 2 of (x, y).
    xs = (2 * torch.arange(width, dtype=torch.float32, device=device) + 1) / width - 1
    ys = (2 * torch.arange(height, dtype=torch.float32, device=device) + 1) / height - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def warp_batch(
    x: torch.Tensor,
    matrices: torch.Tensor,
    displacement: Optional[torch.Tensor] = None,
    site_field: Optional[SiteField] = None,
) -> torch.Tensor:
    """Batched `transforms.warp`: output pixel p of crop i reads crop i at c + M_i (p - c) + d_i(p), bilinear.

    Args:
        x: N x C x H x W float tensor.
        matrices: N x 2 x 2 read matrices (dihedral read matrix times rotation), in pixel coordinates.
        displacement: optional N x 2 x H x W fields (dx, dy) in pixels.
        site_field: optional site-frame fields of the N crops, read at c + M_i (p - c) (deformation first, exactly).

    Returns:
        A new N x C x H x W tensor; positions outside a crop reflect at its border.
    """
    n, _, h, w = x.shape
    s = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64, device=x.device)
    m_norm = (s.view(1, 2, 1) * matrices.to(torch.float64) / s.view(1, 1, 2)).float()
    grid = torch.einsum("pk,njk->npj", _base_grid(h, w, x.device), m_norm).view(n, h, w, 2)
    if displacement is not None:
        grid = grid + displacement.permute(0, 2, 3, 1) * s.float()
    if site_field is not None:
        grid = grid + site_field.displacement(grid)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def dihedral_batch(x: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Exact per-crop flips then quarter turns: crop i becomes rot90(flip(x_i), turns_i), as `RandomFlip` then
    `RandomRotate('right_angles')` do one crop at a time.

    Args:
        x: N x C x S x S tensor (square crops).
        hflip: N bools, flip left-right.
        vflip: N bools, flip top-bottom.
        turns: N ints, counter-clockwise quarter turns after the flips.

    Returns:
        A new N x C x S x S tensor (a pixel permutation of each crop).
    """
    out = x.clone()
    code = hflip.long() + 2 * vflip.long() + 4 * (turns.long() % 4)
    for c in torch.unique(code).tolist():
        if c == 0:
            continue
        idx = (code == c).nonzero().flatten()
        y = x.index_select(0, idx)
        dims = [d for d, f in ((3, c & 1), (2, c & 2)) if f]
        if dims:
            y = torch.flip(y, dims)
        if c >> 2:
            y = torch.rot90(y, c >> 2, dims=(2, 3))
        out.index_copy_(0, idx, y)
    return out


def channel_jitter_batch(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Batched `transforms.channel_jitter` (clipped): per crop i and channel c,
    clip(beta_ic * gamma_ic * x + beta_ic * mean(x_ic) * (1 - gamma_ic), 0, 1).

    Args:
        x: N x C x H x W float tensor.
        beta: N x C brightness factors.
        gamma: N x C contrast factors.

    Returns:
        A new N x C x H x W tensor in [0, 1].
    """
    mean = x.mean(dim=(2, 3))
    scale = (beta * gamma).to(x.dtype)[..., None, None]
    shift = (beta * mean * (1 - gamma)).to(x.dtype)[..., None, None]
    return torch.addcmul(shift, x, scale).clamp_(0.0, 1.0)


def microscope_noise_batch(
    x: torch.Tensor, shot: float, dark: float, read: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Batched `transforms.microscope_noise`: clip(Poisson(x / shot) * shot + dark + N(0, read^2), 0, 1).

    Args:
        x: float tensor of any shape (values outside [0, 1] are clamped first).
        shot: sigma_shot (> 0).
        dark: sigma_dark offset.
        read: sigma_read, Gaussian read-noise std.
        generator: random generator of x's device (None: the default one).

    Returns:
        A new tensor of x's shape, in [0, 1].
    """
    rate = x.float().clamp(0.0, 1.0).mul_(1.0 / shot)
    out = torch.poisson(rate, generator=generator).mul_(shot).add_(dark)
    if read:
        out.add_(torch.randn(out.shape, generator=generator, device=out.device), alpha=read)
    return out.clamp_(0.0, 1.0)


def check_crops(x: torch.Tensor, name: str) -> torch.Tensor:
    """Validate a batch of crops on its device, as `transforms.check_image` validates one image.

    Args:
        x: N x C x H x W float32 crops, intensities in [0, 1].
        name: how error messages call the batch (the collated key).

    Returns:
        x, clamped to [0, 1] when some values exceed it by rounding (at most 1e-3).

    Raises:
        ValueError: a channel holds NaN/inf, or intensities outside [0, 1] by more than 1e-3 (the message names the
            channel).
    """
    lo, hi = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))  # NaN propagates through both
    lo_hi = torch.stack([lo, hi]).cpu()
    if check_channel_range(name, lo_hi[0], lo_hi[1]):
        x = x.clamp(0.0, 1.0)
    return x


def mix_seed(seed: int, rank: int) -> int:
    """A 63-bit generator seed from (seed, rank), different for every pair in practice (splitmix64 finaliser).

    Args:
        seed: the run's seed.
        rank: the process's global rank.

    Returns:
        A non-negative int below 2**63.
    """
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(rank) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) >> 1


class DeviceCellAugmentation:
    """The per-pixel cell augmentations of `CellDataAugmentation`, applied to collated batches of crops.

    Args:
        params: the augmentation parameters (`augmentations.*`), shared with the loader side; default: the config
            defaults. Their `device` field is not read here.
        seed: the run's seed (with `rank`, seeds the generator).
        rank: the process's global rank.
        **overrides: `AugmentationParams` fields replacing those of `params` (e.g. `noise_p=0.0`); validated by the
            same per-sample classes as the loader side, so bad values fail with the same messages.
    """

    def __init__(self, params: Optional[AugmentationParams] = None, *, seed: int = 0, rank: int = 0, **overrides):
        self.params = (params if params is not None else AugmentationParams()).replace(**overrides)
        self.flip, self.rotate, self.elastic, self.jitter, self.noise = self.params.transforms()
        self.seed, self.rank = int(seed), int(rank)
        self.generator: Optional[torch.Generator] = None

    @classmethod
    def from_config(cls, augmentations_cfg, seed: int, rank: int) -> "DeviceCellAugmentation":
        """Build from the `augmentations` config section (through `AugmentationParams.from_config`).

        Args:
            augmentations_cfg: mapping of `augmentations.*` keys.
            seed: the run's seed.
            rank: the process's global rank.
        """
        return cls(AugmentationParams.from_config(augmentations_cfg), seed=seed, rank=rank)

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            if self.generator is not None:
                raise RuntimeError(f"DeviceCellAugmentation: batches moved from {self.generator.device} to {device}")
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(mix_seed(self.seed, self.rank))
            pending = getattr(self, "_pending_generator_state", None)
            if pending is not None:  # restored from a checkpoint before the first batch showed the device
                self.generator.set_state(pending)
                self._pending_generator_state = None
        return self.generator

    def state_dict(self) -> dict:
        """The generator's state, for a training checkpoint (exact resume).

        Returns:
            {"seed", "rank", "generator": ByteTensor, or None before the first batch}.
        """
        g = self.generator
        state = g.get_state() if g is not None else getattr(self, "_pending_generator_state", None)
        return {"seed": self.seed, "rank": self.rank, "generator": state}

    def load_state_dict(self, state: dict) -> None:
        """Continues the stream a checkpoint's `state_dict()` saved (applied when the generator is created).

        Args:
            state: what `state_dict()` returned.

        Raises:
            ValueError: the state was saved by another (seed, rank): the run's seed or rank layout changed.
        """
        if (int(state["seed"]), int(state["rank"])) != (self.seed, self.rank):
            raise ValueError(
                f"device augmentation state of seed {state['seed']}, rank {state['rank']} cannot continue the stream of "
                f"seed {self.seed}, rank {self.rank}: resume with the same --seed and number of processes"
            )
        if state["generator"] is None:
            return
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        else:
            self._pending_generator_state = state["generator"]

    def __call__(self, x: torch.Tensor, name: str = "crops", site_hw: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Check a batch of crops and augment it, each crop with its own parameters.

        Args:
            x: N x C x S x S crops in [0, 1] (any float dtype; computed in float32).
            name: how error messages call the batch.
            site_hw: N x 2 (height, width) of the crops' boxes in site pixels; needed by site-frame elastic fields
                (None: each crop is taken as a whole site at site resolution).

        Returns:
            A new N x C x S x S float32 tensor in [0, 1].

        Raises:
            ValueError: not N x C x S x S, site_hw not N x 2, or bad values (see `check_crops`).
        """
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"DeviceCellAugmentation: expected N x C x S x S crops, got shape {tuple(x.shape)}")
        if site_hw is not None and tuple(site_hw.shape) != (x.shape[0], 2):
            raise ValueError(
                f"DeviceCellAugmentation: {name}{SITE_HW_SUFFIX} must be N x 2 for N = {x.shape[0]} crops, got shape "
                f"{tuple(site_hw.shape)}"
            )
        x = x.float()
        n, c, h, w = x.shape
        if n == 0:
            return x
        x = check_crops(x, name)
        g = self._generator(x.device)
        dev = x.device

        # Geometry: flips, rotation, elastic field (drawn in the output frame, as the per-sample pipeline does).
        u = torch.rand(n, 4, generator=g, device=dev)
        hflip, vflip = u[:, 0] < self.flip.hflip_p, u[:, 1] < self.flip.vflip_p
        elastic = (u[:, 2] < self.elastic.p) & (self.elastic.alpha > 0)
        turns = torch.zeros(n, dtype=torch.long, device=dev)
        angle = torch.zeros(n, dtype=torch.float64, device=dev)
        if self.rotate.mode == "right_angles":
            turns = torch.randint(4, (n,), generator=g, device=dev)
        elif self.rotate.mode == "any":
            angle = 360.0 * torch.rand(n, generator=g, device=dev, dtype=torch.float64)
        warped = elastic | (angle != 0)
        x = dihedral_batch(x, hflip & ~warped, vflip & ~warped, torch.where(warped, 0, turns))
        idx = warped.nonzero().flatten()
        if idx.numel():
            mats = self._read_matrices(hflip[idx], vflip[idx], turns[idx], angle[idx])
            field, site_field = None, None
            e = elastic[idx]
            if bool(e.any()) and self.elastic.frame == "site":
                # One site-frame field per warped crop (fields of crops that only rotate are zeroed): a single
                # batched draw whatever the crops' sizes.
                hw = site_hw.to(dev).float()[idx] if site_hw is not None else torch.tensor([[h, w]] * idx.numel())
                margin = 0.21 if self.rotate.mode == "any" else 0.0  # flips and quarter turns read inside the box
                site_field = site_elastic_field(
                    hw, self.elastic.alpha, self.elastic.sigma, generator=g, device=dev, margin_fraction=margin
                )
                site_field.coarse.mul_(e.view(-1, 1, 1, 1).to(site_field.coarse.dtype))
            elif bool(e.any()):
                field = torch.zeros(idx.numel(), 2, h, w, device=dev)
                ei = e.nonzero().flatten()
                field[ei] = elastic_displacement_batch(
                    ei.numel(), h, w, self.elastic.alpha, self.elastic.sigma, generator=g, device=dev
                )
            x.index_copy_(0, idx, warp_batch(x.index_select(0, idx), mats, field, site_field))

        # Channel jitter, then microscope noise, on the crops whose coin says so.
        v = torch.rand(n, 2, generator=g, device=dev)
        idx = (v[:, 0] < self.jitter.p).nonzero().flatten()
        if idx.numel():
            (b_lo, b_hi), (g_lo, g_hi) = self.jitter.ranges()
            f = torch.rand(2, idx.numel(), c, generator=g, device=dev)
            beta, gamma = b_lo + (b_hi - b_lo) * f[0], g_lo + (g_hi - g_lo) * f[1]
            x.index_copy_(0, idx, channel_jitter_batch(x.index_select(0, idx), beta, gamma))
        idx = (v[:, 1] < self.noise.p).nonzero().flatten()
        if idx.numel():
            noisy = microscope_noise_batch(
                x.index_select(0, idx), self.noise.shot, self.noise.dark, self.noise.read, generator=g
            )
            x.index_copy_(0, idx, noisy)
        return x

    @staticmethod
    def _read_matrices(hflip, vflip, turns, angle) -> torch.Tensor:
        # Read matrix A(flips, turns) @ R(angle) of each warped crop, as `transforms.warp` composes them:
        # `dihedral_matrix` is diag(+-1, +-1) @ Q^turns with Q = [[0, -1], [1, 0]].
        dev = hflip.device
        q = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64, device=dev)
        powers = torch.stack([torch.linalg.matrix_power(q, k) for k in range(4)])
        signs = torch.stack([1.0 - 2.0 * hflip.double(), 1.0 - 2.0 * vflip.double()], dim=1)
        a = signs[:, :, None] * powers[turns % 4]
        th = torch.deg2rad(angle.double())
        cos, sin = torch.cos(th), torch.sin(th)
        rot = torch.stack([torch.stack([cos, -sin], dim=1), torch.stack([sin, cos], dim=1)], dim=1)
        return a @ rot

    def augment_batch(self, images: Dict[str, object], device: torch.device) -> Dict[str, object]:
        """Move the collated crops of a batch to `device` and augment them there.

        Args:
            images: the collated batch (upstream's keys plus `collated_other_site_crops`).
            device: the training device.

        Returns:
            A shallow copy of `images` whose crop tensors are augmented, on `device`, in their collated dtype.
        """
        out = dict(images)
        for key in CROP_KEYS:
            crops = images.get(key)
            if isinstance(crops, torch.Tensor) and crops.numel():
                site_hw = images.get(key + SITE_HW_SUFFIX)
                if site_hw is None and self.elastic.frame == "site" and self.elastic.p > 0 and self.elastic.alpha > 0:
                    raise ValueError(
                        f"augmentations.elastic_frame=site needs {key}{SITE_HW_SUFFIX} (the crops' boxes in site "
                        "pixels) in the batch: collate with dinov2_cell.augment.collate.collate_cell_data_and_cast"
                    )
                out[key] = self(crops.to(device, non_blocking=True), key, site_hw).to(crops.dtype)
        return out


def build_device_augmentation(cfg) -> Optional[DeviceCellAugmentation]:
    """The device augmentation of a training run, or None when `augmentations.device` is "loader" (or absent).

    The generator is seeded from `torch.initial_seed()`, which the training setup has set to the run's seed plus
    the rank, and from the global rank, so every rank draws its own parameters and a fixed seed reproduces.

    Args:
        cfg: the merged training config.

    Returns:
        A DeviceCellAugmentation built from `cfg.augmentations` (`augmentation_params`, as the loader side), or None.

    Raises:
        ValueError: `augmentations.device` is neither "loader" nor "model", or another bad `augmentations` key.
    """
    params = augmentation_params(cfg)
    if params.device != "model":
        return None
    rank = (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )
    seed = torch.initial_seed()
    logger.info(
        "augmentations.device=model: per-pixel cell augmentations on the training device (seed %d, rank %d)", seed, rank
    )
    return DeviceCellAugmentation(params, seed=seed, rank=rank)
