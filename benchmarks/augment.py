"""Benchmark: ms per training sample of CellDataAugmentation vs upstream DataAugmentationDINO, split per transform.

Paper settings: a 5 x 1080 x 1080 float32 site (+ another site of the same well) -> 2 global crops at 518 px,
8 local crops at 98 px and the other-site view at 518 px, with all cell augmentations at their config defaults.
Upstream gets a 3-channel 8-bit PIL image of the same size (what it was written for) and makes 2 x 518 + 8 x 98.
Both run with torch.set_num_threads(1), as in a DataLoader worker. One run, prints ratios; not a timed test.

Second part, `augmentations.device`: loader-side CPU time per sample (process CPU time, so other load on a shared
machine inflates it less than wall time) of `loader` mode (every augmentation in the worker) vs `model` mode (the
worker only crops; the per-pixel augmentations run batched on the training device), both plus the collate a worker
also runs; rounds alternate so machine noise hits both alike. It then times the batched device-side augmentation of
one collated batch on --device (the CPU here; on a GPU node run it with --device cuda).

    .venv/bin/python benchmarks/augment.py [--samples 30]
    .venv/bin/python benchmarks/augment.py --samples 10 --device cuda --batch 32   # device side on a GPU

`--elastic-frames`: what `augmentations.elastic_frame` changes at paper settings (no timing): per crop type and
frame, the elastic field's displacement std in crop and in site pixels, its correlation length (sigma) in site
pixels, the mean strain |grad d| (the per-cell shape change) and the share of output pixels read from outside the
crop (mirrored content at the reflected border), over crops drawn with the paper's crop sampler; then the CPU
time per sample of the loader-mode pipeline in each frame with elastic_p = 1.

    .venv/bin/python benchmarks/augment.py --elastic-frames [--samples 200]
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import time

import numpy as np
import torch
from PIL import Image


def _cell_like(channels: int, size: int, seed: int) -> torch.Tensor:
    # Mostly dark background with bright spots, like a Cell Painting channel scaled to [0, 1]; the content only
    # matters for the Poisson sampler's speed, which grows with intensity.
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(channels, size, size, generator=g) ** 3).contiguous()


class _Timer:
    """Accumulates wall time per stage name; wraps callables."""

    def __init__(self):
        self.total = collections.defaultdict(float)

    def wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] += time.perf_counter() - t0

        return timed


def _instrument_ours(aug, timer: _Timer) -> None:
    from dinov2_cell.augment import cell_augmentation as ca

    # Module-level functions the pipeline calls, and the stages' methods; nested stages (e.g. warp inside
    # augment_crop) are reported separately and the residual is "other".
    ca.check_image = timer.wrap("input check (NaN/range)", ca.check_image)
    ca.warp = timer.wrap("elastic/rotation resampling", ca.warp)
    ca.apply_dihedral = timer.wrap("flip/rot90 (exact copy)", ca.apply_dihedral)
    for crop, name in ((aug.global_crop, "resized crop global"), (aug.local_crop, "resized crop local")):
        crop.apply = timer.wrap(name, crop.apply)
    aug.elastic.sample_params = timer.wrap("elastic field", aug.elastic.sample_params)
    aug.jitter.apply = timer.wrap("channel jitter", aug.jitter.apply)
    aug.noise.apply = timer.wrap("microscope noise", aug.noise.apply)


def _instrument_upstream(aug, timer: _Timer) -> None:
    aug.geometric_augmentation_global = timer.wrap("crop+flip global (PIL bicubic)", aug.geometric_augmentation_global)
    aug.geometric_augmentation_local = timer.wrap("crop+flip local (PIL bicubic)", aug.geometric_augmentation_local)
    aug.global_transfo1 = timer.wrap("colour/blur/normalise global 1", aug.global_transfo1)
    aug.global_transfo2 = timer.wrap("colour/blur/solarize/normalise global 2", aug.global_transfo2)
    aug.local_transfo = timer.wrap("colour/blur/normalise local", aug.local_transfo)


def _run(name, fn, samples, timer):
    fn()  # warm-up: caches, tables, allocator
    timer.total.clear()
    t0 = time.perf_counter()
    for _ in range(samples):
        fn()
    ms = (time.perf_counter() - t0) * 1000 / samples
    print(f"\n{name}: {ms:.1f} ms / sample")
    for stage, sec in sorted(timer.total.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<42s} {sec * 1000 / samples:7.1f} ms  ({100 * sec * 1000 / samples / ms:4.1f} %)")
    return ms


def _collated(aug, sites, batch: int):
    # A worker's collate of `batch` samples (upstream's iBOT masks at 518 px / patch 14, crops cast to fp16 as
    # upstream's do_train asks).
    from dinov2.data.masking import MaskingGenerator

    from dinov2_cell.augment.collate import collate_cell_data_and_cast

    n = 518 // 14
    samples = [(aug(sites[0], other_site=sites[1]), None) for _ in range(batch)]
    t0 = time.process_time()
    out = collate_cell_data_and_cast(
        samples,
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=torch.half,
        n_tokens=n * n,
        mask_generator=MaskingGenerator(input_size=(n, n), max_num_patches=0.5 * n * n),
    )
    return out, (time.process_time() - t0) * 1000 / batch


def _device_modes(crops, sizes, sites, samples: int, batch: int, device: str) -> None:
    from dinov2_cell.augment.cell_augmentation import CellDataAugmentation
    from dinov2_cell.augment.device import DeviceCellAugmentation

    augs = {
        mode: CellDataAugmentation(**crops, **sizes, other_site_view=True, device=mode) for mode in ("loader", "model")
    }
    cpu = {mode: [] for mode in augs}
    for mode, aug in augs.items():
        aug(sites[0], other_site=sites[1])  # warm-up
    for _ in range(samples):  # alternate, one sample each
        for mode, aug in augs.items():
            t0 = time.process_time()
            aug(sites[0], other_site=sites[1])
            cpu[mode].append(time.process_time() - t0)
    ms = {mode: sum(v) * 1000 / samples for mode, v in cpu.items()}
    # Median over rounds of the per-round ratio: a load spike from another process hits one round, not the figure.
    med = float(np.median([a / b for a, b in zip(cpu["loader"], cpu["model"])]))
    col = {mode: _collated(aug, sites, batch) for mode, aug in augs.items()}
    collated = col["model"][0]
    col = {mode: c[1] for mode, c in col.items()}
    print(f"\naugmentations.device, loader side (process CPU ms per sample, 1 thread, {samples} samples each)")
    print(
        f"  loader mode (all augmentations in the worker)   : {ms['loader']:7.1f} ms + collate {col['loader']:5.1f} ms"
    )
    print(
        f"  model mode (crops + cheap resize, fp16 crops)    : {ms['model']:7.1f} ms + collate {col['model']:5.1f} ms"
    )
    print(
        f"  ratio loader / model: {ms['loader'] / ms['model']:.2f}x augmentation only (median of per-round "
        f"ratios {med:.2f}x), "
        f"{(ms['loader'] + col['loader']) / (ms['model'] + col['model']):.2f}x with the collate of {batch}  (goal >= 5x)"
    )

    dev = torch.device(device)
    aug = DeviceCellAugmentation()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    aug.augment_batch(collated, dev)
    sync()
    reps = 3
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        aug.augment_batch(collated, dev)
    sync()
    wall = (time.perf_counter() - t0) * 1000 / reps
    host = (time.process_time() - c0) * 1000 / reps
    print(
        f"  device side on {device} ({torch.get_num_threads()} thread(s)), batch of {batch} incl. transfer: "
        f"{wall:.1f} ms wall / batch = {wall / batch:.1f} ms per sample (host CPU {host / batch:.1f} ms per sample)"
    )


def _elastic_frames(crops, sizes, site: int, samples: int) -> None:
    from dinov2_cell.augment.transforms import ElasticDeform, RandomResizedCrop, SiteField, _base_grid

    torch.manual_seed(0)
    img = torch.empty(1, site, site)
    print(f"elastic fields at paper settings (alpha 1200, sigma 40, {site} px site), {samples} crops per row")
    print("  crop         frame  std in crop: crop px  site px  sigma site px  mean |grad d|  read outside crop")
    for kind, size, scale in (
        ("global", sizes["global_crops_size"], crops["global_crops_scale"]),
        ("local", sizes["local_crops_size"], crops["local_crops_scale"]),
    ):
        sampler = RandomResizedCrop(size, scale)
        grid = _base_grid(size, size).view(1, size, size, 2)
        for frame in ("crop", "site"):
            el = ElasticDeform(1200.0, 40.0, 1.0, frame)
            std_c, std_s, sig_s, strain, outside = [], [], [], [], []
            for _ in range(samples):
                _, _, h, w = sampler.sample_params(img)
                k = size / math.sqrt(h * w)
                f = el.sample_params(size, size, box_hw=(h, w))
                if isinstance(f, SiteField):
                    d = f.displacement(grid)[0] * (size / 2.0)  # H x W x 2, crop pixels
                    sig_s.append(40.0)
                else:
                    d = f.permute(1, 2, 0)
                    sig_s.append(40.0 / k)
                std_c.append(float(d.std()))
                std_s.append(float(d.std()) / k)
                gx = d[:, 1:] - d[:, :-1]
                gy = d[1:] - d[:-1]
                strain.append(0.5 * float(gx.abs().mean() + gy.abs().mean()))
                x = (torch.arange(size) + 0.5).view(1, size) + d[..., 0]
                y = (torch.arange(size) + 0.5).view(size, 1) + d[..., 1]
                outside.append(float(((x < 0) | (x > size) | (y < 0) | (y > size)).float().mean()))
            print(
                f"  {kind} {size:4d} px  {frame:5s}  {np.mean(std_c):20.2f}  {np.mean(std_s):7.2f}  "
                f"{np.mean(sig_s):13.1f}  {np.mean(strain):13.3f}  {100 * np.mean(outside):16.1f} %"
            )

    # CPU cost of the two frames: the loader-mode pipeline with elastic_p = 1, alternating rounds (process time).
    from dinov2_cell.augment.cell_augmentation import CellDataAugmentation

    site_img = _cell_like(5, site, 1)
    augs = {
        f: CellDataAugmentation(**crops, **sizes, other_site_view=False, elastic_p=1.0, elastic_frame=f)
        for f in ("crop", "site")
    }
    spent = {f: 0.0 for f in augs}
    rounds = max(2, samples // 20)
    for r in range(rounds):
        for f, aug in augs.items():
            torch.manual_seed(r)
            t0 = time.process_time()
            aug(site_img)
            spent[f] += time.process_time() - t0
    ms = {f: 1000 * v / rounds for f, v in spent.items()}
    print(
        f"  CPU per sample, elastic_p=1 (1 thread, {rounds} alternating rounds): crop {ms['crop']:.1f} ms, "
        f"site {ms['site']:.1f} ms ({ms['site'] / ms['crop']:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--size", type=int, default=1080)
    parser.add_argument("--batch", type=int, default=8, help="samples per collated batch (device-side timing)")
    parser.add_argument("--device", default="cpu", help="where the batched device-side augmentation runs")
    parser.add_argument(
        "--only-device-modes", action="store_true", help="skip the upstream comparison, run only the second part"
    )
    parser.add_argument("--elastic-frames", action="store_true", help="only the elastic_frame comparison (no timing)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from dinov2.data.augmentations import DataAugmentationDINO

    from dinov2_cell.augment.cell_augmentation import CellDataAugmentation

    crops = dict(global_crops_scale=(0.32, 1.0), local_crops_scale=(0.05, 0.32), local_crops_number=8)
    sizes = dict(global_crops_size=518, local_crops_size=98)

    if args.elastic_frames:
        _elastic_frames(crops, sizes, args.size, args.samples)
        return
    site_a, site_b = _cell_like(5, args.size, 1), _cell_like(5, args.size, 2)
    if args.only_device_modes:
        _device_modes(crops, sizes, (site_a, site_b), args.samples, args.batch, args.device)
        return

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    up = DataAugmentationDINO(crops["global_crops_scale"], crops["local_crops_scale"], 8, **sizes)
    t_up = _Timer()
    _instrument_upstream(up, t_up)
    ms_up = _run(
        f"upstream DataAugmentationDINO, 3x{args.size}^2 uint8 PIL, 2x518 + 8x98", lambda: up(rgb), args.samples, t_up
    )

    ours = CellDataAugmentation(**crops, **sizes, other_site_view=True)
    t_ours = _Timer()
    _instrument_ours(ours, t_ours)
    ms_ours = _run(
        f"ours CellDataAugmentation, 5x{args.size}^2 float32, 2x518 + 8x98 + other-site 518",
        lambda: ours(site_a, other_site=site_b),
        args.samples,
        t_ours,
    )

    plain = CellDataAugmentation(**crops, **sizes, other_site_view=False)
    t_plain = _Timer()
    ms_plain = _run(
        f"ours without other-site view, 5x{args.size}^2, 2x518 + 8x98", lambda: plain(site_a), args.samples, t_plain
    )

    torch.manual_seed(0)
    x = site_a[:, :518, :518].contiguous() * 10
    t0 = time.perf_counter()
    for _ in range(10):
        torch.poisson(x)
    ms_tp = (time.perf_counter() - t0) * 100
    from dinov2_cell.augment.transforms import poisson

    poisson(x, 10.0)
    t0 = time.perf_counter()
    for _ in range(10):
        poisson(x, 10.0)
    ms_ours_p = (time.perf_counter() - t0) * 100

    print("\nratios (threads = 1)")
    print(f"  ours (with other-site view) / upstream : {ms_ours / ms_up:.2f}x  (goal <= 1.5x)")
    print(f"  ours (no other-site view)   / upstream : {ms_plain / ms_up:.2f}x")
    print(
        f"  Poisson 5x518^2: table sampler {ms_ours_p:.1f} ms vs torch.poisson {ms_tp:.1f} ms ({ms_tp / ms_ours_p:.1f}x)"
    )
    _device_modes(crops, sizes, (site_a, site_b), args.samples, args.batch, args.device)


if __name__ == "__main__":
    main()
