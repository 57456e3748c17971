"""Contract tests of the cell augmentation: documented defaults, error messages naming their config key, the exact
Poisson sampler against scipy, the max-rate switch of the noise, in-place noise, the device augmentation's crop-frame
elastic branch and its checkpoint resume."""

import math
import os

import pytest
import torch
import yaml
from scipy import stats

from dinov2_cell.augment.cell_augmentation import CellDataAugmentation
from dinov2_cell.augment.checks import check_image
from omegaconf import OmegaConf

from dinov2_cell.augment.device import (
    DeviceCellAugmentation,
    build_device_augmentation,
    microscope_noise_batch,
    mix_seed,
)
from dinov2_cell.augment.geometry import ElasticDeform, RandomFlip, RandomRotate, apply_dihedral, dihedral_matrix
from dinov2_cell.augment.params import AugmentationParams
from dinov2_cell.augment.transforms import ChannelJitter, channel_jitter
from dinov2_cell.augment.noise import MicroscopeNoise, _poisson_table, _PoissonTable, microscope_noise, poisson


def test_documented_defaults():
    # Upstream DINOv2 crop sizes; METHOD.md noise defaults (sigma_shot 0.1, sigma_dark 0.05, sigma_read 0.01).
    aug = CellDataAugmentation((0.32, 1.0), (0.05, 0.32), 2)
    assert (aug.global_crops_size, aug.local_crops_size) == (224, 96)
    assert (aug.global_crop.size, aug.local_crop.size) == (224, 96)
    noise = MicroscopeNoise()
    assert (noise.shot, noise.dark, noise.read, noise.p) == (0.1, 0.05, 0.01, 0.5)
    flip = RandomFlip()
    assert (flip.hflip_p, flip.vflip_p) == (0.5, 0.5)


def test_class_defaults_match_the_config_file():
    # The shipped config is the reference: the classes built without arguments must apply the same laws.
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "cell_default_config.yaml")
    with open(path) as f:
        cfg = yaml.safe_load(f)["augmentations"]
    params = AugmentationParams()
    for key, value in cfg.items():
        assert getattr(params, key) == value, key
    jitter, noise, elastic = ChannelJitter(), MicroscopeNoise(), ElasticDeform()
    flip, rotate = RandomFlip(), RandomRotate()
    got = {
        "brightness": jitter.brightness,
        "contrast": jitter.contrast,
        "jitter_p": jitter.p,
        "noise_p": noise.p,
        "noise_shot": noise.shot,
        "noise_dark": noise.dark,
        "noise_read": noise.read,
        "elastic_p": elastic.p,
        "elastic_alpha": elastic.alpha,
        "elastic_sigma": elastic.sigma,
        "elastic_frame": elastic.frame,
        "rotation": rotate.mode,
        "hflip_p": flip.hflip_p,
        "vflip_p": flip.vflip_p,
    }
    assert got == {k: v for k, v in cfg.items() if k != "device"}


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: RandomFlip(hflip_p=1.5), "augmentations.hflip_p"),
        (lambda: RandomFlip(vflip_p=-0.1), "augmentations.vflip_p"),
        (lambda: ElasticDeform(p=2.0), "augmentations.elastic_p"),
        (lambda: ElasticDeform(alpha=-1.0), "augmentations.elastic_alpha"),
        (lambda: ElasticDeform(sigma=math.inf), "augmentations.elastic_sigma"),
        (lambda: MicroscopeNoise(p=1.01), "augmentations.noise_p"),
        (lambda: MicroscopeNoise(shot=-0.1), "augmentations.noise_shot"),
        (lambda: MicroscopeNoise(dark=-0.1), "augmentations.noise_dark"),
        (lambda: MicroscopeNoise(read=math.nan), "augmentations.noise_read"),
        (lambda: ChannelJitter(brightness=-0.5), "augmentations.brightness"),
        (lambda: ChannelJitter(contrast=math.inf), "augmentations.contrast"),
        (lambda: ChannelJitter(p=-1.0), "augmentations.jitter_p"),
    ],
)
def test_bad_values_name_their_key(build, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " must be"):
        build()


def test_check_image_single_pixel_and_empty():
    one = torch.full((1, 1, 1), 0.25)
    out = check_image(one)
    assert out.shape == (1, 1, 1) and float(out) == 0.25
    with pytest.raises(ValueError, match="empty image"):
        check_image(torch.zeros(1, 0, 4))


