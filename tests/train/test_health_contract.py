"""Health diagnostics, the parts the formula tests leave open: thresholds, config fallbacks, the probe resize, the
Sinkhorn-Knopp path, the time accounting and the metric logger that runs the monitor inside upstream's `log_every`.

All in-process (no training subprocess): the logger is the real `HealthMetricLogger` built on upstream's
`dinov2.logging.MetricLogger`, fed a short iterable the way `do_train` consumes it, with a scripted monitor (known
values at known iterations) or the real `HealthMonitor` on a fixed linear teacher. Time is a fake clock that only the
simulated training steps and the simulated diagnostics advance, so the reported seconds are exact.
"""

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy

from helpers import tiny_cfg
from dinov2_cell.train import health

T_START, T_END = 0.02, 0.08
SIZE, CHANNELS, DIM, K = 8, 2, 6, 12


# ---------------------------------------------------------------------------------------------------------------
# fixtures and fakes


class _Clock:
    """`time.perf_counter` stand-in: the time only moves when a simulated step or computation advances it."""

    def __init__(self, now=1000.0):
        self.now = now

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(health, "time", SimpleNamespace(perf_counter=c.perf_counter))
    return c


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=None, prefix=""):
        return [
            r.getMessage()
            for r in self.records
            if (level is None or r.levelno == level) and r.getMessage().startswith(prefix)
        ]


