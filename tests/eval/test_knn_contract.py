"""Contract of :mod:`dinov2_cell.eval.knn_wells`: the CLI in-process (every flag reaching the protocol, outputs,
refusals, report), the result's fields, every error message and the edge cases of folds, splits and the classifier.

References are hand computations, scikit-learn's ``KNeighborsClassifier`` and ``f1_score`` called directly, numpy's
permutation for seeded folds, and the lower-level functions (``evaluate``, ``map_scores``) called directly with the
options a flag stands for; the code under test never makes its own expectation.
"""

import inspect
import json
import logging
import math
import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from dinov2_cell.cli import UsageError
from dinov2_cell.eval import knn_wells
from dinov2_cell.eval.map import map_scores
from dinov2_cell.eval.normalize import METHODS
from dinov2_cell.eval.outputs import KNN_FILES, format_table
from dinov2_cell.profiles.io import mark_controls

PLATE, WELL, BROAD, PERT, TARGET, LINE = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_broad_sample",
    "Metadata_pert_iname",
    "Metadata_target",
    "Metadata_cell_line",
)
FOLD_KEYS = {
    "combination",
    "source",
    "target",
    "fold",
    "train_plates",
    "test_plates",
    "n_train",
    "n_test",
    "n_test_unseen_label",
    "accuracy",
    "macro_f1",
}
COMBO_KEYS = {"accuracy", "accuracy_std", "macro_f1", "macro_f1_std", "n_folds", "n_test"}
CONFIG_KEYS = {
    "k",
    "metric",
    "weights",
    "n_folds",
    "normalize",
    "feature_select",
    "block_weights",
    "postprocess",
    "controls",
    "label_col",
    "cell_line_col",
    "seed",
    "cross_line_train",
    "n_features",
    "n_wells",
    "plates",
    "folds",
}


@pytest.fixture(autouse=True)
def _restore_logging():
    """``main`` replaces the root logger's handlers (``setup_logging``); give the next test the ones it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# ---------------------------------------------------------------- hand-made tables


def _angles(layout, line="U2OS"):
    """One well per (compound, angle in degrees): unit vectors, so the cosine nearest neighbour is the closest angle."""
    rows = []
    for plate, wells in layout.items():
        for k, (cpd, deg) in enumerate(wells):
            rad = math.radians(deg)
            rows.append(
                {
                    PLATE: plate,
                    WELL: f"A{k + 1:02d}",
                    BROAD: f"BRD-{cpd}",
                    PERT: f"cpd{cpd}",
                    TARGET: f"T{cpd}",
                    LINE: line,
                    "f0": math.cos(rad),
                    "f1": math.sin(rad),
                }
            )
    return pd.DataFrame(rows)


# Two plates: leave-one-plate-out folds. Fold 0 tests P1 on P2: A0->A5, B50->B60 (C74 is 24 deg away), C90->C74
# (B60 30 deg) right; D140 -> C74 (66 deg; B60 80 deg) wrong, D is absent from P2. Fold 1 tests P2 on P1: A5->A0,
# B60->B50, C74->C90 (16 deg; B50 24 deg) right.
TWO = {
    "P1": [("A", 0), ("B", 50), ("C", 90), ("D", 140)],
    "P2": [("A", 5), ("B", 60), ("C", 74)],
}


def test_two_plates_fold_by_fold_against_hand_computation():
    """A cell line with exactly two plates is evaluated (>= 2), each fold against a hand count and sklearn's F1."""
    df = _angles(TWO)
    result = knn_wells.evaluate(df, combinations=[("U2OS", "U2OS")])
    assert result["skipped"] == []
    f0, f1 = sorted(result["folds"], key=lambda r: r["fold"])
    # fold 0: test P1 = A, B, C, D; predictions A, B, C, C (D is absent from P2)
    assert (f0["train_plates"], f0["test_plates"], f0["n_train"], f0["n_test"]) == (["P2"], ["P1"], 3, 4)
    assert f0["n_test_unseen_label"] == 1 and f0["accuracy"] == 0.75
    truth, pred = ["A", "B", "C", "D"], ["A", "B", "C", "C"]
    # by hand: F1 A 1, B 1, C 2/3 (precision 1/2, recall 1), D 0 -> (1 + 1 + 2/3 + 0) / 4
    assert f0["macro_f1"] == pytest.approx((2 + 2 / 3) / 4, abs=1e-12)
    assert f0["macro_f1"] == pytest.approx(f1_score(truth, pred, labels=truth, average="macro"), abs=1e-12)
    # fold 1: test P2 = A5, B60, C74; train P1: C74 is 16 deg from C90 and 24 from B50 -> all right
    assert (f1["train_plates"], f1["test_plates"], f1["n_test"], f1["n_test_unseen_label"]) == (["P1"], ["P2"], 3, 0)
    assert f1["accuracy"] == 1.0 and f1["macro_f1"] == 1.0
    combo = result["combinations"]["U2OS->U2OS"]
    assert combo == {
        "accuracy": pytest.approx(0.875),
        "accuracy_std": pytest.approx(0.125),  # population std of 0.75, 1
        "macro_f1": pytest.approx(((2 + 2 / 3) / 4 + 1) / 2),
        "macro_f1_std": pytest.approx((1 - (2 + 2 / 3) / 4) / 2),
        "n_folds": 2,
        "n_test": 7,
    }
    assert result["mean"] == {"accuracy": pytest.approx(0.875), "macro_f1": combo["macro_f1"], "n_combinations": 1}


