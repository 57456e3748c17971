"""Well profiles from trained teachers: ``python -m dinov2_cell.embed`` (paper Sec. 3.3).

Pipeline, per plate:

1. **Images.** Each checkpoint reads its own channel group of the plate (``fluo``: 5 channels, ``bf``: 3) through
   :class:`dinov2_cell.data.cpjump1_dataset.CPJUMP1Dataset` (``get_image(i)`` -> C x H x W in [0, 1]). The group
   comes from the run's ``train.dataset_path`` (its ``channels=`` key), else from ``student.in_chans``
   (5 -> fluo, 3 -> bf, 8 -> all), unless given explicitly. Image-normalisation keys of the training dataset string
   are reused so that inference sees images scaled as in training.
2. **Size.** By default the whole site is resized (bilinear, antialiased, as the training crops are) to the run's
   ``crops.global_crops_size`` (518 in the paper), i.e. the scale of a full-image global crop. ``image_size=N``
   resizes to N x N instead (N must be a multiple of the patch size); ``image_size=0`` keeps the native resolution
   and centre-crops each side down to a multiple of the patch size (1080 -> 1078 for patch 14).
3. **Site vector.** ``concat(x_norm_clstoken, mean of x_norm_patchtokens)`` of the teacher backbone's
   ``forward_features`` (Sec. 3.3.1), batched, on CUDA when available, with a progress bar.
4. **Well vector.** :mod:`dinov2_cell.profiles.merge` -- ``concat`` (default: sites on their grid, 4x4
   bilinearly resampled to 3x3 with corners kept, 9 site vectors concatenated) or ``mean``; wells with missing
   sites are kept (empty grid positions filled with the mean of the present sites) and counted in the log and in
   ``parts/<plate>.stats.json``.
5. **Channels.** The checkpoints' well vectors are concatenated (fluorescent then brightfield, in the order given),
   feature names prefixed by the checkpoint name (``fluo_p4_0012``).
6. **Metadata.** Metadata_Plate, Metadata_Well, Metadata_broad_sample, Metadata_pert_iname, Metadata_target,
   Metadata_cell_line (+ the other packaged well metadata) from the real CPJUMP1 files
   (:func:`dinov2_cell.data.metadata.well_metadata`), or from ``--metadata FILE``.

Outputs under ``--out``: ``parts/<plate>.parquet`` (one per plate, written atomically, skipped when present: the run
resumes, and SLURM array tasks can each take ``--plates`` or ``--shard I/N`` with ``--no-merge``), ``run_config.json``
(options that define the parts; a different later call on the folder is refused unless ``--overwrite``), and after
the merge step ``profiles.parquet`` plus the challenge ``submission.csv`` (``ID`` = ``<plate>_<well>`` + float
features). With ``--align-alpha A`` (off by default) the merge also writes ``profiles_aligned_alpha<A>.parquet`` and
``submission_aligned_alpha<A>.csv``: cross-plate alignment ``z <- A z + (1 - A) mu_position``, which USES
PLATE-LAYOUT KNOWLEDGE (see :mod:`dinov2_cell.profiles.align`); the returned path is then the aligned table.

Example (fluorescent + brightfield runs, all plates found under the root)::

    python -m dinov2_cell.embed --checkpoint fluo=runs/fluo --checkpoint bf=runs/bf \\
        --data-root /data/cpg0000 --out profiles/ssl
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm

from dinov2_cell.profiles import merge as merge_mod
from dinov2_cell.profiles.align import ALIGNMENT_LABEL, align_cross_plate
from dinov2_cell.profiles.io import PLATE, SITE, WELL, HelpFormatter, write_json, write_submission, write_table
from dinov2_cell.profiles.parts import (
    attach_metadata,
    check_run_config,
    merge_parts,
    part_path,
    parts_present,
    well_metadata_for,
    write_part,
)

logger = logging.getLogger("dinov2_cell.embed")

CHANNELS_BY_IN_CHANS = {5: "fluo", 3: "bf", 8: "all"}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Keys of the training dataset string that change pixel values; reused at inference when the constructor has them.
INHERITED_DATASET_KEYS = (
    "normalize",
    "percentile_low",
    "percentile_high",
    "bit_depth",
    "plate_stats_sites",
    "illum",
    "channel_map",
    "seed",
)
PROFILES_NAME = "profiles.parquet"
SUBMISSION_NAME = "submission.csv"

DatasetFactory = Callable[..., object]


# ----------------------------------------------------------------------------------------------------------- data


def default_dataset_factory(root: str, plates: Sequence[str] | None, channels, **kwargs):
    """Build the CPJUMP1 dataset for ``plates`` (``None`` = all under ``root``) and ``channels``.

    Args:
        root: data root (LoadData CSVs and/or Phenix folders).
        plates: barcodes or ``None``.
        channels: channel spec (``"fluo"``, ``"bf"``, ``"all"`` or names).
        **kwargs: further constructor keywords (e.g. normalisation inherited from training).

    Returns:
        The dataset.
    """
    from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset

    return CPJUMP1Dataset(root=root, plates=None if plates is None else list(plates), channels=channels, **kwargs)


def site_index(dataset) -> pd.DataFrame:
    """The dataset's per-sample table (``index`` or ``samples``) with Metadata_Plate, Metadata_Well, Metadata_Site.

    Args:
        dataset: a CPJUMP1-like dataset.

    Returns:
        DataFrame with those three columns, one row per ``get_image`` index.

    Raises:
        ValueError: no such table or a column missing (named).
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