@pytest.fixture
def records():
    """Every record of the "dinov2" logger (upstream's and ours), whatever earlier tests did to its propagation."""
    log = logging.getLogger("dinov2")
    handler, level = _Records(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(level)


def _cfg(epoch=5, epochs=4, warmup_epochs=2, **health_keys):
    overrides = [
        f"train.OFFICIAL_EPOCH_LENGTH={epoch}",
        f"optim.epochs={epochs}",
        f"teacher.warmup_teacher_temp={T_START}",
        f"teacher.teacher_temp={T_END}",
        f"teacher.warmup_teacher_temp_epochs={warmup_epochs}",
        f"crops.global_crops_size={SIZE}",
        "train.centering=centering",
    ]
    return tiny_cfg(*overrides, *[f"health.{k}={v}" for k, v in health_keys.items()])


def _plain_cfg(health_section, epoch=10, centering="centering"):
    """A minimal config as an OmegaConf dict; `health_section` None leaves the section out."""
    d = {"train": {"OFFICIAL_EPOCH_LENGTH": epoch, "centering": centering}, "optim": {"epochs": 3}}
    if health_section is not None:
        d["health"] = health_section
    return OmegaConf.create(d)


def hand_teacher_temp(iteration, epoch, warmup_epochs=2):
    """Upstream's teacher-temperature warm-up: linspace(T_START, T_END, W) over W iterations, then T_END."""
    w = warmup_epochs * epoch
    return T_START + (T_END - T_START) * iteration / (w - 1) if iteration < w else T_END


class _Backbone(torch.nn.Module):
    def __init__(self, w, clock=None):
        super().__init__()
        self.w = torch.nn.Parameter(w)
        self.clock = clock

    def forward(self, x, is_training=False):
        if self.clock is not None:
            self.clock.now += 0.25  # one probe forward takes 0.25 s
        return {"x_norm_clstoken": x.flatten(1) @ self.w}


class _Model:
    """A fixed linear teacher (CLS = image @ W, logits = head(CLS)), a DINO centre and the LA-target slot."""

    def __init__(self, rng, clock=None):
        w = torch.tensor(rng.normal(size=(CHANNELS * SIZE * SIZE, DIM)) / SIZE, dtype=torch.float32)
        head = torch.nn.Linear(DIM, K)
        with torch.no_grad():
            head.weight.copy_(torch.tensor(0.06 * rng.normal(size=(K, DIM)), dtype=torch.float32))
            head.bias.copy_(torch.tensor(0.06 * rng.normal(size=K), dtype=torch.float32))
        self.teacher = torch.nn.ModuleDict({"backbone": _Backbone(w, clock), "dino_head": head})
        self.dino_loss = SimpleNamespace(center=torch.tensor(0.06 * rng.normal(size=(1, K)), dtype=torch.float32))
        self.clock = clock
        self._targets = None

    @property
    def last_local_aggregation_targets(self):
        if self.clock is not None:
            self.clock.now += 0.125  # reading the step's targets takes 0.125 s
        return self._targets

    @last_local_aggregation_targets.setter
    def last_local_aggregation_targets(self, value):
        self._targets = value


class _Sites:
    def __init__(self, rng, n=20):
        self.images = rng.uniform(size=(n, CHANNELS, SIZE, SIZE)).astype(np.float32)

    def __len__(self):
        return len(self.images)

    def get_image(self, i):
        return torch.from_numpy(self.images[i])


def _hand_values(model, sites, n_probe, temp):
    """Per-sample and batch-mean entropy of the teacher on the probe sites, in numpy/scipy."""
    idx = np.unique(np.linspace(0, len(sites) - 1, n_probe).round().astype(int))
    x = sites.images[idx].reshape(len(idx), -1).astype(np.float64)
    cls = x @ model.teacher["backbone"].w.detach().numpy().astype(np.float64)
    head = model.teacher["dino_head"]
    logits = cls @ head.weight.detach().numpy().T.astype(np.float64) + head.bias.detach().numpy()
    probs = softmax((logits - model.dino_loss.center.numpy().astype(np.float64)) / temp, axis=1)
    return scipy_entropy(probs, axis=1).mean(), scipy_entropy(probs.mean(0))


# ---------------------------------------------------------------------------------------------------------------
# collapse flags, probe indices, probe images


def test_collapse_flags_fire_at_the_thresholds_themselves():
    at = {"health_teacher_entropy_frac": 0.9, "health_teacher_batch_entropy_frac": 0.1, "health_rankme": 1.5}
    assert health.collapse_flags(at) == [
        "uniform collapse: teacher per-sample entropy 0.90 log K (>= 0.9)",
        "one-prototype collapse: teacher batch-mean entropy 0.10 log K (<= 0.1)",
        "dimensional collapse: RankMe of teacher CLS 1.50 (<= 1.5)",
    ]
    just_inside = {"health_teacher_entropy_frac": 0.899, "health_teacher_batch_entropy_frac": 0.101}
    assert health.collapse_flags(dict(just_inside, health_rankme=1.501)) == []


@pytest.mark.parametrize("la, flagged", [(0.95, True), (0.9, True), (0.89, False)])
def test_collapse_flags_local_aggregation_targets(la, flagged):
    healthy = {"health_teacher_entropy_frac": 0.3, "health_teacher_batch_entropy_frac": 0.8, "health_rankme": 20.0}
    got = health.collapse_flags(dict(healthy, health_la_target_entropy_frac=la))
    assert got == ([f"uniform collapse of the local-aggregation targets: entropy {la:.2f} log K"] if flagged else [])


def test_probe_indices_reject_an_empty_dataset_and_are_integers():
    with pytest.raises(ValueError, match="^the training dataset is empty: no probe sites for the health diagnostics$"):
        health.probe_indices(0, 8)
    idx = health.probe_indices(10, 4)
    assert idx.dtype == np.int64 and idx.tolist() == [0, 3, 6, 9]  # round(0, 3, 6, 9) of linspace(0, 9, 4)


class _Float64Sites:
    """Sites stored as float64 numpy arrays (what a plain numpy store returns)."""

    def __init__(self, size):
        self.image = np.random.default_rng(3).uniform(size=(3, size, size))

    def __len__(self):
        return 2

    def get_image(self, i):
        return self.image + i


def test_probe_images_are_float32_whatever_the_dataset_returns():
    ds = _Float64Sites(12)
    x = health.load_probe_images(ds, 2, 12)  # already the crop size: no resize
    assert x.dtype == torch.float32
    np.testing.assert_array_equal(x.numpy(), np.stack([ds.image, ds.image + 1]).astype(np.float32))


def test_probe_resize_is_pil_antialiased_bilinear():
    rng = np.random.default_rng(4)
    ds = _Sites(rng, n=3)
    ds.images = rng.uniform(size=(3, 2, 40, 40)).astype(np.float32)
    x = health.load_probe_images(ds, 3, 16)
    # PIL's bilinear resize of a float image filters over the whole footprint when shrinking (antialiasing)
    ref = np.stack(
        [[np.asarray(Image.fromarray(ch).resize((16, 16), Image.BILINEAR)) for ch in im] for im in ds.images]
    )
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-5)
    # the case separates the variants: plain bilinear and corner-aligned sampling are far from it
    for antialias, align_corners in [(False, False), (True, True)]:
        other = torch.nn.functional.interpolate(
            torch.from_numpy(ds.images), (16, 16), mode="bilinear", antialias=antialias, align_corners=align_corners
        )
        assert np.abs(other.numpy() - ref).max() > 0.1