def test_macro_f1_counts_only_test_compounds_and_predicted_outsiders_score_zero():
    """A prediction of a compound absent from the test fold lowers precision only: labels are the test compounds."""
    # P2 holds X near A: fold 1 (test P1, train P2) predicts X for A0 -> A gets F1 0 but X is not averaged.
    df = _angles({"P1": [("A", 0), ("B", 90)], "P2": [("X", 1), ("A", 30), ("B", 92)]})
    folds = sorted(knn_wells.evaluate(df, combinations=[("U2OS", "U2OS")])["folds"], key=lambda r: r["fold"])
    assert folds[0]["test_plates"] == ["P1"] and folds[0]["accuracy"] == 0.5
    assert folds[0]["macro_f1"] == pytest.approx(0.5, abs=1e-12)  # (A 0 + B 1) / 2; over A, B, X it would be 1/3
    assert f1_score(["A", "B"], ["X", "B"], labels=["A", "B"], average="macro") == pytest.approx(0.5)


def test_result_fields_and_predictions_table():
    df = _angles(TWO)
    result = knn_wells.evaluate(df, combinations=[("U2OS", "U2OS")])
    assert set(result) == {"config", "folds", "combinations", "mean", "skipped", "predictions"}
    assert all(set(r) == FOLD_KEYS for r in result["folds"])
    assert [(r["combination"], r["source"], r["target"], r["fold"]) for r in result["folds"]] == [
        ("U2OS->U2OS", "U2OS", "U2OS", 0),
        ("U2OS->U2OS", "U2OS", "U2OS", 1),
    ]
    assert set(result["combinations"]["U2OS->U2OS"]) == COMBO_KEYS
    config = result["config"]
    assert set(config) == CONFIG_KEYS
    assert {k: config[k] for k in CONFIG_KEYS - {"folds", "plates"}} == {
        "k": 1,
        "metric": "cosine",
        "weights": "uniform",
        "n_folds": 5,
        "normalize": "none",
        "feature_select": False,
        "block_weights": None,
        "postprocess": "raw",
        "controls": "Metadata_pert_iname == 'DMSO' or an empty Metadata_broad_sample",
        "label_col": BROAD,
        "cell_line_col": LINE,
        "seed": None,
        "cross_line_train": "fold",
        "n_features": 2,
        "n_wells": 7,
    }
    assert config["plates"] == {"U2OS": ["P1", "P2"]} and config["folds"] == {"U2OS": [["P1"], ["P2"]]}
    pred = result["predictions"]
    assert list(pred.columns) == ["combination", "fold", PLATE, WELL, BROAD, PERT, TARGET, "predicted", "correct"]
    assert list(pred.index) == list(range(7))
    assert pred["combination"].tolist() == ["U2OS->U2OS"] * 7
    assert pred["fold"].tolist() == [0] * 4 + [1] * 3
    assert pred[PLATE].tolist() == ["P1"] * 4 + ["P2"] * 3
    assert pred[WELL].tolist() == ["A01", "A02", "A03", "A04", "A01", "A02", "A03"]
    assert pred[BROAD].tolist() == ["BRD-A", "BRD-B", "BRD-C", "BRD-D", "BRD-A", "BRD-B", "BRD-C"]
    assert pred[PERT].tolist() == ["cpdA", "cpdB", "cpdC", "cpdD", "cpdA", "cpdB", "cpdC"]
    assert pred[TARGET].tolist() == ["TA", "TB", "TC", "TD", "TA", "TB", "TC"]
    assert pred["predicted"].tolist() == ["BRD-A", "BRD-B", "BRD-C", "BRD-C", "BRD-A", "BRD-B", "BRD-C"]
    assert pred["correct"].tolist() == [True, True, True, False, True, True, True]


def test_minimal_columns_numeric_barcodes_and_labels_read_as_text():
    """No well, name or target column; plates and labels that a CSV reads as integers are compared as text."""
    df = _angles(TWO).drop(columns=[WELL, PERT, TARGET])
    df[PLATE] = df[PLATE].map({"P1": 1001, "P2": 1002})
    df[BROAD] = df[BROAD].map({"BRD-A": 1, "BRD-B": 2, "BRD-C": 3, "BRD-D": 4})
    result = knn_wells.evaluate(df, combinations=[("U2OS", "U2OS")], plates=[1001, "1002"])
    assert [r["test_plates"] for r in result["folds"]] == [["1001"], ["1002"]]
    assert [r["accuracy"] for r in result["folds"]] == [0.75, 1.0]
    pred = result["predictions"]
    assert list(pred.columns) == ["combination", "fold", PLATE, WELL, BROAD, "predicted", "correct"]
    assert pred[WELL].tolist() == [""] * 7
    assert pred[BROAD].tolist() == ["1", "2", "3", "4", "1", "2", "3"]
    assert pred[PLATE].tolist() == ["1001"] * 4 + ["1002"] * 3
    # the compound name as the label: not repeated as an extra column
    named = knn_wells.evaluate(_angles(TWO), label_col=PERT, combinations=[("U2OS", "U2OS")])
    assert list(named["predictions"].columns) == [
        "combination",
        "fold",
        PLATE,
        WELL,
        PERT,
        TARGET,
        "predicted",
        "correct",
    ]
    assert named["config"]["label_col"] == PERT
    assert named["folds"] == knn_wells.evaluate(_angles(TWO), combinations=[("U2OS", "U2OS")])["folds"]


