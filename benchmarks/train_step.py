"""Seconds per training iteration: our LocalAggregationMetaArch (local aggregation on) vs upstream SSLMetaArch.

Both models are built from the same config, run in the same process on the same collated crops (ours additionally
gets one global-size view of another site per sample), alternating so that machine noise hits both alike.
Each timed iteration = forward_backward + optimizer step + teacher EMA update (what do_train does per step).

    python benchmarks/train_step.py                                   # tiny CPU config
    python benchmarks/train_step.py --config configs/cpjump1_vits14_fluo.yaml --batch 32 --iters 20 \
        crops.global_crops_size=518   # on a GPU
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from dinov2_cell.plugin import install  # noqa: E402

install()  # patches and rebindings before upstream's training code is imported
import dinov2.distributed as distributed  # noqa: E402
from dinov2.train.ssl_meta_arch import SSLMetaArch  # noqa: E402
from dinov2.train.train import build_optimizer  # noqa: E402

from dinov2_cell.train.config import build_config  # noqa: E402
from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny_cpu_fluo.yaml")
    p.add_argument("--batch", type=int, default=8, help="samples per iteration")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("opts", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    os.environ.setdefault("CPJUMP1_ROOT", "unused")
    from helpers import make_batch

    if not distributed.is_enabled():
        distributed.enable(overwrite=True)
    cfg = build_config(args.config, args.opts)
    cfg.optim.lr = 1e-4
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {}
    for name, cls in (("upstream", SSLMetaArch), ("local_aggregation", LocalAggregationMetaArch)):
        torch.manual_seed(0)
        m = cls(cfg).to(device)
        m.prepare_for_distributed_training()
        models[name] = (m, build_optimizer(cfg, m.get_params_groups()))
    dtype = torch.half if device.type == "cuda" else torch.float32
    batch = make_batch(cfg, batch_size=args.batch, other_site=True)
    batch = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    times = {k: [] for k in models}
    for it in range(args.warmup + args.iters):
        for name, (m, opt) in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            m.forward_backward(batch, teacher_temp=0.07)
            if m.fp16_scaler is not None:
                m.fp16_scaler.step(opt)
                m.fp16_scaler.update()
            else:
                opt.step()
            m.update_teacher(0.99)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if it >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    g, n = cfg.crops.global_crops_size, cfg.crops.local_crops_number
    print(f"device={device} arch={cfg.student.arch} in_chans={cfg.student.in_chans} batch={args.batch} global={g}px")
    print(f"  local crops={n}x{cfg.crops.local_crops_size}px  threads={torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  {k:18s} {v * 1000:9.1f} ms/iter   {args.batch / v:8.1f} samples/s")
    print(f"  ratio local_aggregation / upstream = {med['local_aggregation'] / med['upstream']:.3f}  (goal <= 1.3)")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (both models resident)")


if __name__ == "__main__":
    main()
