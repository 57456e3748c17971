"""Training and embedding on a real single-node SLURM (`slurm/testing/start_slurm.sh`): `run.train --slurm` through
submitit, a USR2 signal -> submitit's checkpoint() -> requeue -> resume, and `slurm/launch.sh train` / `embed` with
its afterok merge job. The node's `gpu:4` GRES only counts GPUs: the jobs see no CUDA device and train on the CPU,
one thread each, so runs compare bit for bit."""

import os
import re
import subprocess
import time

import pandas as pd
import pytest
import torch

from helpers import PYTHON, REPO, child_env

pytestmark = pytest.mark.usefixtures("real_slurm")

LAUNCH = os.path.join(REPO, "slurm", "launch.sh")
ITERATIONS = 12  # 3 epochs x 4: upstream's periodic checkpoint (every 3 epochs) only comes at the last iteration
START_LINE = re.compile(r"Starting training from iteration (\d+)")
HEALTH_LINE = re.compile(r"health \[(\d+)\]")  # logged after each step with health.period_iterations=1


def job_env():
    """Environment the jobs inherit through sbatch: one thread, so that runs compare bit for bit."""
    return child_env(OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, PYTHONWARNINGS="ignore")


def job_info(job_id) -> dict:
    """`scontrol show job` per task id (ended jobs stay visible for MinJobAge, 600 s in the test scheduler)."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True, check=True)
    tasks = {}
    for line in proc.stdout.splitlines():  # -o: one line per job or array task
        fields = dict(m.groups() for m in re.finditer(r"(\S+?)=(\S*)", line))
        tasks[fields["JobId"]] = fields
    return tasks


def wait_for_jobs(job_ids, timeout=240):
    """Waits until none of `job_ids` is pending or running (a requeued job is pending again); returns `job_info` of
    every job and array task."""
    ids = ",".join(str(j) for j in job_ids)
    deadline = time.time() + timeout
    while True:
        proc = subprocess.run(["squeue", "-h", "-j", ids, "-o", "%i %T"], capture_output=True, text=True)
        if proc.returncode == 0 and not proc.stdout.strip():
            break
        if time.time() > deadline:
            subprocess.run(["scancel", *[str(j) for j in job_ids]])
            pytest.fail(f"jobs {ids} still queued after {timeout} s: {proc.stdout}")
        time.sleep(0.5)
    tasks = {}
    for j in job_ids:
        tasks.update(job_info(j))
    return tasks


def wait_for_line(path, pattern, job_id, timeout=180):
    """Waits until the file at `path` has a line matching `pattern` while job `job_id` runs; returns the match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            m = re.search(pattern, open(path).read())
            if m:
                return m
        if not subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True).stdout.strip():
            break
        time.sleep(0.2)
    pytest.fail(f"no {pattern!r} in {path} while job {job_id} ran")