def test_numeric_annotations_become_text():
    df = _angles(TWO)
    df[TARGET] = [1, 2, 3, 4, 1, 2, 3]
    df[WELL] = [11, 12, 13, 14, 21, 22, 23]
    df[PERT] = [0.5, 1.5, 2.5, 3.5, 0.5, 1.5, 2.5]
    pred = knn_wells.evaluate(df, combinations=[("U2OS", "U2OS")])["predictions"]
    assert pred[TARGET].tolist() == ["1", "2", "3", "4", "1", "2", "3"]
    assert pred[WELL].tolist() == ["11", "12", "13", "14", "21", "22", "23"]
    assert pred[PERT].tolist() == ["0.5", "1.5", "2.5", "3.5", "0.5", "1.5", "2.5"]


def test_float32_features_are_compared_in_float64():
    """Near neighbours that float32 cosine distances cannot tell apart (both round to 0) are told apart."""
    df = _angles({"P1": [("A", 0.0)], "P2": [("B", -0.012), ("A", 0.006)]})
    df[["f0", "f1"]] = df[["f0", "f1"]].astype(np.float32)
    x = df[["f0", "f1"]].to_numpy()
    clf = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
    assert clf.fit(x[1:], ["B", "A"]).predict(x[:1]).tolist() == ["B"]  # float32: a tie, the first well wins
    assert clf.fit(x[1:].astype(np.float64), ["B", "A"]).predict(x[:1].astype(np.float64)).tolist() == ["A"]
    pred = knn_wells.evaluate(df, combinations=[("U2OS", "U2OS")])["predictions"]
    assert pred.loc[pred["fold"] == 0, "predicted"].tolist() == ["BRD-A"]


def test_options_feature_subset_custom_columns_folds_and_seed(make_planted):
    make, _ = make_planted
    df = make(plates=(("U2OS", 4), ("A549", 3)), n_compounds=6, n_dmso=2, dim=6, noise=1.5, seed=2)
    df = df.rename(columns={LINE: "line", BROAD: "cpd_id"})
    subset = ["f00", "f02", "f04"]
    options = {"feature_cols": subset, "label_col": "cpd_id", "cell_line_col": "line", "metric": "euclidean"}
    result = knn_wells.evaluate(df, n_folds=3, seed=11, k=2, weights="distance", **options)
    plates = {"U2OS": ["PL000", "PL001", "PL002", "PL003"], "A549": ["PL004", "PL005", "PL006"]}
    perm = {line: [p[i] for i in np.random.default_rng(11).permutation(len(p))] for line, p in plates.items()}
    expected_folds = {line: [sorted(p[i::3]) for i in range(3)] for line, p in perm.items()}
    cfg = result["config"]
    assert cfg["folds"] == expected_folds and cfg["plates"] == plates
    assert (cfg["n_folds"], cfg["seed"], cfg["n_features"]) == (3, 11, 3)
    assert (cfg["k"], cfg["metric"], cfg["weights"]) == (2, "euclidean", "distance")
    assert (cfg["label_col"], cfg["cell_line_col"], cfg["n_wells"]) == ("cpd_id", "line", 7 * 6)
    # the scores are those of the table without the other features, through sklearn directly (2 distance-weighted
    # neighbours; uniform votes of 2 break ties by label order and score differently here)
    compounds = df[df[PERT] != "DMSO"].reset_index(drop=True)
    uniform_differs = False
    for r in result["folds"]:
        tr = compounds[compounds[PLATE].isin(r["train_plates"])]
        te = compounds[compounds[PLATE].isin(r["test_plates"])]
        acc = {}
        for w in ("distance", "uniform"):
            clf = KNeighborsClassifier(n_neighbors=2, metric="euclidean", weights=w, algorithm="brute")
            acc[w] = np.mean(clf.fit(tr[subset], tr["cpd_id"]).predict(te[subset]) == te["cpd_id"].to_numpy())
        assert r["accuracy"] == pytest.approx(acc["distance"], abs=1e-12)
        uniform_differs |= acc["uniform"] != acc["distance"]
    assert uniform_differs
    assert [r["combination"] for r in result["folds"]] == (
        ["U2OS->U2OS"] * 3 + ["U2OS->A549"] * 3 + ["A549->U2OS"] * 3 + ["A549->A549"] * 3
    )


def test_postprocessing_options_are_applied_and_recorded(make_planted):
    make, _ = make_planted
    df = make(plates=(("U2OS", 3), ("A549", 2)), n_compounds=6, n_dmso=4, dim=8, noise=1.0, seed=5)
    df = df.rename(columns={f"f{j:02d}": (f"fluo_{j}" if j < 4 else f"bf_{j}") for j in range(8)})
    from dinov2_cell.eval.postprocess import PostProcess

    for fs, bw in ((True, None), (False, {"fluo": 1.0, "bf": 0.5}), (False, {})):
        result = knn_wells.evaluate(df, normalize="standardize", feature_select=fs, block_weights=bw)
        post = PostProcess("standardize", fs, bw)
        cfg = result["config"]
        assert cfg["feature_select"] is fs and cfg["block_weights"] == bw and cfg["postprocess"] == post.describe()
        # reference: the post-processed table by PostProcess, the kNN on it without post-processing
        feats = [c for c in df.columns if not c.startswith("Metadata_")]
        done = post(df, feats)
        kept = [c for c in done.columns if not c.startswith("Metadata_")]
        ref = knn_wells.evaluate(done, feature_cols=kept)
        assert cfg["n_features"] == len(kept) and result["folds"] == ref["folds"]
    assert cfg["block_weights"] is not bw  # a copy: the caller's dict may change later


