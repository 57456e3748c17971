"""Patch of `dinov2.fsdp` (`free_if_fsdp`, `get_fsdp_wrapper`, `FSDPCheckpointer` save/load).

1. `free_if_fsdp` reads FSDP's private `_handles` (a list), which torch >= 2.1 replaced by `_handle`:
   "'FullyShardedDataParallel' object has no attribute '_handles'". Fix: reshard through the current private API,
   `_reshard(module, module._handle, True)`. When: GPU and CPU, world size >= 2 (world size 1 is NO_SHARD, never
   resharded).
2. `get_fsdp_wrapper` passes `device_id=local_rank` (needs an accelerator) and `sync_module_states=True`, which
   refuses CPU parameters. Fix on CPU: `device_id=cpu`, `sync_module_states=False`, and an explicit broadcast of
   parameters and buffers from rank 0 before wrapping when world size > 1. When: CPU only.
3. `FSDPCheckpointer.load` goes through fvcore's `torch.load`, which torch >= 2.6 runs with `weights_only=True`:
   "Unsupported global: GLOBAL numpy._core.multiarray.scalar" (upstream's schedules put numpy scalars into the
   optimizer's param groups). Fix: load with `weights_only=True` and allow exactly the numpy scalar and dtype types
   those values pickle as (`NUMPY_SAFE_GLOBALS`), so a crafted pickle in a checkpoint is refused instead of run.
   A sharded (`LOCAL_STATE_DICT`) model holds `ShardedTensor`s, whose pickle needs `getattr` ("Unsupported global:
   GLOBAL torch.distributed._shard.sharded_tensor.api.ShardedTensor"): each rank saves its local shard as a plain
   tensor and puts it back into the model's own `ShardedTensor` on load. When: GPU and CPU, on resume (sharded:
   world size >= 2).
4. Single-process FSDP (NO_SHARD) with `StateDictType.LOCAL_STATE_DICT` is upstream issue #273 (save fails). Fix: a
   module tree with no sharded FSDP unit is saved/loaded with `FULL_STATE_DICT`; sharded trees keep upstream's
   `LOCAL_STATE_DICT`. When: GPU and CPU, world size 1 or `sharding_strategy: NO_SHARD`.
"""

import contextlib
import functools
import os

import torch
import torch.distributed as dist


def _free_if_fsdp(x):
    import dinov2.fsdp as upstream
    from torch.distributed.fsdp._runtime_utils import _reshard

    if upstream.is_sharded_fsdp(x):
        handle = getattr(x, "_handle", None)
        if handle is not None:
            _reshard(x, handle, True)


def _wrap_get_fsdp_wrapper(original):
    @functools.wraps(original)
    def get_fsdp_wrapper(model_cfg, modules_to_wrap=set()):
        wrapper = original(model_cfg, modules_to_wrap=modules_to_wrap)
        if torch.cuda.is_available():
            return wrapper
        cpu_wrapper = functools.partial(wrapper, device_id=torch.device("cpu"), sync_module_states=False)

        def wrap(module):
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                # what sync_module_states=True would do on an accelerator
                with torch.no_grad():
                    for t in list(module.parameters()) + list(module.buffers()):
                        dist.broadcast(t.data, src=0)
            return cpu_wrapper(module)

        return wrap

    get_fsdp_wrapper.__dinov2_cell_patched__ = True
    return get_fsdp_wrapper


def state_dict_type_for(model):
    """`LOCAL_STATE_DICT` when any FSDP unit is sharded (upstream's choice), else `FULL_STATE_DICT` (issue #273)."""
    from dinov2.fsdp import get_fsdp_modules, is_sharded_fsdp
    from torch.distributed.fsdp import StateDictType

    if any(is_sharded_fsdp(m) for m in get_fsdp_modules(model)):
        return StateDictType.LOCAL_STATE_DICT
    return StateDictType.FULL_STATE_DICT