def same(a, b, where="") -> list:
    """Where two nested checkpoint structures differ (tensors bit for bit); empty when equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
        return [] if ok else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for k in a for d in same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_the_test_scheduler_counts_four_gpus_on_one_node():
    ok = subprocess.run(
        ["sbatch", "--test-only", "--gpus-per-node=4", "--wrap", "true"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "to start at" in ok.stderr, ok.stderr
    too_many = subprocess.run(
        ["sbatch", "--test-only", "--gpus-per-node=5", "--wrap", "true"], capture_output=True, text=True
    )
    assert too_many.returncode != 0 and "Requested node configuration is not available" in too_many.stderr


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    out = tmp_path_factory.mktemp("slurm_plates")
    generate_plates(out, plates=2, wells=8, sites=9, size=64, missing_sites=0.25, seed=0, progress=False)
    return str(out)


def _submit_train(out, plates):
    """`run.train --slurm` on one count-only GPU; returns the job id it prints."""
    cmd = [PYTHON, "-m", "dinov2_cell.run.train", "--config-file", "tiny_cpu_fluo", "--out", str(out)]
    cmd += [f"train.dataset_path=CPJUMP1:root={plates}:channels=fluo", "optim.epochs=3"]
    cmd += ["train.OFFICIAL_EPOCH_LENGTH=4", "train.batch_size_per_gpu=4"]
    cmd += ["health.period_iterations=1", "health.probe_sites=8"]  # a log line after every step
    cmd += ["--slurm", "--gpus-per-node", "1", "--cpus-per-gpu", "1", "--time", "10"]
    proc = subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return re.search(r"submitted job (\d+)", proc.stdout).group(1)


@pytest.fixture(scope="module")
def train_jobs(plates, tmp_path_factory):
    """Two identical `run.train --slurm` submissions, queued together (one CPU each): `plain` runs to the end,
    `signalled` gets USR2 after its iteration 2 (what `--signal=USR2@120` sends before a time-out)."""
    root = tmp_path_factory.mktemp("slurm_train")
    jobs = {name: (root / name, _submit_train(root / name, plates)) for name in ("plain", "signalled")}
    out, job = jobs["signalled"]
    wait_for_line(out / "logs" / "log.txt", r"health \[2\]", job)  # mid-run: iterations 0-2 done, 9 to go
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    yield jobs
    # none left running when a test failed or was deselected
    subprocess.run(["scancel", *[j for _, j in jobs.values()]], capture_output=True)


def test_run_train_slurm_trains_to_completion(train_jobs):
    out, job = train_jobs["plain"]
    info = wait_for_jobs([job])[job]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    assert info["Restarts"] == "0"
    assert info["TresPerNode"] == "gres:gpu:1", info  # scheduled on one of the node's dummy GPUs
    assert (out / "eval" / "final" / "teacher_checkpoint.pth").is_file()
    log = (out / "logs" / "log.txt").read_text()
    assert [int(n) for n in START_LINE.findall(log)] == [0]
    assert [int(n) for n in HEALTH_LINE.findall(log)] == list(range(ITERATIONS))
    assert (out / "submitit" / job / f"{job}_0_result.pkl").is_file()  # submitit's task returned


def test_usr2_requeues_and_resumes_losing_at_most_one_iteration(train_jobs):
    out, job = train_jobs["signalled"]
    log_path = out / "logs" / "log.txt"
    info = wait_for_jobs([job])[job]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    assert int(info["Restarts"]) == 1, info  # submitit's checkpoint() requeued it once
    log = log_path.read_text()
    starts = [(m.start(), int(m.group(1))) for m in START_LINE.finditer(log)]
    assert len(starts) == 2 and starts[0][1] == 0, starts
    first_attempt = log[: starts[1][0]]
    done = [int(n) for n in HEALTH_LINE.findall(first_attempt)]
    last_done = max(done)  # the last iteration the first attempt finished; USR2 came during it or the next one
    assert done == list(range(last_done + 1)) and 2 <= last_done < ITERATIONS - 1, done
    resumed_from = starts[1][1]
    lost = last_done + 1 - resumed_from  # finished iterations the second attempt runs again
    assert 0 <= lost <= 1, f"first attempt finished iteration {last_done}, the second resumed from {resumed_from}"

    # the resumed run ends where the uninterrupted one does: teacher, student and optimizer bit for bit
    plain, _ = train_jobs["plain"]
    wait_for_jobs([train_jobs["plain"][1]])
    final = os.path.join("eval", "final", "teacher_checkpoint.pth")
    a, b = (torch.load(d / final, map_location="cpu", weights_only=True) for d in (plain, out))
    assert same(a, b, "teacher") == []
    a, b = (torch.load(d / "model_final.rank_0.pth", map_location="cpu", weights_only=False) for d in (plain, out))
    assert same({k: a[k] for k in ("model", "optimizer")}, {k: b[k] for k in ("model", "optimizer")}) == []


@pytest.fixture(scope="module")
def launched_training(plates, tmp_path_factory):
    """`slurm/launch.sh train` (the fluo + bf array) with the tiny configs, whose dataset path is
    demo_output/plates relative to the directory the jobs start in. The fluo task gets USR2 mid-run (what the
    script's `--signal=USR2@120` sends before its time limit)."""
    work = tmp_path_factory.mktemp("slurm_launch")
    os.makedirs(work / "demo_output")
    os.symlink(plates, work / "demo_output" / "plates")
    cmd = ["bash", LAUNCH, "train", "--output-root", str(work / "runs"), "--fluo-config", "tiny_cpu_fluo"]
    cmd += ["--bf-config", "tiny_cpu_bf", "--gpus-per-node", "1", "--cpus-per-gpu", "1", "--time", "10"]
    cmd += ["--python", PYTHON, "--logs", str(work / "logs"), "--"]
    cmd += ["optim.epochs=3", "train.OFFICIAL_EPOCH_LENGTH=4", "train.batch_size_per_gpu=4"]
    cmd += ["health.period_iterations=1", "health.probe_sites=8"]
    proc = subprocess.run(cmd, cwd=work, env=job_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = re.search(r"train array job: (\d+)", proc.stdout).group(1)
    wait_for_line(work / "runs" / "fluo" / "logs" / "log.txt", r"health \[2\]", job)
    subprocess.run(["scancel", "--signal=USR2", f"{job}_0"], check=True)  # to the job steps, not the batch shell
    return work, job, wait_for_jobs([job])


def test_launch_sh_train_array_on_slurm(launched_training):
    work, job, tasks = launched_training
    array = {t["ArrayTaskId"]: t for t in tasks.values()}
    assert sorted(array) == ["0", "1"], tasks.keys()
    for name, task in zip(("fluo", "bf"), (array["0"], array["1"])):
        assert task["JobState"] == "COMPLETED" and task["ExitCode"] == "0:0", (name, task)
        assert task["TresPerNode"] == "gres:gpu:1" and task["Requeue"] == "1", task
        run = work / "runs" / name
        assert (run / "eval" / "final" / "teacher_checkpoint.pth").is_file(), name
        assert f"channels={name}" in (run / "config.yaml").read_text()
        log = (run / "logs" / "log.txt").read_text()
        assert "effective batch 4 = 1 process (GPUs)" in log and "Starting training from iteration 0" in log
        assert f"health [{ITERATIONS - 1}]" in log, name  # trained to its last iteration
        starts = [int(n) for n in START_LINE.findall(log)]
        if name == "bf":
            assert starts == [0] and task["Restarts"] == "0", (starts, task)
            continue
        # fluo: checkpointed on USR2, exited 75, requeued by the script, resumed losing at most one iteration
        assert task["Restarts"] == "1" and len(starts) == 2 and starts[0] == 0, (starts, task)
        done = [int(n) for n in HEALTH_LINE.findall(log.split("Starting training from iteration")[1])]
        assert 2 <= max(done) < ITERATIONS - 1 and 0 <= max(done) + 1 - starts[1] <= 1, (done, starts)


def test_launch_sh_embed_array_and_afterok_merge_on_slurm(launched_training, plates, tmp_path):
    work, _, _ = launched_training
    barcodes = sorted(os.listdir(os.path.join(plates, "load_data_csv", "2020_11_04_CPJUMP1")))
    assert len(barcodes) == 2
    out = tmp_path / "profiles"
    runs = work / "runs"
    cmd = ["bash", LAUNCH, "embed", "--fluo", str(runs / "fluo"), "--bf", str(runs / "bf"), "--data-root", plates]
    cmd += ["--out", str(out), "--plates", ",".join(barcodes), "--cpus-per-gpu", "1", "--time", "10"]
    cmd += ["--python", PYTHON, "--logs", str(tmp_path / "logs"), "--", "--batch-size", "8", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"embed array job: (\d+) \(2 tasks over 2 plates\); merge job: (\d+)", proc.stdout)
    assert m, proc.stdout
    array_id, merge_id = m.groups()
    assert job_info(merge_id)[merge_id]["Dependency"] in (f"afterok:{array_id}_*", f"afterok:{array_id}_*(unfulfilled)")
    tasks = wait_for_jobs([array_id, merge_id])
    for task in tasks.values():
        assert task["JobState"] == "COMPLETED" and task["ExitCode"] == "0:0", task
    array_end = max(t["EndTime"] for t in tasks.values() if t.get("ArrayJobId") == array_id and "ArrayTaskId" in t)
    assert tasks[merge_id]["StartTime"] >= array_end  # ISO times: the merge started after the whole array ended

    # the array tasks wrote one part per plate; the merge joined them: every well of both plates, both models
    assert sorted(f for f in os.listdir(out / "parts") if f.endswith(".parquet")) == [f"{b}.parquet" for b in barcodes]
    sites = pd.read_csv(os.path.join(plates, "synthetic_sites.csv"))
    df = pd.read_parquet(out / "profiles.parquet")
    assert sorted(zip(df["Metadata_Plate"], df["Metadata_Well"])) == sorted(
        set(zip(sites["Metadata_Plate"], sites["Metadata_Well"]))
    )
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    assert {c.split("_")[0] for c in features} == {"fluo", "bf"}, features[:5]
    assert df[features].notna().all().all()
    assert (out / "submission.csv").is_file()
