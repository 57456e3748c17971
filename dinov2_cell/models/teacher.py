"""Trained teachers for inference: load a run's EMA teacher backbone and decide what it must be fed.

:func:`load_teacher` reads ``eval/<name>/teacher_checkpoint.pth`` and the run's ``config.yaml``, and decides

* the **channel group** of the images: the run's ``train.dataset_path`` (its ``channels=`` key), else
  ``student.in_chans`` (5 -> fluo, 3 -> bf, 8 -> all), unless given explicitly; a group whose channel count differs
  from ``student.in_chans`` is refused;
* the **image-normalisation keys** of the training dataset string (:data:`INHERITED_DATASET_KEYS`), so that
  inference sees pixels scaled as in training;
* the **input size**: ``crops.global_crops_size`` by default (the scale of a full-image global crop), a multiple of
  the patch size, or 0 for native resolution.

It calls :func:`dinov2_cell.plugin.install` first: the backbone is built by upstream's ViT through the plugin's
multi-channel builder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

logger = logging.getLogger("dinov2_cell.models")

CHANNELS_BY_IN_CHANS = {5: "fluo", 3: "bf", 8: "all"}
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
        checkpoint_sha256: hash of the checkpoint file (identifies the weights in a run config).
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
        """JSON description (weights hash, channels, input size, inherited dataset keywords)."""
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


def sha256_file(path: str) -> str:
    """SHA-256 of a file, read in 4 MiB blocks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def training_dataset_kwargs(cfg) -> dict:
    """Keywords of the run's ``train.dataset_path`` (CPJUMP1 strings only); {} when absent or unparseable.

    Args:
        cfg: the run's config.

    Returns:
        The parsed dataset keywords.
    """
    try:
        # Resolving may fail: the paper configs hold `root=${oc.env:CPJUMP1_ROOT}`, unset at inference time. Only
        # channels and normalisation are wanted, so an unresolvable root is replaced by a placeholder.
        raw = OmegaConf.to_container(cfg.train, resolve=False).get("dataset_path", "") if "train" in cfg else ""
        dataset_str = re.sub(r"\$\{[^}]*\}", "unresolved", str(raw or ""))
    except Exception as e:  # noqa: BLE001  (a malformed config section only loses the inherited keys)
        logger.warning("cannot read train.dataset_path (%s); channels from student.in_chans", e)
        return {}
    if not dataset_str.startswith("CPJUMP1"):
        return {}
    try:
        from dinov2_cell.data.registry import parse_dataset_str

        parsed = parse_dataset_str(dataset_str)
    except Exception as e:  # noqa: BLE001  (a stale dataset string falls back to in_chans)
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
    """Load a teacher backbone and decide its channels and input size (see module docstring).

    Args:
        path: run folder or ``eval/<name>/teacher_checkpoint.pth``.
        name: feature prefix; default the channel group (``fluo``/``bf``/``all``) or ``model``.
        channels: channel spec; default from the run's dataset string, else from ``student.in_chans``.
        image_size: side fed to the model; default ``crops.global_crops_size``; 0 = native resolution, cropped.
        device: torch device.

    Returns:
        A :class:`TeacherModel`.

    Raises:
        FileNotFoundError: no checkpoint or config under ``path``.
        ValueError: channel count differs from ``student.in_chans``, or ``image_size`` not a multiple of the patch.
    """
    from dinov2_cell import plugin
    from dinov2_cell.models.multichannel_vit import find_teacher_checkpoint, load_teacher_backbone

    plugin.install()
    ckpt_path, _ = find_teacher_checkpoint(path)
    backbone, cfg = load_teacher_backbone(path, device=device)
    in_chans = int(cfg.student.in_chans)
    patch = int(cfg.student.patch_size)
    train_kwargs = training_dataset_kwargs(cfg)
    if channels is None:
        channels = train_kwargs.get("channels") or CHANNELS_BY_IN_CHANS.get(in_chans)
        if channels is None:
            raise ValueError(f"{path}: student.in_chans={in_chans}; pass the channels of this checkpoint explicitly")
    from dinov2_cell.data.names import resolve_channels

    n = len(resolve_channels(channels))
    if n != in_chans:
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
        checkpoint_sha256=sha256_file(ckpt_path),
    )


@torch.no_grad()
def site_features(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``concat(CLS, mean patch token)`` of the backbone's normalised outputs (paper Sec. 3.3.1).

    Args:
        backbone: a DINOv2 ViT (``forward_features`` returning ``x_norm_clstoken`` / ``x_norm_patchtokens``).
        images: B x C x H x W.

    Returns:
        B x (2 * embed_dim) float32 tensor.
    """
    out = backbone.forward_features(images)
    return torch.cat([out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(dim=1)], dim=1).float()