def prepare_image(img: torch.Tensor, image_size: int, patch_size: int) -> torch.Tensor:
    """Resize (or crop) one C x H x W image for the backbone (see module docstring, step 2).

    Args:
        img: float image in [0, 1].
        image_size: output side (multiple of ``patch_size``), or 0 for native resolution centre-cropped to a multiple
            of ``patch_size``.
        patch_size: the ViT patch size.

    Returns:
        C x S x S (or C x H' x W' for ``image_size=0``) float32 tensor.
    """
    img = torch.as_tensor(img, dtype=torch.float32)
    if img.ndim != 3:
        raise ValueError(f"expected a C x H x W image, got shape {tuple(img.shape)}")
    if image_size == 0:
        h, w = img.shape[-2:]
        hh, ww = h - h % patch_size, w - w % patch_size
        if hh == 0 or ww == 0:
            raise ValueError(f"image {h}x{w} is smaller than one {patch_size}px patch")
        top, left = (h - hh) // 2, (w - ww) // 2
        return img[:, top : top + hh, left : left + ww].contiguous()
    if tuple(img.shape[-2:]) == (image_size, image_size):
        return img.contiguous()
    return F.interpolate(
        img[None], size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )[0]


class _Images(torch.utils.data.Dataset):
    """``get_image(i)`` of a dataset, resized in the DataLoader workers."""

    def __init__(self, dataset, image_size: int, patch_size: int):
        self.dataset, self.image_size, self.patch_size = dataset, image_size, patch_size

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return prepare_image(self.dataset.get_image(i), self.image_size, self.patch_size)


# --------------------------------------------------------------------------------------------------------- models


@dataclass
class TeacherModel:
    """A loaded teacher backbone and what is needed to feed it.

    Attributes:
        name: feature prefix (e.g. ``fluo``).
        path: checkpoint or run folder given.
        backbone: the teacher backbone (eval mode).
        channels: channel spec passed to the dataset.
        in_chans: input channels of the backbone.
        patch_size: ViT patch size.
        image_size: side fed to the backbone (0 = native, cropped).
        embed_dim: backbone width (site vector = 2 * embed_dim).
        dataset_kwargs: image-normalisation keywords inherited from the training dataset string.
        checkpoint_sha256: hash of the checkpoint file (identifies the weights in run_config.json).
    """

    name: str
    path: str
    backbone: torch.nn.Module
    channels: object
    in_chans: int
    patch_size: int
    image_size: int
    embed_dim: int
    dataset_kwargs: dict
    checkpoint_sha256: str

    def describe(self) -> dict:
        """JSON description for run_config.json."""
        return {
            "path": os.path.abspath(self.path),
            "sha256": self.checkpoint_sha256,
            "channels": self.channels if isinstance(self.channels, str) else list(self.channels),
            "in_chans": self.in_chans,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "embed_dim": self.embed_dim,
            "dataset_kwargs": {k: str(v) for k, v in sorted(self.dataset_kwargs.items())},
        }


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _training_dataset_kwargs(cfg) -> dict:
    """kwargs of the run's ``train.dataset_path`` (CPJUMP1 strings only); {} when absent or unparseable."""
    try:
        # Resolving may fail: the paper configs hold `root=${oc.env:CPJUMP1_ROOT}`, unset at inference time. Only
        # channels and normalisation are wanted, so an unresolvable root is replaced by a placeholder.
        raw = OmegaConf.to_container(cfg.train, resolve=False).get("dataset_path", "") if "train" in cfg else ""
        dataset_str = re.sub(r"\$\{[^}]*\}", "unresolved", str(raw or ""))
    except Exception as e:
        logger.warning("cannot read train.dataset_path (%s); channels from student.in_chans", e)
        return {}
    if not dataset_str.startswith("CPJUMP1"):
        return {}
    try:
        from dinov2_cell.data.registry import parse_dataset_str

        parsed = parse_dataset_str(dataset_str)
    except Exception as e:  # the dataset module may be absent or the string stale; fall back to in_chans
        logger.warning("cannot parse train.dataset_path %r (%s); channels from student.in_chans", dataset_str, e)
        return {}
    return {} if parsed is None else dict(parsed[1])