@pytest.mark.parametrize("max_rate", [10.0, 2.5, 0.5])
def test_poisson_table_cdf_matches_scipy(max_rate):
    table = _PoissonTable(max_rate)
    assert table.rows == int(max_rate * 32) + 1
    lam = torch.arange(table.rows, dtype=torch.float64) / 32
    k = torch.arange(table.kmax - 1, dtype=torch.float64)
    ref = torch.from_numpy(stats.poisson.cdf(k[None].numpy(), lam[:, None].numpy())).float()
    ref[0] = 1.0  # Poisson(0) is 0 with probability 1
    torch.testing.assert_close(table.cdf[:, :-1], ref, atol=2e-7, rtol=0)
    assert bool((table.cdf[:, -1] == 2.0).all())  # tail folded into the last count
    # Far tail: the table is long enough that the last stored CDF value is 1 in float32.
    assert float(table.cdf[-1, -2]) == 1.0


@pytest.mark.parametrize("rate, max_rate", [(0.3, 10.0), (4.0 + 1.0 / 64, 10.0), (0.5, 0.5)])
def test_poisson_frequencies_match_scipy(rate, max_rate):
    # 512 draws per call: the size whose expected residual-arrival count (512 * (1 - e^-1/32) ~ 15.7) sits where a
    # too-small candidate buffer would be empty.
    torch.manual_seed(5)
    draws = torch.cat([poisson(torch.full((2, 16, 16), rate), max_rate).flatten() for _ in range(120)])
    n = draws.numel()
    assert bool((draws == draws.round()).all()) and float(draws.min()) >= 0
    for k in range(0, 9):
        p = stats.poisson.pmf(k, rate)
        freq = float((draws == k).sum()) / n
        assert abs(freq - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-4, (k, freq, p)
    assert abs(float(draws.mean()) - rate) <= 5 * math.sqrt(rate / n)


def test_microscope_noise_uses_table_up_to_max_rate_64():
    img = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    shot, dark, read = 1.0 / 64, 0.05, 0.01
    torch.manual_seed(3)
    got = microscope_noise(img, shot, dark, read)
    torch.manual_seed(3)
    ref = _poisson_table(64.0).sample((img * 64).contiguous(), scale=shot, offset=dark, noise_std=read).clamp(0, 1)
    torch.testing.assert_close(got, ref.view(img.shape), atol=0, rtol=0)
    # Above 64 photons per unit intensity: torch.poisson.
    shot = 1.0 / 80
    torch.manual_seed(3)
    got = microscope_noise(img, shot, dark, read)
    torch.manual_seed(3)
    ref = (torch.poisson(img * 80) * shot + dark + read * torch.randn(img.shape)).clamp(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_noise_apply_inplace_overwrites_input():
    noise = MicroscopeNoise()
    img = torch.full((1, 4, 4), 0.5)
    before = img.clone()
    out = noise.apply(img, True, inplace=True)
    assert out.data_ptr() == img.data_ptr() and not torch.equal(img, before)
    img = before.clone()
    out = noise.apply(img, True)
    assert out.data_ptr() != img.data_ptr() and torch.equal(img, before)
    assert noise.apply(img, False) is img


def _still_crops(n=8, seed=11):
    return torch.rand(n, 2, 24, 24, generator=torch.Generator().manual_seed(seed))


def test_device_crop_frame_elastic_warps_only_drawn_crops():
    n, seed = 8, 4
    aug = DeviceCellAugmentation(
        seed=seed,
        elastic_frame="crop",
        elastic_p=0.5,
        elastic_alpha=200.0,
        elastic_sigma=4.0,
        rotation="none",
        hflip_p=0.0,
        vflip_p=0.0,
        jitter_p=0.0,
        noise_p=0.0,
    )
    x = _still_crops(n)
    out = aug(x.clone())
    # The first draw of the generator is the N x 4 coin block; column 2 is the elastic coin.
    u = torch.rand(n, 4, generator=torch.Generator().manual_seed(mix_seed(seed, 0)))
    drawn = u[:, 2] < 0.5
    assert 0 < int(drawn.sum()) < n
    assert out.shape == x.shape
    for i in range(n):
        if drawn[i]:
            assert float((out[i] - x[i]).abs().max()) > 1e-3
        else:
            assert torch.equal(out[i], x[i])


def test_device_resume_before_first_batch_continues_stream():
    x = _still_crops(4)
    a = DeviceCellAugmentation(seed=7, rank=1, elastic_frame="crop")
    a(x.clone())
    state = a.state_dict()
    expected = a(x.clone())
    b = DeviceCellAugmentation(seed=7, rank=1, elastic_frame="crop")
    assert b.state_dict()["generator"] is None
    b.load_state_dict(state)
    assert torch.equal(b.state_dict()["generator"], state["generator"])  # pending until the first batch
    torch.testing.assert_close(b(x.clone()), expected, atol=0, rtol=0)
    # A started generator is overwritten in place.
    b.load_state_dict(state)
    torch.testing.assert_close(b(x.clone()), expected, atol=0, rtol=0)


@pytest.mark.parametrize("seed, rank", [(8, 1), (7, 0)])
def test_device_resume_rejects_other_seed_or_rank(seed, rank):
    state = DeviceCellAugmentation(seed=seed, rank=rank).state_dict()
    with pytest.raises(ValueError, match=f"seed {seed}, rank {rank} cannot continue the stream of seed 7, rank 1"):
        DeviceCellAugmentation(seed=7, rank=1).load_state_dict(state)


def test_check_image_range_tolerance_and_messages():
    img = torch.full((3, 2, 2), 0.5)
    assert check_image(img) is img  # float32 and in range: no copy
    for v, clamped in ((1.0009, 1.0), (-0.0009, 0.0)):
        bad = img.clone()
        bad[1, 0, 0] = v
        out = check_image(bad)
        assert float(out[1, 0, 0]) == clamped and torch.equal(out[[0, 2]], img[[0, 2]])
        assert float(check_image(bad, values=False)[1, 0, 0]) == pytest.approx(v)  # values not read
    worst = img.clone()
    worst[0, 0, 0], worst[2, 1, 1] = 1.002, -0.25  # channel 2 is further outside
    with pytest.raises(ValueError, match=r"^ex: intensities must lie in \[0, 1\]; channel 2 spans \[-0.25, 0.5\]$"):
        check_image(worst, "ex")
    for v in (1.0011, -0.0011):
        bad = img.clone()
        bad[1, 1, 0] = v
        with pytest.raises(ValueError, match="channel 1 spans"):
            check_image(bad)
    bad = img.clone()
    bad[0, 0, 1], bad[2, 0, 0] = math.inf, math.nan
    with pytest.raises(ValueError, match=r"^site: channel\(s\) \[0, 2\] contain NaN or inf values$"):
        check_image(bad, "site")


def test_microscope_noise_batch_matches_its_formula_with_the_generator():
    x = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(2)) * 1.2 - 0.1  # outside [0, 1]: clamped
    got = microscope_noise_batch(x, 0.1, 0.05, 0.01, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    counts = torch.poisson(x.clamp(0, 1) * 10, generator=g)
    ref = (counts * 0.1 + 0.05 + 0.01 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    # read = 0 draws no Gaussian noise: the result is the counts, shifted.
    got = microscope_noise_batch(x, 0.1, 0.05, 0.0, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(got, (counts * 0.1 + 0.05).clamp(0, 1), atol=1e-6, rtol=0)


def test_device_small_alpha_still_deforms():
    # alpha = 1 px (std alpha / (2 sigma sqrt(pi)) ~ 0.28 px at sigma 1): every elastic crop moves.
    aug = DeviceCellAugmentation(
        elastic_frame="crop",
        elastic_p=1.0,
        elastic_alpha=1.0,
        elastic_sigma=1.0,
        rotation="none",
        hflip_p=0.0,
        vflip_p=0.0,
        jitter_p=0.0,
        noise_p=0.0,
    )
    x = _still_crops(3)
    out = aug(x.clone())
    assert all(float((out[i] - x[i]).abs().max()) > 1e-2 for i in range(3))


@pytest.mark.parametrize("hflip, vflip", [(False, False), (True, False), (False, True), (True, True)])
def test_dihedral_matrix_is_flip_then_rot90_for_any_turn_count(hflip, vflip):
    img = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    flipped = torch.flip(img, [d for d, f in ((2, hflip), (1, vflip)) if f]) if (hflip or vflip) else img
    for turns in range(-2, 10):
        ref = torch.rot90(flipped, turns, dims=(1, 2))
        assert torch.equal(apply_dihedral(img, dihedral_matrix(hflip, vflip, turns)), ref), turns


def test_rotate_by_full_turns_returns_the_image_uncopied():
    img = torch.rand(2, 6, 6)
    rotate = RandomRotate("any")
    for angle in (0.0, 360.0, -720.0):
        assert rotate.apply(img, angle) is img
    assert torch.equal(rotate.apply(img, 90.0), torch.rot90(img, 1, dims=(1, 2)))


def test_channel_jitter_keeps_the_image_dtype_with_float64_factors():
    img = torch.rand(2, 4, 4)
    beta, gamma = torch.tensor([1.2, 0.7], dtype=torch.float64), torch.tensor([0.9, 1.3], dtype=torch.float64)
    out = channel_jitter(img, beta, gamma, clip=False)
    assert out.dtype == torch.float32
    mean = img.double().mean(dim=(1, 2))
    ref = (img.double() * beta[:, None, None] - (beta * mean)[:, None, None]) * gamma[:, None, None] + (beta * mean)[
        :, None, None
    ]
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)


def test_build_device_augmentation_uses_the_global_rank(monkeypatch):
    cfg = OmegaConf.create({"augmentations": {"device": "model"}})
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    torch.manual_seed(21)
    aug = build_device_augmentation(cfg)
    assert (aug.seed, aug.rank) == (21, 3)
