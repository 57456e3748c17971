"""Exact checks of the cell transforms against the paper's formulas (Sec. 3.2.2, appendix 6)."""

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from scipy import stats

from dinov2_cell.augment.transforms import (
    ChannelJitter,
    ElasticDeform,
    MicroscopeNoise,
    RandomFlip,
    RandomRotate,
    _gaussian_kernel1d,
    apply_dihedral,
    channel_jitter,
    check_image,
    dihedral_matrix,
    elastic_displacement,
    microscope_noise,
    poisson,
    warp,
)

# ------------------------------------------------------------------------------------------------ jitter


@pytest.mark.parametrize("alpha_b,alpha_c", [(0.4, 0.4), (1.5, 0.2), (0.0, 0.9)])
def test_jitter_factors_inside_paper_ranges(alpha_b, alpha_c):
    jit = ChannelJitter(alpha_b, alpha_c, p=1.0)
    draws = [jit.sample_params(8) for _ in range(500)]
    beta = torch.stack([d.beta for d in draws])
    gamma = torch.stack([d.gamma for d in draws])
    for x, a in ((beta, alpha_b), (gamma, alpha_c)):
        lo, hi = max(0.0, 1 - a), 1 + a
        assert x.min() >= lo and x.max() <= hi
        if a > 0:  # uniform over the whole range: the extremes are approached
            assert x.min() < lo + 0.02 * (hi - lo) and x.max() > hi - 0.02 * (hi - lo)
            assert abs(float(x.mean()) - (lo + hi) / 2) < 0.02 * (hi - lo)


def test_jitter_factors_independent_per_channel():
    jit = ChannelJitter(0.4, 0.4, p=1.0)
    draws = [jit.sample_params(5) for _ in range(2000)]
    beta = torch.stack([d.beta for d in draws]).numpy()
    gamma = torch.stack([d.gamma for d in draws]).numpy()
    corr = np.corrcoef(np.concatenate([beta, gamma], axis=1).T)
    off = corr[~np.eye(10, dtype=bool)]
    assert np.abs(off).max() < 0.1  # 10 independent columns: |r| ~ N(0, 1/2000)
    assert len(np.unique(beta[0])) == 5  # channels differ within one draw


def test_jitter_matches_hand_computation(make_image):
    img = make_image(5, 20, 24, seed=3)
    jit = ChannelJitter(0.4, 0.4, p=1.0)
    params = jit.sample_params(5)
    out = jit.apply(img, params)
    # The paper's steps, in float64: brightness, then contrast about the brightness-adjusted channel mean, clip.
    x = img.double().numpy()
    b = params.beta.double().numpy()[:, None, None]
    g = params.gamma.double().numpy()[:, None, None]
    xb = x * b
    mu = xb.mean(axis=(1, 2), keepdims=True)
    ref = np.clip((xb - mu) * g + mu, 0, 1)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
    # In place gives the same result.
    np.testing.assert_allclose(jit.apply(img.clone(), params, inplace=True).numpy(), ref, atol=1e-6)


def test_contrast_keeps_channel_mean(make_image):
    img = make_image(3, 32, 32, seed=5)
    beta = torch.tensor([1.3, 0.7, 1.0])
    gamma = torch.tensor([0.6, 1.4, 1.0])
    out = channel_jitter(img, beta, gamma, clip=False)
    torch.testing.assert_close(out.mean(dim=(1, 2)), beta * img.mean(dim=(1, 2)), atol=1e-6, rtol=0)
    # Pure contrast (beta = 1) on an image that never clips: the channel mean is unchanged, clip or not.
    mid = 0.4 + 0.2 * img
    out = channel_jitter(mid, torch.ones(3), torch.tensor([0.6, 1.4, 1.2]), clip=True)
    torch.testing.assert_close(out.mean(dim=(1, 2)), mid.mean(dim=(1, 2)), atol=1e-6, rtol=0)


def test_jitter_clips_and_probability():
    img = torch.rand(4, 16, 16)
    out = channel_jitter(img, torch.full((4,), 1.4), torch.full((4,), 1.4))
    assert out.min() >= 0 and out.max() <= 1 and (out == 1).any() and (out == 0).any()
    assert ChannelJitter(p=0.0).sample_params(4) is None
    assert ChannelJitter(p=0.0)(img) is img
    hits = sum(ChannelJitter(p=0.8).sample_params(3) is not None for _ in range(2000))
    assert abs(hits / 2000 - 0.8) < 0.04


