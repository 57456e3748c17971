"""Checks before a long training: `run.train --check` opens the data, `--data-root`, an unset CPJUMP1_ROOT and
warm-ups longer than the run are one `error:` line (for `--check` and for a real run), and nothing is written."""

import glob
import os
import re
import subprocess

import pandas as pd
import pytest

from helpers import PYTHON, REPO, child_env

TRAIN = [PYTHON, "-m", "dinov2_cell.run.train"]
ERROR = "python -m dinov2_cell.run.train: error: "


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    out = tmp_path_factory.mktemp("plates")
    generate_plates(out, plates=2, wells=4, sites=4, size=32, missing_sites=0.25, seed=0, progress=False)
    return str(out)


def _run(args, cwd=REPO, **env):
    environ = {k: v for k, v in child_env(OMP_NUM_THREADS=1).items() if k != "CPJUMP1_ROOT"}
    environ.update(env)
    return subprocess.run(TRAIN + args, cwd=cwd, env=environ, capture_output=True, text=True)


@pytest.fixture()
def run_here(capsys, monkeypatch):
    """`main` in this process under the CLI's error policy (no interpreter start-up): (status, stdout, stderr)."""
    from dinov2_cell.cli import run_main
    from dinov2_cell.run.train import PROG, main

    def run(args, cwd=REPO, **env):
        monkeypatch.chdir(cwd)
        monkeypatch.delenv("CPJUMP1_ROOT", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        status = run_main(main, list(args), prog=PROG)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, out, err)

    return run


def _one_error_line(proc):
    # log lines (the dataset's INFO summary) may come first; the rest is exactly one error line
    lines = [line for line in proc.stderr.strip().splitlines() if not re.match(r"\d\d:\d\d:\d\d INFO ", line)]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(ERROR), proc.stderr
    return lines[0][len(ERROR) :]


def test_check_opens_the_data_of_the_resolved_dataset_string(plates, tmp_path, run_here):
    # the reference count: one LoadData row per site
    sites = sum(len(pd.read_csv(f)) for f in glob.glob(os.path.join(plates, "load_data_csv", "*", "*", "*.csv")))
    out = tmp_path / "run"
    base = ["--check", "--config-file", "cpjump1_vits14_fluo", "--out", str(out)]
    proc = _run(base + ["--data-root", plates], cwd=tmp_path)  # the real entry point once
    assert proc.returncode == 0, proc.stderr
    assert f"data CPJUMP1: 2 plate(s), {sites} sites, channels DNA,ER,RNA,AGP,Mito (= student.in_chans)" in proc.stdout
    assert "first site of each plate read (32x32)" in proc.stdout
    # the root from the environment variable the paper configs read, as a relative path from the working dir
    proc = run_here(base, cwd=os.path.dirname(plates), CPJUMP1_ROOT=os.path.basename(plates))
    assert proc.returncode == 0 and f"{sites} sites" in proc.stdout, proc.stderr

    bad = {
        ("--data-root", str(tmp_path / "nowhere")): f"train.dataset_path: root={tmp_path / 'nowhere'}: no such file",
        ("--data-root", plates, "train.dataset_path=CPJUMP1:channels=fluo:plates=BR00116991,BR09"): "BR09",
        ("--data-root", plates, "train.dataset_path=CPJUMP1:channels=bf"): "gives 3-channel images (Brightfield,",
    }
    for extra, expected in bad.items():
        assert expected in _one_error_line(run_here(base + list(extra), cwd=tmp_path)), extra
    assert not out.exists()


def test_unset_root_and_long_warmups_are_one_line_for_check_and_for_a_run(plates, tmp_path, run_here):
    out = tmp_path / "run"
    for check in (["--check"], []):
        args = check + ["--config-file", "cpjump1_vits14_fluo", "--out", str(out)]
        # a real run through the real entry point once; the other cases in this process
        message = _one_error_line((run_here if check else _run)(args, cwd=tmp_path))
        assert message == (
            "train.dataset_path reads its dataset root from the environment variable CPJUMP1_ROOT, which is not set: "
            "export CPJUMP1_ROOT=/path/to/the/plates, or pass --data-root /path/to/the/plates"
        )
        # the shortened paper config: upstream's cosine scheduler would assert on the 10-epoch lr warm-up
        message = _one_error_line(run_here(args + ["--data-root", plates, "optim.epochs=1"], cwd=tmp_path))
        assert message.startswith(
            "warm-up longer than the run: optim.warmup_epochs=10, teacher.warmup_teacher_temp_epochs=30 > "
            "optim.epochs=1; each warm-up must be <= optim.epochs"
        )
        assert "optim.warmup_epochs=0 teacher.warmup_teacher_temp_epochs=0" in message  # the suggested fix
        message = _one_error_line(run_here(args + ["--data-root", plates, "optim.freeze_last_layer_epochs=200"]))
        assert "optim.freeze_last_layer_epochs=200 > optim.epochs=100" in message
    assert not out.exists()