def test_probe_images_error_names_the_dataset_type_and_the_way_out():
    with pytest.raises(TypeError) as err:
        health.load_probe_images([torch.zeros(3, 4, 4)], 1, 4)
    assert str(err.value) == (
        "health diagnostics need a dataset with get_image(index) (got list); set health.period_iterations=0"
    )


# ---------------------------------------------------------------------------------------------------------------
# HealthMonitor: config fallbacks, bounds, schedule end, step pooling switches, time accounting


def test_monitor_config_fallbacks():
    no_section = health.HealthMonitor(_plain_cfg(None, epoch=7), None, None)
    assert (no_section.period, no_section.n_probe) == (7, 256)  # one epoch, 256 sites
    only_sites = health.HealthMonitor(_plain_cfg({"probe_sites": 9}, epoch=7), None, None)
    assert (only_sites.period, only_sites.n_probe) == (7, 9)
    only_period = health.HealthMonitor(_plain_cfg({"period_iterations": 4}), None, None)
    assert (only_period.period, only_period.n_probe) == (4, 256)
    assert no_section.seconds == 0.0


def test_monitor_bounds():
    assert health.HealthMonitor(_plain_cfg({"probe_sites": 2}), None, None).n_probe == 2  # the smallest allowed
    with pytest.raises(ValueError, match=r"health.probe_sites >= 2, got 10, 1$"):
        health.HealthMonitor(_plain_cfg({"probe_sites": 1}), None, None)
    every = health.HealthMonitor(_plain_cfg({"period_iterations": 1}), None, None)
    assert all(every.due(i) for i in range(30))


def test_teacher_temperature_stops_at_the_last_iteration_when_the_warm_up_outlasts_the_run():
    # 1 epoch of 5 iterations, warm-up over 2 epochs: the run ends at the 5th of 10 warm-up values
    monitor = health.HealthMonitor(_cfg(epoch=5, epochs=1, warmup_epochs=2), None, None)
    last = hand_teacher_temp(4, epoch=5)
    assert last == pytest.approx(T_START + (T_END - T_START) * 4 / 9)
    assert monitor.teacher_temp(3) == pytest.approx(hand_teacher_temp(3, epoch=5), rel=1e-12)
    for it in (4, 5, 7, 100):
        assert monitor.teacher_temp(it) == pytest.approx(last, rel=1e-12)


def test_observe_step_pools_only_when_switched_on():
    targets = torch.full((3, K), 1.0 / K)
    off = health.HealthMonitor(_plain_cfg({"period_iterations": 0}), SimpleNamespace(), None)
    off.model.last_local_aggregation_targets = targets
    off.observe_step()
    assert off.model.last_local_aggregation_targets is targets and off._la_count == 0  # left alone

    on = health.HealthMonitor(_plain_cfg({"period_iterations": 1}), SimpleNamespace(), None)
    on.model.last_local_aggregation_targets = targets
    on.observe_step()
    assert on.model.last_local_aggregation_targets is None and on._la_count == 3  # consumed

    # a model without the attribute (no local aggregation): nothing to pool, no error
    bare = health.HealthMonitor(_plain_cfg({"period_iterations": 1}), object(), None)
    bare.observe_step()
    assert bare._la_count == 0


