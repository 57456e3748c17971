"""Patch of `dinov2.logging.helpers.SmoothedValue.synchronize_between_processes`.

Fixes: upstream creates `torch.tensor(..., device="cuda")` to all-reduce meter totals, which fails without CUDA
("Torch not compiled with CUDA enabled") at the end of `do_train` in a multi-process run.
Replacement: the tensor lives on CUDA only when the process group's backend is NCCL, else on CPU.
When: CPU only (gloo), world size >= 2.
"""

import torch
import torch.distributed as dist


def _synchronize_between_processes(self):
    import dinov2.distributed as distributed

    if not distributed.is_enabled():
        return
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([self.count, self.total], dtype=torch.float64, device=device)
    dist.barrier()
    dist.all_reduce(t)
    count, total = t.tolist()
    self.count = int(count)
    self.total = total


def apply():
    from dinov2.logging.helpers import SmoothedValue

    SmoothedValue.synchronize_between_processes = _synchronize_between_processes
