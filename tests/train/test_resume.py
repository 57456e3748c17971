"""Exact resume and save-on-signal (dinov2_cell.train.checkpoint, dinov2_cell.train.rng).

The equality tests train a tiny run (6 iterations, a checkpoint every 3) at one thread per process, stop it (a crash
after the checkpoint of iteration 2, or SIGUSR2), resume it with the same command, and compare with the uninterrupted
run bit for bit: every tensor of the final checkpoint (teacher, student, DINO/iBOT centres, optimizer state, run
state), every value given to the metric logger at every iteration, and every row of training_metrics.json.
"""

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import torch

from helpers import PYTHON, REPO, child_env

WORKER = os.path.join(REPO, "tests", "train", "resume_worker.py")
TRAIN = [PYTHON, "-m", "dinov2_cell.run.train"]
TIMING = ("iter_time", "data_time")


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    out = tmp_path_factory.mktemp("plates")
    generate_plates(out, plates=2, wells=8, sites=9, size=64, missing_sites=0.25, seed=0, progress=False)
    return str(out)


def _opts(plates, *extra, iterations=6, batch=4):
    # OFFICIAL_EPOCH_LENGTH 1: upstream's checkpoint period (3 epochs) is 3 iterations
    return [
        "--config-file",
        "tiny_cpu_fluo",
        f"train.dataset_path=CPJUMP1:root={plates}:channels=fluo",
        f"optim.epochs={iterations}",
        "train.OFFICIAL_EPOCH_LENGTH=1",
        f"train.batch_size_per_gpu={batch}",
        "health.probe_sites=8",
        *extra,
    ]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(record, out, opts, stop_at=-1, how="crash", stop_rank=-1, nproc=1):
    record.mkdir(parents=True, exist_ok=True)
    cmd = [PYTHON]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
    cmd += [WORKER, str(record), str(stop_at), how, str(stop_rank), "--", *opts, "--out", str(out)]
    env = child_env(OMP_NUM_THREADS=1)
    return subprocess.run(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )


