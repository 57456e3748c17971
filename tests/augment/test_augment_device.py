"""`augmentations.device: model`: the loader's crop-only path and the batched device augmentation, checked formula by
formula against the per-sample transforms (same laws), plus seeding, config plumbing and the meta-arch hook."""

import functools
import os
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy import stats

from dinov2_cell.augment.cell_augmentation import CellDataAugmentation
from dinov2_cell.train.config import PLUGIN_DEFAULT_CONFIG, configs_dir
from dinov2_cell.augment.device import (
    CROP_KEYS,
    SITE_HW_SUFFIX,
    DeviceCellAugmentation,
    build_device_augmentation,
    channel_jitter_batch,
    cheap_resize,
    dihedral_batch,
    elastic_displacement_batch,
    microscope_noise_batch,
    mix_seed,
    warp_batch,
)
from dinov2_cell.augment.transforms import (
    RandomFlip,
    RandomResizedCrop,
    RandomRotate,
    dihedral_matrix,
    elastic_displacement,
    warp,
)

OFF = dict(jitter_p=0.0, noise_p=0.0, elastic_p=0.0, rotation="none", hflip_p=0.0, vflip_p=0.0)


def _default_cfg():
    return OmegaConf.load(os.path.join(configs_dir(), PLUGIN_DEFAULT_CONFIG))


# ------------------------------------------------------------------------------------------------- loader side


def test_cheap_resize_halvings_are_box_means_and_convex(make_image):
    img = make_image(5, 200, 200, seed=1)[None]
    # 200 -> 50: two halvings (2 x 2 box means), then 50 x 50 is already the size: a 4 x 4 box mean exactly.
    torch.testing.assert_close(cheap_resize(img, 50), F.avg_pool2d(img, 4), atol=1e-6, rtol=0)
    # Same size: an exact copy, not a view of the input.
    same = cheap_resize(img, 200)
    assert torch.equal(same, img) and same.data_ptr() != img.data_ptr()
    # Factor <= 2 is one plain bilinear resize; the output stays within each channel's range.
    out = cheap_resize(img[..., 3:180, 7:190], 98)
    torch.testing.assert_close(
        out, F.interpolate(img[..., 3:180, 7:190], size=(98, 98), mode="bilinear", align_corners=False)
    )
    for c in range(5):
        assert img[0, c].min() <= out[0, c].min() and out[0, c].max() <= img[0, c].max()


def test_model_mode_loader_only_crops(make_image):
    img, other = make_image(5, 120, 100, seed=2), make_image(5, 90, 90, seed=3)
    aug = CellDataAugmentation((0.32, 1.0), (0.05, 0.32), 3, 56, 28, device="model")
    assert aug.device == "model" and aug.wants_other_site
    torch.manual_seed(11)
    out = aug(img, other_site=other)
    # Same RNG draws as the crop boxes alone: nothing else is drawn on the loader side.
    torch.manual_seed(11)
    g, l = RandomResizedCrop(56, (0.32, 1.0)), RandomResizedCrop(28, (0.05, 0.32))
    expected = []
    for crop, src in [(g, img)] * 2 + [(l, img)] * 3 + [(g, other)]:
        top, left, h, w = crop.sample_params(src)
        expected.append(cheap_resize(src[None, :, top : top + h, left : left + w], crop.size)[0])
    views = out["global_crops"] + out["local_crops"] + out["other_site_crops"]
    assert len(views) == 6 and out["global_crops_teacher"] is out["global_crops"]
    for v, e in zip(views, expected):
        assert v.dtype == torch.float16 and v.is_contiguous()  # what upstream's collate casts to anyway
        torch.testing.assert_close(v, e.half(), atol=0, rtol=0)


