"""Normalization and illumination correction: exact results on known arrays."""

import numpy as np
import pytest
import torch

from dinov2_cell.data.intensity import (
    BitDepthNormalizer,
    PercentileNormalizer,
    PlateNormalizer,
    apply_illumination,
    auto_stride,
    channel_percentiles,
    make_normalizer,
    plate_bounds,
    scale_to_unit,
)


def test_histogram_percentiles_equal_numpy():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 5000, size=(3, 40, 50), dtype=np.uint16)
    q = [0.0, 0.1, 1.0, 37.5, 50.0, 99.9, 100.0]
    got = channel_percentiles(img, q, stride=1)
    want = np.stack([np.percentile(img[c].astype(np.float64), q) for c in range(3)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # float path gives the same numbers
    np.testing.assert_allclose(channel_percentiles(img.astype(np.float32), q, stride=1), want, atol=1e-6)


def test_percentile_normalizer_exact_on_ramp():
    # values 0..99 on a 10x10 image: p10 = 9.9, p90 = 89.1 (numpy linear interpolation)
    ramp = np.arange(100, dtype=np.uint16).reshape(1, 10, 10)
    out = PercentileNormalizer(10, 90, stride=1)(ramp, "P")
    expected = np.clip((np.arange(100) - 9.9) / (89.1 - 9.9), 0, 1).reshape(1, 10, 10)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    assert out.min() == 0 and out.max() == 1


def test_default_percentiles_and_auto_stride():
    n = make_normalizer("percentile")
    assert (n.low, n.high) == (0.1, 99.9)
    assert auto_stride(256, 256) == 1 and auto_stride(1080, 1080) == 4


def test_bitdepth_exact():
    img = np.array([[[0, 1, 4095, 65535]]], dtype=np.uint16)
    np.testing.assert_allclose(BitDepthNormalizer(16)(img, "P").numpy(), img / 65535.0, atol=1e-7)
    np.testing.assert_allclose(BitDepthNormalizer(12)(img, "P").numpy(), [[[0, 1 / 4095, 1, 1]]], atol=1e-7)


def test_constant_channel_becomes_zero_not_nan():
    img = np.full((2, 4, 4), 7, dtype=np.uint16)
    out = PercentileNormalizer()(img, "P")
    assert torch.isfinite(out).all() and out.abs().max() == 0


def test_scale_to_unit_float_input():
    img = np.array([[[-1.0, 0.0, 0.5, 2.0]]], dtype=np.float32)
    np.testing.assert_allclose(scale_to_unit(img, [0.0], [1.0]).numpy(), [[[0, 0, 0.5, 1]]])


def test_illumination_division():
    raw = np.array([[[100, 200], [300, 400]]], dtype=np.uint16)
    illum = np.array([[[1.0, 2.0], [3.0, 4.0]]], dtype=np.float32)
    out = apply_illumination(raw, illum)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.full((1, 2, 2), 100.0))
    assert apply_illumination(raw, None) is raw


def test_plate_normalizer_uses_pooled_bounds():
    a = np.zeros((1, 4, 4), np.uint16)
    b = np.full((1, 4, 4), 100, np.uint16)
    bounds = plate_bounds([a, b], 0, 100, stride=1)
    np.testing.assert_array_equal(bounds, [[0, 100]])
    norm = PlateNormalizer({"P1": bounds}, 0, 100)
    np.testing.assert_allclose(norm(b, "P1").numpy(), 1.0)
    with pytest.raises(KeyError, match="P2"):
        norm(b, "P2")


@pytest.mark.parametrize("bad", [dict(name="zscore"), dict(name="percentile", percentile_low=50, percentile_high=10)])
def test_bad_normalizer_options(bad):
    name = bad.pop("name")
    with pytest.raises(ValueError):
        make_normalizer(name, **bad)


# ------------------------------------------------------------------------------------- deferred normalisation


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_raw_site_crops_equal_normalise_then_crop_bit_for_bit(dtype):
    from dinov2_cell.data.intensity import RawSite, scale_to_unit

    rng = np.random.default_rng(0)
    img = (rng.random((3, 300, 270)) * 60000).astype(dtype)
    low, high = np.array([100.0, 5000.0, 7.0]), np.array([50000.0, 5000.0, 30000.5])  # channel 1: constant -> 0
    full = scale_to_unit(img, low, high).numpy()
    site = RawSite(img, low, high)
    for top, left, h, w in [(0, 0, 300, 270), (13, 200, 100, 70), (128, 128, 1, 1), (250, 0, 50, 129)]:
        np.testing.assert_array_equal(site.crop(top, left, h, w).numpy(), full[:, top : top + h, left : left + w])
    np.testing.assert_array_equal(site.to_tensor().numpy(), full)


def test_raw_site_converts_only_touched_tiles_once_and_reads_memmaps(tmp_path):
    from dinov2_cell.data import intensity
    from dinov2_cell.data.intensity import RawSite, scale_to_unit

    arr = np.lib.format.open_memmap(tmp_path / "s.npy", mode="w+", dtype=np.uint16, shape=(2, 400, 400))
    arr[:] = np.arange(400, dtype=np.uint16)[None, None, :] * 100
    arr.flush()
    ro = np.load(tmp_path / "s.npy", mmap_mode="r")
    site = RawSite(ro, [0.0, 1000.0], [40000.0, 2000.0])
    site.crop(10, 10, 20, 20)
    t = intensity._TILE
    assert site._done.sum() == 1 and site._done[0, 0]
    site.crop(t - 5, 0, 10, 10)  # rows straddle two tiles
    assert site._done.sum() == 2
    site._out[:, :5, :5] = -1.0  # a converted tile is not converted again
    assert float(site.crop(0, 0, 5, 5).min()) == -1.0
    full = scale_to_unit(np.asarray(ro), site.low, site.high).numpy()
    np.testing.assert_array_equal(site.crop(300, 50, 100, 300).numpy(), full[:, 300:400, 50:350])
    with pytest.raises(ValueError, match="outside the 400 x 400 site"):
        site.crop(390, 0, 20, 5)
    with pytest.raises(ValueError, match="bounds of shape"):
        RawSite(np.zeros((2, 4, 4), np.uint16), [0.0], [1.0])


# ------------------------------------------------------------------------------------- exactness of the fast paths


def _uint16_cases():
    rng = np.random.default_rng(3)
    real_like = (rng.gamma(2.0, 300.0, size=(2, 120, 130)) + 100).astype(np.uint16)
    real_like[0, :3, :] = 65535  # saturated pixels
    real_like[1, 5, :7] = 0
    return {
        "random_wide": rng.integers(0, 65536, size=(2, 33, 47), dtype=np.uint16),
        "ties": rng.choice(np.array([5, 5, 5, 9, 1000], dtype=np.uint16), size=(3, 21, 19)),
        "constant": np.full((2, 8, 9), 1234, dtype=np.uint16),
        "zeros": np.zeros((1, 4, 4), dtype=np.uint16),
        "one_pixel": np.array([[[42]], [[65535]]], dtype=np.uint16),
        "two_pixels": np.array([[[3, 65535]]], dtype=np.uint16),
        "tiny": rng.integers(0, 50, size=(2, 2, 3), dtype=np.uint16),
        "real_like": real_like,
    }


@pytest.mark.parametrize("case", sorted(_uint16_cases()))
def test_histogram_percentiles_bit_equal_numpy(case):
    img = _uint16_cases()[case]
    # 0.1/99.9 (the default), weights below and above 0.5, and the extremes
    q = [0.0, 0.1, 12.5, 33.3, 50.0, 66.7, 87.5, 99.9, 100.0]
    got = channel_percentiles(img, q, stride=1)
    for c in range(img.shape[0]):
        np.testing.assert_array_equal(got[c], np.percentile(img[c], q))
        np.testing.assert_array_equal(got[c], np.percentile(img[c].astype(np.float64), q))
    # the auto sub-grid: the same numbers as numpy on the same sub-grid
    st = auto_stride(*img.shape[1:])
    sub = channel_percentiles(img, q)
    for c in range(img.shape[0]):
        np.testing.assert_array_equal(sub[c], np.percentile(img[c, ::st, ::st], q))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_scale_to_unit_bit_equal_whole_array_numpy(dtype):
    # independent reference: the same float32 operations on the whole array at once, clipped with np.clip
    rng = np.random.default_rng(5)
    img = (rng.random((3, 301, 517)) * 60000).astype(dtype)  # rows not a multiple of the block, width > block/rows
    low, high = np.array([100.0, 5000.0, 7.3]), np.array([50000.0, 5000.0, 30000.5])
    span = high - low
    scale = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0)
    s = scale.astype(np.float32)[:, None, None]
    b = (-low * scale).astype(np.float32)[:, None, None]
    want = np.clip(img.astype(np.float32) * s + b, np.float32(0), np.float32(1))
    assert want.dtype == np.float32
    got = scale_to_unit(img, low, high)
    assert got.dtype == torch.float32 and got.shape == img.shape
    np.testing.assert_array_equal(got.numpy().view(np.uint32), want.view(np.uint32))
    # in place on a caller-owned float32 buffer: the same bits, in that buffer
    if dtype == np.float32:
        buf = img.copy()
        out = scale_to_unit(buf, low, high, inplace=True)
        assert out.data_ptr() == buf.ctypes.data
        np.testing.assert_array_equal(buf.view(np.uint32), want.view(np.uint32))
