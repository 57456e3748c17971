"""benchmarks/feature_select.py runs and finds the same columns as pycytominer (a small table; not a timed test)."""

import subprocess

from helpers import PYTHON, REPO, child_env


def test_benchmark_runs_and_agrees():
    proc = subprocess.run(
        [PYTHON, "benchmarks/feature_select.py", "--wells", "12", "--features", "60", "--repeats", "1"],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same columns: True" in proc.stdout and "speed-up:" in proc.stdout