def load_teacher(
    path: str,
    name: str | None = None,
    channels=None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
) -> TeacherModel:
    """Load a teacher backbone and decide its channels and input size.

    Args:
        path: run folder or ``eval/<name>/teacher_checkpoint.pth``.
        name: feature prefix; default the channel group (``fluo``/``bf``/``all``) or ``model``.
        channels: channel spec; default from the run's dataset string, else from ``student.in_chans``.
        image_size: side fed to the model; default ``crops.global_crops_size``; 0 = native resolution, cropped.
        device: torch device.

    Returns:
        A :class:`TeacherModel`.

    Raises:
        ValueError: channel count differs from ``student.in_chans``, or ``image_size`` not a multiple of the patch.
    """
    from dinov2_cell.models.multichannel_vit import find_teacher_checkpoint, load_teacher_backbone

    ckpt_path, _ = find_teacher_checkpoint(path)
    backbone, cfg = load_teacher_backbone(path, device=device)
    in_chans = int(cfg.student.in_chans)
    patch = int(cfg.student.patch_size)
    train_kwargs = _training_dataset_kwargs(cfg)
    if channels is None:
        channels = train_kwargs.get("channels") or CHANNELS_BY_IN_CHANS.get(in_chans)
        if channels is None:
            raise ValueError(f"{path}: student.in_chans={in_chans}; pass the channels of this checkpoint explicitly")
    try:
        from dinov2_cell.data.index import resolve_channels

        n = len(resolve_channels(channels))
    except ImportError:
        n = None
    if n is not None and n != in_chans:
        raise ValueError(f"{path}: channels {channels!r} give {n} channels but the model has in_chans={in_chans}")
    if image_size is None:
        image_size = int(cfg.crops.global_crops_size)
    if image_size < 0 or (image_size and image_size % patch):
        raise ValueError(f"image_size {image_size} must be 0 or a multiple of the patch size {patch}")
    inherited = {k: v for k, v in train_kwargs.items() if k in INHERITED_DATASET_KEYS}
    if name is None:
        name = channels if isinstance(channels, str) and "," not in channels else "model"
    return TeacherModel(
        name=name,
        path=path,
        backbone=backbone,
        channels=channels,
        in_chans=in_chans,
        patch_size=patch,
        image_size=int(image_size),
        embed_dim=int(backbone.embed_dim),
        dataset_kwargs=inherited,
        checkpoint_sha256=_sha256(ckpt_path),
    )


