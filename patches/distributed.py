"""Patch of `dinov2.distributed.enable`.

Replaces: `enable(*, set_cuda_current_device=True, overwrite=False, allow_nccl_timeout=False)`.
Fixes: on a machine without CUDA upstream raises "RuntimeError: Can't initialize PyTorch distributed environment"
(single process, no SLURM/torchrun variables), calls `torch.cuda.set_device` and initialises NCCL. The replacement
reads the same environments (SLURM, torchrun, or a local single process), uses the gloo backend without CUDA, and sets
upstream's `_LOCAL_RANK` / `_LOCAL_WORLD_SIZE`, which `get_local_rank()` asserts once distributed is up.
When: CPU only; with CUDA upstream's `enable` runs unchanged.
"""

import functools
import os
import socket

import torch
import torch.distributed as dist

_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wrap_enable(original):
    @functools.wraps(original)
    def enable(*, set_cuda_current_device: bool = True, overwrite: bool = False, allow_nccl_timeout: bool = False):
        import dinov2.distributed as upstream

        if torch.cuda.is_available():
            return original(
                set_cuda_current_device=set_cuda_current_device,
                overwrite=overwrite,
                allow_nccl_timeout=allow_nccl_timeout,
            )
        if upstream._LOCAL_RANK >= 0 or upstream._LOCAL_WORLD_SIZE >= 0:
            raise RuntimeError("Distributed mode has already been enabled")
        if "SLURM_JOB_ID" in os.environ or all(k in os.environ for k in _ENV):
            env = upstream._TorchDistributedEnvironment()
        else:
            present = [k for k in _ENV if k in os.environ]
            if present and not overwrite:
                raise RuntimeError(f"Partially set environment: {', '.join(present)}")
            env = upstream._TorchDistributedEnvironment.__new__(upstream._TorchDistributedEnvironment)
            env.master_addr, env.master_port = "127.0.0.1", _free_port()
            env.rank, env.world_size, env.local_rank, env.local_world_size = 0, 1, 0, 1
        env.export(overwrite=overwrite)
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        upstream._LOCAL_RANK = env.local_rank
        upstream._LOCAL_WORLD_SIZE = env.local_world_size
        upstream._restrict_print_to_main_process()

    enable.__dinov2_cell_patched__ = True
    return enable


def apply():
    import dinov2.distributed as upstream

    if not getattr(upstream.enable, "__dinov2_cell_patched__", False):
        upstream.enable = _wrap_enable(upstream.enable)