def test_seconds_add_up_the_time_spent_in_the_diagnostics(clock):
    rng = np.random.default_rng(6)
    model, sites = _Model(rng, clock), _Sites(rng)
    monitor = health.HealthMonitor(_cfg(period_iterations=5, probe_sites=7), model, sites)
    seen = []
    for it in range(2):
        model.last_local_aggregation_targets = torch.tensor(rng.dirichlet(np.full(K, 0.5), size=4))
        monitor.observe_step()  # 0.125 s
        seen.append(monitor.seconds)
        clock.now += 3.0  # training time in between is not counted
        values = monitor.compute(5 * it)  # 0.25 s
        seen.append(monitor.seconds)
    assert seen == [0.125, 0.375, 0.5, 0.75]
    # the batch-mean entropy as a fraction of log K, against the hand computation
    h, hb = _hand_values(model, sites, 7, hand_teacher_temp(5, epoch=5))
    assert values["health_teacher_batch_entropy_frac"] == pytest.approx(hb / math.log(K), rel=1e-3)
    assert values["health_teacher_entropy_frac"] == pytest.approx(h / math.log(K), rel=1e-3)
    assert abs(hb - h) > 0.1  # the two fractions cannot stand in for each other


# ---------------------------------------------------------------------------------------------------------------
# Sinkhorn-Knopp centring


def _hand_sinkhorn(logits, temp, n_iterations=3):
    """SwAV/DINOv2 Sinkhorn-Knopp on one process: alternate prototype and sample marginals, columns sum to 1."""
    q = np.exp(logits / temp).T  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(1, keepdims=True) * k
        q /= q.sum(0, keepdims=True) * b
    return (q * b).T


