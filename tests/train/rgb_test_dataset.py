"""A small registered RGB dataset (PIL images) so upstream's own `do_train` + `DataAugmentationDINO` can run."""

import numpy as np
from PIL import Image

from dinov2_cell.data.registry import register_dataset


@register_dataset("TestRGB")
class TestRGB:
    """Random-texture PIL images; `n` samples of `size` px."""

    def __init__(self, *, transform=None, target_transform=None, n: int = 32, size: int = 64):
        self.transform, self.target_transform, self.n, self.size = transform, target_transform, n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        img = Image.fromarray((rng.random((self.size, self.size, 3)) * 255).astype(np.uint8))
        img = self.transform(img) if self.transform else img
        return img, (self.target_transform(i) if self.target_transform else i)
