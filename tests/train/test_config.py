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
