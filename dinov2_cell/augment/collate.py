"""Collate for `CellDataAugmentation` outputs: upstream's `collate_data_and_cast` plus the other-site views."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from dinov2.data.collate import collate_data_and_cast

from dinov2_cell.augment.device import SITE_HW_SUFFIX


def collate_cell_data_and_cast(
    samples_list: Sequence[Tuple[dict, object]],
    mask_ratio_tuple: Tuple[float, float],
    mask_probability: float,
    dtype: torch.dtype,
    n_tokens: Optional[int] = None,
    mask_generator: Optional[Callable] = None,
) -> dict:
    """Upstream's collate (crops, iBOT masks) plus `collated_other_site_crops` when samples carry other-site views.

    Same signature as `dinov2.data.collate.collate_data_and_cast`, so `dinov2.train.train` can use it through the
    same `functools.partial`.

    Args:
        samples_list: (transform output dict, target) pairs, as the dataset returns them.
        mask_ratio_tuple: iBOT (min, max) masking ratio.
        mask_probability: fraction of global crops that are masked.
        dtype: dtype of the collated crops.
        n_tokens: patch tokens per global crop.
        mask_generator: upstream MaskingGenerator.

    Returns:
        Upstream's dict, plus `collated_other_site_crops` ((n * B) x C x G x G in `dtype`, view i of every sample
        before view i + 1, as upstream orders global crops; n = 1 gives B x C x G x G) when every sample has
        non-empty `other_site_crops`; and `collated_<key>_site_hw` ((views * B) x 2, float32) for each crop key
        whose samples carry `<key>_site_hw` (the crops' boxes in site pixels, `augmentations.device: model`).

    Raises:
        ValueError: some samples have other-site views and others do not, or their numbers differ.
    """
    out = collate_data_and_cast(
        samples_list,
        mask_ratio_tuple,
        mask_probability,
        dtype,
        n_tokens=n_tokens,
        mask_generator=mask_generator,
    )
    counts = {len(s[0].get("other_site_crops", ())) for s in samples_list}
    if len(counts) > 1:
        raise ValueError(
            f"collate_cell_data_and_cast: samples carry different numbers of other-site views {sorted(counts)}; "
            "every sample of a batch must come with another site of its well (or none must)"
        )
    n_other = counts.pop() if counts else 0
    if n_other:
        out["collated_other_site_crops"] = torch.stack(
            [s[0]["other_site_crops"][i] for i in range(n_other) for s in samples_list]
        ).to(dtype)
    # Crop boxes (model mode), in the collated crops' order: view i of every sample before view i + 1.
    for key in ("global_crops", "local_crops", "other_site_crops"):
        hw_key = key + SITE_HW_SUFFIX
        if samples_list and hw_key in samples_list[0][0] and len(samples_list[0][0][hw_key]):
            n_views = len(samples_list[0][0][hw_key])
            out["collated_" + hw_key] = torch.stack(
                [s[0][hw_key][i] for i in range(n_views) for s in samples_list]
            ).float()
    return out
