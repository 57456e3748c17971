"""Where the time of a tiny CPU training iteration goes: loader (read + cell augmentation + collate) vs model step.

Builds the tiny config's dataset, augmentation and collate exactly as training does, on synthetic plates read from
their TIFFs and from a prepared store of the same plates (``python -m dinov2_cell.data.prepare``), and times, in one
process at one thread:

* loader: ``batch`` samples (``ds[i]``: read, normalise, crop, augment, other-site view) + upstream's collate;
* model: one ``forward_backward`` + optimizer step + teacher EMA update of ``LocalAggregationMetaArch`` on the
  collated batch (what ``do_train`` does per step).

    python benchmarks/tiny_iteration.py --plates demo_output/plates --store /tmp/store --iters 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def build(config: str, root: str, overrides: list[str]):
    from functools import partial

    from dinov2.data import MaskingGenerator

    from dinov2_cell.augment.cell_augmentation import CellDataAugmentation
    from dinov2_cell.augment.collate import collate_cell_data_and_cast
    from dinov2_cell.train.config import build_config
    from dinov2_cell.train.train import build_training_dataset

    cfg = build_config(
        config, [f"train.dataset_path=CPJUMP1:root={root}:channels=fluo:normalize=percentile", *overrides]
    )
    ds = build_training_dataset(cfg, transform=None)
    ds.transform = CellDataAugmentation(
        global_crops_scale=cfg.crops.global_crops_scale,
        local_crops_scale=cfg.crops.local_crops_scale,
        local_crops_number=cfg.crops.local_crops_number,
        global_crops_size=cfg.crops.global_crops_size,
        local_crops_size=cfg.crops.local_crops_size,
        other_site_view=True,
        **cfg.augmentations,
    )
    img = cfg.crops.global_crops_size
    n_tokens = (img // cfg.student.patch_size) ** 2
    collate = partial(
        collate_cell_data_and_cast,
        mask_ratio_tuple=cfg.ibot.mask_ratio_min_max,
        mask_probability=cfg.ibot.mask_sample_probability,
        n_tokens=n_tokens,
        mask_generator=MaskingGenerator(
            input_size=(img // cfg.student.patch_size,) * 2, max_num_patches=0.5 * n_tokens
        ),
        dtype=__import__("torch").float32,
    )
    return cfg, ds, collate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/tiny_iteration.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--plates", required=True, help="synthetic plates (TIFF + LoadData CSVs)")
    p.add_argument("--store", default=None, help="a prepared store of the same plates (optional)")
    p.add_argument("--config", default="tiny_cpu_fluo")
    p.add_argument("--iters", type=int, default=20, help="timed iterations (default 20)")
    p.add_argument("opts", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from dinov2_cell.plugin import install

    install()
    import dinov2.distributed as distributed
    from dinov2.train.train import build_optimizer

    from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch

    if not distributed.is_enabled():
        distributed.enable(overwrite=True)
    sources = {"TIFF": args.plates, **({"store": args.store} if args.store else {})}
    loaders = {name: build(args.config, root, args.opts) for name, root in sources.items()}
    cfg = loaders["TIFF"][0]
    batch_size = int(cfg.train.batch_size_per_gpu)
    torch.manual_seed(0)
    model = LocalAggregationMetaArch(cfg)
    model.prepare_for_distributed_training()
    opt = build_optimizer(cfg, model.get_params_groups())
    times = {f"loader, {n}": [] for n in loaders}
    times["model step"] = []
    n = len(loaders["TIFF"][1])
    for it in range(args.iters + 2):
        idx = [(it * batch_size + j) * 7919 % n for j in range(batch_size)]
        batch = None
        for name, (_, ds, collate) in loaders.items():
            t0 = time.process_time()
            samples = [ds[i] for i in idx]
            batch = collate(samples)
            if it >= 2:
                times[f"loader, {name}"].append(time.process_time() - t0)
        t0 = time.process_time()
        opt.zero_grad(set_to_none=True)
        model.forward_backward(batch, teacher_temp=float(cfg.teacher.teacher_temp))
        opt.step()
        model.update_teacher(0.99)
        if it >= 2:
            times["model step"].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    total_tiff = med["loader, TIFF"] + med["model step"]
    print(f"tiny iteration, batch {batch_size}, 1 thread, process CPU, median of {args.iters}:")
    for k, v in med.items():
        print(f"  {k:<16} {1000 * v:7.1f} ms")
    print(f"  loader share of a TIFF-fed iteration: {100 * med['loader, TIFF'] / total_tiff:.0f} %")
    if args.store:
        total_store = med["loader, store"] + med["model step"]
        print(
            f"  store / TIFF loader: {med['loader, TIFF'] / med['loader, store']:.2f}x less CPU; whole iteration "
            f"{total_tiff / total_store:.2f}x faster"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
