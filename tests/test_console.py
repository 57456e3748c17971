"""The `dinov2-cell` console command: its subcommands are the package's `python -m` modules and behave as they do."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import PYTHON, REPO, child_env

from dinov2_cell import console

PACKAGE = os.path.join(REPO, "dinov2_cell")


def _runnable_modules():
    """Every module `python -m` can run: a file with a `__main__` guard, or a package with `__main__.py`."""
    found = set()
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            dotted = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
            if name == "__main__.py":
                found.add(dotted[: -len(".__main__")])
            elif name != "console.py" and re.search(r"^if __name__ == .__main__.:", open(path).read(), re.M):
                found.add(dotted)
    return found


def test_the_commands_are_the_runnable_modules():
    modules = {module for module, _ in console.COMMANDS.values()}
    assert modules == _runnable_modules()
    for name, (module, _) in console.COMMANDS.items():
        assert importlib.util.find_spec(module) is not None, module
        assert name == module.rsplit(".", 1)[-1], name  # named after its module


def test_dispatcher_in_process(capsys):
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (module, _) in console.COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(module)} ", out, re.M), name
    assert console.main([]) == 2 and "usage: dinov2-cell COMMAND" in capsys.readouterr().err
    assert console.main(["nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dinov2-cell: error: unknown command 'nope'; commands: synthetic,")

    # every command's help is its module's (the usage line names the module), exit status 0
    for name, (module, _) in console.COMMANDS.items():
        argv_before = sys.argv[:]
        assert console.main([name, "--help"]) == 0, name
        assert sys.argv == argv_before  # restored
        out = capsys.readouterr().out
        assert out.startswith(f"usage: python -m {module} "), (name, out[:200])
    # the `-` spelling, bad input and the module's own error line and status
    assert console.main(["validate-submission", os.path.join(REPO, "no_such.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m dinov2_cell.profiles.validate_submission: error: ")


def _help(cmd):
    return subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True)


def test_train_help_equals_the_modules_through_python_m_and_the_installed_script():
    module = _help([PYTHON, "-m", "dinov2_cell.run.train", "--help"])
    assert module.returncode == 0 and "--data-root DIR" in module.stdout
    via = _help([PYTHON, "-m", "dinov2_cell.console", "train", "--help"])
    assert (via.returncode, via.stdout, via.stderr) == (0, module.stdout, module.stderr)
    script = os.path.join(os.path.dirname(PYTHON), "dinov2-cell")
    if not os.path.exists(script):
        script = shutil.which("dinov2-cell")
    if not script:
        pytest.skip("the dinov2-cell script is installed by `pip install -e .` (make install); not installed here")
    listed = _help([script, "--help"])
    assert listed.returncode == 0 and "validate_submission" in listed.stdout
    installed = _help([script, "train", "--help"])
    assert (installed.returncode, installed.stdout) == (0, module.stdout)
