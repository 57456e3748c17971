"""benchmarks/fidelity.py: CI and verdict arithmetic against hand computations, post-processing, and a CLI run."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "fidelity.py")


@pytest.fixture(scope="module")
def fid():
    spec = importlib.util.spec_from_file_location("fidelity_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def hand_ci(x):
    x = np.asarray(x, float)
    n = len(x)
    mean = x.sum() / n
    sd = math.sqrt(((x - mean) ** 2).sum() / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, half


def test_t_interval_matches_hand_computation(fid):
    x = [0.21, 0.25, 0.18, 0.30]
    ci = fid.t_interval(x)
    mean, half = hand_ci(x)
    assert ci["n"] == 4
    assert ci["mean"] == pytest.approx(mean, abs=1e-12)
    assert ci["half_width"] == pytest.approx(half, abs=1e-12)
    assert (ci["low"], ci["high"]) == pytest.approx((mean - half, mean + half), abs=1e-12)
    # scipy's own interval as a second reference
    lo, hi = stats.t.interval(0.95, 3, loc=np.mean(x), scale=stats.sem(x))
    assert (ci["low"], ci["high"]) == pytest.approx((lo, hi), abs=1e-12)
    one = fid.t_interval([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["half_width"])


def test_verdicts(fid):
    assert fid.verdict(fid.t_interval([0.05, 0.06, 0.07])) == "holds"
    assert fid.verdict(fid.t_interval([-0.05, -0.06, -0.07])) == "reversed"
    assert fid.verdict(fid.t_interval([-0.05, 0.06, 0.01])) == "unresolved"
    assert fid.verdict(fid.t_interval([0.05])) == "unresolved"  # one seed: no CI, nothing claimed


def _result(arm, seed, knn, mp):
    combos = {c: knn + 0.01 * i for i, c in enumerate(["U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549"])}
    return {"arm": arm, "seed": seed, "knn_mean": knn, "knn": combos, "map_activity": mp, "chance": 0.02}


def test_summarise_paired_differences_and_table(fid):
    ssl = [0.30, 0.26, 0.33]
    rnd = [0.20, 0.22, 0.21]
    results = [_result("ssl", s, v, 0.5) for s, v in enumerate(ssl)]
    results += [_result("random_init", s, v, 0.4 + 0.01 * s) for s, v in enumerate(rnd)]
    results.append(_result("classical", 0, 0.5, 0.6))  # one seed only
    summary = fid.summarise(results)
    mean, half = hand_ci(ssl)
    assert summary["arms"]["ssl"]["knn_mean"]["mean"] == pytest.approx(mean)
    assert summary["arms"]["ssl"]["knn_mean"]["half_width"] == pytest.approx(half)
    combo_mean, combo_half = hand_ci([v + 0.03 for v in ssl])
    assert summary["arms"]["ssl"]["knn A549->A549"]["mean"] == pytest.approx(combo_mean)
    assert summary["arms"]["ssl"]["knn A549->A549"]["half_width"] == pytest.approx(combo_half)
    d = {x["better"] + "-" + x["worse"]: x for x in summary["directions"]}
    diff = np.subtract(ssl, rnd)
    dmean, dhalf = hand_ci(diff)
    entry = d["ssl-random_init"]
    assert entry["seeds"] == [0, 1, 2]
    assert entry["knn_mean"]["diff"]["mean"] == pytest.approx(dmean)
    assert entry["knn_mean"]["diff"]["half_width"] == pytest.approx(dhalf)
    expected = "holds" if dmean - dhalf > 0 else ("reversed" if dmean + dhalf < 0 else "unresolved")
    assert entry["knn_mean"]["verdict"] == expected
    mp_mean, mp_half = hand_ci([0.5 - 0.40, 0.5 - 0.41, 0.5 - 0.42])
    assert entry["map_activity"]["diff"]["mean"] == pytest.approx(mp_mean)
    assert entry["map_activity"]["verdict"] == ("holds" if mp_mean - mp_half > 0 else "unresolved")
    # classical has one seed: its paired comparison has one seed and no verdict
    assert d["ssl-classical"]["seeds"] == [0]
    assert d["ssl-classical"]["knn_mean"]["verdict"] == "unresolved"
    # a direction with a missing arm has no seeds
    assert d["ssl-no_local_aggregation"]["seeds"] == []
    md = fid.format_markdown(summary, {"settings": "test", "incomplete": "", "chance": 0.02, "timings": ""})
    assert f"{100 * mean:.1f} ± {100 * half:.1f}" in md
    assert f"{100 * dmean:.1f} ± {100 * dhalf:.1f}" in md
    assert "50.0 (n=1)" in md


def test_post_process_cls_and_mean(fid):
    rng = np.random.default_rng(0)
    d = 4  # site vector = 2 CLS + 2 patch dims
    meta = pd.DataFrame({"Metadata_Plate": ["P1", "P1"], "Metadata_Well": ["A01", "A02"]})
    values = {}
    for prefix in ("fluo_", "bf_"):
        for pos in range(9):
            for j in range(d):
                values[f"{prefix}p{pos}_{j:04d}"] = rng.normal(size=2)
    df = pd.concat([meta, pd.DataFrame(values)], axis=1)
    cls = fid.post_process(df, "cls", 0.5)
    assert [c for c in cls.columns if c.startswith("fluo_p0_")] == ["fluo_p0_0000", "fluo_p0_0001"]
    assert cls.shape[1] == 2 + 2 * 9 * 2
    mean = fid.post_process(df, "mean", 0.5)
    expected = np.mean([values[f"bf_p{p}_0003"] for p in range(9)], axis=0)
    np.testing.assert_allclose(mean["bf_0003"].to_numpy(), expected)
    assert mean.shape[1] == 2 + 2 * d
    fluo = fid.post_process(df, "fluo", 0.5)
    assert not any(c.startswith("bf_") for c in fluo.columns) and fluo.shape[1] == 2 + 9 * d


def _cli(out, *extra):
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [sys.executable, SCRIPT, "--out", str(out), "--preset", "toy", "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_cli_toy_two_arms_two_seeds_resumes(tmp_path):
    out = tmp_path / "fid"
    args = ["--arms", "random_init,classical", "--seeds", "0,1", "--wells", "12", "--size", "48", "--null-size", "50"]
    proc = _cli(out, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {a: [out / "results" / a / f"seed{s}.json" for s in (0, 1)] for a in ("random_init", "classical")}
    assert all(f.is_file() for fs in files.values() for f in fs)
    summary = json.loads((out / "summary.json").read_text())
    for arm, fs in files.items():
        vals = [json.loads(f.read_text())["knn_mean"] for f in fs]
        mean, half = hand_ci(vals)
        got = summary["arms"][arm]["knn_mean"]
        assert got["mean"] == pytest.approx(mean) and got["half_width"] == pytest.approx(half, nan_ok=True)
    md = (out / "fidelity.md").read_text()
    assert "random_init" in md and "classical" in md and "PARTIAL" not in md
    assert (out / "fidelity.png").stat().st_size > 0
    # rerun: every (arm, seed) is skipped
    before = {f: f.stat().st_mtime_ns for fs in files.values() for f in fs}
    proc = _cli(out, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done earlier, skipped") == 4
    assert before == {f: f.stat().st_mtime_ns for f in before}
    # other settings on the same folder are refused with one error line
    proc = _cli(out, *args[:-4], "--wells", "13", "--size", "48", "--null-size", "50")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "error:" in proc.stderr


def test_cli_bad_arm(tmp_path):
    proc = _cli(tmp_path / "x", "--arms", "random_init,bogus")
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "bogus" in proc.stderr and "Traceback" not in proc.stderr
