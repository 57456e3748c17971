"""Well profiles from trained teachers (paper Sec. 3.3): the SSL featuriser and the options of an embedding run.

Per plate, for each teacher (fluorescent, brightfield, ...):

1. **Images** of the teacher's own channel group, read with the image-normalisation keys of its training dataset
   string (:mod:`dinov2_cell.models.teacher`); ``--dataset-opt`` keys override them.
2. **Size.** By default the whole site is resized (bilinear, antialiased, as the training crops are) to the run's
   ``crops.global_crops_size`` (518 in the paper), the scale of a full-image global crop. ``image_size=N`` resizes
   to N x N instead (N a multiple of the patch size); ``image_size=0`` keeps the native resolution and centre-crops
   each side down to a multiple of the patch size (1080 -> 1078 for patch 14).
3. **Site vector** ``concat(x_norm_clstoken, mean of x_norm_patchtokens)`` of the teacher backbone, batched, on CUDA
   when available.
4. **Well vector** (:mod:`dinov2_cell.profiles.merge`): ``concat`` (default: sites on their grid, 4x4 bilinearly
   resampled to 3x3 with corners kept, 9 site vectors concatenated) or ``mean``; wells with missing sites are kept
   (empty grid positions filled with the mean of the present sites) and counted in ``parts/<plate>.stats.json``.
   With ``--dataset-opt on_error=skip`` an unreadable site (truncated or deleted TIFF) is left out of its well and
   treated as a missing site: never replaced by another sample (the training dataset's substitution does not apply
   here), logged, and counted (``unreadable_sites``, with each site and its error) in the plate's stats.
5. **Channels.** The teachers' well vectors are joined on the well (fluorescent then brightfield, in the order
   given), feature names prefixed by the teacher name (``fluo_p4_0012``).

Everything around a plate (run config, resumable parts, metadata, merge, submission) is the profiling driver's
(:mod:`dinov2_cell.profiles.driver`). Cross-plate alignment is a post-merge variant (:func:`alignment_variants`).

:class:`EmbedOptions` is the single description of an embedding run's options: ``python -m dinov2_cell.embed``
builds its parser from the fields' metadata, the Python API takes the same object, and the fields marked
``record`` are saved in the run config. torch is imported only when a teacher runs.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from dinov2_cell.cli import comma_list
from dinov2_cell.columns import PLATE, SITE, WELL
from dinov2_cell.data.errors import SkipLog
from dinov2_cell.profiles import merge as merge_mod
from dinov2_cell.profiles.align import ALIGNMENT_LABEL, align_cross_plate
from dinov2_cell.profiles.driver import BaseFeaturiser, PlateSource, site_index
from dinov2_cell.profiles.sites import iterate_sites

logger = logging.getLogger("dinov2_cell.embed")

PRECISIONS = ("fp32", "bf16", "fp16")
SITE_FEATURES = "concat(x_norm_clstoken, mean(x_norm_patchtokens))"


def _opt(default=None, help: str = "", record: bool = False, **argparse_kwargs):
    """A dataclass field carrying its CLI flag description (``flag=False``: no generated flag)."""
    meta = {"help": help, "record": record, **argparse_kwargs}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class EmbedOptions:
    """Every option of an embedding run; one source for the CLI, the API and the run config.

    Fields marked ``flag=False`` have hand-written or shared flags (``--checkpoint``/``--fluo``/``--bf``,
    ``--channels``, the parent parsers' ``--data-root``, ``--out``, ``--plates``, ``--num-workers``, ``--overwrite``,
    ``--no-progress``); the others get ``--<name-with-dashes>``. ``record=True`` fields define the parts' content and
    go into ``run_config.json``.
    """

    checkpoints: dict | list = _opt(
        {}, "NAME -> run folder or teacher_checkpoint.pth (a list: named by group)", flag=False
    )
    channels: dict = _opt({}, "NAME -> channel spec (default: from each run's config)", flag=False)
    data_root: str | None = _opt(None, "dataset root", flag=False)
    out: str | None = _opt(None, "output folder", flag=False)
    plates: list | None = _opt(None, "barcodes (default: every plate under the root)", flag=False)
    shard: str | None = _opt(None, "only plates I, I+N, ... (SLURM arrays); implies --no-merge", metavar="I/N")
    site_merge: str = _opt(
        "concat", "sites -> well: grid concatenation (paper) or mean", True, choices=("concat", "mean")
    )
    site_order: str = _opt(
        "row-major",
        "site number -> grid position (assumed; see dinov2_cell.profiles.merge)",
        True,
        choices=merge_mod.SITE_ORDERS,
    )
    sites_per_well: str = _opt(
        "auto", "site layout: auto (per plate), 9 (3x3) or 16 (4x4)", True, choices=("auto", "9", "16")
    )
    missing_sites: str = _opt(
        "mean",
        "wells with missing sites: fill empty grid positions with the mean of present sites, or error",
        True,
        choices=merge_mod.MISSING_POLICIES,
    )
    image_size: int | None = _opt(
        None,
        "side fed to the model (default: the run's crops.global_crops_size; 0 = native, cropped)",
        type=int,
        metavar="N",
    )
    precision: str = _opt("fp32", "autocast precision of the forward pass", True, choices=PRECISIONS)
    align_alpha: float | None = _opt(
        None,
        "cross-plate alignment z <- a z + (1-a) mean over plates of the well position; OFF by default; USES "
        "PLATE-LAYOUT KNOWLEDGE; writes profiles_aligned_alpha<a>.parquet beside profiles.parquet",
        type=float,
        metavar="A",
    )
    align_by: list | None = _opt(
        None, "comma-separated metadata columns grouping the alignment means", metavar="COLS", type=comma_list
    )
    batch_size: int = _opt(64, "images per forward pass", type=int, metavar="N")
    device: str | None = _opt(None, "torch device (default: cuda if available, else cpu)", metavar="DEV")
    num_workers: int | None = _opt(None, "image-reading workers (default: min(8, CPUs) on CUDA, 0 on CPU)", flag=False)
    metadata: str | None = _opt(None, "per-well metadata CSV/Parquet (default: packaged CPJUMP1 files)", metavar="FILE")
    dataset_opt: list = _opt(
        [],
        "extra CPJUMP1Dataset option in dataset-string syntax; overrides the normalisation keys inherited from each "
        "run's train.dataset_path; repeatable. on_error=skip: an unreadable site (truncated/deleted TIFF) is left out "
        "of its well like a missing site, logged and counted in parts/<plate>.stats.json",
        action="append",
        metavar="KEY=VALUE",
    )
    merge: bool = _opt(True, "write the per-plate parts only (SLURM array tasks)", flag="--no-merge")
    merge_only: bool = _opt(
        False, "only merge existing parts (final SLURM step); no checkpoint needed", action="store_true"
    )
    submission: bool = _opt(True, "do not write the submission CSV", flag="--no-submission")
    overwrite: bool = _opt(False, "recompute existing parts and replace merged outputs", flag=False)
    progress: bool = _opt(True, "progress bars", flag=False)

    def __post_init__(self):
        if self.site_merge not in merge_mod.MERGE_MODES:
            raise ValueError(f"site_merge must be one of {merge_mod.MERGE_MODES}, got {self.site_merge!r}")
        if str(self.sites_per_well) not in ("auto", "9", "16"):
            raise ValueError(f"sites_per_well must be auto, 9 or 16, got {self.sites_per_well!r}")
        self.sites_per_well = str(self.sites_per_well)
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {list(PRECISIONS)}")
        if self.align_alpha is not None and not 0.0 <= float(self.align_alpha) <= 1.0:
            raise ValueError(f"--align-alpha must be in [0, 1], got {self.align_alpha}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")

    def recorded(self) -> dict:
        """The options that define the parts' content (saved in the run config)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("record")}


