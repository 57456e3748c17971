"""Local-aggregation gradients against an independent reference: the paper's formula written out by hand.

The reference gradient is upstream's (`SSLMetaArch`, which has no v2 term) plus the autograd gradient of

    w1 * mean_v CE(teacher_v1_view_v, student(v2)) + w2 * KoLeo(student_cls(v2))

computed here from the student/teacher modules and METHOD.md's formula, without calling
`LocalAggregationMetaArch.local_aggregation_losses` (so a bug there is not reproduced by the reference). The weights
are not 1, so a weight dropped from the backward pass (but kept in the logged loss) shows up, and the KoLeo term
must reach the backbone, so a detached KoLeo term shows up too.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import make_batch, tiny_cfg
from dinov2.train.ssl_meta_arch import SSLMetaArch

from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch

STUDENT_TEMP = 0.1  # upstream DINOLoss default
TEACHER_TEMP = 0.07


def _fresh(cls, cfg):
    """The meta-arch without FSDP, teacher = student (as upstream starts), same initial weights for every class."""
    torch.manual_seed(0)
    model = cls(cfg)
    for k in model.student:
        model.teacher[k].load_state_dict(model.student[k].state_dict())
    model.train()
    return model


def _grads(model):
    return {n: p.grad.clone() for n, p in model.student.named_parameters() if p.grad is not None}


def _hand_koleo(cls_tokens):
    """KoLeo (Sablayrolles et al. 2019): -mean_i log(min_{j != i} ||x_i - x_j||) on L2-normalised vectors.

    The nearest neighbour is chosen without gradient; the 1e-8 terms are those of upstream's `KoLeoLoss`
    (F.normalize eps, PairwiseDistance eps added to the difference, log eps).
    """
    x = F.normalize(cls_tokens, p=2, dim=-1, eps=1e-8)
    with torch.no_grad():
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        nn = d.argmin(dim=1)
    dist = (x - x[nn] + 1e-8).norm(dim=-1)
    return -torch.log(dist + 1e-8).mean()


def _hand_extra_loss(model, batch, w_dino, w_koleo):
    """w1 * DINO(f_s(v2), f_t(v1)) averaged over the two teacher crops + w2 * KoLeo(f_s(v2)), with autograd."""
    with torch.no_grad():
        t_cls = model.teacher.backbone(batch["collated_global_crops"], is_training=True)["x_norm_clstoken"]
        # the DINO centre is 0 before the first update, so the teacher target is a plain sharpened softmax
        t_prob = F.softmax(model.teacher.dino_head(t_cls) / TEACHER_TEMP, dim=-1)
    s_cls = model.student.backbone(batch["collated_other_site_crops"], is_training=True)["x_norm_clstoken"]
    s_logp = F.log_softmax(model.student.dino_head(s_cls) / STUDENT_TEMP, dim=-1)
    views = t_prob.chunk(2)
    dino = sum(-(v * s_logp).sum(-1).mean() for v in views) / len(views)
    total = w_dino * dino
    if w_koleo:
        total = total + w_koleo * _hand_koleo(s_cls)
    return total, dino


@pytest.mark.parametrize("w_dino,w_koleo", [(0.3, 0.6), (2.5, 0.0)])
def test_gradient_with_non_unit_weights_matches_hand_reference(w_dino, w_koleo):
    overrides = [f"local_aggregation.loss_weight={w_dino}", f"local_aggregation.koleo_loss_weight={w_koleo}"]
    # layerscale 1: at upstream's 1e-5 every image has nearly the same CLS token (KoLeo gradients ~0)
    cfg = tiny_cfg(*overrides, "student.layerscale=1.0")
    model = _fresh(LocalAggregationMetaArch, cfg)
    upstream = _fresh(SSLMetaArch, cfg)
    batch = make_batch(cfg, batch_size=5, other_site=True, seed=11)

    torch.manual_seed(1)
    losses = model.forward_backward(batch, teacher_temp=TEACHER_TEMP)
    torch.manual_seed(1)
    upstream.forward_backward(batch, teacher_temp=TEACHER_TEMP)

    reference = _fresh(LocalAggregationMetaArch, cfg)
    extra, dino = _hand_extra_loss(reference, batch, w_dino, w_koleo)
    extra.backward()

    # the logged term is the unweighted DINO cross-entropy (upstream's convention for its own terms)
    assert float(losses["local_aggregation_loss"]) == pytest.approx(float(dino), rel=1e-5)
    g_all, g_up, g_extra = _grads(model), _grads(upstream), _grads(reference)
    assert g_all.keys() >= g_extra.keys()
    n_checked = 0
    for name, g in g_all.items():
        ref = g_up.get(name, torch.zeros_like(g)) + g_extra.get(name, torch.zeros_like(g))
        torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-4, msg=name)
        n_checked += 1
    assert n_checked > 10

    # the extra term moves the backbone by a visible amount: otherwise the comparison above could not tell a
    # dropped weight or a detached KoLeo term from the right code
    backbone_extra = torch.cat([g.flatten() for n, g in g_extra.items() if n.startswith("backbone.")])
    backbone_up = torch.cat([g_up[n].flatten() for n in g_extra if n.startswith("backbone.")])
    assert float(backbone_extra.norm()) > 0.05 * float(backbone_up.norm())


def test_koleo_term_alone_reaches_the_backbone_with_its_weight():
    """KoLeo-only arm (cross-site DINO term off): gradient = upstream's + w2 * dKoLeo(f_s(v2)) by hand."""
    w_koleo = 0.45
    cfg = tiny_cfg(
        "local_aggregation.loss_weight=0",
        f"local_aggregation.koleo_loss_weight={w_koleo}",
        "local_aggregation.keep_koleo_when_off=true",
        "student.layerscale=1.0",
    )
    model = _fresh(LocalAggregationMetaArch, cfg)
    upstream = _fresh(SSLMetaArch, cfg)
    batch = make_batch(cfg, batch_size=6, other_site=True, seed=12)
    torch.manual_seed(1)
    losses = model.forward_backward(batch, teacher_temp=TEACHER_TEMP)
    torch.manual_seed(1)
    upstream.forward_backward(batch, teacher_temp=TEACHER_TEMP)

    reference = _fresh(LocalAggregationMetaArch, cfg)
    s_cls = reference.student.backbone(batch["collated_other_site_crops"], is_training=True)["x_norm_clstoken"]
    koleo = w_koleo * _hand_koleo(s_cls)
    koleo.backward()
    assert float(losses["local_aggregation_koleo_loss"]) == pytest.approx(float(koleo), rel=1e-4)
    g_all, g_up, g_extra = _grads(model), _grads(upstream), _grads(reference)
    assert any(float(g.abs().max()) > 0 for n, g in g_extra.items() if n.startswith("backbone."))
    for name, g in g_all.items():
        ref = g_up.get(name, torch.zeros_like(g)) + g_extra.get(name, torch.zeros_like(g))
        torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-4, msg=name)


