"""Classical hand-crafted profiles: per-channel intensity and texture statistics (a stand-in for CellProfiler).

Per site and per channel (images in [0, 1] from :class:`~dinov2_cell.data.cpjump1_dataset.CPJUMP1Dataset`):

* intensity: ``mean``, ``std``, percentiles ``p01 p05 p25 p50 p75 p95 p99``;
* texture: ``grad`` (mean gradient magnitude, forward differences), ``lap`` (mean absolute 4-neighbour Laplacian),
  ``lap_rel`` (``lap`` / ``mean``, a contrast-invariant roughness);
* foreground: Otsu threshold on a 256-bin histogram -> ``otsu`` (the threshold), ``fg_frac`` (fraction of pixels
  above it: a proxy of cell coverage / count), ``fg_mean``, ``bg_mean``;

plus, per pair of channels, the Pearson correlation of their pixels (``corr_<A>_<B>``, as CellProfiler's
MeasureColocalization). A well is the mean of its sites' vectors (missing sites simply do not contribute). Features
are named ``<channel>_<stat>``; the table has the same Metadata columns as the SSL profiles, so
``python -m dinov2_cell.eval.knn_wells`` scores both the same way.

Speed: statistics are computed on every ``stride``-th row and column; the default ``stride=None`` picks
``max(1, side // 512)`` (2 for 1080 px CPJUMP1 images), which changes percentiles and means negligibly and quarters
the cost. Sites are processed in DataLoader workers (``num_workers``).

Output: ``out_path`` (Parquet), with per-plate parts and ``run_config.json`` in ``<out_path without .parquet>.parts/``
so that an interrupted run resumes (parts are written atomically and skipped when present).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dinov2_cell.profiles.io import PLATE, WELL, HelpFormatter, write_table
from dinov2_cell.profiles.parts import (
    attach_metadata,
    check_run_config,
    merge_parts,
    part_path,
    well_metadata_for,
    write_part,
)

logger = logging.getLogger("dinov2_cell.profiles")

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
CHANNEL_STATS = (
    "mean",
    "std",
    *[f"p{q:02d}" for q in PERCENTILES],
    "grad",
    "lap",
    "lap_rel",
    "otsu",
    "fg_frac",
    "fg_mean",
    "bg_mean",
)
_EPS = 1e-8


def auto_stride(height: int, width: int) -> int:
    """Default sub-sampling stride: ``max(1, max(height, width) // 512)``.

    Args:
        height: image height.
        width: image width.

    Returns:
        The stride.
    """
    return max(1, max(height, width) // 512)


def feature_names(channel_names: Sequence[str]) -> list[str]:
    """Names of :func:`site_features` outputs.

    Args:
        channel_names: channel names in image order.

    Returns:
        ``<channel>_<stat>`` for every channel and stat, then ``corr_<A>_<B>`` for every channel pair.
    """
    names = [f"{c}_{s}" for c in channel_names for s in CHANNEL_STATS]
    return names + [f"corr_{a}_{b}" for a, b in combinations(channel_names, 2)]


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of intensities in [0, 1] (histogram with ``bins`` bins, maximal between-class variance).

    Args:
        values: 1-D tensor.
        bins: histogram bins.

    Returns:
        The threshold (a bin edge); the mean for a constant image.
    """
    v = values.float()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < _EPS:
        return lo
    hist = torch.histc(v, bins=bins, min=lo, max=hi).double()
    centers = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w0 = torch.cumsum(hist, 0)
    w1 = hist.sum() - w0
    m0 = torch.cumsum(hist * centers, 0)
    mu0 = m0 / w0.clamp_min(_EPS)
    mu1 = (m0[-1] - m0) / w1.clamp_min(_EPS)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(torch.argmax(between[:-1]))
    return lo + (k + 1) * (hi - lo) / bins


def site_features(image: torch.Tensor, stride: int | None = None) -> np.ndarray:
    """Hand-crafted features of one site (see module docstring).

    Args:
        image: C x H x W float image in [0, 1].
        stride: sub-sampling stride (default :func:`auto_stride`).

    Returns:
        float64 vector ordered as :func:`feature_names`.
    """
    img = torch.as_tensor(image, dtype=torch.float32)
    if img.ndim != 3:
        raise ValueError(f"expected C x H x W, got {tuple(img.shape)}")
    s = stride or auto_stride(*img.shape[-2:])
    img = img[:, ::s, ::s].double()
    c = img.shape[0]
    flat = img.reshape(c, -1)
    mean = flat.mean(1)
    std = flat.std(1, unbiased=False)
    pct = torch.quantile(flat.float(), torch.tensor([q / 100 for q in PERCENTILES]), dim=1).double().T
    gx = img[:, :, 1:] - img[:, :, :-1]
    gy = img[:, 1:, :] - img[:, :-1, :]
    grad = torch.sqrt(gx[:, :-1, :] ** 2 + gy[:, :, :-1] ** 2).reshape(c, -1).mean(1)
    lap = (
        (img[:, 1:-1, :-2] + img[:, 1:-1, 2:] + img[:, :-2, 1:-1] + img[:, 2:, 1:-1] - 4 * img[:, 1:-1, 1:-1])
        .abs()
        .reshape(c, -1)
        .mean(1)
    )
    rows = []
    for ch in range(c):
        t = otsu_threshold(flat[ch])
        fg = flat[ch] > t
        frac = fg.double().mean()
        fg_mean = flat[ch][fg].mean() if fg.any() else mean[ch]
        bg_mean = flat[ch][~fg].mean() if (~fg).any() else mean[ch]
        rows.append(
            torch.cat(
                [
                    torch.stack([mean[ch], std[ch]]),
                    pct[ch],
                    torch.stack([grad[ch], lap[ch], lap[ch] / (mean[ch] + 1e-6)]),
                    torch.tensor([t, float(frac), float(fg_mean), float(bg_mean)], dtype=torch.float64),
                ]
            )
        )
    centered = flat - mean[:, None]
    cov = centered @ centered.T / flat.shape[1]
    denom = torch.sqrt(torch.clamp(torch.diag(cov), min=0))
    corr = cov / torch.clamp(denom[:, None] * denom[None, :], min=_EPS)
    pairs = [corr[a, b] for a, b in combinations(range(c), 2)]
    out = torch.cat(rows + ([torch.stack(pairs)] if pairs else []))
    return out.numpy()


class _SiteFeatures(torch.utils.data.Dataset):
    """Computes site features inside DataLoader workers."""

    def __init__(self, dataset, stride):
        self.dataset, self.stride = dataset, stride

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return torch.from_numpy(site_features(self.dataset.get_image(i), self.stride))


def plate_features(
    dataset, stride: int | None = None, num_workers: int = 0, desc: str = "sites", progress: bool = True
) -> pd.DataFrame:
    """Well-level baseline features of every well in ``dataset``.

    Args:
        dataset: CPJUMP1-like dataset (``get_image``, ``index``/``samples``, ``channel_names``).
        stride: sub-sampling stride (default automatic).
        num_workers: DataLoader workers.
        desc: progress label.
        progress: tqdm bar.

    Returns:
        DataFrame with Metadata_Plate, Metadata_Well, Metadata_n_sites and the features (float32), one row per well.
    """
    from dinov2_cell.embed import site_index

    index = site_index(dataset)
    names = feature_names(list(getattr(dataset, "channel_names", [f"ch{i}" for i in range(dataset.num_channels)])))
    loader = torch.utils.data.DataLoader(_SiteFeatures(dataset, stride), batch_size=16, num_workers=num_workers)
    chunks = []
    with tqdm(total=len(dataset), desc=desc, unit="site", disable=not progress) as bar:
        for batch in loader:
            chunks.append(batch.numpy())
            bar.update(len(batch))
    feats = np.concatenate(chunks) if chunks else np.empty((0, len(names)))
    if feats.shape[1] != len(names):
        raise ValueError(f"{desc}: {feats.shape[1]} features for {len(names)} names (channel_names wrong?)")
    site = pd.DataFrame(feats, columns=names)
    site[PLATE] = index[PLATE].astype(str).to_numpy()
    site[WELL] = index[WELL].astype(str).to_numpy()
    wells = site.groupby([PLATE, WELL], sort=True)
    out = wells[names].mean().astype(np.float32)
    out.insert(0, "Metadata_n_sites", wells.size().astype(str))
    return out.reset_index()


def baseline_profiles(
    data_root: str,
    out_path: str,
    plates: Sequence[str] | None = None,
    *,
    channels="all",
    stride: int | None = None,
    num_workers: int = 0,
    metadata: pd.DataFrame | str | None = None,
    overwrite: bool = False,
    dataset_factory=None,
    dataset_kwargs: dict | None = None,
    progress: bool = True,
) -> str:
    """Write baseline (hand-crafted) well profiles of ``plates`` to ``out_path``.

    Args:
        data_root: data root (LoadData CSVs and/or Phenix folders).
        out_path: output ``.parquet``.
        plates: barcodes (default: every plate under ``data_root``).
        channels: channel spec (default all 8).
        stride: sub-sampling stride (default automatic).
        num_workers: DataLoader workers.
        metadata: per-well metadata table/path (default: packaged CPJUMP1 files).
        overwrite: recompute parts and replace ``out_path``.
        dataset_factory: ``f(root, plates, channels, **kw) -> dataset`` (default: CPJUMP1Dataset).
        dataset_kwargs: extra dataset keywords.
        progress: tqdm bars.

    Returns:
        ``out_path``.

    Raises:
        FileExistsError: ``out_path`` exists with other plates, or the parts folder holds a run with other options,
            unless ``overwrite``.
    """
    from dinov2_cell.embed import default_dataset_factory, list_plates

    if not str(out_path).endswith(".parquet"):
        raise ValueError(f"out_path must end with .parquet, got {out_path}")
    factory = dataset_factory or default_dataset_factory
    kwargs = dict(dataset_kwargs or {})
    run_dir = str(out_path)[: -len(".parquet")] + ".parts"
    config = {
        "kind": "baseline_features",
        "data_root": os.path.abspath(data_root),
        "channels": channels if isinstance(channels, str) else list(channels),
        "stride": "auto" if stride is None else int(stride),
        "stats": list(CHANNEL_STATS),
        "dataset_kwargs": {k: str(v) for k, v in sorted(kwargs.items())},
    }
    check_run_config(run_dir, config, overwrite=overwrite)
    plates = sorted(set(plates)) if plates is not None else list_plates(data_root, channels, factory, **kwargs)
    todo = [p for p in plates if overwrite or not os.path.isfile(part_path(run_dir, p))]
    meta = well_metadata_for(todo, metadata) if todo else None
    for plate in todo:
        ds = factory(data_root, [plate], channels, **kwargs)
        wells = plate_features(ds, stride, num_workers, desc=f"{plate} baseline", progress=progress)
        if wells.empty:
            raise ValueError(f"plate {plate}: no site found under {data_root}")
        write_part(attach_metadata(wells, meta[meta[PLATE] == plate]), run_dir, plate, overwrite=overwrite)
    table = merge_parts(run_dir, plates)
    if os.path.exists(out_path) and not overwrite:
        existing = sorted(pd.read_parquet(out_path, columns=[PLATE])[PLATE].astype(str).unique())
        if existing == plates:
            logger.info("%s already holds these %d plates; kept", out_path, len(plates))
            return str(out_path)
    write_table(table, out_path, overwrite=overwrite)
    logger.info("wrote %s (%d wells, %d features)", out_path, len(table), table.shape[1])
    return str(out_path)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.profiles.baseline``."""
    p = argparse.ArgumentParser(
        prog="python -m dinov2_cell.profiles.baseline",
        description="Hand-crafted per-channel intensity/texture well profiles (CellProfiler stand-in).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data-root", required=True, help="folder with LoadData CSVs and/or Phenix image folders")
    p.add_argument("--out", required=True, help="output .parquet (parts and run_config.json in <out>.parts/)")
    p.add_argument("--plates", default=None, help="comma-separated barcodes (default: all under --data-root)")
    p.add_argument("--channels", default="all", help="fluo, bf, all, or comma-separated channel names")
    p.add_argument("--stride", type=int, default=None, help="pixel sub-sampling stride (default: max(1, side//512))")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--metadata", default=None, help="per-well metadata CSV/Parquet (default: packaged CPJUMP1)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = baseline_profiles(
        args.data_root,
        args.out,
        plates=[p.strip() for p in args.plates.split(",") if p.strip()] if args.plates else None,
        channels=args.channels,
        stride=args.stride,
        num_workers=args.num_workers,
        metadata=args.metadata,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
