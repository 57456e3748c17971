"""benchmarks/mutation.py (``make mutation``): its CLI, the mutmut config it writes, and its result parsing.

mutmut itself is not run here (minutes per module); docs/testing.md holds the measured runs.
"""

import importlib.util
import os
import subprocess

import pytest

from helpers import PYTHON, REPO

SCRIPT = os.path.join(REPO, "benchmarks", "mutation.py")


@pytest.fixture(scope="module")
def mutation():
    spec = importlib.util.spec_from_file_location("mutation_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_core_module_and_test_file_exists(mutation):
    assert set(mutation.MODULES) == {
        "train/local_aggregation.py",
        "augment/",
        "profiles/merge.py",
        "profiles/submission.py",
        "eval/knn_wells.py",
        "eval/map.py",
        "data/store.py",
        "patches/fsdp.py",
        "train/health.py",
    }
    for module, tests in mutation.MODULES.items():
        source = module if module.startswith("patches/") else os.path.join("dinov2_cell", module)
        assert os.path.exists(os.path.join(REPO, source)), module
        assert tests and all(os.path.isfile(os.path.join(REPO, t)) for t in tests), module


def test_config_mutates_one_module_against_its_tests(mutation, tmp_path):
    assert mutation.source_glob("augment/") == "dinov2_cell/augment/*"
    assert mutation.source_glob("patches/fsdp.py") == "dinov2_cell/patches/fsdp.py"  # the name it is imported under
    mutation.write_config(tmp_path, "eval/map.py", ["tests/eval/test_eval_map.py", "tests/eval/test_map_copairs.py"])
    from configparser import ConfigParser

    cfg = ConfigParser()
    cfg.read(tmp_path / "setup.cfg")
    assert cfg.get("mutmut", "only_mutate") == "dinov2_cell/eval/map.py"
    assert cfg.get("mutmut", "source_paths") == "dinov2_cell"
    selection = cfg.get("mutmut", "pytest_add_cli_args_test_selection").split()
    assert selection == ["tests/eval/test_eval_map.py", "tests/eval/test_map_copairs.py"]


def test_results_parsing_and_score(mutation):
    text = "\n".join(
        [
            "    dinov2_cell.m.x_f__mutmut_1: killed",
            "    dinov2_cell.m.x_f__mutmut_2: survived",
            "    dinov2_cell.m.x_g__mutmut_1: timeout",
            "    dinov2_cell.m.x_g__mutmut_2: no tests",
            "    dinov2_cell.m.x_g__mutmut_3: skipped",
            "not a result line",
        ]
    )
    statuses = mutation.parse_results(text)
    assert statuses == {
        "dinov2_cell.m.x_f__mutmut_1": "killed",
        "dinov2_cell.m.x_f__mutmut_2": "survived",
        "dinov2_cell.m.x_g__mutmut_1": "timeout",
        "dinov2_cell.m.x_g__mutmut_2": "no tests",
        "dinov2_cell.m.x_g__mutmut_3": "skipped",
    }
    s = mutation.score(statuses)
    # killed + timeout over the mutants that were not skipped: 2 / 4
    assert s["score"] == 0.5 and s["total"] == 5 and s["killed"] == 1 and s["no tests"] == 1
    assert mutation.score({})["score"] is None


def test_cli_help_and_bad_input(tmp_path):
    ok = subprocess.run([PYTHON, SCRIPT, "--help"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "never modified" in ok.stdout and "--max-children" in ok.stdout
    for args, what in (
        (["nosuch.py"], "unknown module(s) ['nosuch.py']"),
        (["profiles/merge.py", "--work", os.path.join(REPO, "mut")], "lies inside the repository"),
        (["profiles/merge.py", "--max-children", "0", "--work", str(tmp_path)], "--max-children must be >= 1"),
    ):
        bad = subprocess.run([PYTHON, SCRIPT, *args], capture_output=True, text=True, cwd=REPO)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1, bad.stderr
        assert lines[0].startswith("python benchmarks/mutation.py: error:") and what in lines[0]
    assert not os.path.exists(os.path.join(REPO, "mut")) and not os.listdir(tmp_path)


def test_sample_is_seeded_uniform_and_the_interval_is_wilsons(mutation):
    names = [f"m.x_f__mutmut_{i}" for i in range(200)]
    a = mutation.sample_names(names, 30, seed=3)
    assert a == mutation.sample_names(list(reversed(names)), 30, seed=3)  # the order given does not matter
    assert len(a) == len(set(a)) == 30 and a == sorted(a) and set(a) <= set(names)
    assert a != mutation.sample_names(names, 30, seed=4)
    assert mutation.sample_names(names, None, 0) == sorted(names) == mutation.sample_names(names, 500, 0)
    # Wilson interval by hand for 45 of 50: p = 0.9, z = 1.96
    z, n, p = 1.96, 50, 0.9
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * (p * (1 - p) / n + z**2 / (4 * n**2)) ** 0.5
    low, high = mutation.wilson_interval(45, 50)
    assert low == pytest.approx(centre - half) and high == pytest.approx(centre + half)
    assert low == pytest.approx(0.7864, abs=1e-4) and high == pytest.approx(0.9565, abs=1e-4)  # worked out by hand
    assert mutation.wilson_interval(0, 0) == (0.0, 1.0) and mutation.wilson_interval(10, 10)[1] == 1.0
    row = {"module": "eval/knn_wells.py", "killed": 40, "survived": 5, "no tests": 0, "timeout": 5, "suspicious": 0}
    row.update(total=50, score=0.9, seconds=12.0, sampled_from=970, interval=(0.7864, 0.9565))
    assert "sample of 50 of 970 mutants, 95 % 79-96 %" in mutation.format_row(row)