class _RecordingAugmentation:
    """Stands in for the device augmentation: halves every crop and records the device it was asked for."""

    def __init__(self):
        self.devices = []

    def augment_batch(self, images, device):
        self.devices.append(device)
        out = dict(images)
        for key in ("collated_global_crops", "collated_local_crops", "collated_other_site_crops"):
            out[key] = images[key] * 0.5
        return out


@pytest.mark.parametrize("la_weight", [0.0, 0.4])
def test_device_augmentation_output_is_what_the_step_trains_on(la_weight):
    """With `augmentations.device=model` the step trains on the augmented batch (local aggregation on and off)."""
    cfg = tiny_cfg(f"local_aggregation.loss_weight={la_weight}", "student.layerscale=1.0")
    batch = make_batch(cfg, batch_size=4, other_site=True, seed=13)
    model = _fresh(LocalAggregationMetaArch, cfg)
    model.device_augmentation = _RecordingAugmentation()
    torch.manual_seed(1)
    got = model.forward_backward(batch, teacher_temp=TEACHER_TEMP)
    assert model.device_augmentation.devices == [torch.device("cpu")]

    reference = _fresh(LocalAggregationMetaArch, cfg)  # no device augmentation: fed the augmented batch by hand
    assert reference.device_augmentation is None
    torch.manual_seed(1)
    want = reference.forward_backward(_RecordingAugmentation().augment_batch(batch, None), teacher_temp=TEACHER_TEMP)
    assert got.keys() == want.keys() and ("local_aggregation_loss" in got) == (la_weight > 0)
    for k in want:
        assert float(got[k]) == float(want[k]), k


def test_step_exposes_its_teacher_targets_and_no_zero_weight_koleo():
    """The health monitor reads the step's v1 teacher targets; a KoLeo weight of 0 adds no KoLeo term."""
    cfg = tiny_cfg("local_aggregation.loss_weight=0.5", "local_aggregation.koleo_loss_weight=0")
    model = _fresh(LocalAggregationMetaArch, cfg)
    batch = make_batch(cfg, batch_size=4, other_site=True, seed=14)
    with torch.no_grad():
        t_cls = model.teacher.backbone(batch["collated_global_crops"], is_training=True)["x_norm_clstoken"]
        t_prob = F.softmax(model.teacher.dino_head(t_cls) / TEACHER_TEMP, dim=-1)  # centre 0 at the first step
    assert model.last_local_aggregation_targets is None
    losses = model.forward_backward(batch, teacher_temp=TEACHER_TEMP)
    assert "local_aggregation_koleo_loss" not in losses
    targets = model.last_local_aggregation_targets
    assert targets is not None and not targets.requires_grad and targets.shape == t_prob.shape
    # upstream hands the two global crops' targets over in swapped order; the term averages both
    torch.testing.assert_close(targets, torch.cat(t_prob.chunk(2)[::-1]), atol=1e-6, rtol=1e-5)
    with pytest.raises(
        KeyError, match=r"the dataset must hand out other sites .* or set local_aggregation.loss_weight=0"
    ):
        model.forward_backward(make_batch(cfg, other_site=False), teacher_temp=TEACHER_TEMP)