def test_error_messages_name_the_option_and_the_table(tmp_path):
    df = _angles(TWO)
    with pytest.raises(ValueError, match=r"^k must be >= 1, got 0$"):
        knn_wells.evaluate(df, k=0)
    with pytest.raises(ValueError, match=r"^weights must be one of \('uniform', 'distance'\), got 'gauss'$"):
        knn_wells.evaluate(df, weights="gauss")
    with pytest.raises(ValueError, match=re.escape(f"normalize must be one of {METHODS}, got 'zscore'")):
        knn_wells.evaluate(df, normalize="zscore")
    with pytest.raises(ValueError, match=r"^cross_line_train must be one of \('fold', 'all'\), got 'some'$"):
        knn_wells.evaluate(df, cross_line_train="some")
    with pytest.raises(ValueError, match=r"^profiles: none of the requested plates is in the table$"):
        knn_wells.evaluate(df, plates=["P9"])
    with pytest.raises(ValueError, match=r"^mine: none of the requested plates"):
        knn_wells.evaluate(df, plates=["P9"], source="mine")
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: none of the requested plates")):
        knn_wells.evaluate(str(path), plates=["P9"])
    with pytest.raises(ValueError, match=r"^profiles: no non-DMSO well left$"):
        knn_wells.evaluate(df.assign(**{PERT: "DMSO"}))
    with pytest.raises(ValueError, match=r"Metadata_target_x"):
        knn_wells.evaluate(df, label_col="Metadata_target_x")
    with pytest.raises(ValueError, match=r"^tab:.*Metadata_line"):
        knn_wells.evaluate(df, cell_line_col="Metadata_line", source="tab")
    one = df[df[PLATE] == "P1"]
    msg = (
        "profiles: no train->test combination can be evaluated: plate-wise folds need >= 2 plates per cell line, "
        "plates per cell line (Metadata_cell_line): {'U2OS': 1}"
    )
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        knn_wells.evaluate(one, combinations=[("U2OS", "U2OS")])
    with pytest.raises(ValueError, match="^" + re.escape(msg + "; absent cell line(s): ['A549']") + "$"):
        knn_wells.evaluate(one)


def test_skipped_combinations_are_logged_and_absent_sources_skipped(caplog):
    df = pd.concat([_angles(TWO), _angles({"Q1": [("A", 1)]}, line="A549")], ignore_index=True)
    caplog.set_level(logging.WARNING, logger="dinov2_cell.eval")
    result = knn_wells.evaluate(df)
    assert list(result["combinations"]) == ["U2OS->U2OS", "U2OS->A549"]
    assert result["skipped"] == ["A549->U2OS", "A549->A549"]
    msgs = [r.getMessage() for r in caplog.records if r.name == "dinov2_cell.eval"]
    assert msgs == ["skipped combinations ['A549->U2OS', 'A549->A549'] (plates per cell line: {'U2OS': 2, 'A549': 1})"]
    # a source cell line absent from the table is skipped, with either training set
    for clt in ("fold", "all"):
        out = knn_wells.evaluate(df, combinations=[("HeLa", "U2OS"), ("U2OS", "U2OS")], cross_line_train=clt)
        assert out["skipped"] == ["HeLa->U2OS"] and list(out["combinations"]) == ["U2OS->U2OS"]
    # with 'all', the single A549 plate trains the cross-line combination
    out = knn_wells.evaluate(df, cross_line_train="all")
    assert list(out["combinations"]) == ["U2OS->U2OS", "U2OS->A549", "A549->U2OS"]


def test_plate_cell_lines_and_its_errors():
    df = pd.DataFrame({PLATE: [1, 1, 2], LINE: ["U2OS", "U2OS", "A549"]})
    assert knn_wells.plate_cell_lines(df) == {"1": "U2OS", "2": "A549"}
    assert knn_wells.plate_cell_lines(df.rename(columns={LINE: "cl"}), "cl") == {"1": "U2OS", "2": "A549"}
    two = pd.DataFrame({PLATE: ["P", "P"], LINE: ["U2OS", "A549"]})
    with pytest.raises(ValueError, match=re.escape("plate P: Metadata_cell_line must be one non-empty value, got")):
        knn_wells.plate_cell_lines(two)
    for bad, shown in (("", "['']"), (np.nan, "['nan']")):
        df = pd.DataFrame({PLATE: ["P", "P"], LINE: [bad, bad]})
        with pytest.raises(ValueError, match=re.escape(f"got {shown}")):
            knn_wells.plate_cell_lines(df)


def test_make_folds_edges_and_seeded_dealing():
    assert knn_wells.make_folds([]) == [] and knn_wells.make_folds([], seed=1) == []
    assert knn_wells.make_folds([3, 1, 2, 1]) == [["1"], ["2"], ["3"]]  # text, deduplicated, sorted
    plates = [f"B{i:02d}" for i in range(7)]
    assert knn_wells.make_folds(plates, 3) == [["B00", "B03", "B06"], ["B01", "B04"], ["B02", "B05"]]
    assert knn_wells.make_folds(plates) == [["B00", "B05"], ["B01", "B06"], ["B02"], ["B03"], ["B04"]]  # 5 folds
    order = np.random.default_rng(5).permutation(7)
    assert knn_wells.make_folds(plates, 3, seed=5) == [sorted(plates[j] for j in order[i::3]) for i in range(3)]
    assert knn_wells.make_folds(plates[:2], 3, seed=5) == [["B00"], ["B01"]]


