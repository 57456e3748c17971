"""`python -m dinov2_cell.run.train` and `slurm/launch.sh` as a user runs them (subprocesses, synthetic plates)."""

import argparse
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


def _train(args, cwd=REPO, **kw):
    return subprocess.run(TRAIN + args, cwd=cwd, env=child_env(OMP_NUM_THREADS=2), capture_output=True, text=True, **kw)


def _opts(plates, channels="fluo", epochs=2):
    return [
        f"train.dataset_path=CPJUMP1:root={plates}:channels={channels}",
        f"optim.epochs={epochs}",
        "train.OFFICIAL_EPOCH_LENGTH=4",
        "train.batch_size_per_gpu=4",
    ]


def _launch_slurm_flags():
    """The flags slurm/launch.sh lists under its SLURM options."""
    proc = subprocess.run(["bash", os.path.join(REPO, "slurm", "launch.sh"), "--help"], capture_output=True, text=True)
    section = proc.stdout.split("SLURM options")[1].split("\n\n")[0]
    return [line.split()[0] for line in section.splitlines()[1:] if line.strip().startswith("--")]


def test_help_shows_one_slurm_vocabulary_shared_with_launch_sh():
    proc = _train(["--help"])
    assert proc.returncode == 0
    for flag in ("--config-file", "--out", "--debug", "--slurm", "--gpus-per-node", "--time"):
        assert flag in proc.stdout
    shared = _launch_slurm_flags()
    assert {"--partition", "--account", "--time", "--nodes", "--gpus-per-node", "--cpus-per-gpu"} <= set(shared)
    assert [f for f in shared if f not in proc.stdout] == []
    for old in ("--ngpus", "--timeout", "--cpus-per-task", "--gpus "):  # hidden aliases
        assert old not in proc.stdout


