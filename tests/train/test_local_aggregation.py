"""The local-aggregation meta-arch: parity with upstream when off, exact extra terms when on."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from helpers import make_batch, tiny_cfg
from dinov2.train.ssl_meta_arch import SSLMetaArch

from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch


def _unwrapped(cls, cfg):
    """The meta-arch without FSDP (single process), teacher synchronised with the student as upstream does."""
    torch.manual_seed(0)
    model = cls(cfg)
    for k in model.student.keys():
        model.teacher[k].load_state_dict(model.student[k].state_dict())
    model.train()
    return model


def _grads(model):
    return {n: p.grad.clone() for n, p in model.student.named_parameters() if p.grad is not None}


def test_off_equals_upstream_losses_and_gradients():
    cfg = tiny_cfg("local_aggregation.loss_weight=0")
    ours, theirs = _unwrapped(LocalAggregationMetaArch, cfg), _unwrapped(SSLMetaArch, cfg)
    assert not ours.do_local_aggregation
    batch = make_batch(cfg, batch_size=4, other_site=True, seed=3)
    torch.manual_seed(1)
    a = ours.forward_backward(batch, teacher_temp=0.07)
    torch.manual_seed(1)
    b = theirs.forward_backward(batch, teacher_temp=0.07)
    assert a.keys() == b.keys()
    for k in a:
        assert float(a[k]) == float(b[k]), k
    ga, gb = _grads(ours), _grads(theirs)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)


def test_on_adds_exact_terms_and_keeps_upstream_ones():
    # layerscale 1.0: at 1e-5 the blocks barely touch the CLS token, so all images would share one CLS token
    cfg = tiny_cfg(
        "local_aggregation.loss_weight=0.7", "local_aggregation.koleo_loss_weight=0.3", "student.layerscale=1.0"
    )
    model = _unwrapped(LocalAggregationMetaArch, cfg)
    upstream = _unwrapped(SSLMetaArch, cfg)
    batch = make_batch(cfg, batch_size=5, other_site=True, seed=4)
    temp = 0.07

    with torch.no_grad():  # hand computation, straight from the modules and the paper's formula
        t_cls = model.teacher.backbone(batch["collated_global_crops"], is_training=True)["x_norm_clstoken"]
        t_prob = F.softmax(model.teacher.dino_head(t_cls) / temp, dim=-1)  # centre is still 0 at the first step
        s_cls = model.student.backbone(batch["collated_other_site_crops"], is_training=True)["x_norm_clstoken"]
        s_logp = F.log_softmax(model.student.dino_head(s_cls) / 0.1, dim=-1)  # upstream student_temp 0.1
        views = t_prob.chunk(2)
        expected = sum(-(v * s_logp).sum(-1).mean() for v in views) / 2
        x = F.normalize(s_cls, dim=-1).numpy().astype(np.float64)
        _, nn = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
        dist = np.linalg.norm(x - x[nn[:, 1]] + 1e-8, axis=1)  # KoLeo's PairwiseDistance adds eps to the difference
        expected_koleo = 0.3 * float(-np.log(dist + 1e-8).mean())

    torch.manual_seed(1)
    losses = model.forward_backward(batch, teacher_temp=temp)
    torch.manual_seed(1)
    reference = upstream.forward_backward(batch, teacher_temp=temp)
    assert float(losses["local_aggregation_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(losses["local_aggregation_koleo_loss"]) == pytest.approx(expected_koleo, rel=1e-4)
    for k, v in reference.items():  # upstream's terms are unchanged by the extra ones
        assert float(losses[k]) == pytest.approx(float(v), rel=1e-6), k
    assert all(math.isfinite(float(v)) for v in losses.values())


def test_on_gradient_is_upstream_gradient_plus_extra_term():
    """One backward over the sum: gradients = upstream's + d(weighted extra terms)."""
    cfg = tiny_cfg("local_aggregation.loss_weight=1.0", "local_aggregation.koleo_loss_weight=0")
    model = _unwrapped(LocalAggregationMetaArch, cfg)
    upstream = _unwrapped(SSLMetaArch, cfg)
    batch = make_batch(cfg, batch_size=4, other_site=True, seed=5)
    torch.manual_seed(1)
    model.forward_backward(batch, teacher_temp=0.07)
    torch.manual_seed(1)
    upstream.forward_backward(batch, teacher_temp=0.07)
    g_all, g_up = _grads(model), _grads(upstream)
    # extra term alone, on a fresh copy, with the teacher probabilities upstream would give at step 1
    extra = _unwrapped(LocalAggregationMetaArch, cfg)
    with torch.no_grad():
        t_cls = extra.teacher.backbone(batch["collated_global_crops"], is_training=True)["x_norm_clstoken"]
        probs = F.softmax(extra.teacher.dino_head(t_cls) / 0.07, dim=-1)
        probs = torch.cat(probs.chunk(2)[::-1])  # upstream's order; the term averages both views anyway
    dino_term, _ = extra.local_aggregation_losses(batch["collated_other_site_crops"], probs)
    dino_term.backward()
    g_extra = _grads(extra)
    for name, g in g_all.items():
        ref = g_up.get(name, torch.zeros_like(g)) + g_extra.get(name, torch.zeros_like(g))
        assert torch.allclose(g, ref, atol=1e-5, rtol=1e-4), name