def test_splits_modulo_source_folds_and_the_overlap_guard():
    folds = {"U2OS": [["a"], ["b"]], "A549": [["c"], ["d"], ["e"]]}
    out = knn_wells.splits(folds, [("U2OS", "A549")])
    assert out == [
        ("U2OS", "A549", 0, ["b"], ["c"]),
        ("U2OS", "A549", 1, ["a"], ["d"]),
        ("U2OS", "A549", 2, ["b"], ["e"]),  # fold 2 mod 2 source folds: fold 0 held out
    ]
    # a plate listed under two cell lines would leak: refused
    bad = {"U2OS": [["a"], ["b"]], "A549": [["b"], ["c"]]}
    with pytest.raises(AssertionError, match=r"^U2OS->A549 fold 0: test plates in training$"):
        knn_wells.splits(bad, [("U2OS", "A549")])
    with pytest.raises(ValueError, match=r"^cross_line_train must be one of \('fold', 'all'\), got 'x'$"):
        knn_wells.splits(folds, [], "x")


def test_knn_predict_defaults_cap_and_brute_force():
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(9, 3)), rng.normal(size=(6, 3))
    y_train = np.array(list("aabbccdde"))
    ref = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(x_train, y_train)
    assert knn_wells.knn_predict(x_train, y_train, x_test).tolist() == ref.predict(x_test).tolist()
    # k above the training size is capped (sklearn would refuse it)
    cap = KNeighborsClassifier(n_neighbors=9, metric="cosine", weights="distance", algorithm="brute")
    got = knn_wells.knn_predict(x_train, y_train, x_test, k=50, weights="distance")
    assert got.tolist() == cap.fit(x_train, y_train).predict(x_test).tolist()
    # brute force, as documented: a tree search finds other neighbours of far-from-origin points (float rounding)
    off = 1e8 + rng.normal(size=(20, 2))
    test = 1e8 + rng.normal(size=(20, 2))
    labels = np.arange(20).astype(str)
    brute = KNeighborsClassifier(1, metric="euclidean", algorithm="brute").fit(off, labels).predict(test)
    tree = KNeighborsClassifier(1, metric="euclidean", algorithm="kd_tree").fit(off, labels).predict(test)
    assert (brute != tree).any()
    assert knn_wells.knn_predict(off, labels, test, metric="euclidean").tolist() == brute.tolist()


def test_knn_predict_silences_only_the_many_classes_warning():
    x = np.random.default_rng(1).normal(size=(24, 3))
    y = np.array([f"c{i}" for i in range(24)])  # one well per class (> 20 wells): sklearn calls it regression-like
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        KNeighborsClassifier(n_neighbors=1).fit(x, y)
    assert any("unique classes is greater than 50%" in str(w.message) for w in seen)  # the reference warns
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert knn_wells.knn_predict(x, y, x).tolist() == y.tolist()
        warnings.warn("another warning", UserWarning)  # the filter does not outlive the call
    assert [str(w.message) for w in seen] == ["another warning"]


# ---------------------------------------------------------------- the command line


PARSER_HELP = {
    "profiles": "profiles file(s) or folder(s) (.parquet, .csv, .csv.gz; e.g. CPJUMP1's per-plate "
    "<plate>_normalized_feature_select_negcon_batch.csv.gz), or a challenge submission CSV; Metadata columns a file "
    "lacks (e.g. the cell line) come from the packaged CPJUMP1 metadata",
    "metadata_test": "the organisers' metadata_test.csv (columns ID, plate, well; found by name), to score a "
    "final-layout submission (ID, feature_1 ...): its IDs are mapped to plates and wells",
    "k": "neighbours",
    "metric": "scikit-learn distance (cosine, euclidean, correlation, ...)",
    "weights": None,
    "folds": "plate folds per cell line (fewer plates: leave-one-plate-out)",
    "normalize": "per-plate normalisation against DMSO wells",
    "control_query": "pandas query selecting the negative control wells (normalised against, left out of the kNN, "
    "the mAP reference), e.g. \"Metadata_pert_iname == 'DMSO'\"; default: Metadata_control_type == 'negcon' when the "
    "table has that column, else Metadata_pert_iname == 'DMSO' or an empty Metadata_broad_sample",
    "feature_select": "pycytominer feature selection (the JUMP recipe's operations) after normalising",
    "block_weights": "scale each model's features (column prefix: fluo, bf, ...) to unit mean norm times its weight, "
    "e.g. fluo=1,bf=0.5 ('all' = every block at 1); default: the raw concatenation",
    "label_col": "class label column",
    "cell_line_col": "cell line column",
    "plates": "comma-separated plates to use",
    "seed": "shuffle plates before making folds",
    "cross_line_train": "training set of a combination of two cell lines (e.g. U2OS->A549) for target fold f: 'fold' "
    "= the source line's plates outside its fold f, the same share as within a line (default); 'all' = every source "
    "plate (the test plates are of another line, so none can leak); within-line combinations always leave fold f out",
    "map": "also compute copairs mAP (activity and consistency)",
    "null_size": "mAP null distribution size",
    "map_cache_dir": "copairs null-distribution cache (default ~/.copairs)",
    "out": "folder for knn_folds.csv, knn_summary.csv, knn.json, compounds.csv (+ map files)",
    "report": "evaluation report (implies --map): compounds.csv (per compound and cell line: name, target, mAP, "
    "corrected p, retrieved, kNN hits per combination), mAP vs -log10 q, kNN per combination and PCA embeddings by "
    "plate, cell line and target (PNG), README.md",
    "overwrite": "replace existing output files",
}
# dest -> (flags, group, metavar)
PARSER_FLAGS = {
    "profiles": ([], "positional arguments", None),
    "metadata_test": (["--metadata-test"], "options", "FILE"),
    "k": (["--k"], "protocol", None),
    "metric": (["--metric"], "protocol", None),
    "weights": (["--weights"], "protocol", None),
    "folds": (["--folds"], "protocol", None),
    "normalize": (["--normalize"], "protocol", None),
    "control_query": (["--control-query"], "protocol", "QUERY"),
    "feature_select": (["--feature-select", "--no-feature-select"], "protocol", None),
    "block_weights": (["--block-weights"], "protocol", "BLOCK=W,..."),
    "label_col": (["--label-col"], "protocol", None),
    "cell_line_col": (["--cell-line-col"], "protocol", None),
    "plates": (["--plates"], "protocol", "A,B,..."),
    "seed": (["--seed"], "protocol", None),
    "cross_line_train": (["--cross-line-train"], "protocol", None),
    "map": (["--map"], "mAP", None),
    "null_size": (["--null-size"], "mAP", None),
    "map_cache_dir": (["--map-cache-dir"], "mAP", None),
    "out": (["--out"], "output", "DIR"),
    "report": (["--report"], "output", "DIR"),
    "overwrite": (["--overwrite"], "output", None),
}


