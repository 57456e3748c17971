"""Health diagnostics: each formula against an independent reference, and short trainings that collapse / do not."""

import json
import math
import subprocess

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy

from helpers import PYTHON, REPO, TINY_FLUO, child_env
from dinov2_cell.train import health


def _random_probs(n, k, seed, zeros=True):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.3), size=n)
    if zeros:
        p[0] = 0.0
        p[0, 3] = 1.0  # one-hot row: 0 log 0 must count as 0
        p[1, : k // 2] = 0.0
        p[1] /= p[1].sum()
    return p


def test_entropies_match_scipy():
    p = _random_probs(20, 16, seed=0)
    got = health.entropy(torch.tensor(p)).numpy()
    np.testing.assert_allclose(got, scipy_entropy(p, axis=1), rtol=1e-12, atol=1e-12)
    per_sample, batch_mean = health.distribution_entropies(torch.tensor(p, dtype=torch.float32))
    assert per_sample == pytest.approx(scipy_entropy(p, axis=1).mean(), rel=1e-6)
    assert batch_mean == pytest.approx(scipy_entropy(p.mean(0)), rel=1e-6)
    # the two collapse modes: uniform rows -> both log K; identical one-hot rows -> both 0
    assert health.distribution_entropies(torch.full((5, 16), 1 / 16)) == pytest.approx((math.log(16), math.log(16)))
    onehot = torch.zeros(5, 16)
    onehot[:, 2] = 1
    assert health.distribution_entropies(onehot) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_rankme_matches_a_hand_computation_from_numpy_svd():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 12)) @ np.diag(np.linspace(3, 0.01, 12))
    s = np.linalg.svd(z, compute_uv=False)
    p = s / np.abs(s).sum() + 1e-7  # Garrido et al. 2023, eq. 1-2
    expected = math.exp(-(p * np.log(p)).sum())
    assert health.rankme(torch.tensor(z, dtype=torch.float32)) == pytest.approx(expected, rel=1e-5)
    # rank-one embeddings (all rows parallel) -> ~1; isotropic -> close to the dimension
    assert health.rankme(torch.ones(30, 8) * torch.arange(1, 31.0)[:, None]) == pytest.approx(1.0, abs=1e-3)
    assert health.rankme(torch.tensor(rng.normal(size=(4000, 8)))) > 7.9


class _Loss:
    def __init__(self, center):
        self.center = center


class _Model:
    def __init__(self, center):
        self.dino_loss = _Loss(center)


def test_teacher_probabilities_are_upstream_centring_and_sharpening():
    rng = np.random.default_rng(2)
    logits, center = rng.normal(size=(6, 10)), rng.normal(size=(1, 10))
    cfg = _cfg()
    monitor = health.HealthMonitor(cfg, _Model(torch.tensor(center, dtype=torch.float32)), dataset=None)
    got = monitor.teacher_probabilities(torch.tensor(logits, dtype=torch.float32), 0.04).numpy()
    np.testing.assert_allclose(got, softmax((logits - center) / 0.04, axis=1), rtol=1e-4, atol=1e-6)


def _cfg(**health_keys):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "health": {"period_iterations": 10, "probe_sites": 8, **health_keys},
            "train": {"OFFICIAL_EPOCH_LENGTH": 10, "centering": "centering"},
            "optim": {"epochs": 3},
            "crops": {"global_crops_size": 28},
        }
    )


def test_schedule_probe_set_and_flags():
    monitor = health.HealthMonitor(_cfg(), model=None, dataset=None)
    assert [i for i in range(30) if monitor.due(i)] == [0, 10, 20, 29]
    assert not health.HealthMonitor(_cfg(period_iterations=0), None, None).due(0)
    with pytest.raises(ValueError, match="health.period_iterations"):
        health.HealthMonitor(_cfg(period_iterations=-1), None, None)
    idx = health.probe_indices(100, 8)
    assert list(idx) == list(health.probe_indices(100, 8)) and idx[0] == 0 and idx[-1] == 99 and len(idx) == 8
    assert list(health.probe_indices(3, 8)) == [0, 1, 2]

    healthy = {"health_teacher_entropy_frac": 0.3, "health_teacher_batch_entropy_frac": 0.8, "health_rankme": 20.0}
    assert health.collapse_flags(healthy) == []
    uniform = dict(healthy, health_teacher_entropy_frac=0.99)
    assert [f.split(":")[0] for f in health.collapse_flags(uniform)] == ["uniform collapse"]
    one = dict(healthy, health_teacher_batch_entropy_frac=0.02, health_rankme=1.01)
    assert [f.split(":")[0] for f in health.collapse_flags(one)] == ["one-prototype collapse", "dimensional collapse"]


