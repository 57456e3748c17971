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

:class:`BaselineFeaturiser` plugs these features into the profiling driver (:mod:`dinov2_cell.profiles.driver`), so
the output folder is laid out as every profile run's: ``parts/<plate>.parquet`` (resumable), ``run_config.json``,
``profiles.parquet``. torch is imported only when features are computed.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.cli import (
    HelpFormatter,
    add_legacy_aliases,
    common_parser,
    data_parser,
    output_parser,
    rename_flags,
    run_main,
    setup_logging,
    workers_parser,
)
from dinov2_cell.columns import N_SITES, PLATE, WELL
from dinov2_cell.profiles.driver import BaseFeaturiser, DatasetFactory, PlateSource, run_profiles, site_index
from dinov2_cell.profiles.sites import iterate_sites

logger = logging.getLogger("dinov2_cell.profiles")

PROG = "python -m dinov2_cell.profiles.baseline"

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


def otsu_threshold(values, bins: int = 256) -> float:
    """Otsu's threshold of intensities in [0, 1] (histogram with ``bins`` bins, maximal between-class variance).

    Args:
        values: 1-D tensor.
        bins: histogram bins.

    Returns:
        The threshold (a bin edge); the mean for a constant image.
    """
    import torch

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


def site_features(image, stride: int | None = None) -> np.ndarray:
    """Hand-crafted features of one site (see module docstring).

    Args:
        image: C x H x W float image in [0, 1].
        stride: sub-sampling stride (default :func:`auto_stride`).

    Returns:
        float64 vector ordered as :func:`feature_names`.
    """
    import torch

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


def _site_tensor(image, stride):
    import torch

    return torch.from_numpy(site_features(image, stride))


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
    index = site_index(dataset)
    names = feature_names(list(getattr(dataset, "channel_names", [f"ch{i}" for i in range(dataset.num_channels)])))
    fn = functools.partial(_site_tensor, stride=stride)
    chunks = [b.numpy() for b in iterate_sites(dataset, fn, 16, num_workers, desc=desc, progress=progress)]
    feats = np.concatenate(chunks) if chunks else np.empty((0, len(names)))
    if feats.shape[1] != len(names):
        raise ValueError(f"{desc}: {feats.shape[1]} features for {len(names)} names (channel_names wrong?)")
    site = pd.DataFrame(feats, columns=names)
    site[PLATE] = index[PLATE].astype(str).to_numpy()
    site[WELL] = index[WELL].astype(str).to_numpy()
    wells = site.groupby([PLATE, WELL], sort=True)
    out = wells[names].mean().astype(np.float32)
    out.insert(0, N_SITES, wells.size().astype(str))
    return out.reset_index()


class BaselineFeaturiser(BaseFeaturiser):
    """The hand-crafted features as a profiling-driver featuriser (well = mean of its sites).

    Args:
        stride: pixel sub-sampling stride (default automatic).
        num_workers: DataLoader workers.
        progress: per-plate progress bars.
    """

    name = "baseline"

    def __init__(self, stride: int | None = None, num_workers: int = 0, progress: bool = True):
        if stride is not None and stride < 1:
            raise ValueError(f"--stride must be >= 1, got {stride}")
        self.stride, self.num_workers, self.progress = stride, num_workers, progress

    def describe(self) -> dict:
        """Stride and the list of statistics (the features' definition)."""
        return {"stride": "auto" if self.stride is None else int(self.stride), "stats": list(CHANNEL_STATS)}

    def featurise_plate(self, plate: str, dataset) -> pd.DataFrame:
        """Well features of one plate.

        Args:
            plate: barcode.
            dataset: the plate's dataset.

        Returns:
            See :func:`plate_features`.
        """
        return plate_features(dataset, self.stride, self.num_workers, desc=f"{plate} baseline", progress=self.progress)


def baseline_profiles(
    data_root: str,
    out_dir: str,
    plates: Sequence[str] | None = None,
    *,
    channels="all",
    stride: int | None = None,
    num_workers: int = 0,
    metadata: pd.DataFrame | str | None = None,
    overwrite: bool = False,
    dataset_factory: DatasetFactory | None = None,
    dataset_kwargs: dict | None = None,
    progress: bool = True,
) -> str:
    """Write baseline (hand-crafted) well profiles of ``plates`` to ``<out_dir>/profiles.parquet``.

    Args:
        data_root: data root (LoadData CSVs, Phenix folders or a prepared store).
        out_dir: output folder (``parts/``, ``run_config.json``, ``profiles.parquet``).
        plates: barcodes (default: every plate under ``data_root``).
        channels: channel spec (default all 8).
        stride: sub-sampling stride (default automatic).
        num_workers: DataLoader workers.
        metadata: per-well metadata table/path (default: packaged CPJUMP1 files).
        overwrite: recompute parts and replace the merged table.
        dataset_factory: ``f(root, plates, channels, **kw) -> dataset`` (default: CPJUMP1Dataset).
        dataset_kwargs: extra dataset keywords.
        progress: progress bars.

    Returns:
        Path of the merged profiles.

    Raises:
        FileExistsError: the folder holds a run with other options, or a merged table with other plates, unless
            ``overwrite``.
    """
    source = PlateSource(data_root, channels, dict(dataset_kwargs or {}), dataset_factory)
    featuriser = BaselineFeaturiser(stride, num_workers, progress)
    return run_profiles(featuriser, source, out_dir, plates, metadata=metadata, overwrite=overwrite, progress=progress)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.profiles.baseline``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Hand-crafted per-channel intensity/texture well profiles (CellProfiler stand-in).",
        formatter_class=HelpFormatter,
        parents=[
            data_parser(),
            output_parser(help="output folder (parts/, run_config.json, profiles.parquet)"),
            workers_parser(default=0),
            common_parser(),
        ],
    )
    g = p.add_argument_group("features")
    g.add_argument("--channels", default="all", help="fluo, bf, all, or comma-separated channel names")
    g.add_argument("--stride", type=int, default=None, help="pixel sub-sampling stride (default: max(1, side//512))")
    g.add_argument("--metadata", default=None, metavar="FILE", help="per-well metadata CSV/Parquet (default: packaged)")
    add_legacy_aliases(p, workers=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (the error policy is :func:`dinov2_cell.cli.run_main`'s).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    argv = rename_flags(sys.argv[1:] if argv is None else argv, {"--root": "--data-root"})  # old spelling
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    out = args.out
    if out.endswith(".parquet"):  # the old spelling named the output file; kept for one release
        out = out[: -len(".parquet")]
        logger.warning("--out FILE.parquet is deprecated (--out is a folder): writing %s/profiles.parquet", out)
    path = baseline_profiles(
        args.data_root,
        out,
        plates=args.plates,
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
    sys.exit(run_main(main, prog=PROG))
