"""`python -m dinov2_cell.report RUN_DIR`: the training report of a run folder, while it runs or after."""

import subprocess

import pytest

from dinov2_cell.report.__main__ import main as report_main
from dinov2_cell.report.training import parse_log, read_metrics_file, read_training
from helpers import PYTHON, REPO, child_env


def test_read_training_keeps_the_resumed_history_and_merges_the_log(run_folder):
    t = read_training(str(run_folder))
    # the first attempt's iteration 20 (loss 99) is dropped; the half-written last line is skipped and counted
    assert [(r["iteration"], r["total_loss"]) for r in t.rows] == [(0, 9.0), (10, 8.5), (20, 7.0), (29, 6.5), (30, 6.0)]
    assert t.skipped_lines == 1
    # health: 0 and 5 only in the log, 9 in both (identical values)
    assert [h["health_iteration"] for h in t.health] == [0, 5, 9]
    assert t.health[1]["health_teacher_batch_entropy_frac"] == 0.829
    assert t.health[0]["health_la_target_entropy_frac"] == 0.127
    assert "health_la_target_entropy_frac" not in t.health[2]
    assert t.health[2]["health_rankme"] == 12.5
    # probes: 0 from the log only, 19 in both
    assert [(p["probe_iteration"], p["probe_knn_accuracy"]) for p in t.probe] == [(0, 0.125), (19, 0.25)]
    assert t.warnings == ["health [9]: uniform collapse: teacher per-sample entropy 0.95 log K (>= 0.9)"]
    assert (t.total_iterations, t.last_iteration, t.finished) == (40, 30, False)


def test_a_log_alone_gives_the_console_meters(run_folder):
    (run_folder / "training_metrics.json").unlink()
    t = read_training(str(run_folder))
    assert t.rows == [{"iteration": 0, "lr": 0.0, "total_loss": 9.1017}]
    rows, health, probe, _ = parse_log(str(run_folder / "logs" / "log.txt"))
    assert rows == t.rows and len(health) == 3 and len(probe) == 2


def test_metrics_file_with_a_cut_line_in_the_middle(tmp_path):
    path = tmp_path / "training_metrics.json"
    path.write_text('{"iteration": 0, "total_loss": 1.0}\n{"iteration": 10, "tot{"iteration": 10, "total_loss": 2}\n')
    rows, skipped = read_metrics_file(str(path))
    assert rows == [{"iteration": 0, "total_loss": 1.0}] and skipped == 1


def _report(*args):
    return subprocess.run(
        [PYTHON, "-m", "dinov2_cell.report", *map(str, args)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_cli_on_a_run_in_progress(run_folder, tmp_path):
    proc = _report(run_folder)
    assert proc.returncode == 0, proc.stderr
    assert (
        "in progress (or stopped), last logged iteration 30 of 40; 3 health computation(s), 2 kNN probe(s), "
        "1 warning(s)" in proc.stdout
    )
    report = run_folder / "report"
    for name in ("README.md", "loss_curves.png", "health_curves.png", "probe_curve.png"):
        assert (report / name).read_bytes()[:4] in (b"\x89PNG", b"# Tr"), name
    md = (report / "README.md").read_text()
    assert "last logged iteration 30 of 40" in md and "(1 unreadable line(s) skipped)" in md
    assert "Iteration 30: total 6 (dino_local_crops_loss 1.5); lr 0.001." in md
    assert "| 5 | 0.55 | 0.83 | 7.5 | 0.66 | none |" in md
    assert "| 9 | 0.25 | 0.75 | 12.5 | - | none |" in md
    assert "| 0 | 12.5 |" in md and "| 19 | 25.0 |" in md
    assert "- health [9]: uniform collapse" in md and "FutureWarning" not in md
    # --out elsewhere (in this process: a second interpreter costs seconds on a loaded machine)
    assert report_main([str(run_folder), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "README.md").read_text() == md


@pytest.mark.parametrize("case", ["empty", "missing"])
def test_report_cli_names_what_is_missing(tmp_path, case):
    target = tmp_path / "run"
    if case == "empty":
        target.mkdir()
    proc = _report(target)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m dinov2_cell.report: error: ") and str(target) in lines[0]
    assert not (target / "report").exists()
