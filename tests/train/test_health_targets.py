"""The health monitor end to end against known values: a known teacher, a known temperature schedule, known targets.

The teacher is a fixed linear map (CLS = flattened image @ W, logits = CLS @ A^T + b), so the expected entropies and
RankMe follow from numpy/scipy. The temperature schedule is upstream's DINO teacher-temperature warm-up written out
by hand: linear from `warmup_teacher_temp` to `teacher_temp` over the first `warmup_teacher_temp_epochs` epochs
(numpy.linspace end points, as upstream's `CosineScheduler` warm-up), then constant.
"""

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy

from helpers import tiny_cfg
from dinov2_cell.train.health import HealthMonitor

EPOCH = 5
WARMUP_EPOCHS = 2
EPOCHS = 4
T_START, T_END = 0.02, 0.08
SIZE, CHANNELS, DIM, K = 8, 2, 6, 12  # tiny probe images; the teacher's embedding and prototype counts


def _cfg():
    cfg = tiny_cfg(
        f"train.OFFICIAL_EPOCH_LENGTH={EPOCH}",
        f"optim.epochs={EPOCHS}",
        f"teacher.warmup_teacher_temp={T_START}",
        f"teacher.teacher_temp={T_END}",
        f"teacher.warmup_teacher_temp_epochs={WARMUP_EPOCHS}",
        "health.period_iterations=5",
        "health.probe_sites=7",
        f"crops.global_crops_size={SIZE}",
        "train.centering=centering",
    )
    return cfg


def hand_teacher_temp(iteration):
    """Upstream's teacher-temperature schedule: linspace(T_START, T_END, W) for the first W iterations, then T_END."""
    warmup = WARMUP_EPOCHS * EPOCH
    if iteration < warmup:
        return T_START + (T_END - T_START) * iteration / (warmup - 1)
    return T_END


class _Backbone(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x, is_training=False):
        return {"x_norm_clstoken": x.flatten(1) @ self.w}


class _DinoLoss:
    def __init__(self, center):
        self.center = center


class _Model:
    """What the monitor reads: `teacher.backbone`, `teacher.dino_head`, `dino_loss.center`, the LA targets."""

    def __init__(self, rng):
        w = torch.tensor(rng.normal(size=(CHANNELS * SIZE * SIZE, DIM)) / SIZE, dtype=torch.float32)
        head = torch.nn.Linear(DIM, K)
        with torch.no_grad():
            head.weight.copy_(torch.tensor(0.06 * rng.normal(size=(K, DIM)), dtype=torch.float32))
            head.bias.copy_(torch.tensor(0.06 * rng.normal(size=K), dtype=torch.float32))
        self.teacher = torch.nn.ModuleDict({"backbone": _Backbone(w), "dino_head": head})
        self.dino_loss = _DinoLoss(torch.tensor(0.06 * rng.normal(size=(1, K)), dtype=torch.float32))
        self.last_local_aggregation_targets = None


class _Sites:
    def __init__(self, rng, n=20):
        self.images = rng.uniform(size=(n, CHANNELS, SIZE, SIZE)).astype(np.float32)

    def __len__(self):
        return len(self.images)

    def get_image(self, i):
        return torch.from_numpy(self.images[i])


