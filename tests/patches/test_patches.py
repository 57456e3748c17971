"""Each runtime patch: what it fixes, shown on upstream's own code (CPU)."""

import importlib
import pickle
import sys

import numpy as np
import pytest
import torch

from dinov2_cell.plugin import install, load_patches

install()
patches = load_patches()
from dinov2_cell.patches import _torch_xformers as tx  # noqa: E402


def _tiny_vit(in_chans=3):
    from dinov2_cell.models.multichannel_vit import TINY_ARCHS

    torch.manual_seed(0)
    return TINY_ARCHS["vit_cell_tiny"](patch_size=14, img_size=56, in_chans=in_chans, init_values=1e-5).eval()


def test_import_leaves_no_fake_xformers():
    import dinov2.train.ssl_meta_arch  # noqa: F401  (upstream asserts xFormers at import)

    mod = sys.modules.get("xformers")
    assert mod is None or not getattr(mod, "__dinov2_cell_standin__", False)
    assert "xformers.ops" not in sys.modules or not hasattr(sys.modules["xformers.ops"], "__dinov2_cell_standin__")


def test_block_diagonal_attention_equals_per_crop_forward():
    """The nested (list) forward that training uses equals running each crop batch on its own."""
    vit = _tiny_vit()
    g = torch.Generator().manual_seed(1)
    big, small = torch.rand(3, 3, 56, 56, generator=g), torch.rand(5, 3, 28, 28, generator=g)
    with torch.no_grad():
        nested = vit.forward_features([big, small], [None, None])
        alone = [vit.forward_features(big), vit.forward_features(small)]
    for a, b in zip(nested, alone):
        for key in ("x_norm_clstoken", "x_norm_patchtokens"):
            assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_memory_efficient_attention_matches_dense_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 7, 2, 4, generator=g) for _ in range(3))
    bias = tx.BlockDiagonalMask.from_seqlens([3, 4])
    out = tx.memory_efficient_attention(q, k, v, attn_bias=bias)
    for start, n in ((0, 3), (3, 4)):
        qs, ks, vs = (t[0, start : start + n].transpose(0, 1) for t in (q, k, v))  # (H, n, K)
        ref = torch.softmax(qs @ ks.transpose(-1, -2) / 2.0, dim=-1) @ vs
        assert torch.allclose(out[0, start : start + n].transpose(0, 1), ref, atol=1e-6)


def test_scaled_index_add_and_index_select_cat():
    x = torch.zeros(4, 2, 3)
    src = torch.ones(2, 2, 3)
    out = tx.scaled_index_add(x, torch.tensor([1, 3]), src, scaling=torch.tensor([1.0, 2.0, 3.0]), alpha=0.5)
    assert out[1, 0].tolist() == [0.5, 1.0, 1.5] and out[0].abs().sum() == 0
    a, b = torch.arange(6.0).view(3, 2), torch.arange(4.0).view(2, 2)
    cat = tx.index_select_cat([a, b], [torch.tensor([2]), torch.tensor([0, 1])])
    assert cat.tolist() == [4.0, 5.0, 0.0, 1.0, 2.0, 3.0]


def test_apply_twice_is_harmless():
    import dinov2.distributed
    import dinov2.fsdp
    import dinov2.train.ssl_meta_arch as sma
    import dinov2.train.train as train

    before = (dinov2.fsdp.get_fsdp_wrapper, dinov2.distributed.enable, sma.SSLMetaArch.forward_backward, train.torch)
    patches.apply()
    # Also force every module's apply() again (the guard in patches.apply() would skip them).
    for name in ("fsdp", "distributed", "train_ssl_meta_arch", "train_train", "data_loaders", "layers_block"):
        importlib.import_module(f"dinov2_cell.patches.{name}").apply()
    after = (dinov2.fsdp.get_fsdp_wrapper, dinov2.distributed.enable, sma.SSLMetaArch.forward_backward, train.torch)
    assert before == after


def test_version_check_names_the_fix(monkeypatch):
    monkeypatch.setattr(patches.importlib.metadata, "version", lambda name: "0.0.2")
    with pytest.raises(RuntimeError, match=r"pip install --no-deps dinov2==0.0.1.dev2"):
        patches.check_upstream_version()


