"""`python -m dinov2_cell.demo` end to end at toy size (the full-size run is `make demo`)."""

import json
import subprocess

from helpers import PYTHON, REPO, child_env


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "demo"
    cmd = [
        PYTHON,
        "-m",
        "dinov2_cell.demo",
        "--out",
        str(out),
        "--plates",
        "4",
        "--wells",
        "8",
        "--size",
        "48",
        "--epochs",
        "1",
        "--null-size",
        "50",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(OMP_NUM_THREADS=2), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for label in (
        "SSL, local aggregation (the method)",
        "SSL, local aggregation off",
        "random-init ViT",
        "classical intensity/texture features",
        "chance",
    ):
        assert label in proc.stdout
    report = out / "report"
    for name in ("README.md", "loss_curves.png", "knn_by_combination.png", "embedding_tsne.png"):
        assert (report / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"ssl_local_aggregation", "ssl_no_local_aggregation", "random_init", "classical"}
    assert all(0.0 <= v["knn_mean_accuracy"] <= 1.0 for v in summary.values())
    for run in ("fluo_la", "bf_la", "fluo_nola", "bf_nola", "fluo_random", "bf_random"):
        assert (out / "runs" / run / "eval" / "final" / "teacher_checkpoint.pth").is_file(), run

    # a second run finds every step done: no training happens again
    mtime = (out / "runs" / "fluo_la" / "model_final.rank_0.pth").stat().st_mtime
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(OMP_NUM_THREADS=2), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "runs" / "fluo_la" / "model_final.rank_0.pth").stat().st_mtime == mtime
