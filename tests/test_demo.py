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
    for name in ("README.md", "loss_curves.png", "health_curves.png", "knn_by_combination.png", "embedding_tsne.png"):
        assert (report / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    models = {"ssl_local_aggregation", "ssl_no_local_aggregation", "random_init", "classical"}
    assert set(summary) == models | {"checkpoint_probe", "final_health"}
    assert all(0.0 <= summary[m]["knn_mean_accuracy"] <= 1.0 for m in models)
    # 10 iterations, a teacher checkpoint every 2: the random-init control at 0, then 2, 4, 6, 8, 10
    assert [p["iteration"] for p in summary["checkpoint_probe"]] == [0, 2, 4, 6, 8, 10]
    assert all(0.0 <= p["knn_mean_accuracy"] <= 1.0 for p in summary["checkpoint_probe"])
    assert set(summary["final_health"]) == {"fluo_la", "fluo_nola", "bf_la", "bf_nola"}
    assert summary["final_health"]["fluo_la"]["health_iteration"] == 9
    text = (report / "README.md").read_text()
    assert "## Training health" in text and "| fluo, LA | 9 |" in text
    for run in ("fluo_la", "bf_la", "fluo_nola", "bf_nola", "fluo_random", "bf_random"):
        assert (out / "runs" / run / "eval" / "final" / "teacher_checkpoint.pth").is_file(), run

    # a second run finds every step done: no training happens again
    mtime = (out / "runs" / "fluo_la" / "model_final.rank_0.pth").stat().st_mtime
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(OMP_NUM_THREADS=2), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "runs" / "fluo_la" / "model_final.rank_0.pth").stat().st_mtime == mtime
