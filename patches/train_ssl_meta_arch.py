"""Patch of `dinov2.train.ssl_meta_arch` (import, `fmha`, `get_fsdp_wrapper`, `fsdp_synchronize_streams`,
`forward_backward`'s device moves).

1. Import. Upstream runs `assert XFORMERS_AVAILABLE, "xFormers is required for DINOv2 training"` at import time
   ("AssertionError: xFormers is required for DINOv2 training"). Fix: import it while a pure-torch stand-in for
   `xformers`/`xformers.ops` is in `sys.modules`, then put `sys.modules` back exactly as it was, so nothing else sees
   the stand-in. When: GPU and CPU without usable xFormers.
2. `fmha` (used by `SSLMetaArch.forward_backward` for `BlockDiagonalMask.from_tensor_list`): the torch version.
3. `SSLMetaArch.fsdp_synchronize_streams`: upstream shares FSDP's private `_streams` between modules, an attribute
   torch >= 2.1 no longer has ("'FullyShardedDataParallel' object has no attribute '_streams'" after the first
   backward). Fix: synchronise CUDA only when it exists; no stream sharing. When: GPU and CPU.
4. `get_fsdp_wrapper` is bound by name in this module at import; rebind it to the patched `dinov2.fsdp` version.
   When: CPU (see `patches/fsdp.py`).
5. `SSLMetaArch.forward_backward` moves the batch with `.cuda(non_blocking=True)` ("Torch not compiled with CUDA
   enabled" / no device on CPU). Fix: a wrapper hands upstream tensors whose `.cuda()` moves them to the model's own
   device instead. When: CPU only (on CUDA upstream runs unchanged).
"""

import functools
import sys

import torch

from . import _torch_xformers as tx


class _ToModelDevice(torch.Tensor):
    """A tensor whose `.cuda()` means "to the model's device" (set per instance in `_target_device`)."""

    def cuda(self, *args, **kwargs):  # noqa: D102 - same meaning as Tensor.cuda, different target
        plain = self.as_subclass(torch.Tensor)
        return plain.to(self._target_device, non_blocking=kwargs.get("non_blocking", False))


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _wrap_forward_backward(forward_backward):
    @functools.wraps(forward_backward)
    def wrapper(self, images, teacher_temp, *args, **kwargs):
        device = _model_device(self)
        moved = {}
        for k, v in images.items():
            if isinstance(v, torch.Tensor):
                v = v.as_subclass(_ToModelDevice)
                v._target_device = device
            moved[k] = v
        return forward_backward(self, moved, teacher_temp, *args, **kwargs)

    wrapper.__dinov2_cell_patched__ = True
    return wrapper


def _fsdp_synchronize_streams(self):
    if self.need_to_synchronize_fsdp_streams:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.need_to_synchronize_fsdp_streams = False


def import_with_standin():
    """Imports `dinov2.train.ssl_meta_arch`, with the xFormers stand-in only for the duration of the import."""
    if "dinov2.train.ssl_meta_arch" in sys.modules:
        return sys.modules["dinov2.train.ssl_meta_arch"]
    if tx.real_xformers_usable():
        import dinov2.train.ssl_meta_arch as sma

        return sma
    saved = {name: sys.modules.get(name) for name in ("xformers", "xformers.ops")}
    sys.modules.update(tx.make_standin_modules())
    try:
        import dinov2.train.ssl_meta_arch as sma
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    return sma


def apply():
    sma = import_with_standin()
    import dinov2.fsdp

    if not tx.real_xformers_usable():
        sma.fmha = tx.fmha
    sma.get_fsdp_wrapper = dinov2.fsdp.get_fsdp_wrapper
    sma.SSLMetaArch.fsdp_synchronize_streams = _fsdp_synchronize_streams
    if not torch.cuda.is_available() and not getattr(sma.SSLMetaArch.forward_backward, "__dinov2_cell_patched__", 0):
        sma.SSLMetaArch.forward_backward = _wrap_forward_backward(sma.SSLMetaArch.forward_backward)
