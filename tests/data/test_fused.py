"""The compiled normalisation pass: bit-identical to the numpy path, for every input kind it accepts."""

import numpy as np
import pytest
import torch

from dinov2_cell.data import fused
from dinov2_cell.data.intensity import RawSite, scale_to_unit

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba not installed")


def _numpy_path(monkeypatch, image, low, high, inplace=False):
    with monkeypatch.context() as m:
        m.setenv("DINOV2_CELL_NUMBA", "0")
        assert not fused.available()
        return scale_to_unit(image, low, high, inplace).clone()


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view(np.uint32)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_same_bits_as_numpy(monkeypatch, dtype):
    rng = np.random.default_rng(0)
    top = 255 if dtype == np.uint8 else 4000
    image = rng.integers(0, top, size=(4, 37, 53)).astype(dtype)
    if dtype == np.float32:
        image += rng.random(image.shape, dtype=np.float32)  # non-integer values after illumination correction
    low = np.array([3.3, 10.0, 0.0, 50.5])
    high = np.array([top * 0.9, top * 0.5, top + 7.25, 50.5])  # last channel constant: all zeros, not NaN
    ref = _numpy_path(monkeypatch, image, low, high)
    out = scale_to_unit(image, low, high)
    assert np.array_equal(_bits(out), _bits(ref))
    assert float(out[3].abs().max()) == 0.0 and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # by hand: clip((x - low) / (high - low), 0, 1), to float32 rounding
    expect = np.clip((image[:3].astype(np.float64) - low[:3, None, None]) / (high - low)[:3, None, None], 0, 1)
    assert np.allclose(out[:3].numpy(), expect, atol=1e-6)


def test_in_place_float32_and_strided_views(monkeypatch):
    rng = np.random.default_rng(1)
    base = (rng.random((3, 40, 40), dtype=np.float32) * 900).astype(np.float32)
    low, high = np.array([100.0, 0.0, 5.0]), np.array([800.0, 450.0, 600.0])
    ref = _numpy_path(monkeypatch, base.copy(), low, high)
    owned = base.copy()
    out = scale_to_unit(owned, low, high, inplace=True)
    assert out.numpy().ctypes.data == owned.ctypes.data  # written in place
    assert np.array_equal(_bits(out), _bits(ref))
    view = base[:, 5:30:2, 3:39]  # non-contiguous source
    assert np.array_equal(_bits(scale_to_unit(view, low, high)), _bits(ref[:, 5:30:2, 3:39]))


def test_read_only_memory_map_source(monkeypatch, tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "site.npy"
    np.save(path, rng.integers(0, 65535, size=(5, 64, 64), dtype=np.uint16))
    mm = np.load(path, mmap_mode="r")
    low, high = np.array([100.0, 200, 300, 400, 500]), np.array([60000.0, 50000, 40000, 30000, 20000])
    assert np.array_equal(_bits(scale_to_unit(mm, low, high)), _bits(_numpy_path(monkeypatch, mm, low, high)))


def test_raw_site_tiles_match_whole_site(monkeypatch):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 3000, size=(2, 300, 270), dtype=np.uint16)
    low, high = np.array([10.0, 20.0]), np.array([2500.0, 2900.0])
    ref = _numpy_path(monkeypatch, pixels, low, high)
    site = RawSite(pixels, low, high)
    crop = site.crop(100, 120, 150, 140)  # spans tiles at both edges
    assert np.array_equal(_bits(crop.contiguous()), _bits(ref[:, 100:250, 120:260].contiguous()))
    assert np.array_equal(_bits(site.to_tensor().contiguous()), _bits(ref))


def test_unsupported_inputs_fall_back():
    out = np.empty((2, 4, 4), np.float32)
    s, b = np.ones(2, np.float32), np.zeros(2, np.float32)
    assert not fused.scale_clip(np.zeros((2, 4, 4), np.int64), out, s, b)  # dtype not compiled for
    assert not fused.scale_clip(np.zeros((2, 4, 5), np.uint16), out, s, b)  # shape mismatch
    assert fused.scale_clip(np.full((2, 4, 4), 7, np.uint16), out, s, b) and float(out.max()) == 1.0


def test_available_after_upstream_replaces_print():
    """dinov2.distributed.enable() swaps builtins.print for a wrapper; numba must still import (fresh process)."""
    import subprocess
    import sys

    from helpers import child_env

    code = (
        "import builtins\n"
        "import dinov2.distributed as d\n"
        "d._restrict_print_to_main_process()  # what dinov2.distributed.enable() does\n"
        "patched = builtins.print\n"
        "assert patched.__module__ == 'dinov2.distributed'\n"
        "from dinov2_cell.data import fused\n"
        "assert fused.available(), 'compiled pass unavailable'\n"
        "assert builtins.print is patched\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env())
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
