"""Sites per second of embedding inference, and agreement of the accelerator path with CPU fp32.

Builds the teacher backbone of a config (random weights: throughput does not depend on them) and reports

* ``model``: ``forward_features`` + concat(CLS, mean patch) on batches already on the device, per precision;
* ``pipeline``: :func:`dinov2_cell.profiles.ssl.embed_dataset` end to end on a dataset of random ``--source-size`` images
  (resize to the model size in ``--num-workers`` DataLoader workers, transfer, forward). Reading TIFFs is not
  included (see ``benchmarks/read_sites.py``);
* with ``--check``: max |difference| and min cosine similarity of site vectors computed on the device (each
  precision) vs CPU fp32, on ``--check-sites`` sites.

    python benchmarks/embed.py                                                   # tiny config, CPU
    python benchmarks/embed.py --config configs/cpjump1_vits14_fluo.yaml --batch 64 --check   # paper ViT-S/14, 518 px
"""

import argparse
import os
import time

import torch

from dinov2_cell.plugin import install

install()  # the same upstream patches the embedding CLI's model loading applies
from dinov2_cell.models.multichannel_vit import build_model
from dinov2_cell.models.teacher import TeacherModel, site_features
from dinov2_cell.profiles.ssl import autocast_dtype, embed_dataset, prepare_image
from dinov2_cell.train.config import build_config


class RandomSites:
    """``len`` / ``get_image`` over random C x S x S images (deterministic per index)."""

    def __init__(self, n, channels, size):
        self.n, self.c, self.size = n, channels, size

    def __len__(self):
        return self.n

    def get_image(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.rand(self.c, self.size, self.size, generator=g)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny_cpu_fluo.yaml")
    p.add_argument("--image-size", type=int, default=None, help="model input side (default: crops.global_crops_size)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=5, help="timed batches for the model-only measurement")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--pipeline-sites", type=int, default=64, help="sites for the end-to-end measurement (0 = skip)")
    p.add_argument("--source-size", type=int, default=1080, help="side of the random source images")
    p.add_argument("--num-workers", type=int, default=min(8, len(os.sched_getaffinity(0))))
    p.add_argument("--check", action="store_true", help="compare device outputs with CPU fp32")
    p.add_argument("--check-sites", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("opts", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    os.environ.setdefault("CPJUMP1_ROOT", "unused")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = build_config(args.config, args.opts)
    size = args.image_size or int(cfg.crops.global_crops_size)
    c = int(cfg.student.in_chans)
    torch.manual_seed(0)
    backbone, dim = build_model(cfg.student, only_teacher=True, img_size=size, in_chans=c)
    backbone = backbone.eval().to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; {cfg.student.arch}/{cfg.student.patch_size}, {c} channels, {size} px, batch {args.batch}")
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if device.type == "cpu":
        precisions = [x for x in precisions if x == "fp32"] or ["fp32"]

    x = torch.rand(args.batch, c, size, size, device=device)
    for prec in precisions:
        dtype = autocast_dtype(prec)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            site_features(backbone, x)  # warm-up (kernel selection, allocator)
            _sync(device)
            t = time.perf_counter()
            for _ in range(args.iters):
                site_features(backbone, x)
            _sync(device)
        dt = time.perf_counter() - t
        print(f"model     {prec:5s} {args.batch * args.iters / dt:9.1f} sites/s")

    model = TeacherModel("bench", "-", backbone, "fluo", c, int(cfg.student.patch_size), size, dim, {}, "-")
    if args.pipeline_sites:
        ds = RandomSites(args.pipeline_sites, c, args.source_size)
        for prec in precisions:
            t = time.perf_counter()
            embed_dataset(model, ds, args.batch, device, args.num_workers, prec, progress=False)
            dt = time.perf_counter() - t
            print(
                f"pipeline  {prec:5s} {len(ds) / dt:9.1f} sites/s ({args.source_size} px sources, "
                f"{args.num_workers} workers, includes worker start-up)"
            )

    if args.check and device.type != "cpu":
        ds = RandomSites(args.check_sites, c, args.source_size)
        imgs = torch.stack([prepare_image(ds.get_image(i), size, model.patch_size) for i in range(len(ds))])
        ref = site_features(backbone.to("cpu"), imgs)
        backbone.to(device)
        for prec in precisions:
            got = torch.from_numpy(embed_dataset(model, ds, args.batch, device, 0, prec, progress=False))
            err = (got - ref).abs().max().item()
            cos = torch.nn.functional.cosine_similarity(got, ref, dim=1).min().item()
            print(f"check     {prec:5s} max|device - cpu fp32| = {err:.2e}, min cosine = {cos:.6f}")


if __name__ == "__main__":
    main()