def _cfg(*opts):
    from dinov2_cell.train.config import build_config

    cfg = build_config("tiny_cpu_fluo", ["train.OFFICIAL_EPOCH_LENGTH=3", *opts])
    cfg.optim.lr = 1e-3
    return cfg


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_warmup_rule_is_exactly_where_upstreams_lr_schedule_fails(epochs):
    from dinov2.train.train import build_schedulers

    from dinov2_cell.train.config import check_schedules

    for warmup in range(0, epochs + 3):
        cfg = _cfg(f"optim.epochs={epochs}", f"optim.warmup_epochs={warmup}")
        try:
            build_schedulers(cfg)
            upstream_ok = True
        except AssertionError:
            upstream_ok = False
        try:
            check_schedules(cfg)
            ours_ok = True
        except ValueError as e:
            ours_ok = False
            assert f"optim.warmup_epochs={warmup} > optim.epochs={epochs}" in str(e)
        assert ours_ok == upstream_ok == (warmup <= epochs), (epochs, warmup)

    # the teacher-temperature warm-up and the last-layer freeze do not assert upstream; longer than the run they
    # never end: the final temperature is never reached, the last layer never trains
    cfg = _cfg(
        f"optim.epochs={epochs}", f"teacher.warmup_teacher_temp_epochs={epochs + 1}", "teacher.warmup_teacher_temp=0.04"
    )
    temp = build_schedulers(cfg)[3]
    assert temp[epochs * 3 - 1] != cfg.teacher.teacher_temp
    cfg = _cfg(f"optim.epochs={epochs}", f"optim.freeze_last_layer_epochs={epochs + 1}")
    assert max(build_schedulers(cfg)[4].schedule) == 0
    for key in ("teacher.warmup_teacher_temp_epochs", "optim.freeze_last_layer_epochs"):
        with pytest.raises(ValueError, match=rf"{key}={epochs + 1} > optim.epochs={epochs}"):
            check_schedules(_cfg(f"optim.epochs={epochs}", f"{key}={epochs + 1}"))
        check_schedules(_cfg(f"optim.epochs={epochs}", f"{key}={epochs}", f"optim.warmup_epochs={epochs}"))
    for bad in ("optim.warmup_epochs=-1", "optim.warmup_epochs=0.5", "optim.epochs=0", "train.OFFICIAL_EPOCH_LENGTH=0"):
        with pytest.raises(ValueError, match=bad.split("=")[0].replace(".", r"\.")):
            check_schedules(_cfg(bad))


def test_data_root_replaces_the_root_of_the_dataset_string():
    from omegaconf import OmegaConf

    from dinov2_cell.train.config import set_dataset_root, split_dataset_str

    raw = "CPJUMP1:root=${oc.env:CPJUMP1_ROOT}:channels=fluo"
    assert split_dataset_str(raw) == ["CPJUMP1", "root=${oc.env:CPJUMP1_ROOT}", "channels=fluo"]
    cases = {
        raw: "CPJUMP1:root=/d/x:channels=fluo",
        "CPJUMP1:channels=bf:normalize=plate": "CPJUMP1:root=/d/x:channels=bf:normalize=plate",
        "CPJUMP1:store=/s:root=old": "CPJUMP1:store=/s:root=/d/x",
    }
    for before, after in cases.items():
        cfg = OmegaConf.create({"train": {"dataset_path": before}})
        assert set_dataset_root(cfg, "/d/x").train.dataset_path == after
    with pytest.raises(ValueError, match="':'"):
        set_dataset_root(OmegaConf.create({"train": {"dataset_path": raw}}), "C:/data")