def test_parser_flags_groups_metavars_and_help_texts():
    """The CLI's documented interface, pinned: a change to a flag, its group or its help must be deliberate."""
    p = knn_wells.build_parser()
    assert p.prog == "python -m dinov2_cell.eval.knn_wells"
    assert p.description == (
        "Challenge kNN compound classification (plate-wise CV, U2OS/A549 train->test combinations) and optional "
        "copairs mAP on well profiles (Parquet/CSV with Metadata_* columns + numeric features). DMSO wells are left "
        "out of the kNN protocol."
    )
    assert [g.title for g in p._action_groups] == [
        "positional arguments",
        "options",
        "general",
        "protocol",
        "mAP",
        "output",
    ]
    found = {}
    for g in p._action_groups:
        for a in g._group_actions:
            found[a.dest] = (a.option_strings, g.title, a.metavar, a.help)
    for dest in ("help", "debug", "no_progress"):  # the common flags (cli.py)
        assert dest in found
    mine = {d: v for d, v in found.items() if d not in ("help", "debug", "no_progress")}
    assert mine == {d: (*PARSER_FLAGS[d], PARSER_HELP[d]) for d in PARSER_FLAGS}
    # the help shows the defaults that matter (HelpFormatter), under the command's own name
    text = " ".join(p.format_help().split())  # the words, whatever the terminal width
    assert text.startswith("usage: python -m dinov2_cell.eval.knn_wells ")
    for shown in ("(default: 1)", "(default: cosine)", "(default: 5)", "(default: none)", "(default: 10000)"):
        assert shown in text
    assert "(default: None)" not in text and "--debug" in text and "--no-progress" in text


def test_parser_defaults_are_evaluate_defaults_and_values_are_typed():
    p = knn_wells.build_parser()
    args = p.parse_args(["t.csv"])
    sig = inspect.signature(knn_wells.evaluate).parameters
    pairs = {
        "k": "k",
        "metric": "metric",
        "weights": "weights",
        "folds": "n_folds",
        "normalize": "normalize",
        "label_col": "label_col",
        "cell_line_col": "cell_line_col",
        "seed": "seed",
        "cross_line_train": "cross_line_train",
        "feature_select": "feature_select",
        "control_query": "control_query",
    }
    for flag, param in pairs.items():
        assert getattr(args, flag) == sig[param].default, flag
    assert vars(args) == {
        "debug": False,
        "no_progress": False,
        "profiles": ["t.csv"],
        "metadata_test": None,
        "k": 1,
        "metric": "cosine",
        "weights": "uniform",
        "folds": 5,
        "normalize": "none",
        "control_query": None,
        "feature_select": False,
        "block_weights": None,
        "label_col": BROAD,
        "cell_line_col": LINE,
        "plates": None,
        "seed": None,
        "cross_line_train": "fold",
        "map": False,
        "null_size": 10000,
        "map_cache_dir": None,
        "out": None,
        "report": None,
        "overwrite": False,
    }
    args = p.parse_args(
        ["a.csv", "b", "--k", "3", "--folds", "2", "--seed", "7", "--plates", "X, Y,", "--null-size", "20"]
        + ["--weights", "distance", "--normalize", "spherize", "--cross-line-train", "all", "--feature-select", "--map"]
    )
    assert (args.profiles, args.k, args.folds, args.seed, args.plates, args.null_size) == (
        ["a.csv", "b"],
        3,
        2,
        7,
        ["X", "Y"],
        20,
    )
    assert (args.weights, args.normalize, args.cross_line_train, args.feature_select, args.map) == (
        "distance",
        "spherize",
        "all",
        True,
        True,
    )
    assert p.parse_args(["a", "--feature-select", "--no-feature-select"]).feature_select is False
    assert p.get_default("normalize") == "none" and tuple(p._option_string_actions["--normalize"].choices) == METHODS
    bad_argvs = [["a", "--k", "0"], ["a", "--folds", "0"], ["a", "--null-size", "0"], ["a", "--seed", "x"], []]
    bad_argvs += [["a", "--weights", "gauss"], ["a", "--cross-line-train", "none"], ["a", "--normalize", "zscore"]]
    for bad in bad_argvs:
        with pytest.raises(SystemExit) as e:
            p.parse_args(bad)
        assert e.value.code == 2, bad