# ------------------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("lam", [0.0, 0.02, 0.5, 1.0, 3.03125, 3.1, 7.77, 10.0])
def test_poisson_sampler_matches_pmf(lam):
    n = 200_000
    k = poisson(torch.full((n,), lam), 10.0).long().numpy()
    freq = np.bincount(k, minlength=40)[:40] / n
    pmf = stats.poisson.pmf(np.arange(40), lam)
    tol = 5 * np.sqrt(pmf * (1 - pmf) / n) + 2e-5
    assert np.all(np.abs(freq - pmf) <= tol)
    assert abs(k.mean() - lam) < 5 * math.sqrt(max(lam, 1e-3) / n) + 1e-4


def test_poisson_sampler_mixed_rates_match_torch():
    # Many distinct rates in one call (exercises the guide walk and the residual part together): per-rate means
    # and variances equal the rate.
    rates = torch.linspace(0, 10, 41).repeat_interleave(20_000)
    k = poisson(rates, 10.0).view(41, -1)
    lam = torch.linspace(0, 10, 41)
    se = torch.sqrt(lam.clamp_min(0.01) / 20_000)
    assert torch.all((k.mean(1) - lam).abs() < 5 * se)
    assert torch.all((k.var(1) - lam).abs() < 5 * lam.clamp_min(0.01) * math.sqrt(2 / 20_000) + 5 * se)


def _clipped_normal_moments(m, s):
    """E and E[X^2] of clip(N(m, s^2), 0, 1), elementwise over arrays m."""
    a, b = (0 - m) / s, (1 - m) / s
    pa, pb = stats.norm.cdf(a), stats.norm.cdf(b)
    fa, fb = stats.norm.pdf(a), stats.norm.pdf(b)
    p_in = pb - pa
    e_z = fa - fb
    e_z2 = p_in + a * fa - b * fb
    e1 = m * p_in + s * e_z + (1 - pb)
    e2 = m**2 * p_in + 2 * m * s * e_z + s**2 * e_z2 + (1 - pb)
    return e1, e2


@pytest.mark.parametrize("value", [0.0, 0.1, 0.45, 0.9])
def test_noise_moments_on_constant_images(value):
    shot, dark, read = 0.1, 0.05, 0.01
    img = torch.full((4, 500, 500), value)
    out = microscope_noise(img, shot, dark, read).double()
    # Exact moments of clip(Poisson(v / shot) * shot + dark + N(0, read^2), 0, 1), summing over the counts.
    k = np.arange(60)
    pk = stats.poisson.pmf(k, value / shot)
    e1, e2 = _clipped_normal_moments(k * shot + dark, read)
    mean, var = float((pk * e1).sum()), float((pk * e2).sum() - (pk * e1).sum() ** 2)
    if value <= 0.1:  # clipping has probability < 1e-6 here: the unclipped model holds
        assert abs(mean - (value + dark)) < 1e-6 and abs(var - (shot * value + read**2)) < 1e-6
    n = out.numel()
    assert abs(float(out.mean()) - mean) < 5 * math.sqrt(var / n) + 1e-6
    assert abs(float(out.var()) / var - 1) < 0.02  # sampling error of the variance ~0.2 % at n = 1e6
    assert out.min() >= 0 and out.max() <= 1


def test_noise_clipping_and_inplace():
    img = torch.rand(3, 64, 64)
    img[0] = 1.0
    img[1] = 0.0
    torch.manual_seed(7)
    out = microscope_noise(img, 0.1, 0.05, 0.01)
    assert out.min() >= 0 and out.max() <= 1 and (out == 1).any()
    torch.manual_seed(7)
    same = microscope_noise(img.clone(), 0.1, 0.05, 0.01, inplace=True)
    torch.testing.assert_close(out, same, rtol=0, atol=0)
    assert MicroscopeNoise(p=0.0)(img) is img


# ----------------------------------------------------------------------------------------------- elastic


