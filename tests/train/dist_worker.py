"""Run under `torchrun --nproc_per_node 2`: upstream SSLMetaArch + FSDP (SHARD_GRAD_OP, so resharding runs) +
forward_backward + optimizer step + update_teacher + metric sync, for upstream's and our meta-arch. Writes a JSON
result per rank to argv[1]."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import make_batch, tiny_cfg  # noqa: E402  (helpers calls dinov2_cell.plugin.install())

import dinov2.distributed as distributed  # noqa: E402
from dinov2.logging.helpers import SmoothedValue  # noqa: E402
from dinov2.train.ssl_meta_arch import SSLMetaArch  # noqa: E402
from dinov2.train.train import build_optimizer  # noqa: E402

from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch  # noqa: E402


def run(meta_arch_cls, cfg, other_site):
    torch.manual_seed(0)
    model = meta_arch_cls(cfg)
    model.prepare_for_distributed_training()
    sharded = [m.sharding_strategy.name for m in model.student.backbone.modules() if hasattr(m, "sharding_strategy")]
    opt = build_optimizer(cfg, model.get_params_groups())
    before = {k: v.detach().clone() for k, v in model.teacher.backbone.named_parameters()}
    losses = []
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        batch = make_batch(cfg, batch_size=4, other_site=other_site, seed=step + 10 * distributed.get_global_rank())
        loss_dict = model.forward_backward(batch, teacher_temp=0.07)
        opt.step()
        model.update_teacher(0.9)
        losses.append({k: float(v) for k, v in loss_dict.items()})
    changed = any(not torch.equal(before[k], v) for k, v in model.teacher.backbone.named_parameters())
    return {"losses": losses, "teacher_changed": changed, "sharding": sharded}


def main(out_dir):
    distributed.enable(overwrite=True)
    rank = distributed.get_global_rank()
    result = {"world_size": distributed.get_global_size(), "local_rank": distributed.get_local_rank()}
    result["upstream"] = run(SSLMetaArch, tiny_cfg("student.in_chans=3"), other_site=False)
    result["local_aggregation"] = run(LocalAggregationMetaArch, tiny_cfg(), other_site=True)
    meter = SmoothedValue()
    meter.update(float(rank + 1))
    meter.synchronize_between_processes()
    result["meter_total"] = meter.total
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