def test_sinkhorn_knopp_centring_is_upstream_s_with_the_current_temperature():
    from dinov2.loss import DINOLoss

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(9, K)).astype(np.float32)
    monitor = health.HealthMonitor(_plain_cfg({}, centering="sinkhorn_knopp"), None, None)
    monitor.model = SimpleNamespace(dino_loss=DINOLoss(K))
    got = monitor.teacher_probabilities(torch.from_numpy(logits), 0.5).numpy()
    expected = _hand_sinkhorn(logits.astype(np.float64), 0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(expected - softmax(logits / 0.5, axis=1)).max() > 0.05  # not the softmax centring
    assert np.abs(expected - _hand_sinkhorn(logits.astype(np.float64), 0.25)).max() > 0.05  # the temperature matters


class _DeviceLoss:
    """Records where the logits are when Sinkhorn-Knopp gets them (the centre lives on the training device)."""

    center = torch.zeros(1, K, device="meta")

    def sinkhorn_knopp_teacher(self, logits, temp):
        self.got = (logits.device.type, temp)
        return torch.full((2, K), 1.0 / K)


def test_sinkhorn_knopp_gets_the_logits_on_the_centre_s_device():
    monitor = health.HealthMonitor(_plain_cfg({}, centering="sinkhorn_knopp"), None, None)
    monitor.model = SimpleNamespace(dino_loss=_DeviceLoss())
    out = monitor.teacher_probabilities(torch.zeros(2, K), 0.07)
    assert monitor.model.dino_loss.got == ("meta", 0.07)
    assert out.device.type == "cpu" and torch.equal(out, torch.full((2, K), 1.0 / K))


# ---------------------------------------------------------------------------------------------------------------
# the metric logger inside upstream's log_every


class _ScriptedMonitor:
    """Stands in for `HealthMonitor`: due at the scripted iterations, returns the scripted values, takes `cost` s."""

    def __init__(self, clock, script, period=2, cost=0.5):
        self.clock, self.script, self.period, self.cost = clock, script, period, cost
        self.seconds = 0.0
        self.events = []

    def observe_step(self):
        self.events.append("observe")

    def due(self, iteration):
        return iteration in self.script

    def compute(self, iteration):
        self.events.append(("compute", iteration))
        self.clock.now += self.cost
        self.seconds += self.cost
        return dict(self.script[iteration])


# binary-exact values (float32 meters dump them unchanged), each key larger at iteration 2 than at 0
SCRIPT = {
    0: {
        "health_iteration": 0.0,
        "health_teacher_entropy": 1.25,
        "health_teacher_entropy_frac": 0.5,
        "health_teacher_batch_entropy": 0.625,
        "health_teacher_batch_entropy_frac": 0.25,
        "health_rankme": 3.0,
    },
    2: {
        "health_iteration": 2.0,
        "health_teacher_entropy": 2.375,
        "health_teacher_entropy_frac": 0.96875,
        "health_teacher_batch_entropy": 1.25,
        "health_teacher_batch_entropy_frac": 0.5,
        "health_rankme": 5.0,
        "health_la_target_entropy": 1.875,
        "health_la_target_entropy_frac": 0.75,
        "health_la_target_batch_entropy": 2.125,
        "health_la_target_batch_entropy_frac": 0.875,
    },
    5: {
        "health_iteration": 5.0,
        "health_teacher_entropy": 1.5,
        "health_teacher_entropy_frac": 0.625,
        "health_teacher_batch_entropy": 0.125,
        "health_teacher_batch_entropy_frac": 0.046875,
        "health_rankme": 1.25,
    },
}


def _train(logger, monitor, clock, loader, *args, step_seconds=1.0):
    """`do_train`'s use of the logger: iterate `log_every`, run a step (time passes), update a loss meter."""
    for batch in logger.log_every(loader, *args):
        monitor.events.append(("step", batch))
        clock.now += step_seconds
        logger.update(total_loss=float(batch))


def test_health_values_are_meters_dumped_with_their_iteration(tmp_path, clock, records):
    monitor = _ScriptedMonitor(clock, SCRIPT)
    out = tmp_path / "training_metrics.json"
    logger = health._health_metric_logger_class()(delimiter="  ", output_file=str(out), monitor=monitor)
    _train(logger, monitor, clock, [10.0 + i for i in range(6)], 2, "Training", 6)  # start_iteration by default

    # each step is observed after it ran, and the computation of iteration i follows the step of iteration i
    expected_events = []
    for i in range(6):
        expected_events += [("step", 10.0 + i), "observe"] + ([("compute", i)] if i in SCRIPT else [])
    assert monitor.events == expected_events

    # upstream dumps iterations 0, 2, 4 (print_freq 2) and 5 (the last); a meter holds its latest value
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 2, 4, 5]
    latest = {}
    for row, it in zip(rows, [0, 2, 4, 5]):
        latest.update(SCRIPT.get(it, {}))
        assert set(row) == {"iteration", "iter_time", "data_time", "total_loss", *latest}
        assert {k: row[k] for k in latest} == latest

    # upstream's console line shows each value once, as the latest value with 4 decimals
    line = records.messages(prefix="Training  [2/6]")
    assert len(line) == 1
    assert {"health_rankme: 5.0000", "health_iteration: 2.0000", "health_la_target_entropy_frac: 0.7500"} <= set(
        line[0].split("  ")
    )

    assert records.messages(logging.INFO, "health [") == [
        "health [0]: teacher entropy 0.500 log K, batch-mean 0.250 log K, RankMe 3.00",
        (
            "health [2]: teacher entropy 0.969 log K, batch-mean 0.500 log K, RankMe 5.00;"
            " local-aggregation targets 0.750 / 0.875 log K"
        ),
        "health [5]: teacher entropy 0.625 log K, batch-mean 0.047 log K, RankMe 1.25",
    ]
    assert records.messages(logging.WARNING) == [
        "health [2]: uniform collapse: teacher per-sample entropy 0.97 log K (>= 0.9)",
        "health [5]: one-prototype collapse: teacher batch-mean entropy 0.05 log K (<= 0.1)",
        "health [5]: dimensional collapse: RankMe of teacher CLS 1.25 (<= 1.5)",
    ]
    # 6 steps of 1 s and 3 computations of 0.5 s
    assert records.messages(logging.INFO, "health diagnostics") == [
        "health diagnostics took 1.50 s of 7.5 s of training (20.00 %)"
    ]