def test_teacher_temperature_follows_the_known_schedule():
    monitor = HealthMonitor(_cfg(), model=None, dataset=None)
    expected = [hand_teacher_temp(i) for i in range(EPOCHS * EPOCH)]
    assert expected[0] == T_START and expected[WARMUP_EPOCHS * EPOCH - 1] == pytest.approx(T_END)
    got = [monitor.teacher_temp(i) for i in range(EPOCHS * EPOCH)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert monitor.teacher_temp(10**6) == pytest.approx(T_END)  # past the end: the last value


@pytest.mark.parametrize("iteration", [0, 3, 7, 12])
def test_probe_values_equal_a_hand_computation(iteration):
    rng = np.random.default_rng(iteration)
    model, sites = _Model(rng), _Sites(rng)
    monitor = HealthMonitor(_cfg(), model, sites)
    values = monitor.compute(iteration)

    idx = np.unique(np.linspace(0, len(sites) - 1, 7).round().astype(int))  # evenly spaced probe sites
    x = sites.images[idx].reshape(len(idx), -1).astype(np.float64)
    cls = x @ model.teacher["backbone"].w.detach().numpy().astype(np.float64)
    head = model.teacher["dino_head"]
    logits = cls @ head.weight.detach().numpy().T.astype(np.float64) + head.bias.detach().numpy()
    center = model.dino_loss.center.numpy().astype(np.float64)
    probs = softmax((logits - center) / hand_teacher_temp(iteration), axis=1)
    h, hb = scipy_entropy(probs, axis=1).mean(), scipy_entropy(probs.mean(0))
    s = np.linalg.svd(cls, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert values["health_iteration"] == iteration
    assert 0.1 * math.log(K) < h < 0.9 * math.log(K)  # neither one-hot nor uniform: the temperature matters
    assert values["health_teacher_entropy"] == pytest.approx(h, rel=1e-3, abs=1e-6)
    assert values["health_teacher_batch_entropy"] == pytest.approx(hb, rel=1e-3, abs=1e-6)
    assert values["health_teacher_entropy_frac"] == pytest.approx(h / math.log(K), rel=1e-3, abs=1e-6)
    assert values["health_rankme"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
    # the case tells temperatures apart: at the neighbouring schedule values the entropy differs clearly
    for other in {hand_teacher_temp(max(iteration - 1, 0)), hand_teacher_temp(iteration + 1)} - {
        hand_teacher_temp(iteration)
    }:
        h_other = scipy_entropy(softmax((logits - center) / other, axis=1), axis=1).mean()
        assert abs(h_other - h) > 0.02 * h
    assert "health_la_target_entropy" not in values  # no local-aggregation targets observed


def _dirichlet(rng, n, alpha):
    return rng.dirichlet(np.full(K, alpha), size=n)


def test_local_aggregation_targets_are_pooled_per_sample():
    rng = np.random.default_rng(5)
    model = _Model(rng)
    monitor = HealthMonitor(_cfg(), model, _Sites(rng))
    # steps of different sizes, sharp rows (low per-sample entropy) spread over prototypes (high batch-mean entropy)
    steps = [_dirichlet(rng, 3, 0.1), _dirichlet(rng, 5, 0.1), _dirichlet(rng, 2, 2.0)]
    for p in steps:
        model.last_local_aggregation_targets = torch.tensor(p, dtype=torch.float32)
        monitor.observe_step()
        assert model.last_local_aggregation_targets is None  # consumed
    monitor.observe_step()  # a step without targets adds nothing
    values = monitor.compute(4)

    rows = np.concatenate(steps)
    per_sample = scipy_entropy(rows, axis=1).mean()  # the mean over all 10 rows, not over the 3 steps
    batch_mean = scipy_entropy(rows.mean(0))
    assert per_sample < batch_mean - 0.5  # the two quantities are far apart in this case
    assert values["health_la_target_entropy"] == pytest.approx(per_sample, rel=1e-5)
    assert values["health_la_target_batch_entropy"] == pytest.approx(batch_mean, rel=1e-5)
    assert values["health_la_target_entropy_frac"] == pytest.approx(per_sample / math.log(K), rel=1e-5)
    assert values["health_la_target_batch_entropy_frac"] == pytest.approx(batch_mean / math.log(K), rel=1e-5)

    # pooling restarts after each computation
    model.last_local_aggregation_targets = torch.tensor(steps[2], dtype=torch.float32)
    monitor.observe_step()
    again = monitor.compute(9)
    assert again["health_la_target_entropy"] == pytest.approx(scipy_entropy(steps[2], axis=1).mean(), rel=1e-5)
    assert "health_la_target_entropy" not in monitor.compute(14)
