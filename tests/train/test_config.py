"""Configs addressable by name as well as by path, from any directory and from an installed (non-editable) package."""

import os
import shutil
import subprocess

import pytest

from helpers import PYTHON, REPO, child_env
from dinov2_cell.train.config import available_configs, build_config, configs_dir, resolve_config_file

EXPERIMENTS = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".yaml"))


def test_every_yaml_in_configs_is_available_by_name():
    assert "cell_default_config" in EXPERIMENTS  # the plugin default: merged always, not an experiment
    assert available_configs() == [n for n in EXPERIMENTS if n != "cell_default_config"]
    assert os.path.samefile(configs_dir(), os.path.join(REPO, "configs"))


def test_name_path_and_repo_relative_path_give_the_same_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # another directory: configs/... does not exist here
    by_path = build_config(os.path.join(REPO, "configs", "cpjump1_vits14_bf.yaml"))
    for spelling in ("cpjump1_vits14_bf", "cpjump1_vits14_bf.yaml", "configs/cpjump1_vits14_bf.yaml"):
        assert build_config(spelling) == by_path, spelling
    assert by_path.student.in_chans == 3 and by_path.student.arch == "vit_small"


def test_a_local_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cpu_fluo").write_text("optim:\n  epochs: 7\n")
    assert build_config("tiny_cpu_fluo").optim.epochs == 7
    assert resolve_config_file("tiny_cpu_fluo") == "tiny_cpu_fluo"


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(FileNotFoundError) as e:
        build_config("cpjump1_vits14_fluoo")
    message = str(e.value)
    assert "'cpjump1_vits14_fluoo'" in message and all(n in message for n in available_configs())
    with pytest.raises(FileNotFoundError, match="no such file or packaged config 'elsewhere/x.yaml'"):
        resolve_config_file("elsewhere/x.yaml")  # a path outside configs/ is never looked up by name


def test_installed_package_resolves_names_from_any_directory(tmp_path):
    """A non-editable install (pip --target) of a copy of the source tree carries every config inside the package."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "demo_output", ".pytest*")
    shutil.copytree(REPO, source, ignore=ignore)
    site = tmp_path / "site"
    pip = [PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", site]
    proc = subprocess.run([*pip, str(source)], capture_output=True, text=True, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(source)  # nothing may be read from the source tree
    script = """
from dinov2_cell.train.config import available_configs, build_config, configs_dir
import dinov2_cell
print(dinov2_cell.__file__)
print(configs_dir())
print(",".join(available_configs()))
print(build_config("cpjump1_vits14_fluo").student.in_chans, build_config("configs/tiny_cpu_bf.yaml").student.in_chans)
"""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [PYTHON, "-c", script], cwd=elsewhere, env=child_env(PYTHONPATH=str(site)), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    package, folder, names, chans = proc.stdout.strip().splitlines()
    assert package == str(site / "dinov2_cell" / "__init__.py")
    assert folder == str(site / "dinov2_cell" / "configs")
    assert names.split(",") == available_configs() and chans == "5 3"


# --- train.batch_size_total: the paper's total batch (and so its lr) whatever the GPU count ---------------------

PAPER = ("cpjump1_vits14_fluo", "cpjump1_vits14_bf", "cpjump1_vitb14_fluo", "cpjump1_vitb14_bf")


def _scaled(cfg, world_size, monkeypatch):
    """The config after the batch derivation and upstream's own lr scaling rule, on `world_size` processes."""
    import dinov2.distributed
    from dinov2.utils.config import apply_scaling_rules_to_cfg

    from dinov2_cell.train.config import apply_batch_size_total

    monkeypatch.setattr(dinov2.distributed, "get_global_size", lambda: world_size)
    return apply_scaling_rules_to_cfg(apply_batch_size_total(cfg, world_size))


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("world_size,per_gpu", [(1, 128), (4, 32), (8, 16)])
def test_paper_configs_keep_total_batch_128_and_lr_2e_5_on_any_gpu_count(name, world_size, per_gpu, monkeypatch):
    from dinov2_cell.train.config import effective_batch_message

    cfg = _scaled(build_config(name), world_size, monkeypatch)
    assert cfg.train.batch_size_total == 128 and cfg.train.batch_size_per_gpu == per_gpu
    assert cfg.optim.lr == pytest.approx(5.657e-05 * (128 / 1024) ** 0.5, rel=1e-12)  # hand: sqrt_wrt_1024 rule
    assert cfg.optim.lr == pytest.approx(2e-5, rel=1e-4)  # the paper's lr
    assert effective_batch_message(cfg, world_size) == (
        f"effective batch 128 = {world_size} process{'es' if world_size > 1 else ''} (GPUs) x {per_gpu} "
        "(train.batch_size_total=128), lr 2e-05 (optim.base_lr 5.657e-05, scaling rule sqrt_wrt_1024)"
    )