def test_a_resumed_run_counts_from_its_start_iteration(tmp_path, clock):
    script = {4: dict(SCRIPT[0], health_iteration=4.0), 7: dict(SCRIPT[2], health_iteration=7.0)}
    monitor = _ScriptedMonitor(clock, script)
    out = tmp_path / "training_metrics.json"
    logger = health._health_metric_logger_class()("  ", str(out), monitor=monitor)  # MetricLogger's positional form
    # resumed at 3 of 8 iterations; the loader (an infinite sampler upstream) is longer than what is left
    _train(logger, monitor, clock, [float(b) for b in range(10)], 2, "Training", 8, 3)
    assert [e for e in monitor.events if e[0] == "step"] == [("step", float(b)) for b in range(5)]
    assert [e for e in monitor.events if e[0] == "compute"] == [("compute", 4), ("compute", 7)]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["iteration"], r["health_iteration"]) for r in rows] == [(4, 4.0), (6, 4.0), (7, 7.0)]


@pytest.mark.parametrize(
    "period, step_seconds, summary",
    [
        (1, 0.5, ["health diagnostics took 0.00 s of 0.5 s of training (0.00 %)"]),
        (0, 0.5, []),  # switched off: no summary
        (1, 0.0, []),  # no time passed: no summary (and no division by zero)
    ],
)
def test_time_summary_only_when_switched_on_and_time_passed(tmp_path, clock, records, period, step_seconds, summary):
    monitor = _ScriptedMonitor(clock, {}, period=period)
    logger = health._health_metric_logger_class()(delimiter="  ", output_file=None, monitor=monitor)
    _train(logger, monitor, clock, [1.0], 10, "Training", 1, step_seconds=step_seconds)
    assert records.messages(prefix="health diagnostics") == summary


# ---------------------------------------------------------------------------------------------------------------
# the factory


def test_factory_is_none_when_switched_off_and_a_logger_from_one_iteration_on(records):
    assert health.metric_logger(_plain_cfg({"period_iterations": 0}), None, None) is None
    assert records.messages(prefix="health diagnostics") == []
    factory = health.metric_logger(_plain_cfg({"period_iterations": 1, "probe_sites": 3}), None, None)
    assert factory is not None and factory.keywords["monitor"].period == 1
    assert records.messages(prefix="health diagnostics") == ["health diagnostics every 1 iterations on 3 probe sites"]


def test_factory_logger_runs_the_real_monitor_inside_log_every(tmp_path, records):
    rng = np.random.default_rng(8)
    model, sites = _Model(rng), _Sites(rng)
    # 3 iterations, computations after 0 and 2 (the first and the last)
    cfg = _cfg(epoch=3, epochs=1, warmup_epochs=2, period_iterations=2, probe_sites=7)
    factory = health.metric_logger(cfg, model, sites)
    assert records.messages(prefix="health diagnostics every") == [
        "health diagnostics every 2 iterations on 7 probe sites"
    ]
    out = tmp_path / "training_metrics.json"
    logger = factory(delimiter="  ", output_file=str(out))  # as do_train calls MetricLogger
    steps = [None, rng.dirichlet(np.full(K, 0.2), size=3), rng.dirichlet(np.full(K, 0.2), size=4)]
    for i, batch in enumerate(logger.log_every([0.0, 1.0, 2.0], 10, "Training", 3, 0)):
        if steps[i] is not None:  # the step's local-aggregation targets
            model.last_local_aggregation_targets = torch.tensor(steps[i])
        logger.update(total_loss=batch)
    assert model.last_local_aggregation_targets is None

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 2]
    for row, it in zip(rows, [0, 2]):
        h, hb = _hand_values(model, sites, 7, hand_teacher_temp(it, epoch=3))
        assert row["health_iteration"] == it
        assert row["health_teacher_entropy"] == pytest.approx(h, rel=1e-3)
        assert row["health_teacher_batch_entropy_frac"] == pytest.approx(hb / math.log(K), rel=1e-3)
    assert "health_la_target_entropy" not in rows[0]
    pooled = np.concatenate(steps[1:])
    assert rows[1]["health_la_target_entropy"] == pytest.approx(scipy_entropy(pooled, axis=1).mean(), rel=1e-5)
    assert rows[1]["health_la_target_batch_entropy"] == pytest.approx(scipy_entropy(pooled.mean(0)), rel=1e-5)