def test_field_std_formula_analytically():
    # Unit white noise smoothed by a normalised Gaussian: Var = sum_x G(x)^2 = (sum_i g_i^2)^2 -> 1 / (4 pi sigma^2)
    # (continuous limit: int G_sigma^2 = G_{sigma sqrt 2}(0) = 1 / (4 pi sigma^2)). Untruncated sampled kernel: exact.
    for sigma in (6.0, 6.667, 40.0):
        x = np.arange(-int(12 * sigma), int(12 * sigma) + 1)
        g = np.exp(-0.5 * (x / sigma) ** 2)
        g /= g.sum()
        assert abs((g**2).sum() ** 2 * 4 * math.pi * sigma**2 - 1) < 1e-9
        # The 4-sigma truncation we (and scipy) use changes it by < 3e-4.
        gt = _gaussian_kernel1d(sigma).double()
        assert abs(float((gt**2).sum()) ** 2 * 4 * math.pi * sigma**2 - 1) < 3e-4
    assert abs(ElasticDeform(1200, 40).field_std() - 1200 / (2 * 40 * math.sqrt(math.pi))) < 1e-12


def _field_stats(fields, lags):
    # Pooled over fields, both components and both axes; raw second moments (the field has mean 0 by construction).
    f = torch.stack(fields).double()
    m2 = float((f**2).mean())
    rho = []
    for r in lags:
        cx = (f[..., :, :-r] * f[..., :, r:]).mean()
        cy = (f[..., :-r, :] * f[..., r:, :]).mean()
        rho.append(float((cx + cy) / 2) / m2)
    return math.sqrt(m2), np.array(rho)