def test_parse_dataset_str_delegates_to_upstream_and_registry():
    import dinov2.data.loaders as loaders
    from dinov2.data.datasets import ImageNet

    from dinov2_cell.data.registry import register_dataset

    class_, kwargs = loaders._parse_dataset_str("ImageNet:split=TRAIN:root=/x")
    assert class_ is ImageNet and kwargs["root"] == "/x"

    @register_dataset("PatchTestSet")
    class PatchTestSet:
        def __init__(self, *, transform=None, target_transform=None, n: int = 3):
            self.n = n

    class_, kwargs = loaders._parse_dataset_str("PatchTestSet:n=7")
    assert class_ is PatchTestSet and kwargs == {"n": 7}
    with pytest.raises(ValueError, match="Unsupported dataset"):
        loaders._parse_dataset_str("NoSuchSet:root=/x")


def test_make_dataset_target_transform_is_picklable():
    import dinov2.train.train as train

    from dinov2_cell.data.registry import register_dataset

    @register_dataset("PickleTestSet")
    class PickleTestSet:
        def __init__(self, *, transform=None, target_transform=None):
            self.transform, self.target_transform = transform, target_transform

        def __len__(self):
            return 1

    ds = train.make_dataset(dataset_str="PickleTestSet", transform=None, target_transform=lambda _: ())
    assert pickle.loads(pickle.dumps(ds.target_transform))(5) == ()


def test_cuda_synchronize_is_a_noop_without_cuda():
    import dinov2.train.train as train

    if torch.cuda.is_available():
        pytest.skip("CUDA present: upstream's synchronize runs unchanged")
    train.torch.cuda.synchronize()  # upstream's do_train calls this after do_test
    assert train.torch.float32 is torch.float32


def test_checkpoint_with_numpy_scalars_loads(tmp_path):
    """fvcore's torch.load runs weights_only=True on torch >= 2.6, which rejects numpy scalars unless allowed."""
    import numpy as np
    from dinov2.fsdp import FSDPCheckpointer

    model = torch.nn.Linear(2, 2)
    ckpt = FSDPCheckpointer(model, str(tmp_path))
    path = tmp_path / "x.pth"
    values = {"iteration": np.int64(3), "loss": np.float64(0.5), "lr": np.float32(0.25), "flag": np.bool_(True)}
    torch.save({"model": model.state_dict(), **values}, path)
    with pytest.raises(pickle.UnpicklingError):  # without the allow-list
        torch.load(path, weights_only=True)
    loaded = ckpt._load_file(str(path))
    assert {k: (type(loaded[k]), loaded[k]) for k in values} == {k: (type(v), v) for k, v in values.items()}


class _RunsCodeWhenUnpickled:
    """Unpickling calls `Path.touch(marker)`: a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_crafted_pickle_in_a_checkpoint_is_refused_and_normal_resume_works(tmp_path):
    import dinov2.distributed as distributed
    from dinov2.fsdp import FSDPCheckpointer
    from dinov2.train.ssl_meta_arch import SSLMetaArch
    from dinov2.train.train import build_optimizer

    from helpers import tiny_cfg

    if not distributed.is_enabled():
        distributed.enable(overwrite=True)
    cfg = tiny_cfg("student.in_chans=3")
    model = SSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    optimizer = build_optimizer(cfg, model.get_params_groups())
    for group in optimizer.param_groups:  # what do_train's numpy schedules put there
        group["lr"], group["weight_decay"] = np.float64(1e-3), np.float64(0.04)
    checkpointer = FSDPCheckpointer(model, str(tmp_path), optimizer=optimizer, save_to_disk=True)
    checkpointer.save("model_0000004", iteration=np.int64(4))
    path = tmp_path / "model_0000004.rank_0.pth"

    restored = FSDPCheckpointer(model, str(tmp_path), optimizer=optimizer, save_to_disk=True)
    assert int(restored.resume_or_load(str(path), resume=True)["iteration"]) == 4

    marker = tmp_path / "code_ran"
    data = torch.load(path, weights_only=False)  # the test's own file, trusted
    data["iteration"] = _RunsCodeWhenUnpickled(str(marker))
    torch.save(data, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        restored.resume_or_load(str(path), resume=True)
    assert not marker.exists()
