"""Shared test helpers (imported as `helpers`): tiny configs built from the same config path as production, and
collated batches."""

import os
import random
import sys
from functools import partial

import torch

from dinov2_cell.plugin import install

install()  # upstream's training code, imported by the tests, needs the patches and the plugin's rebindings
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLUO = os.path.join(REPO, "configs", "tiny_cpu_fluo.yaml")
TINY_BF = os.path.join(REPO, "configs", "tiny_cpu_bf.yaml")

# Subprocess tests run `python -m ...` with the same interpreter and no network.
PYTHON = sys.executable
torch.set_num_threads(2)

# Variables that `dinov2.distributed.enable` exports into this process; a child must not inherit them (it would
# join this process's rendezvous port and fail with EADDRINUSE).
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_JOB_ID")


def child_env(**extra):
    """Environment for subprocess tests: this one minus distributed variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def tiny_cfg(*overrides, config_file=TINY_FLUO):
    """The tiny CPU config (same merge path as production) with `key=value` overrides."""
    from dinov2_cell.train.config import build_config

    cfg = build_config(config_file, list(overrides))
    cfg.optim.lr = 1e-3  # what upstream's scaling rule would set; setup() is not run in unit tests
    return cfg


def make_batch(cfg, batch_size=4, other_site=False, seed=0):
    """A batch as upstream's collate builds it (random crops), optionally with the other-site view."""
    from dinov2.data import MaskingGenerator, collate_data_and_cast

    g = torch.Generator().manual_seed(seed)
    random.seed(seed)
    c, gs, ls = cfg.student.in_chans, cfg.crops.global_crops_size, cfg.crops.local_crops_size
    samples = []
    for _ in range(batch_size):
        out = {
            "global_crops": [torch.rand(c, gs, gs, generator=g) for _ in range(2)],
            "local_crops": [torch.rand(c, ls, ls, generator=g) for _ in range(cfg.crops.local_crops_number)],
            "offsets": (),
        }
        out["global_crops_teacher"] = out["global_crops"]
        samples.append((out, ()))
    n = gs // cfg.student.patch_size
    collate = partial(
        collate_data_and_cast,
        mask_ratio_tuple=cfg.ibot.mask_ratio_min_max,
        mask_probability=cfg.ibot.mask_sample_probability,
        n_tokens=n * n,
        mask_generator=MaskingGenerator(input_size=(n, n), max_num_patches=0.5 * n * n),
        dtype=torch.float32,
    )
    batch = collate(samples)
    if other_site:
        batch["collated_other_site_crops"] = torch.rand(batch_size, c, gs, gs, generator=g)
    return batch
