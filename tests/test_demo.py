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
        "12",  # 2 DMSO wells per plate: the CellProfiler recipe normalises each plate against its DMSO wells
        "--size",
        "48",
        "--epochs",
        "1",
        "--null-size",
        "50",
        "--probe-checkpoints",
        "2",
        "--cp-sites-per-well",
        "1",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    # One torch thread: on a 2-core machine shared with other jobs (CI, the other tests), two threads made each toy
    # training step ~9 s instead of well under 1 s; the demo's outputs are checked, not its thread count.
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for label in (
        "SSL, local aggregation (the method)",
        "SSL, local aggregation off",
        "random-init ViT",
        "CellProfiler features (cp_measure + pycytominer), 1 sites/well",
        "chance",
    ):
        assert label in proc.stdout
    report = out / "report"
    for name in ("README.md", "loss_curves.png", "health_curves.png", "knn_by_combination.png", "embedding_tsne.png"):
        assert (report / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    models = {"ssl_local_aggregation", "ssl_no_local_aggregation", "random_init", "cellprofiler"}
    assert set(summary) == models | {"checkpoint_probe", "final_health"}
    assert all(0.0 <= summary[m]["knn_mean_accuracy"] <= 1.0 for m in models)
    # 10 iterations, a teacher checkpoint every 5: the random-init control at 0, then 5, 10
    assert [p["iteration"] for p in summary["checkpoint_probe"]] == [0, 5, 10]
    assert all(0.0 <= p["knn_mean_accuracy"] <= 1.0 for p in summary["checkpoint_probe"])
    assert set(summary["final_health"]) == {"fluo_la", "fluo_nola", "bf_la", "bf_nola"}
    assert summary["final_health"]["fluo_la"]["health_iteration"] == 9
    text = (report / "README.md").read_text()
    assert "## Training health" in text and "| fluo, LA | 9 |" in text
    # the CellProfiler row: the featuriser's CLI through the profiling driver, on the first site of each well only
    cp_config = json.loads((out / "profiles" / "cellprofiler" / "run_config.json").read_text())
    assert "sites_per_well': 1" in str(cp_config) or '"sites_per_well": 1' in json.dumps(cp_config)
    stats = json.loads(next((out / "profiles" / "cellprofiler" / "parts").glob("*.stats.json")).read_text())
    assert stats["sites_selected"] <= 12 < stats["sites"]
    for run in ("fluo_la", "bf_la", "fluo_nola", "bf_nola", "fluo_random", "bf_random"):
        assert (out / "runs" / run / "eval" / "final" / "teacher_checkpoint.pth").is_file(), run

    # a second run finds every step done: no training happens again
    mtime = (out / "runs" / "fluo_la" / "model_final.rank_0.pth").stat().st_mtime
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "runs" / "fluo_la" / "model_final.rank_0.pth").stat().st_mtime == mtime
