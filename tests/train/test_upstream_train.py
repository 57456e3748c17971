"""Upstream's training code (SSLMetaArch, FSDP, do_train, checkpointing) runs on CPU through the patches."""

import json
import math
import os
import socket
import subprocess

import torch

from helpers import PYTHON, REPO, child_env, make_batch, tiny_cfg


def test_upstream_meta_arch_one_process():
    import dinov2.distributed as distributed
    from dinov2.train.ssl_meta_arch import SSLMetaArch
    from dinov2.train.train import build_optimizer

    if not distributed.is_enabled():
        distributed.enable(overwrite=True)
    cfg = tiny_cfg("student.in_chans=3")
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    opt = build_optimizer(cfg, model.get_params_groups())
    before = [p.detach().clone() for p in model.teacher.parameters()]
    loss_dict = model.forward_backward(make_batch(cfg), teacher_temp=0.07)
    assert set(loss_dict) == {"dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"}
    assert all(math.isfinite(float(v)) for v in loss_dict.values())
    opt.step()
    model.update_teacher(0.5)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes(tmp_path):
    """World size 2 shards (SHARD_GRAD_OP), so upstream's reshard path and the metric all-reduce really run."""
    env = child_env(OMP_NUM_THREADS=1)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    cmd += [os.path.join(REPO, "tests", "train", "dist_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["world_size"] == 2
        assert r["meter_total"] == 3.0  # 1 + 2 summed across ranks
        for name in ("upstream", "local_aggregation"):
            assert r[name]["teacher_changed"]
            assert "SHARD_GRAD_OP" in r[name]["sharding"]
            assert all(math.isfinite(v) for step in r[name]["losses"] for v in step.values())
        assert "local_aggregation_loss" in r["local_aggregation"]["losses"][0]
    assert results[0]["local_rank"] == 0 and results[1]["local_rank"] == 1


def test_upstream_do_train_checkpoints_and_resumes(tmp_path):
    """Upstream's do_train on a registered test dataset writes checkpoints; a second run resumes at the next step."""
    script = f"""
import sys; sys.path.insert(0, {os.path.join(REPO, 'tests')!r}); sys.path.insert(0, {os.path.join(REPO, 'tests', 'train')!r})
from dinov2_cell.plugin import install; install()
import rgb_test_dataset
import dinov2.distributed as distributed
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.train.train import do_train
from dinov2.logging import setup_logging
from helpers import tiny_cfg
distributed.enable(overwrite=True)
setup_logging()
epochs = int(sys.argv[1])
cfg = tiny_cfg("student.in_chans=3", "train.dataset_path=TestRGB:n=16:size=64", "train.batch_size_per_gpu=4",
               "train.OFFICIAL_EPOCH_LENGTH=2", f"optim.epochs={{epochs}}", "train.output_dir={tmp_path}")
model = SSLMetaArch(cfg)
model.prepare_for_distributed_training()
do_train(cfg, model, resume=True)
"""
    env = child_env(OMP_NUM_THREADS=2)
    logs = []
    for epochs in (2, 4):  # max_iter = epochs * OFFICIAL_EPOCH_LENGTH = 4, then 8
        proc = subprocess.run([PYTHON, "-c", script, str(epochs)], cwd=REPO, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]
        logs.append(proc.stdout + proc.stderr)
        files = sorted(os.listdir(tmp_path))
        assert "model_final.rank_0.pth" in files and "last_checkpoint.rank_0" in files
        ckpt = torch.load(tmp_path / "model_final.rank_0.pth", weights_only=False)
        assert ckpt["iteration"] == epochs * 2 - 1
    assert "Starting training from iteration 0" in logs[0]
    assert "Starting training from iteration 4" in logs[1]  # right after the first run's last step (3)