def _save(self, name, **kwargs):
    """Upstream's save with the state-dict type of `state_dict_type_for` and an atomic write (temp file + rename)."""
    from dinov2.fsdp import rankstr
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not self.save_dir or not self.save_to_disk:
        return
    with FSDP.state_dict_type(self.model, state_dict_type_for(self.model)):
        data = {"model": local_shards_as_tensors(self.model.state_dict())}
    for key, obj in self.checkpointables.items():
        data[key] = obj.state_dict()
    data.update(kwargs)
    basename = f"{name}.{rankstr()}.pth"
    save_file = os.path.join(self.save_dir, basename)
    self.logger.info("Saving checkpoint to {}".format(save_file))
    tmp = save_file + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(data, f)
    os.replace(tmp, save_file)
    self.tag_last_checkpoint(basename)


def local_shards_as_tensors(state_dict: dict) -> dict:
    """A `LOCAL_STATE_DICT` with each `ShardedTensor` replaced by this rank's local shard (a plain tensor).

    `torch.load(weights_only=True)` refuses `ShardedTensor` (its pickle needs `getattr`, which must never be
    allow-listed); the shard is all a rank needs to load it back (`sharded_like`).
    """
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return {k: v.local_tensor() if isinstance(v, ShardedTensor) else v for k, v in state_dict.items()}


def sharded_like(state_dict: dict, template: dict) -> dict:
    """Puts the plain local shards of `local_shards_as_tensors` back into the `ShardedTensor`s of `template` (the
    model's own `LOCAL_STATE_DICT`), so FSDP can load them.

    Raises:
        ValueError: a saved shard has another shape (the checkpoint was written by another number of processes).
    """
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = dict(state_dict)
    for k, t in template.items():
        if (
            isinstance(t, ShardedTensor)
            and isinstance(out.get(k), torch.Tensor)
            and not isinstance(out[k], ShardedTensor)
        ):
            local = t.local_tensor()
            if local.shape != out[k].shape:
                raise ValueError(
                    f"{k}: the checkpoint's local shard has shape {tuple(out[k].shape)}, this process's "
                    f"{tuple(local.shape)}: resume with the number of processes that wrote it"
                )
            with torch.no_grad():
                local.copy_(out[k])
            out[k] = t
    return out


def _load(self, *args, **kwargs):
    from fvcore.common.checkpoint import Checkpointer
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.state_dict_type(self.model, state_dict_type_for(self.model)):
        return Checkpointer.load(self, *args, **kwargs)


def numpy_safe_globals() -> list:
    """The numpy globals a training checkpoint may hold: `multiarray.scalar`, `dtype` and the scalar dtype classes.

    Returns:
        The list for `torch.serialization.safe_globals`.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    scalar_types = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_)
    return [multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in scalar_types}]


def _load_file(self, f):
    """Loads with `weights_only=True`: tensors, containers, Python scalars and the numpy types allowed above."""
    allowed = numpy_safe_globals()
    if hasattr(torch.serialization, "safe_globals"):
        scope = torch.serialization.safe_globals(allowed)
    else:  # torch 2.4 has only the process-wide allow-list
        torch.serialization.add_safe_globals(allowed)
        scope = contextlib.nullcontext()
    with scope:
        checkpoint = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    from torch.distributed.fsdp import StateDictType

    sharded = state_dict_type_for(self.model) == StateDictType.LOCAL_STATE_DICT
    if sharded and isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        # called inside `_load`'s state-dict-type scope: the model's state dict has the type the file was saved with
        checkpoint["model"] = sharded_like(checkpoint["model"], self.model.state_dict())
    return checkpoint


def apply():
    import dinov2.fsdp as upstream

    upstream.free_if_fsdp = _free_if_fsdp
    if not getattr(upstream.get_fsdp_wrapper, "__dinov2_cell_patched__", False):
        upstream.get_fsdp_wrapper = _wrap_get_fsdp_wrapper(upstream.get_fsdp_wrapper)
    upstream.FSDPCheckpointer.save = _save
    upstream.FSDPCheckpointer.load = _load
    upstream.FSDPCheckpointer._load_file = _load_file
