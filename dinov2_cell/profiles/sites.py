"""Per-site work in DataLoader workers, shared by every featuriser that reads images.

:class:`MappedSites` applies a function to ``dataset.get_image(i)`` inside the workers (resizing for a ViT, or a
whole classical feature vector), and :func:`iterate_sites` yields the results in batches in dataset order with a
progress bar. torch is imported only when a loader is built.
"""

from __future__ import annotations

from typing import Callable, Iterator


class MappedSites:
    """``fn(dataset.get_image(i))`` as a map-style dataset (picklable when ``fn`` is, e.g. a ``functools.partial``).

    Args:
        dataset: CPJUMP1-like dataset (``len``, ``get_image``).
        fn: per-image function returning a tensor.
    """

    def __init__(self, dataset, fn: Callable):
        self.dataset, self.fn = dataset, fn

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.fn(self.dataset.get_image(i))


def iterate_sites(
    dataset,
    fn: Callable,
    batch_size: int = 16,
    num_workers: int = 0,
    pin_memory: bool = False,
    desc: str = "sites",
    progress: bool = True,
) -> Iterator:
    """Batches of ``fn(image)`` over every site of ``dataset``, in order.

    Args:
        dataset: CPJUMP1-like dataset.
        fn: per-image function (runs in the workers).
        batch_size: sites per batch.
        num_workers: DataLoader workers (0: the main process).
        pin_memory: pin batches (for a CUDA consumer).
        desc: progress bar label.
        progress: show a progress bar.

    Yields:
        Stacked batches (tensors), ``len(dataset)`` sites in all.
    """
    import torch
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(
        MappedSites(dataset, fn), batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory
    )
    with tqdm(total=len(dataset), desc=desc, unit="site", disable=not progress) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch))
