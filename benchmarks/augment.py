"""Benchmark: ms per training sample of CellDataAugmentation vs upstream DataAugmentationDINO, split per transform.

Paper settings: a 5 x 1080 x 1080 float32 site (+ another site of the same well) -> 2 global crops at 518 px,
8 local crops at 98 px and the other-site view at 518 px, with all cell augmentations at their config defaults.
Upstream gets a 3-channel 8-bit PIL image of the same size (what it was written for) and makes 2 x 518 + 8 x 98.
Both run with torch.set_num_threads(1), as in a DataLoader worker. One run, prints ratios; not a timed test.

    .venv/bin/python benchmarks/augment.py [--samples 30]
"""

from __future__ import annotations

import argparse
import collections
import functools
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--size", type=int, default=1080)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from dinov2.data.augmentations import DataAugmentationDINO

    from dinov2_cell.augment.cell_augmentation import CellDataAugmentation

    crops = dict(global_crops_scale=(0.32, 1.0), local_crops_scale=(0.05, 0.32), local_crops_number=8)
    sizes = dict(global_crops_size=518, local_crops_size=98)

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    up = DataAugmentationDINO(crops["global_crops_scale"], crops["local_crops_scale"], 8, **sizes)
    t_up = _Timer()
    _instrument_upstream(up, t_up)
    ms_up = _run(
        f"upstream DataAugmentationDINO, 3x{args.size}^2 uint8 PIL, 2x518 + 8x98", lambda: up(rgb), args.samples, t_up
    )

    site_a, site_b = _cell_like(5, args.size, 1), _cell_like(5, args.size, 2)
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


if __name__ == "__main__":
    main()