def test_keep_koleo_when_off_adds_only_the_second_view_koleo():
    """The ablation arm: cross-site DINO term removed, v2 KoLeo kept; loss and gradient = upstream + weighted KoLeo."""
    cfg = tiny_cfg(
        "local_aggregation.loss_weight=0",
        "local_aggregation.koleo_loss_weight=0.4",
        "local_aggregation.keep_koleo_when_off=true",
        "student.layerscale=1.0",
    )
    model = _unwrapped(LocalAggregationMetaArch, cfg)
    upstream = _unwrapped(SSLMetaArch, cfg)
    assert model.do_local_aggregation and not model.do_local_aggregation_dino
    batch = make_batch(cfg, batch_size=5, other_site=True, seed=6)
    with torch.no_grad():
        s_cls = model.student.backbone(batch["collated_other_site_crops"], is_training=True)["x_norm_clstoken"]
        x = F.normalize(s_cls, dim=-1).numpy().astype(np.float64)
        _, nn = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
        expected_koleo = 0.4 * float(-np.log(np.linalg.norm(x - x[nn[:, 1]] + 1e-8, axis=1) + 1e-8).mean())
    torch.manual_seed(1)
    losses = model.forward_backward(batch, teacher_temp=0.07)
    torch.manual_seed(1)
    reference = upstream.forward_backward(batch, teacher_temp=0.07)
    assert "local_aggregation_loss" not in losses
    assert float(losses["local_aggregation_koleo_loss"]) == pytest.approx(expected_koleo, rel=1e-4)
    for k, v in reference.items():
        assert float(losses[k]) == pytest.approx(float(v), rel=1e-6), k
    # gradient: upstream's plus that of the weighted KoLeo term alone, on a fresh copy
    extra = _unwrapped(LocalAggregationMetaArch, cfg)
    dino_term, koleo_term = extra.local_aggregation_losses(batch["collated_other_site_crops"], None)
    assert dino_term is None
    koleo_term.backward()
    g_all, g_up, g_extra = _grads(model), _grads(upstream), _grads(extra)
    assert g_extra  # the KoLeo term reaches the student backbone
    for name, g in g_all.items():
        ref = g_up.get(name, torch.zeros_like(g)) + g_extra.get(name, torch.zeros_like(g))
        assert torch.allclose(g, ref, atol=1e-5, rtol=1e-4), name


def test_off_without_keep_koleo_needs_no_other_site():
    model = _unwrapped(LocalAggregationMetaArch, tiny_cfg("local_aggregation.loss_weight=0"))
    assert not model.do_local_aggregation  # default keep_koleo_when_off false: upstream exactly (test above)


def test_missing_other_site_view_is_a_clear_error():
    model = _unwrapped(LocalAggregationMetaArch, tiny_cfg())
    with pytest.raises(KeyError, match="collated_other_site_crops"):
        model.forward_backward(make_batch(tiny_cfg(), other_site=False), teacher_temp=0.07)


def test_needs_the_dino_head():
    with pytest.raises(ValueError, match="dino.loss_weight"):
        LocalAggregationMetaArch(tiny_cfg("dino.loss_weight=0", "ibot.loss_weight=0"))


@pytest.mark.parametrize("momentum", [0.0, 0.25])
def test_center_momentum_sets_the_dino_centre_update(momentum):
    model = _unwrapped(LocalAggregationMetaArch, tiny_cfg(f"dino.center_momentum={momentum}"))
    assert model.dino_loss.center_momentum == momentum
    start = torch.randn_like(model.dino_loss.center)
    model.dino_loss.center.copy_(start)
    logits = torch.randn(6, start.shape[-1], generator=torch.Generator().manual_seed(0))
    model.dino_loss.update_center(logits)
    model.dino_loss.apply_center_update()
    # c <- m c + (1 - m) mean(batch), by hand
    expected = momentum * start + (1 - momentum) * logits.mean(dim=0, keepdim=True)
    assert torch.allclose(model.dino_loss.center, expected, atol=1e-6)


def test_center_momentum_default_is_upstreams():
    from dinov2.loss import DINOLoss

    from dinov2_cell.train.config import plugin_default_config

    default = plugin_default_config().dino.center_momentum  # the tiny configs override it
    model = LocalAggregationMetaArch(tiny_cfg(f"dino.center_momentum={default}"))
    assert model.dino_loss.center_momentum == DINOLoss(8).center_momentum == default


def test_center_momentum_of_one_is_refused():
    with pytest.raises(ValueError, match="dino.center_momentum"):
        LocalAggregationMetaArch(tiny_cfg("dino.center_momentum=1.0"))