# --------------------------------------------------------------------------------------------------------- images


def prepare_image(img, image_size: int, patch_size: int):
    """Resize (or crop) one C x H x W image for the backbone (see module docstring, step 2).

    Args:
        img: float image in [0, 1] (tensor or array).
        image_size: output side (multiple of ``patch_size``), or 0 for native resolution centre-cropped to a multiple
            of ``patch_size``.
        patch_size: the ViT patch size.

    Returns:
        C x S x S (or C x H' x W' for ``image_size=0``) float32 tensor.
    """
    import torch
    import torch.nn.functional as F

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


def autocast_dtype(precision: str):
    """The autocast dtype of a precision name (``None`` for fp32: no autocast).

    Args:
        precision: ``fp32``, ``bf16`` or ``fp16``.

    Returns:
        A torch dtype or ``None``.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def embed_dataset(
    model,
    dataset,
    batch_size: int = 64,
    device="cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    desc: str = "sites",
    progress: bool = True,
    skipped: list | None = None,
) -> np.ndarray:
    """Site vectors of every image of ``dataset``.

    Args:
        model: a :class:`dinov2_cell.models.teacher.TeacherModel`.
        dataset: CPJUMP1-like dataset (``len``, ``get_image``).
        batch_size: images per forward pass.
        device: torch device.
        num_workers: DataLoader workers reading and resizing images.
        precision: ``fp32`` (default), ``bf16`` or ``fp16`` autocast.
        desc: progress bar label.
        progress: show a progress bar.
        skipped: ``None``: an unreadable site raises. A list: unreadable sites get no row, and ``(dataset index,
            message)`` is appended to it for each (see :func:`dinov2_cell.profiles.sites.iterate_sites`).

    Returns:
        (len(dataset) - len(skipped), 2 * embed_dim) float32 array, rows in dataset order.
    """
    import torch

    from dinov2_cell.models.teacher import site_features

    dtype = autocast_dtype(precision)
    device = torch.device(device)
    resize = functools.partial(prepare_image, image_size=model.image_size, patch_size=model.patch_size)
    out = []
    batches = iterate_sites(dataset, resize, batch_size, num_workers, device.type == "cuda", desc, progress, skipped)
    for batch in batches:
        if batch.shape[1] != model.in_chans:
            raise ValueError(
                f"{desc}: images have {batch.shape[1]} channels, model {model.name} expects {model.in_chans}"
            )
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(site_features(model.backbone, batch).cpu())
    if not out:
        return np.empty((0, 2 * model.embed_dim), dtype=np.float32)
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------------------- featuriser


def default_device(device: str | None = None) -> str:
    """The device to run on: ``device``, else CUDA when available, else CPU.

    Args:
        device: requested device or ``None``.

    Returns:
        A torch device string.
    """
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers(requested: int | None, device: str) -> int:
    """Image-reading workers: the request, else ``min(8, CPUs)`` on CUDA and 0 on CPU.

    Args:
        requested: ``--num-workers`` or ``None``.
        device: the device the model runs on.

    Returns:
        The worker count.
    """
    if requested is not None:
        return requested
    # On a GPU, reading 1080 px TIFFs in the main process would starve it; on CPU the model is the bottleneck.
    return min(8, len(os.sched_getaffinity(0))) if str(device).startswith("cuda") else 0


class SSLFeaturiser(BaseFeaturiser):
    """Teacher embeddings of every site, merged per well, teachers joined on the well.

    Args:
        models: loaded teachers (unique names).
        options: the run's options (merging, precision, batch size, device, workers, progress).
    """

    name = "ssl"

    def __init__(self, models: Sequence, options: EmbedOptions):
        names = [m.name for m in models]
        if not models:
            raise ValueError("no checkpoint given")
        if len(set(names)) != len(names):
            raise ValueError(f"checkpoint names must be unique, got {names}")
        self.models = list(models)
        self.options = options
        self.device = default_device(options.device)
        self.num_workers = default_workers(options.num_workers, self.device)

    def describe(self) -> dict:
        """Teachers (weights hash, channels, size) and the recorded options."""
        return {
            "models": {m.name: m.describe() for m in self.models},
            "site_features": SITE_FEATURES,
            **self.options.recorded(),
        }

    def open_plate(self, source: PlateSource, plate: str) -> dict:
        """One dataset per teacher: its channel group, its inherited normalisation overridden by the source's keys.

        Args:
            source: the data source (its keywords are the user's ``--dataset-opt``).
            plate: barcode.

        Returns:
            ``{teacher name: dataset}``.
        """
        return {
            m.name: PlateSource(
                source.data_root, m.channels, {**m.dataset_kwargs, **source.dataset_kwargs}, source.factory
            ).open([plate])
            for m in self.models
        }

    def featurise_plate(self, plate: str, dataset: Mapping) -> pd.DataFrame:
        """Well vectors of one plate for every teacher, joined on (plate, well).

        Args:
            plate: barcode.
            dataset: ``{teacher name: dataset}`` from :meth:`open_plate`.

        Returns:
            Metadata_Plate, Metadata_Well and the features; ``attrs["stats"]`` holds the site statistics per teacher.
        """
        o = self.options
        sites = o.sites_per_well if o.sites_per_well == "auto" else int(o.sites_per_well)
        table, stats = None, {}
        for m in self.models:
            ds = dataset[m.name]
            index = site_index(ds)
            if len(index) == 0:
                raise ValueError(f"plate {plate}: no site found for channels {m.channels!r}")
            desc = f"{plate} {m.name}"
            # on_error=skip: an unreadable site is left out of its well (a missing site), never replaced.
            unreadable = [] if getattr(ds, "on_error", "raise") == "skip" else None
            feats = embed_dataset(
                m, ds, o.batch_size, self.device, self.num_workers, o.precision, desc, o.progress, unreadable
            )
            index, lost = _drop_unreadable(index, unreadable or [], desc)
            wells, st = merge_mod.merge_sites(
                index,
                feats,
                mode=o.site_merge,
                order=o.site_order,
                sites_per_well=sites,
                missing=o.missing_sites,
                prefix=f"{m.name}_",
            )
            st.update(lost)
            stats[m.name] = st
            if table is None:
                table = wells
                continue
            before = len(table), len(wells)
            table = table.merge(wells, on=[PLATE, WELL], how="inner")
            if len(table) < max(before):
                logger.warning(
                    "plate %s: %d wells kept (wells with images in only some channel groups dropped: %s)",
                    plate,
                    len(table),
                    before,
                )
        table.attrs["stats"] = stats
        logger.info(
            "plate %s: %s",
            plate,
            "; ".join(
                f"{k}: {v['wells_with_missing_sites']} wells with missing sites, {v['unreadable_sites']} unreadable "
                "sites left out"
                for k, v in stats.items()
            ),
        )
        return table


def _drop_unreadable(index: pd.DataFrame, unreadable: list, desc: str) -> tuple[pd.DataFrame, dict]:
    """The site index without the unreadable sites, and their record for the plate's stats.

    Args:
        index: the dataset's site index (row i = dataset index i).
        unreadable: ``(dataset index, message)`` of the sites that could not be read.
        desc: plate and teacher, for messages.

    Returns:
        (index of the embedded sites, in order; ``{"unreadable_sites": n, "unreadable": [{well, site, error}],
        "wells_without_readable_site": [wells]}``).

    Raises:
        ValueError: no site of the plate could be read.
    """
    bad = sorted(int(i) for i, _ in unreadable)
    record = {"unreadable_sites": len(bad), "unreadable": [], "wells_without_readable_site": []}
    if not bad:
        return index, record
    if len(bad) == len(index):
        raise ValueError(f"{desc}: none of the {len(index)} sites could be read; first error: {unreadable[0][1]}")
    log = SkipLog(desc)
    for i, message in unreadable:
        log.record("unreadable sites (left out of their well, filled as a missing site)", message)
        record["unreadable"].append({WELL: str(index.at[i, WELL]), SITE: str(index.at[i, SITE]), "error": message})
    kept = index.drop(index=bad).reset_index(drop=True)
    record["wells_without_readable_site"] = sorted(set(index[WELL].astype(str)) - set(kept[WELL].astype(str)))
    log.log_summary()
    if record["wells_without_readable_site"]:
        logger.warning(
            "%s: no readable site in well(s) %s: left out of the profiles",
            desc,
            ",".join(record["wells_without_readable_site"]),
        )
    return kept, record


def alignment_variants(align_alpha: float | None, align_by: Sequence[str] | None = None) -> dict:
    """The post-merge cross-plate alignment as a driver variant (none when ``align_alpha`` is ``None``).

    Args:
        align_alpha: alignment weight in [0, 1] or ``None`` (off).
        align_by: metadata columns grouping the means (default: all plates).

    Returns:
        ``{"aligned_alpha<a>": transform}`` or ``{}``.
    """
    if align_alpha is None:
        return {}

    def transform(table: pd.DataFrame) -> pd.DataFrame:
        aligned = align_cross_plate(table, align_alpha, group_by=align_by)
        logger.warning("profiles_aligned_alpha%g is %s", align_alpha, ALIGNMENT_LABEL)
        return aligned

    return {f"aligned_alpha{float(align_alpha):g}": transform}
