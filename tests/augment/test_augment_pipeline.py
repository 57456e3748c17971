"""CellDataAugmentation (contract 1) and collate_cell_data_and_cast (contract 2) against upstream's collate."""

import functools
import os
import pickle

import pytest
import torch
from dinov2.data.collate import collate_data_and_cast
from dinov2.data.masking import MaskingGenerator
from omegaconf import OmegaConf

from dinov2_cell.augment.cell_augmentation import CellDataAugmentation
from dinov2_cell.augment.collate import collate_cell_data_and_cast
from dinov2_cell.train.config import PLUGIN_DEFAULT_CONFIG, configs_dir

KEYS = {"global_crops", "global_crops_teacher", "local_crops", "offsets", "other_site_crops"}


def _check_output(out, channels, g, l, n_local, n_other):
    assert set(out) == KEYS
    assert out["offsets"] == ()
    assert len(out["global_crops"]) == 2 and out["global_crops_teacher"] is out["global_crops"]
    assert len(out["local_crops"]) == n_local and len(out["other_site_crops"]) == n_other
    views = [(t, g) for t in out["global_crops"] + out["other_site_crops"]] + [(t, l) for t in out["local_crops"]]
    for t, size in views:
        assert t.shape == (channels, size, size) and t.dtype == torch.float32 and t.is_contiguous()
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1


@pytest.mark.parametrize("channels,h,w", [(3, 64, 64), (5, 96, 80), (8, 160, 160)])
def test_output_contract(small_aug, make_image, channels, h, w):
    aug = small_aug()
    assert aug.wants_other_site is True
    out = aug(make_image(channels, h, w, seed=1), other_site=make_image(channels, 70, 70, seed=2))
    _check_output(out, channels, 56, 28, 3, 1)
    out = aug(make_image(channels, h, w, seed=1))
    _check_output(out, channels, 56, 28, 3, 0)
    # DataLoader workers started with spawn/forkserver receive the transform pickled.
    _check_output(pickle.loads(pickle.dumps(aug))(make_image(channels, h, w)), channels, 56, 28, 3, 0)


def test_other_site_view_off(small_aug, make_image):
    aug = small_aug(other_site_view=False)
    assert aug.wants_other_site is False
    _check_output(aug(make_image(5, 64, 64)), 5, 56, 28, 3, 0)


def test_no_normalisation_identity_when_everything_off(make_image):
    # Full-image crop at the same size with every augmentation off returns the input: no ImageNet normalisation,
    # no centring, no hidden transform.
    img = make_image(5, 48, 48, seed=9)
    aug = CellDataAugmentation(
        (1.0, 1.0), (1.0, 1.0), 1, 48, 48, jitter_p=0, noise_p=0, elastic_p=0, rotation="none", hflip_p=0, vflip_p=0
    )
    aug.global_crop.ratio = aug.local_crop.ratio = (1.0, 1.0)
    out = aug(img)
    for t in out["global_crops"] + out["local_crops"]:
        torch.testing.assert_close(t, img, atol=1e-6, rtol=0)


def test_upstream_do_train_construction_from_config(make_image):
    # The lead's registration: partial(CellDataAugmentation, **cfg.augmentations, other_site_view=...), then upstream
    # do_train's call with cfg.crops. Every config key must be a constructor keyword.
    cfg = OmegaConf.load(os.path.join(configs_dir(), PLUGIN_DEFAULT_CONFIG))
    factory = functools.partial(CellDataAugmentation, **cfg.augmentations, other_site_view=True)
    crops = OmegaConf.create(dict(global_crops_scale=[0.32, 1.0], local_crops_scale=[0.05, 0.32], local_crops_number=2))
    aug = factory(
        crops.global_crops_scale,
        crops.local_crops_scale,
        crops.local_crops_number,
        global_crops_size=42,
        local_crops_size=28,
    )
    assert aug.elastic.alpha == 1200.0 and aug.elastic.sigma == 40.0 and aug.noise.shot == 0.1
    assert aug.rotate.mode == cfg.augmentations.rotation
    _check_output(aug(make_image(5, 64, 64), other_site=make_image(5, 64, 64, 3)), 5, 42, 28, 2, 1)
    with pytest.raises(TypeError, match="colour_jitter"):
        CellDataAugmentation((0.32, 1.0), (0.05, 0.32), 2, colour_jitter=0.4)
    with pytest.raises(ValueError, match="rotation"):
        CellDataAugmentation((0.32, 1.0), (0.05, 0.32), 2, rotation="sometimes")


