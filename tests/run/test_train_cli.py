"""`python -m dinov2_cell.run.train` and `slurm/launch.sh` as a user runs them (subprocesses, synthetic plates)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import PYTHON, REPO, TINY_BF, TINY_FLUO, child_env

TRAIN = [PYTHON, "-m", "dinov2_cell.run.train"]


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    out = tmp_path_factory.mktemp("plates")
    generate_plates(out, plates=2, wells=8, sites=9, size=64, missing_sites=0.25, seed=0, progress=False)
    return str(out)


def _train(args, **kw):
    return subprocess.run(
        TRAIN + args, cwd=REPO, env=child_env(OMP_NUM_THREADS=2), capture_output=True, text=True, **kw
    )


def _opts(plates, channels="fluo", epochs=2):
    return [
        f"train.dataset_path=CPJUMP1:root={plates}:channels={channels}",
        f"optim.epochs={epochs}",
        "train.OFFICIAL_EPOCH_LENGTH=4",
        "train.batch_size_per_gpu=4",
    ]


def test_help():
    proc = _train(["--help"])
    assert proc.returncode == 0
    for flag in ("--config-file", "--output-dir", "--slurm", "--nodes", "--ngpus", "--partition", "--timeout"):
        assert flag in proc.stdout


def test_trains_writes_config_and_teacher_and_refuses_foreign_dirs(plates, tmp_path):
    out = tmp_path / "run"
    proc = _train(["--config-file", TINY_BF, "--output-dir", str(out), *_opts(plates, "bf")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "eval" / "final" / "teacher_checkpoint.pth").is_file()
    rows = [json.loads(line) for line in open(out / "training_metrics.json")]
    assert rows[-1]["iteration"] == 7 and "local_aggregation_loss" in rows[-1]
    saved = (out / "config.yaml").read_text()
    assert "in_chans: 3" in saved and "channels=bf" in saved
    assert "student:" in proc.stderr + proc.stdout  # the resolved config is printed

    # the same dir with another config: refused, and nothing in it changes
    before = {p: p.stat().st_mtime for p in out.rglob("*")}
    proc = _train(["--config-file", TINY_BF, "--output-dir", str(out), *_opts(plates, "bf", epochs=3)])
    assert proc.returncode != 0 and "optim.epochs" in proc.stderr
    assert {p: p.stat().st_mtime for p in out.rglob("*")} == before

    # a non-empty dir that holds no run: refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = _train(["--config-file", TINY_BF, "--output-dir", str(other), *_opts(plates, "bf")])
    assert proc.returncode != 0 and "not empty" in proc.stderr
    assert sorted(os.listdir(other)) == ["notes.txt"]


def test_bad_key_and_channel_mismatch_fail_before_writing(plates, tmp_path):
    out = tmp_path / "run"
    proc = _train(["--config-file", TINY_FLUO, "--output-dir", str(out), *_opts(plates), "optim.epoch=3"])
    assert proc.returncode != 0 and "unknown config key 'optim.epoch'" in proc.stderr
    proc = _train(["--config-file", TINY_FLUO, "--output-dir", str(out), *_opts(plates, "bf")])
    assert proc.returncode != 0
    assert "student.in_chans is 5" in proc.stderr and "3-channel" in proc.stderr
    assert not out.exists() or not os.listdir(out)


def test_killed_run_resumes_at_the_next_iteration(plates, tmp_path):
    out = tmp_path / "run"
    # checkpoint period = 3 epochs x 4 iterations: a checkpoint at iteration 11, 23, ...; 100 epochs never finish here
    args = ["--config-file", TINY_FLUO, "--output-dir", str(out), *_opts(plates, epochs=100)]
    env = child_env(OMP_NUM_THREADS=2)
    proc = subprocess.Popen(TRAIN + args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "last_checkpoint.rank_0"
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "no checkpoint was written before the deadline"
    last = marker.read_text().strip()
    ckpt = torch.load(out / last, weights_only=False)
    expected = int(ckpt["iteration"]) + 1

    # same command again: resumes; stop it as soon as it says where it starts
    proc = subprocess.Popen(
        TRAIN + args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Starting training from iteration" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(f"Starting training from iteration {expected}" in s for s in seen), "".join(seen[-20:])


def test_submitit_local_executor(plates, tmp_path):
    out = tmp_path / "run"
    proc = _train(
        [
            "--config-file",
            TINY_FLUO,
            "--output-dir",
            str(out),
            *_opts(plates, epochs=1),
            "--slurm",
            "--submitit-cluster",
            "local",
            "--wait",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted job" in proc.stdout
    assert (out / "eval" / "final" / "teacher_checkpoint.pth").is_file()
    assert (out / "submitit").is_dir()

    from dinov2_cell.run.submit import TrainTask

    task = TrainTask(type("Args", (), {"config_file": "c.yaml", "output_dir": str(out)})())
    again = task.checkpoint()  # what submitit calls on preemption: the same task, resubmitted
    assert isinstance(again.function, TrainTask) and again.function.args is task.args


def test_launch_sh_dry_run(tmp_path):
    launch = os.path.join(REPO, "slurm", "launch.sh")
    proc = subprocess.run(["bash", launch, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout and "embed" in proc.stdout

    proc = subprocess.run(
        ["bash", launch, "train", "--output-root", "runs/p", "--partition", "gpu", "--dry-run", "--", "optim.epochs=2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--array=0-1" in proc.stderr and "--partition=gpu" in proc.stderr and "--requeue" in proc.stderr
    assert "configs/cpjump1_vits14_fluo.yaml configs/cpjump1_vits14_bf.yaml" in proc.stderr
    assert "runs/p/${names[$i]} optim.epochs=2" in proc.stderr and "scontrol requeue" in proc.stderr

    proc = subprocess.run(
        [
            "bash",
            launch,
            "embed",
            "--fluo",
            "runs/p/fluo",
            "--bf",
            "runs/p/bf",
            "--data-root",
            "/d",
            "--out",
            "prof",
            "--plates-per-task",
            "5",
            "--python",
            sys.executable,
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "--array=0-4" in proc.stderr  # the 24 compound plates in chunks of 5
    assert "--dependency=afterok:DRYRUN_" in proc.stderr and "--merge-only" in proc.stderr
    assert "-m dinov2_cell.embed --fluo runs/p/fluo --bf runs/p/bf" in proc.stderr

    proc = subprocess.run(["bash", launch, "train", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--output-root is required" in proc.stderr


def test_a_few_dozen_iterations_lower_the_loss(plates, tmp_path):
    out = tmp_path / "run"
    # DINO's loss is not monotone: it falls while the student catches up with the (EMA) teacher during warm-up, then
    # rises as the teacher's targets become sharper and more varied. This checks the first phase; that training
    # learns a useful representation is what the demo measures (kNN vs a random-init ViT).
    opts = [f"train.dataset_path=CPJUMP1:root={plates}:channels=fluo:normalize=plate", "optim.epochs=2"]
    proc = _train(["--config-file", TINY_FLUO, "--output-dir", str(out), *opts])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "training_metrics.json")]
    assert [r["iteration"] for r in rows] == [0, 10, 19]
    for key in ("total_loss", "local_aggregation_loss"):
        values = [r[key] for r in rows]
        assert min(values[1:]) < values[0] - 0.3, (key, values)
