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

import logging
from typing import Dict, Optional, Sequence

import torch

from dinov2_cell.augment.device import SITE_HW_SUFFIX, check_device_mode, cheap_resize
from dinov2_cell.data.intensity import RawSite
from dinov2_cell.augment.transforms import (
    ChannelJitter,
    ElasticDeform,
    MicroscopeNoise,
    RandomFlip,
    RandomResizedCrop,
    RandomRotate,
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
        device: "loader" (every augmentation here, per sample) or "model" (only the crops here; the per-pixel
            augmentations run batched on the training device, see `dinov2_cell.augment.device`).

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
        brightness: float = 0.4,
        contrast: float = 0.4,
        jitter_p: float = 0.8,
        noise_p: float = 0.5,
        noise_shot: float = 0.1,
        noise_dark: float = 0.05,
        noise_read: float = 0.01,
        elastic_p: float = 0.5,
        elastic_alpha: float = 1200.0,
        elastic_sigma: float = 40.0,
        elastic_frame: str = "site",
        rotation: str = "right_angles",
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        device: str = "loader",
    ):
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
        self.flip = RandomFlip(hflip_p, vflip_p)
        self.rotate = RandomRotate(rotation)
        self.elastic = ElasticDeform(elastic_alpha, elastic_sigma, elastic_p, elastic_frame)
        self.jitter = ChannelJitter(brightness, contrast, jitter_p)
        self.noise = MicroscopeNoise(noise_shot, noise_dark, noise_read, noise_p)
        self.device = check_device_mode(device)

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
            brightness,
            contrast,
            jitter_p,
            noise_shot,
            noise_dark,
            noise_read,
            noise_p,
            elastic_alpha,
            elastic_sigma,
            elastic_p,
            elastic_frame,
            rotation,
            hflip_p,
            vflip_p,
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