def test_fast_field_matches_exact_gaussian_filter():
    alpha, sigma, size, n = 1200.0, 40.0, 518, 32
    lags = [10, 20, 40, 80]
    ours = [elastic_displacement(size, size, alpha, sigma) for _ in range(n)]
    rng = np.random.default_rng(0)
    # Exact formulation: full-resolution N(0, 1) smoothed by scipy's Gaussian (wrap: stationary like ours).
    exact = [
        torch.from_numpy(alpha * ndi.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap"))
        for _ in range(n)
    ]
    std_o, rho_o = _field_stats(ours, lags)
    std_e, rho_e = _field_stats(exact, lags)
    std_a = alpha / (2 * sigma * math.sqrt(math.pi))
    rho_a = np.exp(-np.array(lags) ** 2 / (4 * sigma**2))
    # Tolerances ~1.5x the worst deviation seen over 12 seeds (32 fields of 518^2 with correlation length ~2 sigma:
    # ~1-2 % sampling error on the std, ~0.01-0.03 on the autocorrelation); with 400 fields ours gives
    # std / analytic = 0.996 and |rho - analytic| < 0.006.
    assert abs(std_o / std_a - 1) < 0.06, (std_o, std_a)
    assert abs(std_e / std_a - 1) < 0.06, (std_e, std_a)
    assert abs(std_o / std_e - 1) < 0.08
    np.testing.assert_allclose(rho_o, rho_a, atol=0.05)
    np.testing.assert_allclose(rho_e, rho_a, atol=0.05)
    np.testing.assert_allclose(rho_o, rho_e, atol=0.07)
    # Smoothness at pixel scale: neighbour correlation exp(-1 / (4 sigma^2)) ~ 1 - 1.6e-4, not just "looks smooth".
    _, rho1 = _field_stats(ours, [1])
    assert abs(rho1[0] - math.exp(-1 / (4 * sigma**2))) < 1e-3


def test_small_sigma_field_is_the_exact_convolution():
    # sigma < 12 px uses stride 1: the field must equal the full-resolution noise convolved with G_sigma.
    torch.manual_seed(3)
    f = elastic_displacement(40, 50, alpha=7.0, sigma=5.0)
    torch.manual_seed(3)
    rad = math.ceil(4 * 5.0)
    noise = torch.randn(2, 1, 40 + 2 * rad, 50 + 2 * rad)[:, 0].double().numpy()
    ref = 7.0 * np.stack([ndi.gaussian_filter(z, 5.0, mode="constant", truncate=4.0) for z in noise])
    np.testing.assert_allclose(f.numpy(), ref[:, rad:-rad, rad:-rad], atol=1e-5)


def test_elastic_alpha_zero_is_identity_and_range_preserved(make_image):
    img = make_image(5, 48, 48, seed=2) * 0.6 + 0.2  # range [0.2, 0.8]
    assert ElasticDeform(alpha=0.0, sigma=40, p=1.0)(img) is img
    torch.testing.assert_close(warp(img, torch.zeros(2, 48, 48)), img, atol=1e-5, rtol=0)  # float32 grid rounding
    deformed = ElasticDeform(alpha=1200.0, sigma=8.0, p=1.0)(img)
    assert not torch.allclose(deformed, img)
    for c in range(5):
        assert deformed[c].min() >= img[c].min() - 1e-6 and deformed[c].max() <= img[c].max() + 1e-6


def test_elastic_probability():
    el = ElasticDeform(sigma=4.0, p=0.5)  # small sigma: cheap fields, the coin is what is tested
    hits = sum(el.sample_params(16, 16) is not None for _ in range(1000))
    assert abs(hits / 1000 - 0.5) < 0.06


# ------------------------------------------------------------------------------------- rotations and flips


def test_right_angle_rotations_are_exact_permutations(make_image):
    img = make_image(3, 16, 16, seed=4)
    rot = RandomRotate("right_angles")
    seen = set()
    for _ in range(40):
        angle = rot.sample_params()
        assert angle in (0.0, 90.0, 180.0, 270.0)
        seen.add(angle)
        out = rot.apply(img, angle)
        assert torch.equal(out, torch.rot90(img, int(angle // 90), dims=(1, 2)))
        assert torch.equal(out.flatten().sort().values, img.flatten().sort().values)
    assert len(seen) == 4
    assert rot.apply(img, 360.0) is img or torch.equal(rot.apply(img, 360.0), img)


def test_any_angle_rotation_matches_rot90_at_right_angles(make_image):
    img = make_image(2, 12, 12, seed=6)
    for k in range(4):
        torch.testing.assert_close(warp(img, angle=90.0 * k), torch.rot90(img, k, dims=(1, 2)), atol=1e-5, rtol=0)
    angles = [RandomRotate("any").sample_params() for _ in range(500)]
    assert min(angles) >= 0 and max(angles) < 360 and np.std(angles) > 90
    assert RandomRotate("none").sample_params() == 0.0
    with pytest.raises(ValueError, match="rotation"):
        RandomRotate("sometimes")


def test_flips_and_dihedral_composition_exact(make_image):
    img = make_image(2, 9, 9, seed=8)
    for h in (False, True):
        for v in (False, True):
            flipped = RandomFlip().apply(img, (h, v))
            ref = torch.flip(img, [d for d, f in ((2, h), (1, v)) if f])
            assert torch.equal(flipped, ref)
            for k in range(4):
                a = dihedral_matrix(h, v, k)
                expected = torch.rot90(ref, k, dims=(1, 2))
                assert torch.equal(apply_dihedral(img, a), expected)
                torch.testing.assert_close(warp(img, None, 0.0, a), expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- checking


def test_check_image_errors():
    img = torch.rand(5, 8, 8)
    bad = img.clone()
    bad[3, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"channel\(s\) \[3\]"):
        check_image(bad)
    bad[3, 2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"\[3\]"):
        check_image(bad)
    with pytest.raises(TypeError, match="int32"):
        check_image((img * 65535).int())
    with pytest.raises(ValueError, match="channel 1"):
        check_image(torch.stack([img[0], img[1] * 300]))
    with pytest.raises(ValueError, match="C x H x W"):
        check_image(img[0])
    with pytest.raises(TypeError):
        check_image(img.numpy())
    tiny = img.clone()
    tiny[0, 0, 0] = 1.0004
    assert check_image(tiny).max() == 1.0
    assert check_image(img.double()).dtype == torch.float32


def test_bad_parameters_name_the_key():
    for cls, kw, key in (
        (ChannelJitter, dict(brightness=-0.1), "brightness"),
        (ChannelJitter, dict(p=1.5), "jitter_p"),
        (MicroscopeNoise, dict(shot=0.0), "noise_shot"),
        (MicroscopeNoise, dict(p=-1), "noise_p"),
        (ElasticDeform, dict(sigma=0.0), "elastic_sigma"),
        (ElasticDeform, dict(alpha=float("nan")), "elastic_alpha"),
        (RandomFlip, dict(vflip_p=2), "vflip_p"),
    ):
        with pytest.raises(ValueError, match=key):
            cls(**kw)