def test_a_world_size_that_does_not_divide_the_total_is_refused():
    from dinov2_cell.train.config import per_gpu_batch_size

    cfg = build_config("cpjump1_vits14_fluo")
    with pytest.raises(ValueError) as e:
        per_gpu_batch_size(cfg, 3)
    assert str(e.value).startswith("train.batch_size_total=128 does not divide over 3 training processes (GPUs)")
    assert "train.batch_size_total=null" in str(e.value)  # the opt-out is named
    for bad in ("train.batch_size_total=0", "train.batch_size_total=-8", "train.batch_size_total=1.5"):
        with pytest.raises(ValueError, match="must be a positive integer or null"):
            per_gpu_batch_size(build_config("cpjump1_vits14_fluo", [bad]), 1)


def test_opt_out_null_trains_batch_size_per_gpu_on_every_gpu_as_upstream(monkeypatch):
    from dinov2_cell.train.config import effective_batch_message

    cfg = _scaled(build_config("cpjump1_vits14_fluo", ["train.batch_size_total=null"]), 8, monkeypatch)
    assert cfg.train.batch_size_per_gpu == 32
    assert cfg.optim.lr == pytest.approx(5.657e-05 * (256 / 1024) ** 0.5, rel=1e-12)
    assert effective_batch_message(cfg, 8) == (
        "effective batch 256 = 8 processes (GPUs) x 32 (train.batch_size_total=null: train.batch_size_per_gpu on "
        "every GPU), lr 2.829e-05 (optim.base_lr 5.657e-05, scaling rule sqrt_wrt_1024)"
    )
    cfg = build_config("cpjump1_vits14_fluo", ["train.batch_size_total=null", "train.batch_size_per_gpu=16"])
    assert _scaled(cfg, 3, monkeypatch).train.batch_size_per_gpu == 16  # any GPU count once opted out
    # the plugin default is upstream's behaviour: the tiny configs keep their per-GPU batch
    assert build_config("tiny_cpu_fluo").train.batch_size_total is None


def test_world_size_known_before_launch_and_refusal_before_anything_is_written(tmp_path, monkeypatch):
    from dinov2_cell.run.train import get_args_parser
    from dinov2_cell.train.config import launch_world_size, prepare_config

    parse = get_args_parser().parse_intermixed_args
    assert launch_world_size(parse([]), environ={}) == 1
    assert launch_world_size(parse([]), environ={"WORLD_SIZE": "8"}) == 8  # torchrun
    assert launch_world_size(parse([]), environ={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "6"}) == 6  # srun task
    assert launch_world_size(parse(["--slurm", "--nodes", "2", "--gpus-per-node", "4"]), environ={}) == 8
    assert launch_world_size(parse(["--slurm", "--gpus-per-node", "3", "--submitit-cluster", "local"])) == 1

    out = tmp_path / "run"
    monkeypatch.setenv("CPJUMP1_ROOT", "/data")  # the paper configs' dataset root (prepare_config refuses it unset)
    args = parse(["--config-file", "cpjump1_vits14_fluo", "--out", str(out), "--slurm", "--gpus-per-node", "3"])
    with pytest.raises(ValueError, match="does not divide over 3"):
        prepare_config(args)
    # a per-GPU batch on the command line would be replaced silently: refused, with the opt-out named
    args = parse(["--config-file", "cpjump1_vits14_fluo", "--out", str(out), "train.batch_size_per_gpu=16"])
    with pytest.raises(ValueError, match=r"train.batch_size_per_gpu=16 has no effect .* train.batch_size_total=null"):
        prepare_config(args)
    assert not out.exists()
    args = parse(["--config-file", "cpjump1_vits14_fluo", "--out", str(out), "train.batch_size_per_gpu=16"])
    args.opts.append("train.batch_size_total=null")
    assert prepare_config(args).train.batch_size_per_gpu == 16


def test_resume_on_another_gpu_count_with_the_same_total_is_the_same_run(tmp_path, monkeypatch):
    from dinov2_cell.train.config import apply_batch_size_total, check_output_dir, write_config

    monkeypatch.setenv("CPJUMP1_ROOT", "/data")  # resolved when the configs are compared
    saved = apply_batch_size_total(build_config("cpjump1_vits14_fluo"), 8)  # what setup() wrote on 8 GPUs
    write_config(saved, str(tmp_path))
    assert check_output_dir(build_config("cpjump1_vits14_fluo"), str(tmp_path)) is True
    with pytest.raises(FileExistsError, match="train.batch_size_total"):
        check_output_dir(build_config("cpjump1_vits14_fluo", ["train.batch_size_total=256"]), str(tmp_path))


def test_cli_refuses_an_indivisible_total_in_one_line_before_submitting(tmp_path):
    out = tmp_path / "run"
    argv = ["--config-file", "cpjump1_vits14_fluo", "--out", str(out), "--slurm", "--gpus-per-node", "3"]
    proc = subprocess.run(
        [PYTHON, "-m", "dinov2_cell.run.train", *argv], cwd=tmp_path, env=child_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: train.batch_size_total=128 does not divide over 3" in lines[0], lines
    assert not out.exists()
