"""`slurm/launch.sh cellprofiler` (an array over plates + an afterok merge) and launch.sh's refusal to queue a training
whose `--check` fails, with a stand-in `sbatch` (no SLURM needed)."""

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from helpers import REPO, child_env

LAUNCH = os.path.join(REPO, "slurm", "launch.sh")
PLATES = "BR00116991,BR00116992,BR00116995"
WELLS = "A02,F06,K06,B09"  # DMSO and compound wells of the packaged plate map (the recipe needs DMSO per plate)
CP_OPTS = ["--families", "intensity", "--max-sites-per-well", "1", "--nucleus-diameter", "6,20"]


@pytest.fixture(scope="module")
def cp_plates(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    root = tmp_path_factory.mktemp("cp_plates")
    generate_plates(root, plates=PLATES, wells=WELLS, sites=1, size=48, progress=False)
    return str(root)


def _fake_sbatch(tmp_path, run=False):
    """A stand-in `sbatch` on PATH: records each call; with `run`, executes the job script (every array task, with
    SLURM_ARRAY_TASK_ID set) before printing its job id, as SLURM would once dependencies are met."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    body = f'echo "$*" >> {log}\nscript=$(cat)\n'
    if run:
        body += (
            'array=$(printf "%s\\n" "$@" | sed -n "s/^--array=0-//p")\n'
            'for i in $(seq 0 "${array:-0}"); do\n'
            f'  SLURM_ARRAY_TASK_ID=$i bash -c "$script" >> {tmp_path}/jobs.out 2>&1 || exit 1\n'
            "done\n"
        )
    body += "echo $((4242 + $(wc -l < " + str(log) + ")))\n"
    fake = bin_dir / "sbatch"
    fake.write_text("#!/usr/bin/env bash\nset -e\n" + body)
    fake.chmod(0o755)
    return log, {**child_env(OMP_NUM_THREADS=1), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_cellprofiler_dry_run_is_an_array_over_shards_then_an_afterok_merge():
    args = ["bash", LAUNCH, "cellprofiler", "--data-root", "/d", "--out", "cp", "--plates-per-task", "5"]
    proc = subprocess.run(
        args + ["--python", sys.executable, "--partition", "cpu", "--dry-run", "--", "--submission"],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "--array=0-4" in proc.stderr  # the 24 compound plates in shards of at most 5
    assert '--shard "$SLURM_ARRAY_TASK_ID/5" --no-merge' in proc.stderr
    assert "--dependency=afterok:DRYRUN_" in proc.stderr and "--merge-only" in proc.stderr
    assert "--partition=cpu" in proc.stderr and "--gpus-per-node" not in proc.stderr  # CPU only
    assert "-m dinov2_cell.profiles.cellprofiler --data-root /d --out cp" in proc.stderr
    assert proc.stderr.count("--submission") == 2  # extra arguments go to the tasks and to the merge
    assert "5 tasks over 24 plates" in proc.stdout

    proc = subprocess.run(["bash", LAUNCH, "cellprofiler", "--out", "cp", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--data-root and --out are required" in proc.stderr
    proc = subprocess.run(["bash", LAUNCH, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "cellprofiler options:" in proc.stdout


def test_cellprofiler_array_and_merge_equal_one_unsharded_run(cp_plates, tmp_path):
    """The stand-in sbatch runs the jobs: 3 plates in 2 shards (plates 0, 2 and plate 1), then the merge."""
    log, env = _fake_sbatch(tmp_path, run=True)
    out = tmp_path / "sharded"
    proc = subprocess.run(
        ["bash", LAUNCH, "cellprofiler", "--data-root", cp_plates, "--out", str(out), "--plates", PLATES]
        + ["--plates-per-task", "2", "--cpus-per-gpu", "1", "--python", sys.executable, "--"]
        + CP_OPTS
        + ["--num-workers", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    jobs = (tmp_path / "jobs.out").read_text() if (tmp_path / "jobs.out").exists() else ""
    assert proc.returncode == 0, proc.stderr + jobs[-3000:]
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and "--array=0-1" in calls[0] and "--dependency=afterok:4243" in calls[1]
    assert "array job: 4243 (2 tasks over 3 plates); merge job: 4244" in proc.stdout
    parts = sorted(f for f in os.listdir(out / "parts") if f.endswith(".parquet"))
    assert parts == [f"{p}.parquet" for p in PLATES.split(",")]

    from dinov2_cell.profiles.cellprofiler import main as cellprofiler_main  # the reference: one run, in-process

    direct = tmp_path / "direct"
    assert cellprofiler_main(["--data-root", cp_plates, "--out", str(direct), *CP_OPTS, "--no-progress"]) == 0
    sharded, whole = pd.read_parquet(out / "profiles.parquet"), pd.read_parquet(direct / "profiles.parquet")
    assert sorted(sharded["Metadata_Plate"].unique()) == PLATES.split(",")
    pd.testing.assert_frame_equal(sharded, whole)


def test_a_failing_training_check_queues_nothing(tmp_path):
    """Unset CPJUMP1_ROOT (paper configs), a missing --data-root, a warm-up longer than the run: exit 2, no sbatch."""
    log, env = _fake_sbatch(tmp_path)
    env.pop("CPJUMP1_ROOT", None)
    common = ["bash", LAUNCH, "train", "--output-root", str(tmp_path / "runs"), "--python", sys.executable]
    cases = {
        (): r"train\.dataset_path reads its dataset root from the environment variable CPJUMP1_ROOT, which is not set: "
        r"export CPJUMP1_ROOT=\S+, or pass --data-root ",
        ("--data-root", str(tmp_path / "nowhere")): r"root=\S*nowhere: no such file or folder",
        ("--data-root", str(tmp_path), "--", "optim.epochs=1"): r"optim\.warmup_epochs=10, "
        r"teacher\.warmup_teacher_temp_epochs=30 > optim\.epochs=1",
    }
    for extra, pattern in cases.items():
        proc = subprocess.run(common + list(extra), capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert re.search(pattern, proc.stderr), (extra, proc.stderr)
        assert "check of the fluo training failed; nothing was queued" in proc.stderr
        assert not log.exists()  # sbatch was never called
    assert not (tmp_path / "runs").exists()
