"""Patch of `dinov2.train.train` (`torch.cuda.synchronize` in `do_train`, `make_dataset`'s lambda).

1. `do_train` calls `torch.cuda.synchronize()` after each `do_test` ("Torch not compiled with CUDA enabled" /
   "Found no NVIDIA driver"). Fix: inside this module only, `torch` is a view of the real torch whose
   `cuda.synchronize` is a no-op when CUDA is absent. When: CPU only.
2. `do_train` passes `target_transform=lambda _: ()`, which cannot be pickled for DataLoader workers started with
   spawn/forkserver ("Can't pickle local object 'do_train.<locals>.<lambda>'"). Fix: a `make_dataset` wrapper that
   swaps any lambda for the module-level `dinov2_cell.data.registry.discard_target`. When: GPU and CPU,
   `num_workers > 0` with spawn/forkserver.
"""

import functools
import types

import torch


class _CudaWithoutDevice(types.SimpleNamespace):
    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def synchronize(device=None):
        if torch.cuda.is_available():
            torch.cuda.synchronize(device)


class _TorchView(types.ModuleType):
    """`torch`, except that `.cuda.synchronize` tolerates a machine without CUDA."""

    cuda = _CudaWithoutDevice()

    def __getattr__(self, name):
        return getattr(torch, name)


def _wrap_make_dataset(original):
    @functools.wraps(original)
    def make_dataset(*, dataset_str, transform=None, target_transform=None):
        if getattr(target_transform, "__name__", "") == "<lambda>":
            from dinov2_cell.data.registry import discard_target  # picklable `lambda _: ()`

            target_transform = discard_target
        return original(dataset_str=dataset_str, transform=transform, target_transform=target_transform)

    make_dataset.__dinov2_cell_patched__ = True
    return make_dataset


def apply():
    import dinov2.train.train as train

    if not isinstance(train.torch, _TorchView):
        train.torch = _TorchView("torch")
    if not getattr(train.make_dataset, "__dinov2_cell_patched__", False):
        train.make_dataset = _wrap_make_dataset(train.make_dataset)