def test_model_mode_checks_values_on_the_device(make_image):
    aug = CellDataAugmentation((1.0, 1.0), (1.0, 1.0), 1, 32, 16, device="model")
    aug.global_crop.ratio = aug.local_crop.ratio = (1.0, 1.0)
    bad = make_image(5, 32, 32)
    bad[2, 5, 5] = float("nan")
    out = aug(bad)  # the worker only crops; the device checks the batch
    batch = torch.stack(out["global_crops"])
    with pytest.raises(ValueError, match=r"collated_global_crops: channel\(s\) \[2\]"):
        hw = torch.stack(out["global_crops_site_hw"])
        DeviceCellAugmentation().augment_batch(
            {"collated_global_crops": batch, "collated_global_crops_site_hw": hw}, torch.device("cpu")
        )
    high = make_image(5, 8, 8)[None]
    high[0, 3] *= 1.5
    high[0, 3, 0, 0] = 1.5
    with pytest.raises(ValueError, match="channel 3 spans"):
        DeviceCellAugmentation()(high)
    near = make_image(5, 8, 8)[None]
    near[0, 1, 0, 0] = 1.0004
    assert DeviceCellAugmentation(**OFF)(near).max() == 1.0  # rounding excursions are clamped
    with pytest.raises(TypeError, match="uint8"):
        aug(torch.zeros(5, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="other_site has 3 channels"):
        aug(make_image(5, 32, 32), other_site=make_image(3, 32, 32))
    with pytest.raises(ValueError, match="augmentations.device"):
        CellDataAugmentation((1.0, 1.0), (1.0, 1.0), 1, device="gpu")


def test_config_key_reaches_both_sides():
    cfg = _default_cfg()
    assert cfg.augmentations.device in ("loader", "model")
    factory = functools.partial(CellDataAugmentation, **cfg.augmentations, other_site_view=True)
    assert factory((0.32, 1.0), (0.05, 0.32), 2).device == cfg.augmentations.device
    cfg.augmentations.device = "loader"
    assert build_device_augmentation(cfg) is None
    assert build_device_augmentation(OmegaConf.create({})) is None
    cfg.augmentations.device = "model"
    torch.manual_seed(5)
    dev = build_device_augmentation(cfg)
    assert isinstance(dev, DeviceCellAugmentation) and dev.seed == 5 and dev.rank == 0
    assert dev.elastic.alpha == cfg.augmentations.elastic_alpha and dev.rotate.mode == cfg.augmentations.rotation
    cfg.augmentations.device = "both"
    with pytest.raises(ValueError, match="augmentations.device"):
        build_device_augmentation(cfg)
    with pytest.raises(ValueError, match="noise_p"):
        DeviceCellAugmentation(noise_p=2.0)


# ------------------------------------------------------------------------------------------- exact formulas


def test_batched_field_is_the_per_sample_field_and_has_its_statistics():
    for sigma in (5.0, 40.0):  # stride 1 (exact convolution) and the coarse-grid construction
        torch.manual_seed(3)
        ref = elastic_displacement(40, 50, alpha=7.0, sigma=sigma)
        torch.manual_seed(3)
        ours = elastic_displacement_batch(1, 40, 50, alpha=7.0, sigma=sigma)
        assert ours.shape == (1, 2, 40, 50)
        torch.testing.assert_close(ours[0], ref, atol=0, rtol=0)
    # Statistics of a batch: std alpha / (2 sigma sqrt(pi)), autocorrelation exp(-r^2 / (4 sigma^2)); fields of
    # one batch are independent.
    alpha, sigma = 1200.0, 40.0
    f = elastic_displacement_batch(24, 518, 518, alpha, sigma, generator=torch.Generator().manual_seed(0)).double()
    std = math.sqrt(float((f**2).mean()))
    assert abs(std / (alpha / (2 * sigma * math.sqrt(math.pi))) - 1) < 0.06
    m2 = float((f**2).mean())
    for r in (10, 40, 80):
        rho = float(((f[..., :, :-r] * f[..., :, r:]).mean() + (f[..., :-r, :] * f[..., r:, :]).mean()) / 2) / m2
        assert abs(rho - math.exp(-(r**2) / (4 * sigma**2))) < 0.05
    centre = f[:, 0, 259, 259].numpy()
    assert abs(np.corrcoef(centre[:-1], centre[1:])[0, 1]) < 0.6  # 23 pairs: |r| of independent draws ~ 0.2


def test_warp_batch_equals_per_sample_warp(make_image):
    x = make_image(3, 24, 24, seed=4)
    gen = torch.Generator().manual_seed(1)
    crops, mats, fields, refs = [], [], [], []
    for i, (h, v, k, angle) in enumerate([(0, 0, 0, 0.0), (1, 0, 1, 0.0), (0, 1, 3, 33.0), (1, 1, 2, 271.5)]):
        crop = x.roll(i, dims=2)
        field = 3.0 * torch.randn(2, 24, 24, generator=gen)
        a = dihedral_matrix(bool(h), bool(v), k)
        th = math.radians(angle)
        rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
        crops.append(crop)
        mats.append(torch.tensor(a, dtype=torch.float64) @ rot)
        fields.append(field)
        refs.append(warp(crop, field, angle, a))
    out = warp_batch(torch.stack(crops), torch.stack(mats), torch.stack(fields))
    torch.testing.assert_close(out, torch.stack(refs), atol=1e-5, rtol=0)
    # The vectorised read matrices are `dihedral_matrix(...) @ R(angle)`.
    hv = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    built = DeviceCellAugmentation._read_matrices(
        hv[:, 0], hv[:, 1], torch.tensor([0, 1, 3, 2]), torch.tensor([0.0, 0.0, 33.0, 271.5], dtype=torch.float64)
    )
    torch.testing.assert_close(built, torch.stack(mats), atol=1e-12, rtol=0)


def test_dihedral_batch_is_flip_then_rot90_exactly(make_image):
    x = torch.stack([make_image(2, 9, 9, seed=s) for s in range(16)])
    combos = [(h, v, k) for h in (0, 1) for v in (0, 1) for k in range(4)]
    hflip = torch.tensor([c[0] for c in combos], dtype=torch.bool)
    vflip = torch.tensor([c[1] for c in combos], dtype=torch.bool)
    turns = torch.tensor([c[2] for c in combos])
    out = dihedral_batch(x, hflip, vflip, turns)
    for i, (h, v, k) in enumerate(combos):
        ref = RandomRotate("right_angles").apply(RandomFlip().apply(x[i], (bool(h), bool(v))), 90.0 * k)
        assert torch.equal(out[i], ref)


def test_jitter_batch_matches_hand_computation(make_image):
    x = torch.stack([make_image(5, 20, 24, seed=s) for s in range(3)])
    beta = 0.6 + 0.8 * torch.rand(3, 5)
    gamma = 0.6 + 0.8 * torch.rand(3, 5)
    out = channel_jitter_batch(x, beta, gamma)
    xb = x.double().numpy() * beta.double().numpy()[..., None, None]
    mu = xb.mean(axis=(2, 3), keepdims=True)
    ref = np.clip((xb - mu) * gamma.double().numpy()[..., None, None] + mu, 0, 1)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def _clipped_normal_moments(m, s):
    """E and E[X^2] of clip(N(m, s^2), 0, 1), elementwise over arrays m."""
    a, b = (0 - m) / s, (1 - m) / s
    pa, pb = stats.norm.cdf(a), stats.norm.cdf(b)
    fa, fb = stats.norm.pdf(a), stats.norm.pdf(b)
    p_in = pb - pa
    e_z = fa - fb
    e_z2 = p_in + a * fa - b * fb
    return m * p_in + s * e_z + (1 - pb), m**2 * p_in + 2 * m * s * e_z + s**2 * e_z2 + (1 - pb)


@pytest.mark.parametrize("value", [0.0, 0.1, 0.45, 0.9])
def test_noise_batch_moments_on_constant_images(value):
    shot, dark, read = 0.1, 0.05, 0.01
    out = microscope_noise_batch(torch.full((4, 1, 500, 500), value), shot, dark, read).double()
    k = np.arange(60)
    pk = stats.poisson.pmf(k, value / shot)
    e1, e2 = _clipped_normal_moments(k * shot + dark, read)
    mean, var = float((pk * e1).sum()), float((pk * e2).sum() - (pk * e1).sum() ** 2)
    n = out.numel()
    assert abs(float(out.mean()) - mean) < 5 * math.sqrt(var / n) + 1e-6
    assert abs(float(out.var()) / var - 1) < 0.02
    assert out.min() >= 0 and out.max() <= 1


# ------------------------------------------------------------------------------- laws of the full batch call


def test_geometry_law_uniform_over_the_eight_symmetries(make_image):
    img = make_image(1, 8, 8, seed=5)
    dev = DeviceCellAugmentation(**{**OFF, "rotation": "right_angles", "hflip_p": 0.5, "vflip_p": 0.5})
    out = dev(img[None].expand(800, -1, -1, -1))
    images = [torch.rot90(torch.flip(img, d), k, dims=(1, 2)) for d in ([], [2]) for k in range(4)]
    counts = np.zeros(8)
    for o in out:
        hits = [j for j, ref in enumerate(images) if torch.equal(o, ref)]
        assert len(hits) == 1  # every output is exactly one symmetry of the input
        counts[hits[0]] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


def test_jitter_law_probability_and_factor_ranges(make_image):
    img = 0.4 + 0.2 * make_image(5, 16, 16, seed=6)  # no clipping for factors in [0.6, 1.4]
    dev = DeviceCellAugmentation(**{**OFF, "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4})
    out = dev(img[None].expand(2000, -1, -1, -1)).double()
    x = img.double()
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 0
    assert abs(float(changed.double().mean()) - 0.8) < 0.04
    o = out[changed]
    beta = o.mean(dim=(2, 3)) / x.mean(dim=(1, 2))  # contrast keeps the brightness-adjusted mean
    gamma = o.std(dim=(2, 3)) / (beta * x.std(dim=(1, 2)))
    for f in (beta, gamma):
        u = ((f.flatten().numpy()) - 0.6) / 0.8
        assert u.min() > -1e-4 and u.max() < 1 + 1e-4
        assert stats.kstest(np.clip(u, 0, 1), "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(beta[:, 0].numpy(), beta[:, 1].numpy())[0, 1]) < 0.1  # channels independent


def test_noise_and_elastic_probabilities(make_image):
    dev = DeviceCellAugmentation(**{**OFF, "noise_p": 0.5})
    out = dev(torch.full((2000, 1, 8, 8), 0.3))
    noisy = (out != 0.3).any(dim=3).any(dim=2).any(dim=1)
    assert abs(float(noisy.double().mean()) - 0.5) < 0.04
    img = make_image(2, 32, 32, seed=7) * 0.6 + 0.2
    dev = DeviceCellAugmentation(**{**OFF, "elastic_p": 0.5, "elastic_alpha": 30.0, "elastic_sigma": 4.0})
    out = dev(img[None].expand(1000, -1, -1, -1))
    deformed = (out - img).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert abs(float(deformed.double().mean()) - 0.5) < 0.06
    assert out.min() >= img.min() - 1e-6 and out.max() <= img.max() + 1e-6  # reflection keeps the range


def test_all_off_is_identity_and_output_in_range(make_image):
    x = torch.stack([make_image(5, 16, 16, seed=s) for s in range(4)])
    assert torch.equal(DeviceCellAugmentation(**OFF)(x), x)
    out = DeviceCellAugmentation(rotation="any")(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1


# ------------------------------------------------------------------------------------------------- seeding


def test_parameters_differ_across_batch_and_ranks_and_reproduce(make_image):
    img = make_image(5, 32, 32, seed=8)
    batch = img[None].expand(6, -1, -1, -1)

    def run(seed, rank):
        return DeviceCellAugmentation(seed=seed, rank=rank)(batch)

    a = run(0, 0)
    for i in range(6):
        for j in range(i):
            assert not torch.equal(a[i], a[j])  # every crop of a batch has its own draw
    assert torch.equal(a, run(0, 0))  # same seed and rank: same output
    assert not torch.equal(a, run(0, 1))  # another rank: other draws
    assert not torch.equal(a, run(1, 0))
    assert len({mix_seed(s, r) for s in range(50) for r in range(50)}) == 2500
    dev = DeviceCellAugmentation(seed=0, rank=0)
    assert not torch.equal(dev(batch), dev(batch))  # the stream advances from step to step


def test_augment_batch_keys_dtype_and_other_keys():
    g = torch.Generator().manual_seed(0)
    images = {
        "collated_global_crops": torch.rand(4, 3, 16, 16, generator=g).half(),
        "collated_local_crops": torch.rand(8, 3, 8, 8, generator=g).half(),
        "collated_other_site_crops": torch.rand(2, 3, 16, 16, generator=g).half(),
        "collated_masks": torch.zeros(4, 4, dtype=torch.bool),
        "upperbound": 3,
    }
    with pytest.raises(ValueError, match="collated_global_crops_site_hw"):
        DeviceCellAugmentation().augment_batch(images, torch.device("cpu"))
    for key in CROP_KEYS:
        images[key + SITE_HW_SUFFIX] = torch.full((images[key].shape[0], 2), 40.0)
    out = DeviceCellAugmentation().augment_batch(images, torch.device("cpu"))
    assert set(out) == set(images) and out is not images
    for key in CROP_KEYS:
        assert out[key].dtype == torch.half and out[key].shape == images[key].shape
        assert not torch.equal(out[key], images[key])
    assert out["collated_masks"] is images["collated_masks"] and out["upperbound"] == 3
    del images["collated_other_site_crops"], images["collated_other_site_crops" + SITE_HW_SUFFIX]
    assert "collated_other_site_crops" not in DeviceCellAugmentation().augment_batch(images, torch.device("cpu"))


def test_meta_arch_augments_the_batch_on_the_device():
    from helpers import make_batch, tiny_cfg

    from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch

    def model(device_mode):
        cfg = tiny_cfg(f"augmentations.device={device_mode}")
        torch.manual_seed(0)
        m = LocalAggregationMetaArch(cfg)
        for k in m.student.keys():
            m.teacher[k].load_state_dict(m.student[k].state_dict())
        m.train()
        return m, cfg

    on, cfg = model("model")
    off, _ = model("loader")
    assert off.device_augmentation is None and on.device_augmentation.seed == 0
    batch = make_batch(cfg, batch_size=3, other_site=True, seed=2)
    for key in CROP_KEYS:  # boxes as collate_cell_data_and_cast adds them in model mode
        batch[key + SITE_HW_SUFFIX] = torch.full((batch[key].shape[0], 2), 3.0 * batch[key].shape[-1])
    # The loader-mode model fed the batch as the hook augments it gives the same losses: the hook is exactly
    # "augment the collated crops, then upstream's step".
    augmented = DeviceCellAugmentation.from_config(cfg.augmentations, seed=0, rank=0).augment_batch(
        batch, torch.device("cpu")
    )
    torch.manual_seed(1)
    a = on.forward_backward(batch, teacher_temp=0.07)
    torch.manual_seed(1)
    b = off.forward_backward(augmented, teacher_temp=0.07)
    assert a.keys() == b.keys()
    for k in a:
        assert float(a[k]) == float(b[k]), k
