"""Challenge kNN protocol: folds, splits, equality with a plain scikit-learn reference, planted structure, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from dinov2_cell.eval import knn_wells


def test_make_folds_round_robin_and_leave_one_plate_out():
    plates = [f"BR{i}" for i in range(8)]
    folds = knn_wells.make_folds(plates, 5)
    assert folds == [["BR0", "BR5"], ["BR1", "BR6"], ["BR2", "BR7"], ["BR3"], ["BR4"]]
    assert knn_wells.make_folds(["b", "a", "c"], 5) == [["a"], ["b"], ["c"]]
    shuffled = knn_wells.make_folds(plates, 5, seed=1)
    assert sorted(p for f in shuffled for p in f) == sorted(plates)


def test_splits_never_train_on_test_plates():
    folds = {"U2OS": knn_wells.make_folds(list("abcdef"), 5), "A549": knn_wells.make_folds(list("ghi"), 5)}
    combos = knn_wells.DEFAULT_COMBINATIONS
    out = knn_wells.splits(folds, combos)
    assert len(out) == 5 + 3 + 5 + 3  # folds of the target cell line per combination
    for source, target, f, train, test in out:
        assert not set(train) & set(test)
        src_plates = {p for fold in folds[source] for p in fold}
        assert set(train) <= src_plates
        held = folds[source][f % len(folds[source])]
        assert set(train) == src_plates - set(held)
        assert set(test) == set(folds[target][f])


def test_cross_line_train_all_trains_cross_line_combinations_on_every_source_plate():
    folds = {"U2OS": knn_wells.make_folds(list("abcdef"), 5), "A549": knn_wells.make_folds(list("ghi"), 5)}
    out = knn_wells.splits(folds, knn_wells.DEFAULT_COMBINATIONS, cross_line_train="all")
    assert len(out) == 5 + 3 + 5 + 3
    default = knn_wells.splits(folds, knn_wells.DEFAULT_COMBINATIONS)
    assert default == knn_wells.splits(folds, knn_wells.DEFAULT_COMBINATIONS, cross_line_train="fold")
    for (source, target, f, train, test), old in zip(out, default):
        assert not set(train) & set(test)
        if source == target:  # within a line: plate-wise cross-validation either way
            assert (source, target, f, train, test) == old
        else:
            assert train == sorted(p for fold in folds[source] for p in fold) and test == old[4]
    with pytest.raises(ValueError, match="cross_line_train"):
        knn_wells.splits(folds, knn_wells.DEFAULT_COMBINATIONS, cross_line_train="none")


def _sklearn_reference(df, k, metric, weights, cross_line_train="fold"):
    """Straightforward re-implementation: same folds, KNeighborsClassifier, accuracy and macro-F1 per fold."""
    df = df[df["Metadata_pert_iname"] != "DMSO"]
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    scores = {}
    for line_s in ("U2OS", "A549"):
        for line_t in ("U2OS", "A549"):
            src = sorted(df.loc[df["Metadata_cell_line"] == line_s, "Metadata_Plate"].unique())
            tgt = sorted(df.loc[df["Metadata_cell_line"] == line_t, "Metadata_Plate"].unique())
            acc, f1 = [], []
            for f in range(5):
                test = tgt[f::5]
                held = src[f::5] if line_s == line_t or cross_line_train == "fold" else []
                train = [p for p in src if p not in held]
                tr, te = df[df["Metadata_Plate"].isin(train)], df[df["Metadata_Plate"].isin(test)]
                clf = KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights, algorithm="brute")
                pred = clf.fit(tr[feats], tr["Metadata_broad_sample"]).predict(te[feats])
                acc.append(np.mean(pred == te["Metadata_broad_sample"].to_numpy()))
                y = te["Metadata_broad_sample"].to_numpy()
                f1.append(f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0))
            scores[f"{line_s}->{line_t}"] = (np.mean(acc), np.mean(f1))
    return scores


@pytest.mark.parametrize("cross_line_train", ["fold", "all"])
@pytest.mark.parametrize("k,metric,weights", [(1, "cosine", "uniform"), (3, "euclidean", "distance")])
def test_scores_equal_sklearn_reference(make_planted, k, metric, weights, cross_line_train):
    make, _ = make_planted
    df = make(noise=2.0, seed=3)  # noisy enough that scores are neither 0 nor 1
    result = knn_wells.evaluate(df, k=k, metric=metric, weights=weights, cross_line_train=cross_line_train)
    assert result["config"]["cross_line_train"] == cross_line_train
    ref = _sklearn_reference(df, k, metric, weights, cross_line_train)
    assert set(result["combinations"]) == set(ref)
    for name, (acc, f1) in ref.items():
        assert result["combinations"][name]["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert result["combinations"][name]["macro_f1"] == pytest.approx(f1, abs=1e-12)
    assert result["mean"]["accuracy"] == pytest.approx(np.mean([a for a, _ in ref.values()]))
    assert 0.05 < result["mean"]["accuracy"] < 0.95


def test_planted_beats_shuffled_beats_nothing(make_planted, planted):
    make, shuffle = make_planted
    chance = 1 / 12
    good = knn_wells.evaluate(planted)["mean"]["accuracy"]
    shuffled = knn_wells.evaluate(shuffle(planted))["mean"]["accuracy"]
    noise = knn_wells.evaluate(make(structure=0.0))["mean"]["accuracy"]
    assert good > 0.9
    assert shuffled < 3 * chance and noise < 3 * chance
    assert good > shuffled and good > noise


def test_normalisation_keeps_planted_signal(planted):
    for method in ("standardize", "robustize", "spherize"):
        assert knn_wells.evaluate(planted, normalize=method)["mean"]["accuracy"] > 0.8, method


def test_missing_cell_line_is_skipped_and_reported(planted):
    u2os = planted[planted["Metadata_cell_line"] == "U2OS"]
    result = knn_wells.evaluate(u2os)
    assert list(result["combinations"]) == ["U2OS->U2OS"]
    assert result["skipped"] == ["U2OS->A549", "A549->U2OS", "A549->A549"]


def test_bad_profiles_fail_clearly(planted):
    bad = planted.copy()
    bad.loc[3, "f05"] = np.nan
    with pytest.raises(ValueError, match="'f05'"):
        knn_wells.evaluate(bad)
    with pytest.raises(ValueError, match="Metadata_cell_line"):
        knn_wells.evaluate(planted.drop(columns="Metadata_cell_line"))
    no_dmso = planted[~((planted["Metadata_Plate"] == "PL002") & (planted["Metadata_pert_iname"] == "DMSO"))]
    with pytest.raises(ValueError, match="plate PL002: 0 DMSO"):
        knn_wells.evaluate(no_dmso, normalize="standardize")
    with pytest.raises(ValueError, match="weights"):
        knn_wells.evaluate(planted, weights="gaussian")


def test_cli_help_and_tiny_run(tmp_path, planted):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dinov2_cell.eval.knn_wells"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "--normalize" in out.stdout and "--cross-line-train {fold,all}" in out.stdout
    profiles = tmp_path / "profiles.csv"
    planted.to_csv(profiles, index=False)
    args = [str(profiles), "--out", str(tmp_path / "res"), "--map", "--null-size", "50"]
    args += ["--map-cache-dir", str(tmp_path / "cache")]
    out = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "U2OS->A549" in out.stdout and "activity" in out.stdout
    res = tmp_path / "res"
    folds = pd.read_csv(res / "knn_folds.csv")
    assert len(folds) == 4 * 5  # 4 combinations x 5 folds (5 U2OS and 6 A549 plates)
    assert set(folds["combination"]) == {"U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549"}
    summary = json.loads((res / "knn.json").read_text())
    assert summary["mean"]["accuracy"] > 0.9
    assert (res / "map_activity.csv").exists() and json.loads((res / "map.json").read_text())["activity"]
    with pytest.raises(FileExistsError, match="overwrite"):  # in-process: a third interpreter start costs ~5 s
        knn_wells.main(args)
    assert summary["config"]["cross_line_train"] == "fold"  # the default
    assert knn_wells.main([str(profiles), "--out", str(tmp_path / "all"), "--cross-line-train", "all"]) == 0
    rows = json.loads((tmp_path / "all" / "knn.json").read_text())["folds"]
    plates_of = {line: [f"PL{i:03d}" for i in r] for line, r in (("U2OS", range(5)), ("A549", range(5, 11)))}
    for r in rows:
        if r["source"] != r["target"]:  # every source plate, the test plates of the target fold
            assert r["train_plates"] == plates_of[r["source"]] and r["n_train"] == 12 * len(plates_of[r["source"]])
        else:
            assert len(r["train_plates"]) < len(plates_of[r["source"]]) and not set(r["train_plates"]) & set(
                r["test_plates"]
            )
    assert json.loads((tmp_path / "all" / "knn.json").read_text())["config"]["cross_line_train"] == "all"


def test_one_plate_per_cell_line_is_a_clear_error(planted):
    one_each = planted[planted["Metadata_Plate"].isin(["PL000", "PL005"])]  # one U2OS, one A549 plate
    with pytest.raises(ValueError, match=r">= 2 plates per cell line.*'U2OS': 1, 'A549': 1"):
        knn_wells.evaluate(one_each)
    # One U2OS plate among six A549 ones: only the A549-trained combinations can be evaluated.
    result = knn_wells.evaluate(planted[~planted["Metadata_Plate"].isin(["PL001", "PL002", "PL003", "PL004"])])
    assert list(result["combinations"]) == ["A549->U2OS", "A549->A549"]
    assert result["skipped"] == ["U2OS->U2OS", "U2OS->A549"]
    # Training on every source plate, the single U2OS plate can train the cross-line combination.
    result = knn_wells.evaluate(
        planted[~planted["Metadata_Plate"].isin(["PL001", "PL002", "PL003", "PL004"])], cross_line_train="all"
    )
    assert list(result["combinations"]) == ["U2OS->A549", "A549->U2OS", "A549->A549"]
    assert result["skipped"] == ["U2OS->U2OS"]
    assert {tuple(r["train_plates"]) for r in result["folds"] if r["combination"] == "U2OS->A549"} == {("PL000",)}


def test_cli_bad_input_is_one_error_line(tmp_path, planted):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dinov2_cell.eval.knn_wells"]
    bad = planted.copy()
    bad.loc[7, "f03"] = np.nan
    nan_file = tmp_path / "nan.csv"
    bad.to_csv(nan_file, index=False)
    one_each = tmp_path / "one_each.parquet"
    planted[planted["Metadata_Plate"].isin(["PL000", "PL005"])].to_parquet(one_each)
    for path, expected in ((nan_file, "'f03'"), (one_each, ">= 2 plates per cell line")):
        out = subprocess.run(cmd + [str(path)], capture_output=True, text=True, env=env, timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "error:" in lines[0] and expected in lines[0], out.stderr
