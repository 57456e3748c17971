"""How the local-aggregation meta-arch reads its configuration: absent sections, the KoLeo-only switch, its own KoLeo
module, the logged options, the device augmentation, and its error messages.

Written after a mutation-testing run of ``dinov2_cell/train/local_aggregation.py`` (docs/testing.md) showed these
branches unchecked (the packaged defaults always define every key, so the fallbacks never ran in the other tests).
"""

import logging

import pytest
import torch
from omegaconf import OmegaConf

from helpers import make_batch, tiny_cfg
from dinov2.loss import KoLeoLoss

from dinov2_cell.augment.device import DeviceCellAugmentation
from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture()
def plugin_log():
    handler = _Records()
    log = logging.getLogger("dinov2_cell")
    old = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    yield handler.messages
    log.removeHandler(handler)
    log.setLevel(old)


def _without(cfg, *keys):
    """The config with `keys` (dotted) deleted, as an older or hand-written config would lack them."""
    OmegaConf.set_struct(cfg, False)
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        del node[leaf]
    return cfg


def test_a_config_without_the_section_is_upstream(plugin_log):
    model = LocalAggregationMetaArch(_without(tiny_cfg(), "local_aggregation"))
    assert model.local_aggregation_loss_weight == 0.0 and model.local_aggregation_koleo_loss_weight == 0.0
    assert not model.do_local_aggregation and not model.do_local_aggregation_dino
    assert not any("LOCAL AGGREGATION" in m for m in plugin_log)


def test_keep_koleo_defaults_to_false_and_needs_a_koleo_weight():
    cfg = _without(
        tiny_cfg("local_aggregation.loss_weight=0", "local_aggregation.koleo_loss_weight=0.5"),
        "local_aggregation.keep_koleo_when_off",
    )
    assert not LocalAggregationMetaArch(cfg).do_local_aggregation
    cfg = tiny_cfg(
        "local_aggregation.loss_weight=0",
        "local_aggregation.koleo_loss_weight=0",
        "local_aggregation.keep_koleo_when_off=true",
    )
    assert not LocalAggregationMetaArch(cfg).do_local_aggregation  # nothing left to compute on v2


def test_own_koleo_module_when_upstream_has_none(plugin_log):
    # upstream builds `koleo_loss` only for its own KoLeo term; the v2 KoLeo term needs one anyway
    cfg = tiny_cfg(
        "dino.koleo_loss_weight=0", "local_aggregation.loss_weight=0.7", "local_aggregation.koleo_loss_weight=0.3"
    )
    model = LocalAggregationMetaArch(cfg)
    assert isinstance(model.koleo_loss, KoLeoLoss)
    assert "OPTIONS -- LOCAL AGGREGATION -- loss_weight: 0.7, koleo_loss_weight: 0.3" in plugin_log
    assert model.last_local_aggregation_targets is None and model.device_augmentation is None
    batch = make_batch(cfg, batch_size=4, other_site=True, seed=2)
    losses = model.forward_backward(batch, teacher_temp=0.07)
    assert "koleo_loss" not in losses and torch.isfinite(losses["local_aggregation_koleo_loss"])
    assert model._defer_backprop is False  # later backprop_loss calls run again


def test_centre_momentum_is_logged(plugin_log):
    # (a model without the DINO head, where the key is ignored, cannot be built: upstream's SSLMetaArch needs it)
    LocalAggregationMetaArch(tiny_cfg("dino.center_momentum=0.25"))
    assert "OPTIONS -- DINO -- center_momentum: 0.25" in plugin_log


def test_device_augmentation_is_built_for_model_mode():
    model = LocalAggregationMetaArch(tiny_cfg("augmentations.device=model"))
    assert isinstance(model.device_augmentation, DeviceCellAugmentation)


def test_error_messages_are_exact():
    with pytest.raises(ValueError) as err:
        LocalAggregationMetaArch(tiny_cfg("dino.loss_weight=0", "ibot.loss_weight=0"))
    assert str(err.value) == "local_aggregation.loss_weight > 0 needs the DINO head: set dino.loss_weight > 0"
    cfg = tiny_cfg()
    with pytest.raises(KeyError) as err:
        LocalAggregationMetaArch(cfg).forward_backward(make_batch(cfg, other_site=False), teacher_temp=0.07)
    assert err.value.args[0] == (
        "local aggregation is on but the batch has no 'collated_other_site_crops': the dataset must hand out other "
        "sites (CPJUMP1 dataset + cell augmentation) or set local_aggregation.loss_weight=0"
    )