class _Images:
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.images = [torch.rand(3, 40, 40, generator=g) for _ in range(n)]

    def __len__(self):
        return len(self.images)

    def get_image(self, i):
        return self.images[i]


def test_probe_images_are_whole_sites_resized_without_touching_random_state():
    ds = _Images(20)
    state = torch.random.get_rng_state()
    x = health.load_probe_images(ds, 5, 20)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert x.shape == (5, 3, 20, 20)
    # antialiased bilinear 2x downsampling of a constant image is that constant
    assert torch.allclose(health.load_probe_images(_Const(), 1, 20), torch.full((1, 3, 20, 20), 0.25))
    with pytest.raises(TypeError, match="get_image"):
        health.load_probe_images([torch.zeros(3, 4, 4)], 1, 4)


class _Const:
    def __len__(self):
        return 1

    def get_image(self, i):
        return torch.full((3, 40, 40), 0.25)


# ---------------------------------------------------------------------------------------------------------------
# short trainings through the CLI: a collapsing config is flagged, the tiny config is not, and the diagnostics do
# not change the training


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    out = tmp_path_factory.mktemp("plates")
    generate_plates(out, plates=2, wells=8, sites=9, size=64, missing_sites=0.0, seed=0, progress=False)
    return str(out)


def _train(plates, out, *opts):
    args = [
        "--config-file",
        TINY_FLUO,
        "--out",
        str(out),
        f"train.dataset_path=CPJUMP1:root={plates}:channels=fluo:normalize=plate",
        "train.OFFICIAL_EPOCH_LENGTH=10",
        "optim.epochs=2",
        "health.probe_sites=32",
        *opts,
    ]
    proc = subprocess.run(
        [PYTHON, "-m", "dinov2_cell.run.train", *args],
        cwd=REPO,
        env=child_env(OMP_NUM_THREADS=2),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "training_metrics.json")]
    return rows, proc.stdout + proc.stderr


# upstream's defaults for the parts the tiny configs change: layerscale 1e-5, 3-layer head, teacher temperature 0.07
UPSTREAM_TINY = (
    "student.layerscale=1e-5",
    "dino.head_nlayers=3",
    "teacher.warmup_teacher_temp=0.04",
    "teacher.teacher_temp=0.07",
)


def test_a_collapsing_config_is_flagged_and_the_tiny_config_is_not(plates, tmp_path):
    rows, log = _train(plates, tmp_path / "collapse", *UPSTREAM_TINY)
    health_rows = [r for r in rows if "health_rankme" in r]
    assert [r["health_iteration"] for r in health_rows] == [0, 10, 19]
    last = health_rows[-1]
    flags = health.collapse_flags(last)
    assert any(f.startswith("uniform collapse:") for f in flags), last
    assert "uniform collapse" in log  # console warning
    assert "health diagnostics took" in log

    rows, log = _train(plates, tmp_path / "tiny")
    health_rows = [r for r in rows if "health_rankme" in r]
    assert len(health_rows) == 3
    # Only the uniform collapse is asserted absent: in a 20-iteration run on 8 wells the DINO centre (momentum 0.9,
    # starting at zero) has not caught up yet, so the teacher's batch-mean entropy is still low; in the demo's
    # 400-iteration fluorescent run it is 0.51-0.74 log K from iteration 30 on (configs/tiny_cpu_fluo.yaml, koleo).
    for r in health_rows:
        assert not [f for f in health.collapse_flags(r) if "uniform collapse" in f], r
        assert 0 < r["health_la_target_entropy_frac"] < 1
    assert health_rows[-1]["health_teacher_entropy_frac"] < last["health_teacher_entropy_frac"] - 0.2
    assert "uniform collapse" not in log

    # the same training without diagnostics: identical losses (they touch no random state and no weights)
    rows_off, _ = _train(plates, tmp_path / "off", "health.period_iterations=0")
    assert not any("health_rankme" in r for r in rows_off)
    for a, b in zip(rows, rows_off):
        assert a["total_loss"] == b["total_loss"]
