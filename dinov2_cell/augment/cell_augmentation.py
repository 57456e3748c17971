"""`CellDataAugmentation`: the multi-crop pipeline that replaces upstream's `DataAugmentationDINO` for Cell Painting.

Per crop: random resized crop (upstream's scale ranges, antialiased bilinear) -> elastic deformation -> flips ->
rotation (right angles or any angle) -> channel-aware brightness/contrast jitter (clipped to [0, 1]) -> microscope
noise (clipped to [0, 1]). With `device="model"` only the crop is done here (cheap resize, see
`device.cheap_resize`) and `device.DeviceCellAugmentation` applies the rest, batched, on the training device. Every crop (2 global, N local and the other-site
view) goes through the same pipeline with independently drawn parameters; upstream's per-crop RGB extras (colour
jitter, grayscale, blur, solarize) are dropped. No ImageNet normalisation: outputs stay in [0, 1].
See `transforms.py` for the formulas and how the paper's ambiguities are read.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Dict, Optional, Sequence

import torch

from dinov2_cell.augment.device import SITE_HW_SUFFIX, cheap_resize
from dinov2_cell.augment.params import AugmentationParams, augmentation_params
from dinov2_cell.data.intensity import RawSite
from dinov2_cell.augment.transforms import (
    RandomResizedCrop,
    SiteField,
    apply_dihedral,
    check_image,
    dihedral_matrix,
    warp,
)

logger = logging.getLogger("dinov2")


class CellDataAugmentation:
    """Drop-in replacement for upstream `DataAugmentationDINO` on C x H x W float tensors in [0, 1].

    Args:
        global_crops_scale: (min, max) area fraction of the global crops (upstream `crops.global_crops_scale`).
        local_crops_scale: (min, max) area fraction of the local crops.
        local_crops_number: number of local crops.
        global_crops_size: side of the global crops in pixels.
        local_crops_size: side of the local crops in pixels.
        other_site_view: the dataset should pass `other_site=` (local aggregation on); sets `wants_other_site`.
        params: the augmentation parameters (`augmentations.*`: jitter, noise, elastic, rotation, flips and
            `device`), shared with the device side; default: the config defaults. `device` "loader" does every
            augmentation here, per sample; "model" only the crops here, the per-pixel augmentations batched on the
            training device (see `dinov2_cell.augment.device`).
        **overrides: `AugmentationParams` fields replacing those of `params` (e.g. `noise_p=0.0`,
            `**cfg.augmentations`); an unknown keyword is a TypeError naming it.

    Call: `aug(image)` or `aug(image, other_site=other_image)` with float C x H x W tensors in [0, 1]; returns
    upstream's dict (`global_crops`, `global_crops_teacher`, `local_crops`, `offsets`) plus `other_site_crops`
    (one global-size view of `other_site`, or an empty list). All crops C x S x S in [0, 1], float32 (float16 in
    `model` mode, where `global_crops_site_hw`, `local_crops_site_hw` and `other_site_crops_site_hw` also list each
    crop's box (height, width) in site pixels).
    """

    # The dataset may pass a RawSite (CPJUMP1Dataset.get_site) instead of a normalised float tensor.
    accepts_raw_site = True

    def __init__(
        self,
        global_crops_scale: Sequence[float],
        local_crops_scale: Sequence[float],
        local_crops_number: int,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        *,
        other_site_view: bool = True,
        params: Optional[AugmentationParams] = None,
        **overrides,
    ):
        p = (params if params is not None else AugmentationParams()).replace(**overrides)
        self.params = p
        self.global_crops_scale = tuple(float(s) for s in global_crops_scale)
        self.local_crops_scale = tuple(float(s) for s in local_crops_scale)
        self.local_crops_number = int(local_crops_number)
        self.global_crops_size = int(global_crops_size)
        self.local_crops_size = int(local_crops_size)
        self.wants_other_site = bool(other_site_view)
        if self.local_crops_number < 0:
            raise ValueError(f"crops.local_crops_number must be >= 0, got {local_crops_number}")

        self.global_crop = RandomResizedCrop(self.global_crops_size, self.global_crops_scale)
        self.local_crop = RandomResizedCrop(self.local_crops_size, self.local_crops_scale)
        self.flip, self.rotate, self.elastic, self.jitter, self.noise = p.transforms()
        self.device = p.device

        logger.info(
            "CellDataAugmentation: global %s px scale %s, %d local %s px scale %s, other-site view %s, jitter "
            "(b=%s, c=%s, p=%s), noise (shot=%s, dark=%s, read=%s, p=%s), elastic (alpha=%s, sigma=%s, p=%s, %s frame), "
            "rotation %s, flips (h=%s, v=%s), per-pixel augmentations on the %s",
            self.global_crops_size,
            self.global_crops_scale,
            self.local_crops_number,
            self.local_crops_size,
            self.local_crops_scale,
            self.wants_other_site,
            p.brightness,
            p.contrast,
            p.jitter_p,
            p.noise_shot,
            p.noise_dark,
            p.noise_read,
            p.noise_p,
            p.elastic_alpha,
            p.elastic_sigma,
            p.elastic_p,
            p.elastic_frame,
            p.rotation,
            p.hflip_p,
            p.vflip_p,
            "training device" if self.device == "model" else "loader",
        )

    def augment_crop(self, img: torch.Tensor, crop: RandomResizedCrop, name: str = "image") -> torch.Tensor:
        """One view: crop, then the cell augmentations, each with its own random draw.

        Order: crop -> elastic deformation -> flips -> rotation -> jitter -> noise. Elastic, flips and rotation are
        folded into one bilinear resampling when elastic or an arbitrary-angle rotation applies (a site-frame field
        is read at the rotated positions, i.e. deformation first exactly; a crop-frame field is drawn in the output
        frame, which has the same law since it is isotropic); otherwise flips and right-angle rotations are one exact
        copy.

        Args:
            img: validated C x H x W float32 image in [0, 1], or a RawSite (normalised crop by crop).
            crop: the global or local RandomResizedCrop.
            name: how error messages call the image ("image" or "other_site").

        Returns:
            A contiguous C x S x S tensor in [0, 1], float32; in `model` mode a float16 crop and the (height, width)
            of its box in site pixels (what the device needs for site-frame elastic fields).
        """
        if isinstance(img, RawSite):
            # Cut first, then convert only the crop's pixels (same values as normalise-then-crop).
            box = crop.sample_params(torch.empty(1).expand(img.shape))
            top, left, h, w = box
            img = img.crop(top, left, h, w)
            top = left = 0
        else:
            box = crop.sample_params(img)
            top, left, h, w = box
        if self.device == "model":
            x = cheap_resize(img[None, :, top : top + h, left : left + w], crop.size)[0].contiguous()
            # float16 is what upstream's collate casts the crops to anyway; casting here makes the worker's collate
            # stack half the bytes (the device augments in float32, after checking the crops' values).
            return x.half(), torch.tensor([h, w], dtype=torch.float32)
        x = crop.apply(img, (top, left, h, w))
        if x.untyped_storage().data_ptr() == img.untyped_storage().data_ptr():
            x = x.clone()  # the steps below write in place
        hflip, vflip = self.flip.sample_params()
        angle = self.rotate.sample_params()
        turns = 0
        if self.rotate.mode == "right_angles":
            turns, angle = int(angle // 90), 0.0
        dihedral = dihedral_matrix(hflip, vflip, turns)
        field = self.elastic.sample_params(x.shape[1], x.shape[2], box_hw=(h, w), any_angle=bool(angle))
        if field is None and not angle:
            x = apply_dihedral(x, dihedral)
            if x.untyped_storage().data_ptr() == img.untyped_storage().data_ptr():
                x = x.clone()
        elif isinstance(field, SiteField):
            x = warp(x, None, angle, dihedral, site_field=field)
        else:
            x = warp(x, field, angle, dihedral)
        x = self.jitter.apply(x, self.jitter.sample_params(x.shape[0]), inplace=True)
        x = self.noise.apply(x, self.noise.sample_params(), inplace=True)
        return x.contiguous()

    def __call__(self, image: torch.Tensor, other_site: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """Build the multi-crop views of one site (and one view of another site of the same well).

        Args:
            image: C x H x W float tensor in [0, 1], or a RawSite (the dataset's raw site and its normalisation
                bounds: only the crops' pixels are converted).
            other_site: optional C x H' x W' float tensor in [0, 1] or RawSite, another site of the same well.

        Returns:
            dict with `global_crops` (2 tensors), `global_crops_teacher` (the same 2), `local_crops`
            (local_crops_number tensors), `offsets` = () and `other_site_crops` (1 tensor, or [] without other_site).

        Raises:
            ValueError/TypeError: bad input (see `transforms.check_image`), or other_site with another channel count.
        """
        # In model mode the crops' intensities are checked on the device, batched (DeviceCellAugmentation). A RawSite
        # is in [0, 1] by construction (scaled and clipped).
        image = image if isinstance(image, RawSite) else check_image(image, "image", values=self.device == "loader")
        global_crops = [self.augment_crop(image, self.global_crop) for _ in range(2)]
        local_crops = [self.augment_crop(image, self.local_crop) for _ in range(self.local_crops_number)]
        other_site_crops = []
        if other_site is not None:
            if not isinstance(other_site, RawSite):
                other_site = check_image(other_site, "other_site", values=self.device == "loader")
            if other_site.shape[0] != image.shape[0]:
                raise ValueError(
                    f"other_site has {other_site.shape[0]} channels but image has {image.shape[0]}: both must be "
                    "sites of the same well, read with the same channels"
                )
            other_site_crops.append(self.augment_crop(other_site, self.global_crop, "other_site"))
        out = {}
        if self.device == "model":
            # Crop boxes in site pixels, collated beside the crops (SITE_HW_SUFFIX) for site-frame elastic fields.
            for key, views in (("global_crops", global_crops), ("local_crops", local_crops)):
                out[key + SITE_HW_SUFFIX] = [hw for _, hw in views]
            out["other_site_crops" + SITE_HW_SUFFIX] = [hw for _, hw in other_site_crops]
            global_crops, local_crops = [v for v, _ in global_crops], [v for v, _ in local_crops]
            other_site_crops = [v for v, _ in other_site_crops]
        out.update(
            global_crops=global_crops,
            global_crops_teacher=global_crops,
            local_crops=local_crops,
            offsets=(),
            other_site_crops=other_site_crops,
        )
        return out


def loader_augmentation(cfg, other_site_view: bool) -> Callable[..., CellDataAugmentation]:
    """The loader-side augmentation factory of a training run, for upstream's `DataAugmentationDINO` call.

    Args:
        cfg: the merged training config (its `augmentations` section, read by `augmentation_params` as the device
            side reads it).
        other_site_view: the dataset passes `other_site=` (local aggregation on).

    Returns:
        `f(global_crops_scale, local_crops_scale, local_crops_number, global_crops_size=, local_crops_size=)`.
    """
    return functools.partial(CellDataAugmentation, other_site_view=other_site_view, params=augmentation_params(cfg))
