"""One parameter object (`AugmentationParams`) for the loader-side and the device-side augmentation."""

import dataclasses
import os

import pytest
from omegaconf import OmegaConf

from dinov2_cell.augment.cell_augmentation import CellDataAugmentation
from dinov2_cell.augment.device import DeviceCellAugmentation, build_device_augmentation
from dinov2_cell.augment.params import AugmentationParams
from dinov2_cell.train.config import PLUGIN_DEFAULT_CONFIG, configs_dir


def _both_sides(cfg):
    """The two augmentations as a training run builds them: upstream's do_train call on the bound factory
    (`train.plug_cell_components`) and the model's `build_device_augmentation`."""
    from dinov2_cell.plugin import import_upstream, unbind_training_run
    from dinov2_cell.train.train import plug_cell_components

    upstream_train = import_upstream("dinov2.train.train")
    plug_cell_components(cfg, None, do_local_aggregation=True)
    try:
        loader = upstream_train.DataAugmentationDINO(
            cfg.crops.global_crops_scale,
            cfg.crops.local_crops_scale,
            cfg.crops.local_crops_number,
            global_crops_size=cfg.crops.global_crops_size,
            local_crops_size=cfg.crops.local_crops_size,
        )
    finally:
        unbind_training_run()
    return loader, build_device_augmentation(cfg)


def test_one_config_change_reaches_both_sides():
    from helpers import tiny_cfg

    cfg = tiny_cfg("augmentations.device=model", "augmentations.noise_p=0.123", "augmentations.elastic_alpha=77.0")
    loader, device = _both_sides(cfg)
    assert isinstance(loader, CellDataAugmentation) and isinstance(device, DeviceCellAugmentation)
    assert loader.params == device.params == AugmentationParams.from_config(cfg.augmentations)
    assert loader.noise.p == device.noise.p == 0.123
    assert loader.elastic.alpha == device.elastic.alpha == 77.0
    cfg.augmentations.jitter_p = 0.25
    cfg.augmentations.rotation = "any"
    loader, device = _both_sides(cfg)
    assert loader.jitter.p == device.jitter.p == 0.25
    assert loader.rotate.mode == device.rotate.mode == "any"
    assert loader.params == device.params


def test_config_keys_are_the_fields_and_unknown_keys_are_named():
    packaged = OmegaConf.load(os.path.join(configs_dir(), PLUGIN_DEFAULT_CONFIG)).augmentations
    assert set(packaged) == set(AugmentationParams.keys())
    # the dataclass defaults are the packaged config's values
    assert dataclasses.asdict(AugmentationParams.from_config(packaged)) == dataclasses.asdict(AugmentationParams())
    with pytest.raises(ValueError, match="augmentations.colour_jitter"):
        AugmentationParams.from_config({"colour_jitter": 0.4})
    with pytest.raises(ValueError, match="augmentations.colour_jitter"):
        build_device_augmentation(OmegaConf.create({"augmentations": {"colour_jitter": 0.4}}))


def test_params_object_and_keyword_overrides_agree():
    params = AugmentationParams(noise_p=0.2, rotation="none", hflip_p=0.1)
    by_object = DeviceCellAugmentation(params)
    by_keywords = DeviceCellAugmentation(noise_p=0.2, rotation="none", hflip_p=0.1)
    assert by_object.params == by_keywords.params == params
    # a keyword overrides the object's field; the object itself is not changed (frozen)
    assert DeviceCellAugmentation(params, noise_p=0.0).noise.p == 0.0 and params.noise_p == 0.2
    loader = CellDataAugmentation((0.32, 1.0), (0.05, 0.32), 1, 32, 16, params=params, vflip_p=0.3)
    assert loader.params == dataclasses.replace(params, vflip_p=0.3)
    assert (loader.flip.hflip_p, loader.flip.vflip_p, loader.rotate.mode) == (0.1, 0.3, "none")
    # a bad value fails once, with the same message, whichever side builds it
    messages = []
    for build in (
        lambda: DeviceCellAugmentation(noise_p=2.0),
        lambda: CellDataAugmentation((0.32, 1.0), (0.05, 0.32), 1, noise_p=2.0),
        lambda: AugmentationParams(noise_p=2.0),
    ):
        with pytest.raises(ValueError, match="noise_p") as e:
            build()
        messages.append(str(e.value))
    assert len(set(messages)) == 1