def test_slurm_defaults_units_and_old_spellings():
    from dinov2_cell.run.submit import slurm_time_minutes
    from dinov2_cell.run.train import get_args_parser

    args = get_args_parser().parse_intermixed_args([])
    assert (args.nodes, args.gpus_per_node, args.cpus_per_gpu, args.time) == (1, 4, 10, 48 * 60)
    args = get_args_parser().parse_intermixed_args(["--ngpus", "8", "--timeout", "90", "--cpus-per-task", "6"])
    assert (args.gpus_per_node, args.time, args.cpus_per_gpu) == (8, 90, 6)
    args = get_args_parser().parse_intermixed_args(["--gpus", "2", "--time", "1-02:03:04"])
    assert (args.gpus_per_node, args.time) == (2, 1440 + 2 * 60 + 3 + 1)  # seconds round up to a minute
    # SLURM's formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
    cases = {"90": 90, "90:30": 91, "48:00:00": 2880, "2-0": 2880, "2-01:30": 2970, "0-00:00:59": 1}
    assert {k: slurm_time_minutes(k) for k in cases} == cases
    for bad in ("", "1:xx", "1:2:3:4", "0", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            slurm_time_minutes(bad)

    # launch.sh: the same defaults, and the same old spellings
    launch = os.path.join(REPO, "slurm", "launch.sh")
    proc = subprocess.run(["bash", launch, "train", "--output-root", "r", "--dry-run"], capture_output=True, text=True)
    assert "--gpus-per-node=4 " in proc.stderr and "--ntasks-per-node=4 " in proc.stderr
    assert "--time=48:00:00 " in proc.stderr and "--cpus-per-task=10 " in proc.stderr
    old = ["--gpus", "2", "--timeout", "90", "--cpus-per-task", "6", "--qos", "q", "--mem-gb", "64"]
    proc = subprocess.run(
        ["bash", launch, "train", "--output-root", "r", *old, "--dry-run"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--gpus-per-node=2 ", "--time=90 ", "--cpus-per-task=6 ", "--qos=q ", "--mem=64G "):
        assert flag in proc.stderr, flag


def test_bad_input_is_one_error_line_and_exit_2_from_any_directory(tmp_path):
    out = tmp_path / "run"
    proc = _train(["--config-file", "no_such_config", "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m dinov2_cell.run.train: error: --config-file:"), lines
    assert "cpjump1_vits14_fluo" in lines[0] and "tiny_cpu_bf" in lines[0]  # the available names
    # a packaged config by name, from another directory: it is found, then the unknown key is the error
    proc = _train(["--config-file", "tiny_cpu_fluo", "--out", str(out), "optim.epoch=3"], cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown config key 'optim.epoch'" in proc.stderr
    proc = _train(["--config-file", "configs/tiny_cpu_fluo.yaml", "optim.epoch=3", "--debug"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "optim.epoch" in proc.stderr
    assert not out.exists()


def test_trains_writes_config_and_teacher_and_refuses_foreign_dirs(plates, tmp_path):
    out = tmp_path / "run"
    # the packaged config by name, run from another directory
    proc = _train(["--config-file", "tiny_cpu_bf", "--out", str(out), *_opts(plates, "bf")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "eval" / "final" / "teacher_checkpoint.pth").is_file()
    rows = [json.loads(line) for line in open(out / "training_metrics.json")]
    assert rows[-1]["iteration"] == 7 and "local_aggregation_loss" in rows[-1]
    saved = (out / "config.yaml").read_text()
    assert "in_chans: 3" in saved and "channels=bf" in saved
    assert "student:" in proc.stderr + proc.stdout  # the resolved config is printed
    assert "effective batch 4 = 1 process (GPUs) x 4 (train.batch_size_total=null" in proc.stderr + proc.stdout

    # the same dir with another config: refused, and nothing in it changes
    before = {p: p.stat().st_mtime for p in out.rglob("*")}
    proc = _train(["--config-file", TINY_BF, "--out", str(out), *_opts(plates, "bf", epochs=3)])
    assert proc.returncode == 2 and "optim.epochs" in proc.stderr
    assert {p: p.stat().st_mtime for p in out.rglob("*")} == before

    # a non-empty dir that holds no run: refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = _train(["--config-file", TINY_BF, "--out", str(other), *_opts(plates, "bf")])
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert sorted(os.listdir(other)) == ["notes.txt"]


def test_bad_key_and_channel_mismatch_fail_before_writing(plates, tmp_path):
    out = tmp_path / "run"
    proc = _train(["--config-file", TINY_FLUO, "--out", str(out), *_opts(plates), "optim.epoch=3"])
    assert proc.returncode == 2 and "unknown config key 'optim.epoch'" in proc.stderr
    proc = _train(["--config-file", TINY_FLUO, "--out", str(out), *_opts(plates, "bf")])
    assert proc.returncode == 2
    assert "student.in_chans is 5" in proc.stderr and "3-channel" in proc.stderr
    assert not out.exists() or not os.listdir(out)


def test_killed_run_resumes_at_the_next_iteration(plates, tmp_path):
    out = tmp_path / "run"
    # checkpoint period = 3 epochs x 4 iterations: a checkpoint at iteration 11, 23, ...; 100 epochs never finish here
    args = ["--config-file", TINY_FLUO, "--out", str(out), *_opts(plates, epochs=100)]
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
            "--out",
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
    assert "configs=(cpjump1_vits14_fluo cpjump1_vits14_bf)" in proc.stderr
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
    # learns a useful representation is what the demo measures (kNN vs a random-init ViT). Upstream's centre EMA
    # (0.9): with the tiny config's batch centering (0) the teacher's targets spread out from the first steps, so
    # their entropy, and the cross-entropy with them, rises while the student fits them.
    opts = [
        f"train.dataset_path=CPJUMP1:root={plates}:channels=fluo:normalize=plate",
        "optim.epochs=2",
        "dino.center_momentum=0.9",
    ]
    proc = _train(["--config-file", TINY_FLUO, "--out", str(out), *opts])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "training_metrics.json")]
    assert [r["iteration"] for r in rows] == [0, 10, 19]
    for key in ("total_loss", "local_aggregation_loss"):
        values = [r[key] for r in rows]
        assert min(values[1:]) < values[0] - 0.3, (key, values)


def test_launch_sh_checks_the_batch_before_queueing(plates, tmp_path):
    """A GPU count the paper's total batch (128) does not divide is refused before sbatch; a good one is queued."""
    launch = os.path.join(REPO, "slurm", "launch.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    fake = bin_dir / "sbatch"  # stands in for SLURM: records the call, prints a job id
    scripts = tmp_path / "scripts.txt"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\ncat >> {scripts}\necho 4242\n')
    fake.chmod(0o755)
    env = {**child_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    common = ["bash", launch, "train", "--output-root", str(tmp_path / "runs"), "--python", sys.executable]
    common += ["--data-root", plates]
    bad = subprocess.run(common + ["--gpus-per-node", "3"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "does not divide over 3" in bad.stderr
    assert not log.exists()  # nothing was queued
    good = subprocess.run(common + ["--gpus-per-node", "8"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "8 GPU(s) x batch 16 = total batch 128" in good.stderr and "4242" in good.stdout
    assert "data CPJUMP1: 2 plate(s)" in good.stderr and "channels Brightfield,HighZBF,LowZBF" in good.stderr
    assert "--gpus-per-node=8" in log.read_text()
    assert f"--data-root {plates}" in scripts.read_text()  # the checked root is the one the jobs train on
    assert not (tmp_path / "runs").exists()  # the check writes nothing
