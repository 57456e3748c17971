"""Where a plate's sites come from, and per-site work in DataLoader workers, shared by every featuriser.

:class:`PlateSource` (data root, channel group, dataset keywords, dataset builder) opens a plate's dataset;
:func:`site_index` is its per-site table. :class:`MappedSites` applies a function to ``dataset.get_image(i)``
inside the workers (resizing for a ViT, or a whole classical feature vector), and :func:`iterate_sites` yields the
results in batches in dataset order with a progress bar; given a ``skipped`` list, it leaves unreadable sites
(:class:`~dinov2_cell.data.errors.DataReadError`) out of the batches and reports them there instead of raising.
torch is imported only when a loader is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping, Sequence

import pandas as pd

from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.data.errors import DataReadError

# f(root, plates or None, channels, **kwargs) -> dataset with ``index`` (Metadata_Plate/Well/Site), len, get_image.
DatasetFactory = Callable[..., object]


def default_dataset_factory(root: str, plates: Sequence[str] | None, channels, **kwargs):
    """Build the CPJUMP1 dataset for ``plates`` (``None`` = all under ``root``) and ``channels``.

    Args:
        root: data root (LoadData CSVs, Phenix folders or a prepared store).
        plates: barcodes or ``None``.
        channels: channel spec (``"fluo"``, ``"bf"``, ``"all"`` or names).
        **kwargs: further constructor keywords (e.g. normalisation).

    Returns:
        The dataset.
    """
    from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset

    return CPJUMP1Dataset(root=root, plates=None if plates is None else list(plates), channels=channels, **kwargs)


def site_index(dataset) -> pd.DataFrame:
    """The dataset's per-sample table (``index``, ``samples`` or ``sites``): Metadata_Plate, Metadata_Well, _Site.

    Args:
        dataset: a CPJUMP1-like dataset.

    Returns:
        DataFrame with those three columns, one row per ``get_image`` index.

    Raises:
        ValueError: no such table, a column missing, or a length mismatch (named).
    """
    table = None
    for attr in ("index", "samples", "sites"):
        cand = getattr(dataset, attr, None)
        if isinstance(cand, pd.DataFrame):
            table = cand
            break
    if table is None:
        raise ValueError(f"{type(dataset).__name__}: no per-site DataFrame (expected attribute 'index' or 'samples')")
    missing = [c for c in (PLATE, WELL, SITE) if c not in table.columns]
    if missing:
        raise ValueError(f"{type(dataset).__name__}.index: missing column(s) {missing}")
    if len(table) != len(dataset):
        raise ValueError(f"{type(dataset).__name__}: index has {len(table)} rows but the dataset {len(dataset)} items")
    return table[[PLATE, WELL, SITE]].reset_index(drop=True)


@dataclass
class PlateSource:
    """Where a plate's images come from: data root, channel group and dataset options.

    Attributes:
        data_root: dataset root.
        channels: channel spec (``fluo``, ``bf``, ``all`` or names).
        dataset_kwargs: further dataset keywords (normalisation, ``on_error``, ...).
        factory: dataset builder (default: :func:`default_dataset_factory`).
    """

    data_root: str
    channels: object = "all"
    dataset_kwargs: dict = field(default_factory=dict)
    factory: DatasetFactory | None = None

    def open(self, plates: Sequence[str] | None = None, **overrides):
        """The dataset of ``plates`` (``None`` = every plate under the root).

        Args:
            plates: barcodes or ``None``.
            **overrides: ``channels`` and/or dataset keywords replacing this source's.

        Returns:
            The dataset.
        """
        channels = overrides.pop("channels", self.channels)
        factory = self.factory or default_dataset_factory
        return factory(
            self.data_root, None if plates is None else list(plates), channels, **{**self.dataset_kwargs, **overrides}
        )

    def with_options(self, channels=None, dataset_kwargs: Mapping | None = None) -> "PlateSource":
        """A copy with another channel group and extra dataset keywords (this source's keywords are overridden).

        Args:
            channels: channel spec (default: unchanged).
            dataset_kwargs: keywords merged over this source's.

        Returns:
            The new source.
        """
        return replace(
            self,
            channels=self.channels if channels is None else channels,
            dataset_kwargs={**self.dataset_kwargs, **dict(dataset_kwargs or {})},
        )

    def list_plates(self) -> list[str]:
        """Plates found under the root (by indexing it once).

        Returns:
            Sorted barcodes.
        """
        return sorted(site_index(self.open(None))[PLATE].astype(str).unique())

    def describe(self) -> dict:
        """JSON description for the run config (data root, channels, dataset keywords)."""
        return {
            "data_root": os.path.abspath(self.data_root),
            "channels": self.channels if isinstance(self.channels, str) else list(self.channels),
            "dataset_kwargs": {k: str(v) for k, v in sorted(self.dataset_kwargs.items())},
        }


class MappedSites:
    """``fn(dataset.get_image(i))`` as a map-style dataset (picklable when ``fn`` is, e.g. a ``functools.partial``).

    Args:
        dataset: CPJUMP1-like dataset (``len``, ``get_image``).
        fn: per-image function returning a tensor.
        skip_unreadable: items are ``(i, fn(image) or None, error message or None)``; an unreadable site
            (``DataReadError``) gives ``(i, None, message)`` instead of raising.
    """

    def __init__(self, dataset, fn: Callable, skip_unreadable: bool = False):
        self.dataset, self.fn, self.skip_unreadable = dataset, fn, skip_unreadable

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if not self.skip_unreadable:
            return self.fn(self.dataset.get_image(i))
        try:
            image = self.dataset.get_image(i)
        except DataReadError as e:
            return int(i), None, str(e)
        return int(i), self.fn(image), None


def collate_readable(items: list) -> tuple:
    """Collates ``MappedSites(..., skip_unreadable=True)`` items (in the worker): the readable ones stacked.

    Args:
        items: ``(i, tensor or None, message or None)`` triples.

    Returns:
        ``(batch or None when no site of the batch was readable, number of items, [(i, message), ...] unreadable)``.
    """
    from torch.utils.data import default_collate

    readable = [t for _, t, err in items if err is None]
    unreadable = [(i, err) for i, _, err in items if err is not None]
    return (default_collate(readable) if readable else None), len(items), unreadable


def iterate_sites(
    dataset,
    fn: Callable,
    batch_size: int = 16,
    num_workers: int = 0,
    pin_memory: bool = False,
    desc: str = "sites",
    progress: bool = True,
    skipped: list | None = None,
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
        skipped: ``None``: an unreadable site raises its ``DataReadError``. A list: unreadable sites are left out of
            the batches and ``(dataset index, message)`` appended to it, in order, as each batch arrives.

    Yields:
        Stacked batches (tensors), ``len(dataset)`` sites in all, less those appended to ``skipped``.
    """
    import torch
    from tqdm import tqdm

    skipping = skipped is not None
    loader = torch.utils.data.DataLoader(
        MappedSites(dataset, fn, skip_unreadable=skipping),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_readable if skipping else None,
    )
    with tqdm(total=len(dataset), desc=desc, unit="site", disable=not progress) as bar:
        for batch in loader:
            if not skipping:
                yield batch
                bar.update(len(batch))
                continue
            batch, n, unreadable = batch
            skipped.extend(unreadable)
            if batch is not None:
                yield batch
            bar.update(n)
