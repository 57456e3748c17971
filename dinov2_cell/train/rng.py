"""Random-generator states a training checkpoint carries, and the per-sample seeding of DataLoader workers.

`capture()` / `restore()` move the process-wide generators (torch CPU, every CUDA device, numpy's global
`RandomState`, Python's `random`) in and out of plain types (tensors, ints, floats, lists, dicts), so a checkpoint
holding them loads with `torch.load(..., weights_only=True)` without allow-listing any class.

A worker's generators cannot be captured: it prefetches batches ahead of the step that saves the checkpoint, and its
streams start from a base seed drawn when the loader starts. So with `num_workers > 0` every sample is drawn from
generators seeded by (run seed, rank, the sample's position in the rank's stream), and every batch's collate by
(run seed, rank, position of the batch's first sample): the draws of sample n are the same whether the run started at
iteration 0 or resumed at iteration k, and whatever the number of workers. With `num_workers == 0` the samples are
drawn in the training process from its own generators, which the checkpoint captures.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("dinov2")

# Streams of `seed_process_generators`: a sample's transform and a batch's collate never share draws.
SAMPLE_STREAM = 0
COLLATE_STREAM = 1


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    if name != "MT19937":  # numpy's legacy global generator has always been MT19937
        raise RuntimeError(f"unexpected numpy global generator {name!r}")
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _python_state() -> dict:
    version, internal, gauss_next = random.getstate()
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def capture() -> dict:
    """The process's generator states, as plain types (loadable with `weights_only=True`).

    Returns:
        {"torch_cpu": ByteTensor, "torch_cuda": ByteTensor of the process's current device (only once CUDA is
        initialised; a training process drives one device), "numpy": {...}, "python": {...}}.
    """
    state = {"torch_cpu": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state: dict) -> None:
    """Sets the process's generators to a state returned by `capture()`.

    Args:
        state: the captured states (a CUDA state without CUDA here is skipped with a warning).
    """
    torch.set_rng_state(state["torch_cpu"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    cuda = state.get("torch_cuda")
    if cuda is not None:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda)
        else:
            logger.warning("the checkpoint holds a CUDA generator state but CUDA is not available: not restored")


def stream_seeds(seed: int, rank: int, position: int, stream: int) -> tuple[int, np.ndarray, int]:
    """Independent seeds for torch, numpy and Python derived from (seed, rank, position, stream).

    Args:
        seed: the run's seed (non-negative).
        rank: the process's global rank.
        position: the sample's position in the rank's stream (0 = its first sample of the run).
        stream: `SAMPLE_STREAM` or `COLLATE_STREAM`.

    Returns:
        (torch seed < 2**64, numpy seed as 2 uint32 words, Python seed < 2**64).
    """
    words = np.random.SeedSequence([int(seed), int(rank), int(position), int(stream)]).generate_state(6, np.uint32)
    w = [int(x) for x in words]
    return w[0] | (w[1] << 32), words[2:4], w[4] | (w[5] << 32)


def seed_process_generators(seed: int, rank: int, position: int, stream: int) -> None:
    """Seeds this process's CPU torch generator, numpy's global generator and `random` for one sample or batch.

    Called in DataLoader workers only (the training process keeps its own streams). CUDA generators are left alone:
    data loading draws on the CPU.

    Args:
        seed: the run's seed.
        rank: the process's global rank.
        position: the sample's (or the batch's first sample's) position in the rank's stream.
        stream: `SAMPLE_STREAM` or `COLLATE_STREAM`.
    """
    torch_seed, numpy_seed, python_seed = stream_seeds(seed, rank, position, stream)
    torch.default_generator.manual_seed(torch_seed)
    np.random.seed(numpy_seed)
    random.seed(python_seed)


class PositionedSampler(torch.utils.data.Sampler):
    """Yields (position, index) pairs: the position of each index in the rank's stream, counted from `start`.

    Args:
        sampler: the sampler of dataset indices (already advanced to `start`).
        start: position of its first index (samples the run drew before the resume point).
    """

    def __init__(self, sampler, start: int):
        self.sampler, self.start = sampler, int(start)

    def __iter__(self):
        for k, index in enumerate(self.sampler):
            yield self.start + k, index


class SeededSamples(torch.utils.data.Dataset):
    """A dataset read with `PositionedSampler` keys: sample `index` is drawn with generators seeded by its position.

    Returns (sample, position) pairs, which `SeededCollate` turns back into what the wrapped collate expects.

    Args:
        dataset: the training dataset (its transform does the random draws).
        seed: the run's seed.
        rank: the process's global rank.
    """

    def __init__(self, dataset, seed: int, rank: int):
        self.dataset, self.seed, self.rank = dataset, int(seed), int(rank)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int]:
        position, index = key
        seed_process_generators(self.seed, self.rank, position, SAMPLE_STREAM)
        return self.dataset[index], position


class SeededCollate:
    """Collates (sample, position) pairs with generators seeded by the position of the batch's first sample.

    Args:
        collate_fn: the collate of plain samples (upstream's, with the iBOT mask draws).
        seed: the run's seed.
        rank: the process's global rank.
    """

    def __init__(self, collate_fn, seed: int, rank: int):
        self.collate_fn = collate_fn if collate_fn is not None else torch.utils.data.default_collate
        self.seed, self.rank = int(seed), int(rank)

    def __call__(self, items):
        seed_process_generators(self.seed, self.rank, items[0][1], COLLATE_STREAM)
        return self.collate_fn([sample for sample, _ in items])