def _fused(make):
    """Planted wells with two model blocks (fluo_*, bf_*) and DMSO renamed 'vehicle' (only a query finds it)."""
    df = make(plates=(("U2OS", 4), ("A549", 3)), n_compounds=8, n_dmso=4, dim=8, noise=1.0, seed=7)
    df = df.rename(columns={f"f{j:02d}": (f"fluo_{j}" if j < 5 else f"bf_{j}") for j in range(8)})
    vehicle = df[PERT] == "DMSO"
    df.loc[vehicle, PERT] = "vehicle"
    df.loc[vehicle, BROAD] = "BRD-VEHICLE"
    return df.assign(Metadata_line=df[LINE])  # the cell line under another name too (--cell-line-col)


def test_cli_every_protocol_flag_reaches_evaluate_and_map(tmp_path, make_planted, capsys, caplog):
    df = _fused(make_planted[0])
    path = tmp_path / "fused.csv"
    df.to_csv(path, index=False)
    query = "Metadata_pert_iname == 'vehicle'"
    plates = ["PL000", "PL001", "PL002", "PL004", "PL005", "PL006"]  # PL003 (U2OS) left out
    argv = [str(path), "--k", "3", "--metric", "euclidean", "--weights", "distance", "--folds", "3", "--seed", "4"]
    argv += ["--normalize", "standardize", "--control-query", query, "--block-weights", "fluo=1,bf=0.5"]
    argv += ["--label-col", PERT, "--cell-line-col", "Metadata_line", "--plates", ",".join(plates)]
    argv += ["--cross-line-train", "all", "--feature-select", "--map", "--null-size", "30"]
    argv += ["--map-cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    caplog.set_level(logging.INFO, logger="dinov2_cell.eval")
    result, map_result = knn_wells.run(knn_wells.build_parser().parse_args(argv))
    options = {
        "k": 3,
        "metric": "euclidean",
        "weights": "distance",
        "n_folds": 3,
        "seed": 4,
        "normalize": "standardize",
        "control_query": query,
        "block_weights": {"fluo": 1.0, "bf": 0.5},
        "label_col": PERT,
        "cell_line_col": "Metadata_line",
        "plates": plates,
        "cross_line_train": "all",
        "feature_select": True,
    }
    assert os.listdir(tmp_path / "cache")  # copairs' null cache went where asked (before the reference fills it)
    ref = knn_wells.evaluate(df, source=str(path), **options)
    assert result["folds"] == ref["folds"] and result["combinations"] == ref["combinations"]
    cfg = result["config"]
    assert cfg["profiles"] == os.path.abspath(path)
    assert {k: v for k, v in cfg.items() if k != "profiles"} == ref["config"]
    assert (cfg["k"], cfg["metric"], cfg["weights"], cfg["n_folds"], cfg["seed"]) == (3, "euclidean", "distance", 3, 4)
    assert (cfg["normalize"], cfg["feature_select"], cfg["block_weights"]) == (
        "standardize",
        True,
        options["block_weights"],
    )
    assert (cfg["label_col"], cfg["cell_line_col"], cfg["cross_line_train"]) == (PERT, "Metadata_line", "all")
    assert cfg["controls"] == f'query "{query}"' and cfg["plates"] == {"U2OS": plates[:3], "A549": plates[3:]}
    # the mAP: the requested plates, the same controls, every option
    sub = mark_controls(df[df[PLATE].isin(plates)], query)
    ref_map = map_scores(
        sub,
        normalize="standardize",
        null_size=30,
        label_col=PERT,
        split_by=("Metadata_line",),
        cache_dir=str(tmp_path / "cache"),
        feature_select=True,
        block_weights={"fluo": 1.0, "bf": 0.5},
    )
    assert map_result["config"] == ref_map["config"] and map_result["config"]["null_size"] == 30
    pd.testing.assert_frame_equal(map_result["activity"]["table"], ref_map["activity"]["table"])
    assert set(map_result["activity"]["table"]["Metadata_line"]) == {"U2OS", "A549"}
    # printed table, written files and their log lines
    assert capsys.readouterr().out == format_table(result, map_result) + "\n"
    written = sorted(os.listdir(tmp_path / "out"))
    assert set(KNN_FILES) <= set(written) and "map_activity.csv" in written
    logged = [
        r.getMessage() for r in caplog.records if r.name == "dinov2_cell.eval" and r.getMessage().startswith("wrote")
    ]
    assert sorted(logged) == sorted(f"wrote {tmp_path / 'out' / n}" for n in written)
    saved = json.loads((tmp_path / "out" / "knn.json").read_text())
    assert saved["config"]["profiles"] == os.path.abspath(path) and saved["mean"] == result["mean"]


def test_cli_block_weights_values_and_errors(tmp_path, planted):
    path = tmp_path / "p.csv"
    planted[planted[PLATE].isin(["PL000", "PL001", "PL005", "PL006"])].to_csv(path, index=False)
    parse = knn_wells.build_parser().parse_args
    got = {}
    for flag in (None, "all", "f00=2"):
        argv = [str(path)] + ([] if flag is None else ["--block-weights", flag])
        got[flag] = knn_wells.run(parse(argv))[0]["config"]["block_weights"]
    assert got == {None: None, "all": {}, "f00=2": {"f00": 2.0}}
    for bad in ("f00", "ALL"):
        with pytest.raises(UsageError, match=f"^--block-weights: block weight '{bad}': expected BLOCK=WEIGHT"):
            knn_wells.run(parse([str(path), "--block-weights", bad]))


def test_main_outputs_refusals_and_overwrite(tmp_path, planted, capsys):
    path = tmp_path / "p.csv"
    small = planted[planted[PLATE].isin(["PL000", "PL001", "PL005", "PL006"])]
    small.to_csv(path, index=False)
    out = tmp_path / "out"
    # no --out: the table only
    assert knn_wells.main([str(path)]) == 0
    assert "U2OS->A549" in capsys.readouterr().out and not out.exists()
    assert knn_wells.main([str(path), "--out", str(out), "--debug"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    assert sorted(os.listdir(out)) == sorted(KNN_FILES)
    before = {n: (out / n).read_bytes() for n in KNN_FILES}
    with pytest.raises(FileExistsError, match=re.escape(f"{out / KNN_FILES[0]} exists; refusing to overwrite")):
        knn_wells.main([str(path), "--out", str(out)])
    # refused before any work: a folder holding only the last output file gets nothing new
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / KNN_FILES[-1]).write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape(f"{lone / KNN_FILES[-1]} exists; refusing to overwrite")):
        knn_wells.main([str(path), "--out", str(lone)])
    assert os.listdir(lone) == [KNN_FILES[-1]] and (lone / KNN_FILES[-1]).read_text() == "mine"
    # --overwrite replaces them (another k, other scores)
    assert knn_wells.main([str(path), "--out", str(out), "--overwrite", "--k", "2", "--weights", "distance"]) == 0
    assert json.loads((out / "knn.json").read_text())["config"]["k"] == 2
    assert {n: (out / n).read_bytes() for n in KNN_FILES} != before
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UsageError, match=f"^--out {re.escape(str(afile))}: not a folder$"):
        knn_wells.main([str(path), "--out", str(afile)])


