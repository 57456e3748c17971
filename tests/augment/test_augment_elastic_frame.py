"""`augmentations.elastic_frame`: elastic fields in site pixels, read at each crop's pixels (both augmentation paths).

A crop of an h x w site-pixel box resized to n x n must see the site's field: displacement std
k * alpha / (2 sigma sqrt(pi)) and autocorrelation exp(-r^2 / (4 (k sigma)^2)) in its own pixels, k = n / h; k = 1
(the whole site at site resolution) is the crop-frame field.
"""

import math

import numpy as np
import pytest
import torch
from dinov2.data.masking import MaskingGenerator
from scipy import ndimage

from dinov2_cell.augment.cell_augmentation import CellDataAugmentation
from dinov2_cell.augment.device import DeviceCellAugmentation, warp_batch
from dinov2_cell.augment.transforms import ElasticDeform, SiteField, _base_grid, site_elastic_field, warp

OFF = dict(jitter_p=0.0, noise_p=0.0, rotation="none", hflip_p=0.0, vflip_p=0.0)


def _ramps(n: int) -> torch.Tensor:
    """2 x n x n image whose channels are the x and y pixel-centre coordinates / n: bilinear reads return positions."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    return torch.stack([c.view(1, n).expand(n, n), c.view(n, 1).expand(n, n)]).contiguous()


def _crop_px_displacement(field: SiteField, n: int) -> np.ndarray:
    """N x 2 x n x n displacement of the identity read of n x n crops, in crop pixels."""
    grid = _base_grid(n, n).view(1, n, n, 2).expand(field.box_hw.shape[0], n, n, 2)
    return (field.displacement(grid) * (n / 2.0)).permute(0, 3, 1, 2).numpy()


@pytest.mark.parametrize("margin", [0.0, 0.21])
@pytest.mark.parametrize("box_hw,n", [((64, 64), 64), ((240, 180), 98), ((30, 40), 56)])
def test_site_field_is_the_site_grid_read_at_crop_pixels(box_hw, n, margin):
    # Independent reference: scipy's order-1 interpolation of the coarse grid at each crop pixel's site position,
    # converted to crop pixels (x n / w, y n / h).
    f = site_elastic_field(torch.tensor([box_hw]), alpha=300.0, sigma=13.0, margin_fraction=margin)
    assert (f.margin == 0) == (margin == 0)
    h, w = box_hw
    ours = _crop_px_displacement(f, n)[0]
    j, i = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="xy")
    rows = i * h / n / f.stride + f.margin
    cols = j * w / n / f.stride + f.margin
    coarse = f.coarse[0].numpy().astype(np.float64)
    ref_x = ndimage.map_coordinates(coarse[0], [rows, cols], order=1) * n / w
    ref_y = ndimage.map_coordinates(coarse[1], [rows, cols], order=1) * n / h
    np.testing.assert_allclose(ours[0], ref_x, atol=2e-4 * np.abs(ref_x).max())
    np.testing.assert_allclose(ours[1], ref_y, atol=2e-4 * np.abs(ref_y).max())


def _autocorr(d: np.ndarray, lag: int) -> float:
    a, b = d[..., :, :-lag], d[..., :, lag:]
    return float((a * b).mean() / d.var())


@pytest.mark.parametrize("site, n", [(240, 98), (98, 98), (64, 128)])
def test_site_field_std_and_correlation_length_scale_with_the_crop(site, n):
    torch.manual_seed(0)
    alpha, sigma = 1200.0, 40.0 if site > 98 else 12.0
    k = n / site
    d = _crop_px_displacement(site_elastic_field(torch.tensor([[site, site]] * 64), alpha, sigma), n)
    std = alpha / (2 * sigma * math.sqrt(math.pi)) * k
    assert abs(d.std() / std - 1) < 0.08
    for lag in (int(k * sigma), int(2 * k * sigma)):
        assert abs(_autocorr(d, lag) - math.exp(-((lag / k) ** 2) / (4 * sigma**2))) < 0.08


def test_whole_site_at_site_resolution_is_the_crop_frame_law():
    torch.manual_seed(1)
    n, alpha, sigma = 96, 200.0, 8.0
    site = _crop_px_displacement(site_elastic_field(torch.tensor([[n, n]] * 48), alpha, sigma), n)
    crop = torch.stack([ElasticDeform(alpha, sigma, 1.0, "crop").sample_params(n, n) for _ in range(48)]).numpy()
    assert abs(site.std() / crop.std() - 1) < 0.06
    for lag in (4, 8, 16):
        assert abs(_autocorr(site, lag) - _autocorr(crop, lag)) < 0.06


def test_per_sample_pipeline_scales_the_field_by_the_crop():
    # A ramp site: the augmented crop's channels are its read positions, so out - identity is the displacement.
    site, n = 240, 98
    img = _ramps(site)
    stds = {}
    for frame in ("site", "crop"):
        aug = CellDataAugmentation((1.0, 1.0), (1.0, 1.0), 0, n, 8, elastic_p=1.0, elastic_frame=frame, **OFF)
        aug.global_crop.ratio = (1.0, 1.0)
        torch.manual_seed(2)
        disp = torch.stack([aug(img)["global_crops"][0] - _ramps(n) for _ in range(16)]) * n
        stds[frame] = float(disp[:, :, 30:-30, 30:-30].std())  # interior: no reflection at the border
    field_std = 1200 / (2 * 40 * math.sqrt(math.pi))
    assert abs(stds["crop"] / field_std - 1) < 0.2
    assert abs(stds["site"] / (field_std * n / site) - 1) < 0.2


def test_device_path_scales_by_each_crops_box_and_matches_per_sample_warp():
    n = 64
    boxes = torch.tensor([[64.0, 64.0], [256.0, 256.0]] * 8)
    x = _ramps(n)[None].repeat(16, 1, 1, 1)
    dev = DeviceCellAugmentation(elastic_p=1.0, elastic_alpha=600.0, elastic_sigma=16.0, **OFF)
    disp = (dev(x, site_hw=boxes) - x)[:, :, 16:-16, 16:-16] * n
    field_std = 600.0 / (2 * 16.0 * math.sqrt(math.pi))
    assert abs(float(disp[0::2].std()) / field_std - 1) < 0.2  # k = 1
    assert abs(float(disp[1::2].std()) / (field_std / 4) - 1) < 0.2  # k = 1/4
    # warp_batch with a site field == transforms.warp crop by crop (rotation and flips folded in).
    f = site_elastic_field(boxes[:3], 600.0, 16.0)
    mats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, -1.0], [1.0, 0.0]], [[-1.0, 0.0], [0.0, 1.0]]])
    dihedrals = [((1, 0), (0, 1)), ((0, -1), (1, 0)), ((-1, 0), (0, 1))]
    ours = warp_batch(x[:3], mats, site_field=f)
    for i in range(3):
        fi = SiteField(f.coarse[i : i + 1], f.stride, f.margin, f.box_hw[i : i + 1])
        torch.testing.assert_close(ours[i], warp(x[i], dihedral=dihedrals[i], site_field=fi), atol=1e-5, rtol=0)


def test_site_frame_deforms_first_then_rotates():
    # Reading the site field at the rotated positions is "deform, then rotate": rot90 of the deformed crop.
    torch.manual_seed(3)
    img = torch.rand(2, 40, 40)
    f = site_elastic_field(torch.tensor([[80.0, 80.0]]), 300.0, 10.0)
    deformed = warp(img, site_field=f)
    rotated = warp(img, angle=90.0, site_field=f)
    torch.testing.assert_close(rotated, torch.rot90(deformed, 1, dims=(1, 2)), atol=1e-4, rtol=0)


def test_model_mode_collates_boxes_in_crop_order():
    from dinov2_cell.augment.collate import collate_cell_data_and_cast

    aug = CellDataAugmentation((0.3, 0.6), (0.05, 0.2), 2, 32, 16, device="model")
    torch.manual_seed(4)
    img = torch.rand(3, 100, 100)
    samples = [(aug(img, other_site=img), ()) for _ in range(3)]
    out = collate_cell_data_and_cast(
        samples, (0.1, 0.5), 0.5, torch.half, n_tokens=4, mask_generator=MaskingGenerator((2, 2), max_num_patches=2)
    )
    for key, views in (("global_crops", 2), ("local_crops", 2), ("other_site_crops", 1)):
        hw = out[f"collated_{key}_site_hw"]
        assert hw.shape == (3 * views, 2) and hw.dtype == torch.float32
        assert torch.equal(hw[1], samples[1][0][f"{key}_site_hw"][0])  # view 0 of sample 1
        assert torch.equal(hw[3 * views - 1], samples[2][0][f"{key}_site_hw"][views - 1])


def test_bad_frame_names_the_key():
    with pytest.raises(ValueError, match="augmentations.elastic_frame"):
        ElasticDeform(frame="specimen")
    with pytest.raises(ValueError, match="_site_hw must be N x 2"):
        DeviceCellAugmentation()(torch.rand(2, 1, 8, 8), site_hw=torch.ones(3, 2))
