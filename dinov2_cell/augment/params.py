"""`AugmentationParams`: the `augmentations.*` config keys as one object, read by both sides of the augmentation.

The loader side (`CellDataAugmentation`, in the DataLoader workers) and the device side (`DeviceCellAugmentation`,
batched on the training device with `augmentations.device: model`) apply the same per-pixel laws with the same
parameters. Both take an `AugmentationParams` (or its fields as keyword overrides) and build their transforms with
`AugmentationParams.transforms`, so a key is declared, defaulted and validated in one place and a config change
reaches both sides. The defaults are the plugin config's (`configs/cell_default_config.yaml`, where each key's
meaning is commented).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, NamedTuple

from dinov2_cell.augment.transforms import ChannelJitter, ElasticDeform, MicroscopeNoise, RandomFlip, RandomRotate

AUGMENT_DEVICES = ("loader", "model")


def check_device_mode(device: str) -> str:
    """Validate `augmentations.device`.

    Args:
        device: "loader" (every augmentation in the DataLoader workers) or "model" (per-pixel augmentations on the
            training device).

    Returns:
        The validated value.

    Raises:
        ValueError: any other value (the message names the key).
    """
    if device not in AUGMENT_DEVICES:
        raise ValueError(f"augmentations.device must be one of {AUGMENT_DEVICES}, got {device!r}")
    return device


class PixelTransforms(NamedTuple):
    """The per-pixel transforms both sides draw their parameters from (the device side batches their laws)."""

    flip: RandomFlip
    rotate: RandomRotate
    elastic: ElasticDeform
    jitter: ChannelJitter
    noise: MicroscopeNoise


@dataclass(frozen=True)
class AugmentationParams:
    """The `augmentations.*` keys (see `configs/cell_default_config.yaml`).

    Args:
        brightness: alpha_b, beta_c ~ U(max(0, 1 - alpha_b), 1 + alpha_b) per channel.
        contrast: alpha_c, gamma_c ~ U(max(0, 1 - alpha_c), 1 + alpha_c) per channel.
        jitter_p: probability of jittering a crop.
        noise_p: probability of microscope noise on a crop.
        noise_shot: sigma_shot (photons = I / sigma_shot).
        noise_dark: sigma_dark offset.
        noise_read: sigma_read, Gaussian read-noise std.
        elastic_p: probability of the elastic deformation.
        elastic_alpha: alpha, displacement scale in pixels (of the site or of the crop, see elastic_frame).
        elastic_sigma: sigma, smoothness of the displacement in pixels (of the site or of the crop).
        elastic_frame: "site" (the field is defined in site pixels and read at each crop's pixels, so every crop
            shows the specimen deformed alike) or "crop" (alpha and sigma in each crop's own pixels).
        rotation: "none", "right_angles" or "any".
        hflip_p: probability of a horizontal flip.
        vflip_p: probability of a vertical flip.
        device: "loader" (every augmentation in the workers) or "model" (the workers only crop; the per-pixel
            augmentations run batched on the training device). Only the loader side and the training setup read it.

    Raises:
        ValueError: a bad value (the message names the key), checked at construction.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    noise_p: float = 0.5
    noise_shot: float = 0.1
    noise_dark: float = 0.05
    noise_read: float = 0.01
    elastic_p: float = 0.5
    elastic_alpha: float = 1200.0
    elastic_sigma: float = 40.0
    elastic_frame: str = "site"
    rotation: str = "right_angles"
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    device: str = "loader"

    def __post_init__(self):
        check_device_mode(self.device)
        self.transforms()  # the transforms' own checks, so bad values fail where the config is read

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The `augmentations.*` key names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, augmentations_cfg: Mapping | None = None, **overrides) -> "AugmentationParams":
        """Read the `augmentations` config section (absent keys keep their defaults).

        Args:
            augmentations_cfg: mapping of `augmentations.*` keys (an OmegaConf node or a dict); None: defaults.
            **overrides: fields replacing the section's values.

        Returns:
            The parameters.

        Raises:
            ValueError: a key that is not an augmentation parameter (named, with the known keys), or a bad value.
        """
        values = {**dict(augmentations_cfg or {}), **overrides}
        unknown = sorted(k for k in values if k not in cls.keys())
        if unknown:
            raise ValueError(
                f"unknown augmentations key(s) {', '.join('augmentations.' + k for k in unknown)}; known: "
                f"{', '.join(cls.keys())}"
            )
        return cls(**values)

    def replace(self, **overrides) -> "AugmentationParams":
        """A copy with some fields replaced.

        Args:
            **overrides: field values.

        Returns:
            The new parameters (self when there is nothing to replace).

        Raises:
            TypeError: a keyword that is not a field (named).
        """
        return dataclasses.replace(self, **overrides) if overrides else self

    def transforms(self) -> PixelTransforms:
        """Fresh per-pixel transform objects with these parameters (each validates its own values).

        Returns:
            Flip, rotation, elastic deformation, channel jitter and microscope noise.
        """
        return PixelTransforms(
            flip=RandomFlip(self.hflip_p, self.vflip_p),
            rotate=RandomRotate(self.rotation),
            elastic=ElasticDeform(self.elastic_alpha, self.elastic_sigma, self.elastic_p, self.elastic_frame),
            jitter=ChannelJitter(self.brightness, self.contrast, self.jitter_p),
            noise=MicroscopeNoise(self.noise_shot, self.noise_dark, self.noise_read, self.noise_p),
        )


def augmentation_params(cfg) -> AugmentationParams:
    """The augmentation parameters of a training config (its `augmentations` section; defaults when absent).

    Args:
        cfg: the merged training config.

    Returns:
        The parameters both the loader side and the device side are built from.
    """
    return AugmentationParams.from_config(cfg.get("augmentations", None))