@torch.no_grad()
def site_features(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``concat(CLS, mean patch token)`` of the backbone's normalised outputs.

    Args:
        backbone: a DINOv2 ViT (``forward_features`` returning ``x_norm_clstoken`` / ``x_norm_patchtokens``).
        images: B x C x H x W.

    Returns:
        B x (2 * embed_dim) float32 tensor.
    """
    out = backbone.forward_features(images)
    return torch.cat([out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(dim=1)], dim=1).float()


def embed_dataset(
    model: TeacherModel,
    dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    desc: str = "sites",
    progress: bool = True,
) -> np.ndarray:
    """Site vectors of every image of ``dataset``.

    Args:
        model: the teacher.
        dataset: CPJUMP1-like dataset (``len``, ``get_image``).
        batch_size: images per forward pass.
        device: torch device.
        num_workers: DataLoader workers reading and resizing images.
        precision: ``fp32`` (default), ``bf16`` or ``fp16`` autocast.
        desc: progress bar label.
        progress: show a tqdm bar.

    Returns:
        (len(dataset), 2 * embed_dim) float32 array.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        _Images(dataset, model.image_size, model.patch_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    out = []
    dtype = PRECISIONS[precision]
    with tqdm(total=len(dataset), desc=desc, unit="site", disable=not progress) as bar:
        for batch in loader:
            if batch.shape[1] != model.in_chans:
                raise ValueError(
                    f"{desc}: images have {batch.shape[1]} channels, model {model.name} expects {model.in_chans}"
                )
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out.append(site_features(model.backbone, batch).cpu())
            bar.update(len(batch))
    if not out:
        return np.empty((0, 2 * model.embed_dim), dtype=np.float32)
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------------------------- plates


def _resolve_checkpoints(checkpoints, channels_per_checkpoint) -> list[tuple[str | None, str, object]]:
    if isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = [os.fspath(checkpoints)]
    if isinstance(checkpoints, Mapping):
        items = [(str(k), os.fspath(v)) for k, v in checkpoints.items()]
    else:
        items = [(None, os.fspath(v)) for v in checkpoints]
    if not items:
        raise ValueError("no checkpoint given")
    if channels_per_checkpoint is None:
        chans = [None] * len(items)
    elif isinstance(channels_per_checkpoint, Mapping):
        unknown = [k for k in channels_per_checkpoint if k not in {n for n, _ in items}]
        if unknown:
            raise ValueError(f"channels_per_checkpoint names unknown checkpoint(s) {unknown}")
        chans = [channels_per_checkpoint.get(n) for n, _ in items]
    else:
        chans = list(channels_per_checkpoint)
        if len(chans) != len(items):
            raise ValueError(f"{len(chans)} channel specs for {len(items)} checkpoints")
    return [(n, p, c) for (n, p), c in zip(items, chans)]


def _unique_names(models: list[TeacherModel]) -> None:
    seen: dict[str, int] = {}
    for m in models:
        if m.name in seen:
            seen[m.name] += 1
            m.name = f"{m.name}{seen[m.name]}"
        else:
            seen[m.name] = 1


def list_plates(data_root: str, channels="fluo", dataset_factory: DatasetFactory | None = None, **kwargs) -> list[str]:
    """Plates found under ``data_root`` (by indexing it once).

    Args:
        data_root: data root.
        channels: channel spec used for the indexing.
        dataset_factory: dataset builder (default CPJUMP1).
        **kwargs: further dataset keywords.

    Returns:
        Sorted barcodes.
    """
    factory = dataset_factory or default_dataset_factory
    ds = factory(data_root, None, channels, **kwargs)
    return sorted(site_index(ds)[PLATE].astype(str).unique())


def _shard(plates: list[str], shard: str | tuple[int, int] | None) -> list[str]:
    if shard is None:
        return plates
    i, n = (int(x) for x in shard.split("/")) if isinstance(shard, str) else shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {shard!r}: need I/N with 0 <= I < N")
    return sorted(plates)[i::n]


def embed_plate(
    models: Sequence[TeacherModel],
    data_root: str,
    plate: str,
    site_merge: str = "concat",
    site_order: str = "row-major",
    sites_per_well: int | str = "auto",
    missing_sites: str = "mean",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    dataset_factory: DatasetFactory | None = None,
    dataset_kwargs: dict | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Well vectors of one plate for every model, joined on (plate, well) (no metadata yet).

    Args:
        models: loaded teachers.
        data_root: data root.
        plate: barcode.
        site_merge: ``concat`` or ``mean``.
        site_order: site -> grid position rule (``row-major`` or ``snake``).
        sites_per_well: ``auto``, 9 or 16.
        missing_sites: ``mean`` (fill) or ``error``.
        batch_size: images per forward pass.
        device: torch device.
        num_workers: image-reading workers.
        precision: autocast precision.
        dataset_factory: dataset builder (default CPJUMP1).
        dataset_kwargs: extra dataset keywords (override inherited ones).
        progress: tqdm bars.

    Returns:
        (well table with Metadata_Plate, Metadata_Well and features; stats per model).
    """
    factory = dataset_factory or default_dataset_factory
    table, stats = None, {}
    for m in models:
        kwargs = {**m.dataset_kwargs, **(dataset_kwargs or {})}
        ds = factory(data_root, [plate], m.channels, **kwargs)
        index = site_index(ds)
        if len(index) == 0:
            raise ValueError(f"plate {plate}: no site found under {data_root} for channels {m.channels!r}")
        feats = embed_dataset(m, ds, batch_size, device, num_workers, precision, f"{plate} {m.name}", progress)
        wells, st = merge_mod.merge_sites(
            index,
            feats,
            mode=site_merge,
            order=site_order,
            sites_per_well=sites_per_well,
            missing=missing_sites,
            prefix=f"{m.name}_",
        )
        stats[m.name] = st
        if table is None:
            table = wells
        else:
            before = len(table), len(wells)
            table = table.merge(wells, on=[PLATE, WELL], how="inner")
            if len(table) < max(before):
                logger.warning(
                    "plate %s: %d wells kept (wells with images in only some channel groups dropped: %s)",
                    plate,
                    len(table),
                    before,
                )
    return table, stats


def _fmt_alpha(alpha: float) -> str:
    return f"{float(alpha):g}"


def merged_paths(out_dir: str, align_alpha: float | None = None) -> tuple[str, str]:
    """(profiles parquet, submission csv) paths of a run, aligned variants when ``align_alpha`` is set.

    Args:
        out_dir: run folder.
        align_alpha: alignment weight or ``None``.

    Returns:
        The two paths.
    """
    if align_alpha is None:
        return os.path.join(out_dir, PROFILES_NAME), os.path.join(out_dir, SUBMISSION_NAME)
    a = _fmt_alpha(align_alpha)
    return (
        os.path.join(out_dir, f"profiles_aligned_alpha{a}.parquet"),
        os.path.join(out_dir, f"submission_aligned_alpha{a}.csv"),
    )


def finalize_profiles(
    out_dir: str,
    plates: Sequence[str] | None = None,
    align_alpha: float | None = None,
    align_by: Sequence[str] | None = None,
    submission: bool = True,
    overwrite: bool = False,
) -> str:
    """Merge step: parts -> ``profiles.parquet`` (+ aligned variant) and the submission CSV.

    An existing merged file is kept (and its path returned) when it holds exactly ``plates``; otherwise it is an
    error unless ``overwrite``.

    Args:
        out_dir: run folder.
        plates: barcodes to merge (default: every part present).
        align_alpha: cross-plate alignment weight (``None`` = off; uses plate-layout knowledge).
        align_by: alignment groups (default: all plates).
        submission: also write the submission CSV.
        overwrite: replace existing merged outputs.

    Returns:
        Path of the merged (aligned when ``align_alpha``) profiles.
    """
    plates = parts_present(out_dir) if plates is None else sorted(set(plates))
    table = merge_parts(out_dir, plates)
    outputs = [(merged_paths(out_dir, None), table)]
    if align_alpha is not None:
        aligned = align_cross_plate(table, align_alpha, group_by=align_by)
        outputs.append((merged_paths(out_dir, align_alpha), aligned))
    for (prof_path, sub_path), df in outputs:
        if os.path.exists(prof_path) and not overwrite:
            existing = pd.read_parquet(prof_path, columns=[PLATE])[PLATE].astype(str).unique()
            if sorted(existing) != plates:
                raise FileExistsError(
                    f"{prof_path} exists with plates {sorted(existing)[:5]}... != {plates[:5]}...; pass overwrite=True "
                    "/ --overwrite to replace it"
                )
            logger.info("%s already holds these %d plates; kept", prof_path, len(plates))
        else:
            write_table(df, prof_path, overwrite=overwrite)
            logger.info("wrote %s (%d wells, %d plates)", prof_path, len(df), len(plates))
        if submission and (overwrite or not os.path.exists(sub_path)):
            write_submission(df, sub_path, overwrite=overwrite)
            logger.info("wrote %s", sub_path)
    if align_alpha is not None:
        logger.warning("%s is %s", outputs[-1][0][0], ALIGNMENT_LABEL)
    return outputs[-1][0][0]


def embed_plates(
    checkpoints: Mapping[str, str] | Sequence[str] | str,
    data_root: str,
    out_dir: str,
    plates: Sequence[str] | None = None,
    site_merge: str = "concat",
    align_alpha: float | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    channels_per_checkpoint: Mapping[str, object] | Sequence[object] | None = None,
    *,
    image_size: int | None = None,
    site_order: str = "row-major",
    sites_per_well: int | str = "auto",
    missing_sites: str = "mean",
    num_workers: int = 0,
    precision: str = "fp32",
    align_by: Sequence[str] | None = None,
    metadata: pd.DataFrame | str | None = None,
    shard: str | tuple[int, int] | None = None,
    merge: bool = True,
    merge_only: bool = False,
    submission: bool = True,
    overwrite: bool = False,
    dataset_factory: DatasetFactory | None = None,
    dataset_kwargs: dict | None = None,
    progress: bool = True,
) -> str:
    """Embed plates with one or two teachers and write well profiles (see module docstring).

    Args:
        checkpoints: ``{name: run_dir_or_checkpoint}`` (names become feature prefixes) or a list (named by their
            channel group: ``fluo``, ``bf``).
        data_root: data root (LoadData CSVs and/or Phenix folders).
        out_dir: run folder.
        plates: barcodes (default: every plate under ``data_root``; for ``merge_only`` every part present).
        site_merge: ``concat`` (paper) or ``mean``.
        align_alpha: cross-plate alignment weight; ``None`` (default) = off. Uses plate-layout knowledge.
        batch_size: images per forward pass.
        device: torch device (default CUDA when available, else CPU).
        channels_per_checkpoint: channel spec per checkpoint (dict by name or list); default from each run's config.
        image_size: side fed to the models (default each run's ``crops.global_crops_size``; 0 = native, cropped).
        site_order: site -> grid position rule.
        sites_per_well: ``auto``, 9 or 16.
        missing_sites: ``mean`` (fill empty grid positions) or ``error``.
        num_workers: DataLoader workers reading images.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        align_by: metadata columns grouping the alignment means (default: all plates).
        metadata: per-well metadata table/path (default: the packaged CPJUMP1 files).
        shard: ``"I/N"``: process only every N-th plate starting at I (SLURM arrays); implies no merge.
        merge: run the merge step after embedding.
        merge_only: skip embedding; merge the parts present (or ``plates``).
        submission: write the submission CSV in the merge step.
        overwrite: recompute existing parts and replace merged outputs.
        dataset_factory: ``f(root, plates, channels, **kw) -> dataset`` (default: CPJUMP1Dataset).
        dataset_kwargs: extra dataset keywords.
        progress: tqdm bars.

    Returns:
        Path of the merged profiles Parquet (the aligned one when ``align_alpha`` is set), or of the parts folder
        when no merge was run.
    """
    os.makedirs(out_dir, exist_ok=True)
    if align_alpha is not None and not 0.0 <= float(align_alpha) <= 1.0:
        raise ValueError(f"align_alpha must be in [0, 1], got {align_alpha}")
    if site_merge not in merge_mod.MERGE_MODES:
        raise ValueError(f"site_merge must be one of {merge_mod.MERGE_MODES}, got {site_merge!r}")
    if merge_only:
        return finalize_profiles(out_dir, plates, align_alpha, align_by, submission, overwrite)

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = []
    for name, path, chans in _resolve_checkpoints(checkpoints, channels_per_checkpoint):
        models.append(load_teacher(path, name=name, channels=chans, image_size=image_size, device=device))
    _unique_names(models)
    run_config = {
        "kind": "ssl_embeddings",
        "models": {m.name: m.describe() for m in models},
        "data_root": os.path.abspath(data_root),
        "site_features": "concat(x_norm_clstoken, mean(x_norm_patchtokens))",
        "site_merge": site_merge,
        "site_order": site_order,
        "sites_per_well": str(sites_per_well),
        "missing_sites": missing_sites,
        "precision": precision,
        "dataset_kwargs": {k: str(v) for k, v in sorted((dataset_kwargs or {}).items())},
        "metadata": "packaged CPJUMP1" if metadata is None else (metadata if isinstance(metadata, str) else "table"),
    }
    check_run_config(out_dir, run_config, overwrite=overwrite)

    if plates is None:
        first = models[0]
        plates = list_plates(
            data_root, first.channels, dataset_factory, **{**first.dataset_kwargs, **(dataset_kwargs or {})}
        )
    plates = sorted(set(plates))
    todo_all = _shard(plates, shard)
    todo = [p for p in todo_all if overwrite or not os.path.isfile(part_path(out_dir, p))]
    if len(todo) < len(todo_all):
        logger.info("%d of %d plates already have a part; skipped", len(todo_all) - len(todo), len(todo_all))
    meta = well_metadata_for(todo, metadata) if todo else None
    for plate in tqdm(todo, desc="plates", unit="plate", disable=not progress or len(todo) < 2):
        wells, stats = embed_plate(
            models,
            data_root,
            plate,
            site_merge=site_merge,
            site_order=site_order,
            sites_per_well=sites_per_well,
            missing_sites=missing_sites,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            precision=precision,
            dataset_factory=dataset_factory,
            dataset_kwargs=dataset_kwargs,
            progress=progress,
        )
        profile = attach_metadata(wells, meta[meta[PLATE] == plate])
        write_json(stats, os.path.join(out_dir, "parts", f"{plate}.stats.json"), overwrite=True)
        write_part(profile, out_dir, plate, overwrite=overwrite)
        logger.info(
            "plate %s: %d wells (%s)",
            plate,
            len(profile),
            "; ".join(f"{k}: {v['wells_with_missing_sites']} with missing sites" for k, v in stats.items()),
        )
    if shard is not None or not merge:
        return os.path.join(out_dir, "parts")
    return finalize_profiles(out_dir, plates, align_alpha, align_by, submission, overwrite)


# --------------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dinov2_cell.embed``."""
    p = argparse.ArgumentParser(
        prog="python -m dinov2_cell.embed",
        description="Well profiles from trained teacher checkpoints: per site concat(CLS, mean patch token), sites "
        "merged per well (4x4 -> 3x3 grid), fluorescent + brightfield concatenated; per-plate resumable parts, then "
        "profiles.parquet and the challenge submission.csv.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        metavar="[NAME=]PATH",
        help="training output dir or eval/<name>/teacher_checkpoint.pth; repeat for fluorescent and brightfield; "
        "NAME (default: the channel group) prefixes the feature columns",
    )
    p.add_argument("--fluo", default=None, metavar="PATH", help="fluorescent run/checkpoint (= --checkpoint fluo=PATH)")
    p.add_argument("--bf", default=None, metavar="PATH", help="brightfield run/checkpoint (= --checkpoint bf=PATH)")
    p.add_argument(
        "--channels",
        action="append",
        default=None,
        metavar="[NAME=]SPEC",
        help="channel spec of a checkpoint (fluo, bf, all or names); default from its config",
    )
    p.add_argument(
        "--data-root", help="folder with LoadData CSVs and/or Phenix image folders (not needed with --merge-only)"
    )
    p.add_argument("--out", required=True, help="output folder (parts/, profiles.parquet, submission.csv)")
    p.add_argument(
        "--plates", nargs="+", default=None, help="barcodes, space- or comma-separated (default: all under --data-root)"
    )
    p.add_argument(
        "--shard", default=None, metavar="I/N", help="only plates I, I+N, ... (SLURM arrays); implies --no-merge"
    )
    p.add_argument("--site-merge", choices=merge_mod.MERGE_MODES, default="concat")
    p.add_argument(
        "--site-order",
        choices=merge_mod.SITE_ORDERS,
        default="row-major",
        help="site number -> grid position (assumed; see dinov2_cell.profiles.merge)",
    )
    p.add_argument("--sites-per-well", default="auto", choices=["auto", "9", "16"])
    p.add_argument(
        "--missing-sites",
        choices=merge_mod.MISSING_POLICIES,
        default="mean",
        help="wells with missing sites: fill empty grid positions with the mean of present sites, or error",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side fed to the model (default: the run's crops.global_crops_size; 0 = native, cropped)",
    )
    p.add_argument(
        "--align-alpha",
        type=float,
        default=None,
        help="cross-plate alignment z <- a z + (1-a) mean over plates of the well position; OFF by default; "
        "USES PLATE-LAYOUT KNOWLEDGE",
    )
    p.add_argument("--align-by", default=None, help="comma-separated metadata columns grouping the alignment means")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader workers reading/resizing images (default: min(8, CPUs) on CUDA, 0 on CPU)",
    )
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32")
    p.add_argument("--metadata", default=None, help="per-well metadata CSV/Parquet (default: packaged CPJUMP1 files)")
    p.add_argument(
        "--dataset-opt",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="extra CPJUMP1Dataset option (dataset-string syntax, e.g. on_error=skip, normalize=plate); overrides "
        "the image-normalisation keys inherited from each run's train.dataset_path",
    )
    p.add_argument("--no-merge", action="store_true", help="write the per-plate parts only (SLURM array tasks)")
    p.add_argument("--merge-only", action="store_true", help="only merge existing parts (final SLURM step)")
    p.add_argument("--no-submission", action="store_true", help="do not write the submission CSV")
    p.add_argument("--overwrite", action="store_true", help="recompute existing parts and replace merged outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _named(values: Sequence[str] | None) -> tuple[list[str | None], list[str]]:
    names, rest = [], []
    for v in values or []:
        head, sep, tail = v.partition("=")
        if sep and head and "/" not in head and os.sep not in head:
            names.append(head)
            rest.append(tail)
        else:
            names.append(None)
            rest.append(v)
    return names, rest


def run(args: argparse.Namespace) -> str:
    """Run the CLI's work from parsed arguments.

    Args:
        args: output of :func:`build_parser`.

    Returns:
        The path :func:`embed_plates` returned.
    """
    given = list(args.checkpoint or [])
    given += [f"{name}={path}" for name, path in (("fluo", args.fluo), ("bf", args.bf)) if path]
    if not given and not args.merge_only:
        raise ValueError("give --checkpoint (or --fluo / --bf) unless --merge-only")
    names, paths = _named(given)
    if any(n is not None for n in names):
        if any(n is None for n in names):
            raise ValueError("--checkpoint: name all checkpoints (NAME=PATH) or none")
        checkpoints: object = dict(zip(names, paths))
    else:
        checkpoints = paths
    channels = None
    if args.channels:
        cnames, specs = _named(args.channels)
        if all(n is not None for n in cnames):
            channels = dict(zip(cnames, specs))
        elif all(n is None for n in cnames):
            channels = specs
        else:
            raise ValueError("--channels: name all (NAME=SPEC) or none")
    if not args.merge_only and not args.data_root:
        raise ValueError("--data-root is required unless --merge-only")
    sites = args.sites_per_well if args.sites_per_well == "auto" else int(args.sites_per_well)
    dataset_kwargs = parse_dataset_opts(args.dataset_opt)
    plates = [p.strip() for v in args.plates for p in v.split(",") if p.strip()] if args.plates else None
    return embed_plates(
        checkpoints,
        args.data_root,
        args.out,
        plates=plates,
        site_merge=args.site_merge,
        align_alpha=args.align_alpha,
        batch_size=args.batch_size,
        device=args.device,
        channels_per_checkpoint=channels,
        image_size=args.image_size,
        site_order=args.site_order,
        sites_per_well=sites,
        missing_sites=args.missing_sites,
        num_workers=_default_workers(args.num_workers, args.device),
        precision=args.precision,
        align_by=args.align_by.split(",") if args.align_by else None,
        metadata=args.metadata,
        shard=args.shard,
        merge=not args.no_merge,
        merge_only=args.merge_only,
        submission=not args.no_submission,
        overwrite=args.overwrite,
        dataset_kwargs=dataset_kwargs,
        progress=not args.no_progress,
    )


def _default_workers(requested: int | None, device: str | None) -> int:
    if requested is not None:
        return requested
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    # On a GPU, reading 1080 px TIFFs in the main process would starve it; on CPU the model is the bottleneck.
    return min(8, len(os.sched_getaffinity(0))) if cuda else 0


def parse_dataset_opts(opts: Sequence[str] | None) -> dict:
    """``["on_error=skip", ...]`` -> CPJUMP1Dataset keywords, converted as in a dataset string.

    Args:
        opts: ``KEY=VALUE`` strings.

    Returns:
        Keyword dict (empty when none).

    Raises:
        ValueError: malformed option or unknown key (named by the dataset registry).
    """
    if not opts:
        return {}
    bad = [o for o in opts if "=" not in o or ":" in o]
    if bad:
        raise ValueError(f"--dataset-opt must be KEY=VALUE without ':', got {bad}")
    from dinov2_cell.data.registry import parse_dataset_str

    parsed = parse_dataset_str("CPJUMP1:" + ":".join(opts))
    if parsed is None:
        raise ValueError("dataset CPJUMP1 is not registered")
    kwargs = dict(parsed[1])
    reserved = [k for k in ("root", "plates", "channels") if k in kwargs]
    if reserved:
        raise ValueError(f"--dataset-opt cannot set {reserved}: use --data-root, --plates, --channels")
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = run(args)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
