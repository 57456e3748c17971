"""Fixtures for the augmentation tests: small synthetic Cell Painting-like images and a fast pipeline."""

import functools

import pytest
import torch


def cell_like(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Mostly dark float32 image in [0, 1] with bright spots, C x H x W (deterministic per seed)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(channels, height, width, generator=g) ** 3).contiguous()


@pytest.fixture
def make_image():
    return cell_like


@pytest.fixture
def small_aug():
    """CellDataAugmentation factory at test sizes (global 56 px, local 28 px, 3 local crops), paper defaults."""
    from dinov2_cell.augment.cell_augmentation import CellDataAugmentation

    return functools.partial(
        CellDataAugmentation,
        (0.32, 1.0),
        (0.05, 0.32),
        3,
        global_crops_size=56,
        local_crops_size=28,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield
