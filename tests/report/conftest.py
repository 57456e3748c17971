"""Fixtures of the report tests: a hand-made training run folder and the evaluation tests' planted profiles."""

import importlib.util
import json
import os

import pytest

_EVAL_CONFTEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval", "conftest.py")


def _eval_fixtures():
    spec = importlib.util.spec_from_file_location("eval_conftest_for_reports", _EVAL_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def planted_profiles():
    """The planted-profile factory of tests/eval/conftest.py."""
    return _eval_fixtures().planted_profiles


def _row(it, loss, **extra):
    return {"iteration": it, "iter_time": 0.2, "data_time": 0.1, "lr": 1e-3, "total_loss": loss, **extra}


HEALTH_9 = {
    "health_iteration": 9.0,
    "health_teacher_entropy_frac": 0.25,
    "health_teacher_batch_entropy_frac": 0.75,
    "health_rankme": 12.5,
}


@pytest.fixture()
def run_folder(tmp_path):
    """A training run caught mid-way after a resume, written by hand in the formats of upstream and our loggers.

    The first attempt logged iterations 0, 10, 20 and died; the resumed one restarted at 10 (its checkpoint) and
    logged 10, 20, 29, 30 and half a line. The log holds health computations at 0, 5 and 9 (only 9 is also in
    training_metrics.json, the others fell between logged iterations), two probes, a collapse warning and a library
    warning.
    """
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text("optim:\n  epochs: 4\ntrain:\n  OFFICIAL_EPOCH_LENGTH: 10\n")
    rows = [
        _row(0, 9.0, dino_local_crops_loss=2.0),
        _row(10, 8.0, dino_local_crops_loss=1.9, **HEALTH_9),
        _row(20, 99.0),  # the first attempt's, replaced by the resumed run's
        _row(10, 8.5, dino_local_crops_loss=1.8, **HEALTH_9),
        _row(20, 7.0, dino_local_crops_loss=1.7, probe_iteration=19.0, probe_knn_accuracy=0.25),
        _row(29, 6.5, dino_local_crops_loss=1.6, probe_iteration=19.0, probe_knn_accuracy=0.25),
        _row(30, 6.0, dino_local_crops_loss=1.5, probe_iteration=19.0, probe_knn_accuracy=0.25),
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 31, "total_lo'
    (run / "training_metrics.json").write_text(text)
    log = [
        "I20261204 05:24:25 22696 dinov2 health.py:285] health [0]: teacher entropy 0.109 log K, batch-mean 0.187 "
        "log K, RankMe 7.33; local-aggregation targets 0.127 / 0.184 log K",
        "I20261204 05:24:25 22696 dinov2 helpers.py:115] Training  [ 0/40]  eta: 0:00:15  lr: 0.0000 (0.0000)  "
        "total_loss: 9.1017 (9.1017)  time: 0.774730  data: 0.681535",
        "I20261204 05:24:26 22696 dinov2 health.py:285] health [5]: teacher entropy 0.549 log K, batch-mean 0.829 "
        "log K, RankMe 7.55; local-aggregation targets 0.658 / 0.934 log K",
        "W20261204 05:24:26 22696 py.warnings warnings.py:109] /x/torch/nn/utils/weight_norm.py:145: FutureWarning: x",
        "I20261204 05:24:27 22696 dinov2 health.py:285] health [9]: teacher entropy 0.250 log K, batch-mean 0.750 "
        "log K, RankMe 12.50",
        "W20261204 05:24:27 22696 dinov2 health.py:295] health [9]: uniform collapse: teacher per-sample entropy "
        "0.95 log K (>= 0.9)",
        "I20261204 05:24:28 22696 dinov2 probe.py:284] probe [0]: kNN accuracy 12.5 % (0.60 s)",
        "I20261204 05:24:29 22696 dinov2 probe.py:284] probe [19]: kNN accuracy 25.0 % (0.61 s)",
    ]
    (run / "logs" / "log.txt").write_text("\n".join(log) + "\n")
    return run