def _load(path):
    from dinov2_cell.plugin import load_patches

    load_patches()
    from dinov2_cell.patches.fsdp import numpy_safe_globals

    with torch.serialization.safe_globals(numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _flat(x, prefix=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _flat(v, f"{prefix}{k}/")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from _flat(v, f"{prefix}{i}/")
    else:
        yield prefix.rstrip("/"), x


def _differences(a, b) -> dict:
    """Max |a - b| per entry (1.0 for any other difference) over two nested checkpoints; {} when identical."""
    fa, fb = dict(_flat(a)), dict(_flat(b))
    out = {k: 1.0 for k in set(fa) ^ set(fb)}
    for k in set(fa) & set(fb):
        x, y = fa[k], fb[k]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                out[k] = 1.0
            elif not torch.equal(x, y):
                out[k] = float((x.double() - y.double()).abs().max()) if x.is_floating_point() else 1.0
        elif type(x) is not type(y) or x != y:
            out[k] = 1.0
    return out


def _metrics(out):
    rows = [json.loads(line) for line in open(out / "training_metrics.json")]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _assert_same_run(continuous, resumed, ranks=(0,)):
    """Same final checkpoint (every tensor), same logged values at every iteration, same metric rows."""
    for r in ranks:
        a = _load(continuous["out"] / f"model_final.rank_{r}.pth")
        b = _load(resumed["out"] / f"model_final.rank_{r}.pth")
        assert {k.split("/")[0] for k, _ in _flat(a)} >= {"model", "optimizer", "run_state", "iteration"}
        assert _differences(a, b) == {}
        ua = (continuous["record"] / f"updates.rank{r}.jsonl").read_text().splitlines()
        ub = (resumed["record"] / f"updates.rank{r}.jsonl").read_text().splitlines()
        assert len(ua) == 6 * 6 and ua == ub  # 6 update calls per iteration
    assert _metrics(continuous["out"]) == _metrics(resumed["out"])


_continuous_runs = {}


def _continuous(tmp_path_factory, plates, key, opts, nproc=1):
    if key not in _continuous_runs:
        base = tmp_path_factory.mktemp(f"continuous_{key}")
        proc = _worker(base / "record", base / "run", opts, nproc=nproc)
        assert proc.returncode == 0, proc.stdout[-3000:]
        _continuous_runs[key] = {"out": base / "run", "record": base / "record"}
    return _continuous_runs[key]


def test_killed_after_a_checkpoint_then_resumed_equals_the_continuous_run(plates, tmp_path, tmp_path_factory):
    """augmentations.device=loader with 2 DataLoader workers (augmentation draws in the workers)."""
    opts = _opts(plates, "augmentations.device=loader", "train.num_workers=2")
    continuous = _continuous(tmp_path_factory, plates, "loader_workers", opts)
    run = {"out": tmp_path / "run", "record": tmp_path / "record"}
    first = _worker(run["record"], run["out"], opts, stop_at=3, how="crash")
    assert first.returncode != 0 and "test crash at iteration 3" in first.stdout
    assert (run["out"] / "last_checkpoint.rank_0").read_text().strip() == "model_0000002.rank_0.pth"
    second = _worker(run["record"], run["out"], opts)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "Starting training from iteration 3" in second.stdout
    assert "starting 12 samples into each rank's stream" in second.stdout  # 3 iterations x batch 4
    _assert_same_run(continuous, run)


def test_sigusr2_saves_the_current_iteration_and_the_resumed_run_equals_the_continuous_one(plates, tmp_path):
    """augmentations.device=model, through the real entry point: a signal from outside, mid-run."""
    from dinov2_cell.train.checkpoint import EXIT_REQUEUE

    opts = _opts(plates, "augmentations.device=model", iterations=12)
    continuous = {"out": tmp_path / "continuous" / "run", "record": tmp_path / "continuous" / "record"}
    proc = _worker(continuous["record"], continuous["out"], opts)
    assert proc.returncode == 0, proc.stdout[-3000:]

    out = tmp_path / "run"
    env = child_env(OMP_NUM_THREADS=1)
    cmd = TRAIN + opts + ["--out", str(out)]
    log = open(tmp_path / "first.log", "w+")  # a file, not a pipe: an unread pipe could block the run
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    marker = out / "last_checkpoint.rank_0"  # the periodic checkpoint of iteration 2: the run is mid-way
    deadline = time.time() + 300
    while not marker.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists() and first.poll() is None
    first.send_signal(signal.SIGUSR2)
    first.wait(timeout=300)
    log.seek(0)
    stderr = log.read()
    assert first.returncode == EXIT_REQUEUE, stderr[-3000:]
    line = [s for s in stderr.splitlines() if "SIGUSR2 received during iteration" in s]
    assert len(line) == 1, stderr[-3000:]
    iteration = int(line[0].split("during iteration ")[1].split(":")[0])
    # after the periodic checkpoint of iteration 2 (2: the signal came between that save and its boundary's check)
    assert 2 <= iteration < 11
    name = f"model_{iteration:07d}.rank_0.pth"
    assert marker.read_text().strip() == name
    assert _load(out / name)["iteration"] == iteration

    second = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert second.returncode == 0, second.stdout[-3000:]
    assert f"Starting training from iteration {iteration + 1}" in second.stdout
    assert (
        _differences(_load(continuous["out"] / "model_final.rank_0.pth"), _load(out / "model_final.rank_0.pth")) == {}
    )
    assert _metrics(continuous["out"]) == _metrics(out)


def test_two_gloo_processes_signal_on_one_rank_stops_both_and_resumes_exactly(plates, tmp_path, tmp_path_factory):
    """World size 2 (sharded FSDP, LOCAL_STATE_DICT shards): SIGUSR2 to rank 1 only during iteration 4."""
    opts = _opts(plates, batch=2)
    continuous = _continuous(tmp_path_factory, plates, "gloo2", opts, nproc=2)
    run = {"out": tmp_path / "run", "record": tmp_path / "record"}
    first = _worker(run["record"], run["out"], opts, stop_at=4, how="signal", stop_rank=1, nproc=2)
    assert first.returncode != 0
    assert first.stdout.count("SIGUSR2 received during iteration 4") == 2  # both ranks agreed on the iteration
    assert {p.name for p in run["out"].glob("model_0000004.rank_*.pth")} == {
        "model_0000004.rank_0.pth",
        "model_0000004.rank_1.pth",
    }
    second = _worker(run["record"], run["out"], opts, nproc=2)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "Starting training from iteration 5" in second.stdout
    _assert_same_run(continuous, run, ranks=(0, 1))


# ---------------------------------------------------------------------------------------------- restore


def _fresh_objects(out):
    """A model, optimizer and checkpointer built from scratch from a run's config.yaml, resumed from its last
    checkpoint."""
    import dinov2.distributed as distributed
    from omegaconf import OmegaConf

    from dinov2_cell.plugin import import_upstream
    from dinov2_cell.train.checkpoint import ResumableCheckpointer
    from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch

    if not distributed.is_enabled():
        distributed.enable(overwrite=True)
    cfg = OmegaConf.load(out / "config.yaml")
    torch.manual_seed(1234)  # other weights than the run's initial ones: a tensor left unloaded shows
    model = LocalAggregationMetaArch(cfg)
    model.prepare_for_distributed_training()
    optimizer = import_upstream("dinov2.train.train").build_optimizer(cfg, model.get_params_groups())
    checkpointer = ResumableCheckpointer(model, str(out), optimizer=optimizer)
    return model, optimizer, checkpointer


def test_restore_into_fresh_objects_gives_back_every_saved_tensor_and_loads_are_strict(
    plates, tmp_path, tmp_path_factory
):
    from dinov2.logging import MetricLogger
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from dinov2_cell.patches.fsdp import state_dict_type_for
    from dinov2_cell.train import rng

    opts = _opts(plates, "augmentations.device=loader", "train.num_workers=2")
    source = _continuous(tmp_path_factory, plates, "loader_workers", opts)["out"]  # shared with the first test
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text((source / "config.yaml").read_text())
    saved = _load(source / "model_0000002.rank_0.pth")
    torch.save(saved, out / "model_0000002.rank_0.pth")
    (out / "last_checkpoint.rank_0").write_text("model_0000002.rank_0.pth")

    model, optimizer, checkpointer = _fresh_objects(out)
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 2 and checkpointer.run_state.start_iteration == 3
    with FSDP.state_dict_type(model, state_dict_type_for(model)):
        assert _differences(model.state_dict(), saved["model"]) == {}
    assert _differences(optimizer.state_dict(), saved["optimizer"]) == {}
    state = checkpointer.run_state
    for name in ("dino_loss", "ibot_patch_loss"):  # the centre update iteration 2 computed, not yet applied
        pending = saved["run_state"]["pending_centres"][name]
        loss = getattr(model, name)
        assert loss.updated is False and torch.equal(loss.async_batch_center, pending["batch_center"])
    metric_logger = MetricLogger(delimiter="  ")
    state.attach_metric_logger(metric_logger)
    meters = {k: [list(m.deque), m.total, m.count] for k, m in metric_logger.meters.items()}
    expected = {k: [m["values"], m["total"], m["count"]] for k, m in saved["run_state"]["meters"].items()}
    assert meters == expected and "total_loss" in meters
    state.loader_started()  # restores the process generators
    assert _differences(rng.capture(), saved["run_state"]["rng"]) == {}

    # strict: a model key missing, an unexpected key, no optimizer state -> refused
    for name, edit, error in [
        ("missing", lambda c: c["model"].pop("teacher.backbone.norm.weight"), "missing keys"),
        ("unexpected", lambda c: c["model"].__setitem__("teacher.extra", torch.zeros(1)), "unexpected keys"),
        ("no_optimizer", lambda c: c.pop("optimizer"), "has no optimizer"),
    ]:
        broken = _load(source / "model_0000002.rank_0.pth")
        edit(broken)
        torch.save(broken, out / f"{name}.rank_0.pth")
        (out / "last_checkpoint.rank_0").write_text(f"{name}.rank_0.pth")
        _, _, checkpointer = _fresh_objects(out)
        with pytest.raises((RuntimeError, KeyError), match=error):
            checkpointer.resume_or_load("", resume=True)


# ---------------------------------------------------------------------------------------------- units


def test_generator_states_round_trip_through_a_weights_only_file(tmp_path):
    from dinov2_cell.train import rng

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.normal()  # numpy caches the second gaussian: part of the state
    state = rng.capture()
    torch.save(state, tmp_path / "s.pth")
    expected = (torch.rand(5), np.random.normal(size=3), [random.random() for _ in range(3)], random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    rng.restore(torch.load(tmp_path / "s.pth", weights_only=True))
    again = (torch.rand(5), np.random.normal(size=3), [random.random() for _ in range(3)], random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


@pytest.mark.parametrize("start,step", [(0, 1), (0, 2), (1, 2), (2, 3)])
def test_sampler_advance_lands_where_the_uninterrupted_stream_is(start, step):
    from dinov2.data.samplers import ShardedInfiniteSampler

    from dinov2_cell.train.checkpoint import ResumableShardedInfiniteSampler

    n = 10

    def stream(cls, advance, count=25):
        s = cls(sample_count=n, shuffle=True, seed=7, start=start, step=step, advance=advance)
        return list(itertools.islice(iter(s), count))

    full = stream(ResumableShardedInfiniteSampler, 0, 200)
    assert full == stream(ShardedInfiniteSampler, 0, 200)  # same stream as upstream's from the start
    for advance in (1, n // step - 1, n // step, n + 3, 4 * n + 1):
        assert stream(ResumableShardedInfiniteSampler, advance) == full[advance : advance + 25], advance
    if step > 1:  # upstream counts whole passes in sample_count, not in this rank's sample_count // step
        assert stream(ShardedInfiniteSampler, 2 * n) != full[2 * n : 2 * n + 25]


def test_worker_draws_depend_on_the_sample_position_only():
    from dinov2_cell.train.rng import SeededCollate, SeededSamples

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return (i, float(torch.rand(1)), float(np.random.rand()), random.random())

    samples = SeededSamples(Draws(), seed=5, rank=0)
    a = [samples[(p, p % 4)] for p in range(6)]
    torch.manual_seed(0)  # the process's own state does not matter
    b = [samples[(p, p % 4)] for p in reversed(range(6))][::-1]
    assert a == b
    assert len({x[0][1] for x in a}) == 6  # every position its own draws
    assert SeededSamples(Draws(), seed=5, rank=1)[(0, 0)] != a[0]  # ranks differ
    collate = SeededCollate(lambda items: (items, torch.rand(1).item()), seed=5, rank=0)
    assert collate(a[:2]) == collate(a[:2]) and collate(a[:2])[0] == [x[0] for x in a[:2]]


def test_device_augmentation_generator_state_continues_its_stream():
    from dinov2_cell.augment.device import DeviceCellAugmentation

    x = torch.rand(6, 2, 16, 16)
    a = DeviceCellAugmentation(seed=3, rank=1, elastic_frame="crop")
    assert a.state_dict()["generator"] is None  # no batch yet
    a(x)
    saved = a.state_dict()
    expected = [a(x), a(x)]
    b = DeviceCellAugmentation(seed=3, rank=1, elastic_frame="crop")
    b.load_state_dict(saved)  # before its first batch: applied when the generator is created
    assert all(torch.equal(e, b(x)) for e in expected)
    c = DeviceCellAugmentation(seed=3, rank=1, elastic_frame="crop")
    c(x)
    c.load_state_dict(saved)  # after: applied at once
    assert torch.equal(expected[0], c(x))
    with pytest.raises(ValueError, match="same --seed"):
        DeviceCellAugmentation(seed=4, rank=1).load_state_dict(saved)
