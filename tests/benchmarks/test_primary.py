"""benchmarks/primary.py: the pre-registered test's statistics against independent references, and a CLI run."""

import hashlib
import importlib.util
import itertools
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
SCRIPT = os.path.join(REPO, "benchmarks", "primary.py")


@pytest.fixture(scope="module")
def prim():
    spec = importlib.util.spec_from_file_location("primary_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "diffs", [[0.03, 0.01, -0.02, 0.05, 0.04], [0.1, 0.2, 0.3], [-0.01, 0.02, -0.03, 0.0, 0.05, 0.01]]
)
def test_sign_flip_p_matches_scipy_exact_permutation_test(prim, diffs):
    ref = stats.permutation_test(
        (np.asarray(diffs),), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    )
    # scipy doubles the smaller one-sided p; with a symmetric null this is the |mean| rule
    assert prim.sign_flip_p(diffs) == pytest.approx(ref.pvalue, abs=1e-12)


def test_sign_flip_p_by_hand(prim):
    # 3 positive differences: only the identity and the full flip reach |mean| -> 2 / 8
    assert prim.sign_flip_p([1.0, 2.0, 3.0]) == 2 / 8
    # [1, -1]: every sign vector has |mean| in {0, 1}; the observed is 0 -> all 4 count
    assert prim.sign_flip_p([1.0, -1.0]) == 1.0
    assert math.isnan(prim.sign_flip_p([]))
    with pytest.raises(ValueError, match="too many"):
        prim.sign_flip_p([0.1] * 21)


def test_holm_matches_statsmodels(prim):
    from statsmodels.stats.multitest import multipletests

    for p in ([0.01, 0.04], [0.04, 0.01], [0.03, 0.02, 0.5, 0.001], [0.6, 0.7]):
        assert prim.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-12)


def test_seeds_for_power_matches_statsmodels(prim):
    from statsmodels.stats.power import TTestPower

    for sd, delta in ((0.05, 0.03), (0.02, 0.032), (0.1, 0.01)):
        n = TTestPower().solve_power(effect_size=delta / sd, alpha=0.05, power=0.8, alternative="two-sided")
        assert prim.seeds_for_power(sd, delta) == math.ceil(n)
    assert math.isinf(prim.seeds_for_power(0.05, 0.0))
    assert math.isinf(prim.seeds_for_power(float("nan"), 0.1))


def test_site_cosine_gap_matches_brute_force(prim):
    rng = np.random.default_rng(0)
    wells, sites, dim = 7, 4, 5
    centres = rng.normal(size=(wells, 1, dim))
    x = centres + 0.7 * rng.normal(size=(wells, sites, dim))
    df = pd.DataFrame({f"fluo_p{p}_{j}": x[:, p, j] for p in range(sites) for j in range(dim)})
    df["Metadata_Well"] = [f"A{i:02d}" for i in range(wells)]
    got = prim.site_cosine_gap(df)
    v = x.reshape(-1, dim) - x.reshape(-1, dim).mean(axis=0)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    well = np.repeat(np.arange(wells), sites)
    within_per_well = []
    between = []
    for w in range(wells):
        idx = np.flatnonzero(well == w)
        within_per_well.append(np.mean([v[i] @ v[j] for i, j in itertools.combinations(idx, 2)]))
    for i, j in itertools.combinations(range(len(v)), 2):
        if well[i] != well[j]:
            between.append(v[i] @ v[j])
    assert got["within"] == pytest.approx(np.mean(within_per_well), abs=1e-12)
    assert got["between"] == pytest.approx(np.mean(between), abs=1e-12)
    assert got["gap"] > 0  # sites share their well's centre
    with pytest.raises(ValueError, match="concat-mode"):
        prim.site_cosine_gap(df.rename(columns=lambda c: c.replace("fluo_", "bf_")))


def _res(arm, seed, knn):
    return {
        "arm": arm,
        "seed": seed,
        "knn_mean": knn,
        "map_mean": knn / 2,
        "map_retrieved": knn,
        "knn_mean_raw": knn,
        "site_cosine_gap": 0.1,
    }


def test_summarise_contrasts_holm_and_verdicts(prim):
    rng = np.random.default_rng(1)
    rows = []
    for s in range(10):
        base = 0.2 + 0.02 * rng.normal()
        rows += [_res("random_init", s, base), _res("ssl_nola", s, base + 0.001 * rng.normal())]
        rows.append(_res("ssl_la", s, base + 0.05))  # +5 points on every seed
    summary = prim.summarise(rows)
    la_rand, la_nola = summary["contrasts"]
    assert la_rand["knn_mean"]["sign_flip_p"] == 2 / 1024
    assert la_rand["knn_mean"]["verdict"] == "holds"
    assert la_rand["knn_mean"]["holm_p"] == pytest.approx(
        prim.holm([la_rand["knn_mean"]["sign_flip_p"], la_nola["knn_mean"]["sign_flip_p"]])[0]
    )
    assert la_rand["knn_mean"]["per_seed"] == pytest.approx([0.05] * 10, abs=1e-12)
    # identical arms on every seed: the difference is exactly 0, nothing can be shown
    rows = [_res(a, s, 0.3) for s in range(4) for a in ("random_init", "ssl_nola", "ssl_la")]
    assert {c["knn_mean"]["verdict"] for c in prim.summarise(rows)["contrasts"]} == {"not shown"}


def test_cli_smoke_resumes_and_reports(tmp_path):
    out = tmp_path / "p"
    cmd = [sys.executable, SCRIPT, "--out", str(out), "--iterations", "10", "--checkpoint-every", "10"]
    cmd += ["--plates-per-line", "2", "--wells", "12", "--size", "48", "--seeds", "5,6", "--null-size", "100"]
    cmd += ["--jobs", "2", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "primary.json").read_text())
    assert {r["arm"] for r in summary["results"]} == {"random_init", "ssl_nola", "ssl_la"}
    assert sorted({r["seed"] for r in summary["results"]}) == [5, 6]
    for r in summary["results"]:
        assert 0 <= r["knn_mean"] <= 1 and r["n_wells"] == 48
    md = (out / "primary.md").read_text()
    design = open(os.path.join(REPO, "benchmarks", "results", "primary_design.md"), "rb").read()
    assert "Holm p" in md and summary["meta"]["design_sha256"] == hashlib.sha256(design).hexdigest()
    assert (out / "primary.png").stat().st_size > 0
    nola_log = (out / "seed5" / "runs" / "ssl_nola.log").read_text()
    assert "loss_weight: 0.0, koleo_loss_weight: 1.0" in nola_log  # the ablation keeps the second-view KoLeo
    # a rerun resumes: nothing is retrained and the results are unchanged
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "model ssl_la done" not in again.stdout
    assert json.loads((out / "primary.json").read_text())["results"] == summary["results"]
    # the probe along training: the final iteration reuses the primary result, the report gets the curve
    probe = subprocess.run(cmd + ["--probe", "--probe-iterations", "10"], cwd=REPO, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-3000:]
    curves = json.loads((out / "primary.json").read_text())["probe"]
    by_seed = {r["seed"]: r["knn_mean"] for r in summary["results"] if r["arm"] == "ssl_la"}
    assert sorted(curves["ssl_la"]["10"]) == sorted(by_seed.values())
    assert "kNN probe along training" in (out / "primary.md").read_text()
    # other settings in the same folder are refused, naming the file
    bad = subprocess.run(cmd[:4] + ["--iterations", "20"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "settings.json" in bad.stderr