def _batch(aug, make_image, b, other=True):
    return [
        (aug(make_image(5, 64, 64, i), other_site=make_image(5, 64, 64, 100 + i) if other else None), None)
        for i in range(b)
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_collate_with_upstream_and_wrapper(small_aug, make_image, dtype):
    aug = small_aug()
    b, g, patch = 4, 56, 14
    n_side = g // patch
    mask_generator = MaskingGenerator(input_size=(n_side, n_side), max_num_patches=0.5 * n_side * n_side)
    kwargs = dict(
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=dtype,
        n_tokens=n_side * n_side,
        mask_generator=mask_generator,
    )
    samples = _batch(aug, make_image, b)
    up = collate_data_and_cast(samples, **kwargs)
    assert up["collated_global_crops"].shape == (2 * b, 5, g, g) and up["collated_global_crops"].dtype == dtype
    assert up["collated_local_crops"].shape == (3 * b, 5, 28, 28)
    assert up["collated_masks"].shape == (2 * b, n_side * n_side)

    ours = collate_cell_data_and_cast(samples, **kwargs)
    assert set(ours) == set(up) | {"collated_other_site_crops"}
    other = ours["collated_other_site_crops"]
    assert other.shape == (b, 5, g, g) and other.dtype == dtype
    for i, (s, _) in enumerate(samples):
        torch.testing.assert_close(other[i], s["other_site_crops"][0].to(dtype))
        # Upstream's order: crop 0 of every sample, then crop 1.
        torch.testing.assert_close(ours["collated_global_crops"][b + i], s["global_crops"][1].to(dtype))
    assert ours["collated_masks"].shape == up["collated_masks"].shape

    without = collate_cell_data_and_cast(_batch(aug, make_image, b, other=False), **kwargs)
    assert "collated_other_site_crops" not in without
    mixed = samples[:2] + _batch(aug, make_image, 2, other=False)
    with pytest.raises(ValueError, match="other-site"):
        collate_cell_data_and_cast(mixed, **kwargs)


def test_degenerate_inputs(small_aug):
    aug = small_aug()
    for img in (torch.zeros(5, 64, 64), torch.full((5, 64, 64), 0.37), torch.ones(5, 64, 64)):
        out = aug(img, other_site=img.clone())
        _check_output(out, 5, 56, 28, 3, 1)
    # Without noise, a constant image stays exactly constant through every transform (jitter of a constant channel
    # changes only its level).
    quiet = small_aug(noise_p=0.0)
    out = quiet(torch.full((5, 64, 64), 0.37))
    for t in out["global_crops"] + out["local_crops"]:
        assert (t.amax(dim=(1, 2)) - t.amin(dim=(1, 2))).max() < 1e-6
    nan = torch.rand(5, 64, 64)
    nan[2] = float("nan")
    with pytest.raises(ValueError, match=r"image: channel\(s\) \[2\]"):
        aug(nan)
    with pytest.raises(ValueError, match=r"other_site: channel\(s\) \[2\]"):
        aug(torch.rand(5, 64, 64), other_site=nan)
    with pytest.raises(ValueError, match="other_site has 3 channels"):
        aug(torch.rand(5, 64, 64), other_site=torch.rand(3, 64, 64))
    with pytest.raises(TypeError, match="uint8"):
        aug(torch.zeros(5, 64, 64, dtype=torch.uint8))


def test_same_seed_reproduces_and_seeds_differ(small_aug, make_image):
    aug = small_aug()
    img, other = make_image(5, 64, 64, 1), make_image(5, 64, 64, 2)

    def run(seed):
        torch.manual_seed(seed)
        out = aug(img, other_site=other)
        return torch.cat([t.flatten() for t in out["global_crops"] + out["local_crops"] + out["other_site_crops"]])

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


class _SameImage(torch.utils.data.Dataset):
    def __init__(self, aug, img):
        self.aug, self.img = aug, img

    def __len__(self):
        return 4

    def __getitem__(self, i):
        out = self.aug(self.img)
        return torch.cat([t.flatten() for t in out["global_crops"] + out["local_crops"]])


def test_dataloader_workers_do_not_repeat(small_aug, make_image):
    # Two workers get different torch seeds from the DataLoader: the same image gives different views in each;
    # the loader's generator seed reproduces the whole epoch.
    ds = _SameImage(small_aug(), make_image(5, 64, 64, 1))

    def epoch(seed):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=2, generator=torch.Generator().manual_seed(seed)
        )
        return list(loader)

    a = epoch(0)
    assert not torch.equal(a[0], a[1])  # items 0 and 1 come from workers 0 and 1
    assert not torch.equal(a[0], a[2])  # worker 0's second item continues its stream
    b = epoch(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = epoch(1)
    assert not torch.equal(a[0], c[0])
