"""`python -m dinov2_cell.demo` end to end at toy size (the full-size run is `make demo`)."""

import json
import subprocess

import pandas as pd
import pytest

from dinov2_cell.eval.knn_wells import evaluate
from dinov2_cell.profiles.io import is_control, read_profiles
from helpers import PYTHON, REPO, child_env

_LABELS = {
    "ssl_local_aggregation": "SSL, local aggregation (the method)",
    "ssl_no_local_aggregation": "SSL, local aggregation off",
    "random_init": "random-init ViT",
    "cellprofiler": "CellProfiler features",
}


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
    table_rows = {line[:64].strip(): line for line in proc.stdout.splitlines()}
    for m in models:
        knn = json.loads((out / "eval" / m / "knn.json").read_text())
        acc = summary[m]["knn_mean_accuracy"]
        # the summary, the written scores and the printed table say the same
        assert acc == knn["mean"]["accuracy"], m
        label = next(k for k in table_rows if k.startswith(_LABELS[m]))
        assert table_rows[label][64:].split()[0] == f"{100 * acc:.1f}", (m, table_rows[label])
        # per-compound hits (compounds.csv) add up to each combination's pooled fold accuracy (knn_folds.csv)
        folds = pd.read_csv(out / "eval" / m / "knn_folds.csv")
        compounds = pd.read_csv(out / "eval" / m / "compounds.csv")
        for combo, g in folds.groupby("combination"):
            hits, wells = compounds[f"knn_hits_{combo}"].sum(), compounds[f"knn_wells_{combo}"].sum()
            assert wells == g["n_test"].sum(), (m, combo)
            assert hits == round((g["accuracy"] * g["n_test"]).sum()), (m, combo)
        means = folds.groupby("combination")["accuracy"].mean()
        assert acc == pytest.approx(means.mean(), abs=1e-12), m
        # chance: one over the compounds of the profiles
        profiles = read_profiles(str(out / "profiles" / m / "profiles.parquet"))
        n_compounds = profiles.loc[~is_control(profiles), "Metadata_broad_sample"].nunique()
        assert summary[m]["chance"] == pytest.approx(1 / n_compounds), m
    # 10 iterations, a teacher checkpoint every 5: the random-init control at 0, then 5, 10
    assert [p["iteration"] for p in summary["checkpoint_probe"]] == [0, 5, 10]
    for p in summary["checkpoint_probe"]:  # each probe value is the kNN of that checkpoint's profiles, recomputed
        path = out / "profiles" / "checkpoint_probe" / f"iter_{p['iteration']}" / "profiles.parquet"
        assert p["knn_mean_accuracy"] == evaluate(read_profiles(str(path)))["mean"]["accuracy"], p
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
    # the training report of one of the demo's runs: 10 iterations logged, health at 0 and 9
    rep = subprocess.run(
        [PYTHON, "-m", "dinov2_cell.report", str(out / "runs" / "fluo_la"), "--out", str(tmp_path / "run_report")],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "finished, last logged iteration 9 of 10" in rep.stdout
    run_md = (tmp_path / "run_report" / "README.md").read_text()
    assert "| 0 |" in run_md and "| 9 |" in run_md

    # a second run finds every step done: no training happens again
    mtime = (out / "runs" / "fluo_la" / "model_final.rank_0.pth").stat().st_mtime
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "runs" / "fluo_la" / "model_final.rank_0.pth").stat().st_mtime == mtime


@pytest.mark.parametrize("argv", [["--plates", "BR0000"], ["--plates", "BR00116995"], ["--size", "8"]])
def test_bad_options_leave_no_trace(tmp_path, argv):
    """Checked before anything is written: no demo_output/, no runs/, no plates, one error line, exit 2."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for extra in ([], ["--out", str(tmp_path / "named")]):
        proc = subprocess.run(
            [PYTHON, "-m", "dinov2_cell.demo", *argv, *extra],
            cwd=cwd,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("python -m dinov2_cell.demo: error: --"), proc.stderr
        assert argv[0] in lines[0]
        assert list(cwd.iterdir()) == [] and not (tmp_path / "named").exists()