def test_cli_several_files_name_the_source_and_keep_every_path(tmp_path, planted):
    u2os, a549 = tmp_path / "u2os.csv", tmp_path / "a549.parquet"
    planted[planted[LINE] == "U2OS"].to_csv(u2os, index=False)
    planted[planted[LINE] == "A549"].to_parquet(a549)
    result, _ = knn_wells.run(knn_wells.build_parser().parse_args([str(u2os), str(a549)]))
    assert result["config"]["profiles"] == [os.path.abspath(u2os), os.path.abspath(a549)]
    assert result["combinations"] == knn_wells.evaluate(planted)["combinations"]
    one_u, one_a = tmp_path / "one_u.csv", tmp_path / "one_a.csv"
    planted[planted[PLATE] == "PL000"].to_csv(one_u, index=False)
    planted[planted[PLATE] == "PL005"].to_csv(one_a, index=False)
    with pytest.raises(ValueError, match=r"^2 profile paths: no train->test combination"):
        knn_wells.main([str(one_u), str(one_a)])
    with pytest.raises(ValueError, match="^" + re.escape(f"{one_u}: no train->test combination")):
        knn_wells.main([str(one_u)])


def test_cli_report_implies_map_and_refuses_an_earlier_report(tmp_path, planted, capsys):
    path = tmp_path / "p.csv"
    planted.to_csv(path, index=False)
    report = tmp_path / "report"
    plates = ["PL000", "PL001", "PL005", "PL006"]
    argv = [str(path), "--report", str(report), "--null-size", "20", "--map-cache-dir", str(tmp_path / "c")]
    argv += ["--plates", ",".join(plates)]
    assert knn_wells.main(argv) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n").splitlines()[-1] == f"report: {report / 'README.md'}"
    assert "activity" in out  # the mAP, computed without --map
    readme = (report / "README.md").read_text()
    n_wells = int(planted[PLATE].isin(plates).sum())
    assert f"Profiles: `{path}` ({n_wells} wells" in readme
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        knn_wells.main(argv)
    assert knn_wells.main(argv + ["--overwrite"]) == 0


def test_cli_final_layout_submission_needs_metadata_test(tmp_path):
    from dinov2_cell.columns import CELL_LINE
    from dinov2_cell.data.metadata import compound_plates, well_metadata
    from dinov2_cell.profiles import submission

    plates = compound_plates("A549")[:1] + compound_plates("U2OS")[:1]
    meta = well_metadata(plates)[[PLATE, WELL, BROAD, PERT, CELL_LINE]].reset_index(drop=True)
    rng = np.random.default_rng(3)
    table = pd.concat([meta, pd.DataFrame(rng.normal(size=(len(meta), 3)), columns=["a", "b", "c"])], axis=1)
    comp = table[table[BROAD].fillna("") != ""]
    mt = pd.DataFrame({"ID": [f"{i:05d}" for i in range(len(comp))], "plate": comp[PLATE], "well": comp[WELL]})
    mt_path = tmp_path / "metadata_test.csv"
    mt.to_csv(mt_path, index=False)
    final = submission.write_submission(table, tmp_path / "final.csv", metadata_test=mt_path)
    argv = [str(final), "--cross-line-train", "all"]
    with pytest.raises(ValueError, match="--metadata-test"):
        knn_wells.main(argv)
    assert knn_wells.main(argv + ["--metadata-test", str(mt_path), "--out", str(tmp_path / "o")]) == 0
    saved = json.loads((tmp_path / "o" / "knn.json").read_text())
    assert set(saved["combinations"]) == {"U2OS->A549", "A549->U2OS"} and saved["config"]["n_wells"] == len(comp)
