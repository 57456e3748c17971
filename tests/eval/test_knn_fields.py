"""kNN fields that no other test asserts, on a case worked out by hand: unseen test labels and the spread over folds.

Features are unit vectors at given angles, so the cosine nearest neighbour is the closest angle. One cell line,
three plates: leave-one-plate-out folds (fewer plates than the default five folds).

    plate  wells (compound @ angle in degrees)
    P1     A@0    B@40   C@80
    P2     A@4    B@45   D@120  E@58  E@59      (E exists on P2 only)
    P3     A@10   C@85   D@125

Fold 0 (test P1, train P2+P3): A0->A4, B40->B45, C80->C85: 3/3 right, no unseen label, macro-F1 1.
Fold 1 (test P2, train P1+P3): A4->A0, B45->B40, D120->D125 right; E58, E59 -> B40 (18-19 deg; C80 is 21-22 deg
    away): accuracy 3/5, two test wells whose label is absent from training; F1 A 1, B 2*(1/3*1)/(1/3+1) = 1/2, D 1,
    E 0 -> macro-F1 (1 + 1/2 + 1 + 0) / 4 = 5/8.
Fold 2 (test P3, train P1+P2): A10->A4, C85->C80, D125->D120: 3/3, macro-F1 1.
"""

import math

import pandas as pd
import pytest

from dinov2_cell.eval.knn_wells import evaluate

LAYOUT = {
    "P1": [("A", 0), ("B", 40), ("C", 80)],
    "P2": [("A", 4), ("B", 45), ("D", 120), ("E", 58), ("E", 59)],
    "P3": [("A", 10), ("C", 85), ("D", 125)],
}


def _table():
    rows = []
    for plate, wells in LAYOUT.items():
        for k, (cpd, deg) in enumerate(wells):
            rad = math.radians(deg)
            rows.append(
                {
                    "Metadata_Plate": plate,
                    "Metadata_Well": f"A{k + 1:02d}",
                    "Metadata_broad_sample": f"BRD-{cpd}",
                    "Metadata_pert_iname": f"cpd{cpd}",
                    "Metadata_cell_line": "U2OS",
                    "f0": math.cos(rad),
                    "f1": math.sin(rad),
                }
            )
    return pd.DataFrame(rows)


def _population_std(values):
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def test_fold_fields_and_spread_match_the_hand_computation():
    result = evaluate(_table(), combinations=[("U2OS", "U2OS")])
    folds = sorted(result["folds"], key=lambda r: r["fold"])
    assert [r["test_plates"] for r in folds] == [["P1"], ["P2"], ["P3"]]
    assert [r["train_plates"] for r in folds] == [["P2", "P3"], ["P1", "P3"], ["P1", "P2"]]
    assert [r["n_test"] for r in folds] == [3, 5, 3]
    assert [r["n_train"] for r in folds] == [8, 6, 8]
    assert [r["n_test_unseen_label"] for r in folds] == [0, 2, 0]  # wells, not distinct labels
    acc = [1.0, 3 / 5, 1.0]
    f1 = [1.0, 5 / 8, 1.0]
    assert [r["accuracy"] for r in folds] == pytest.approx(acc, abs=1e-12)
    assert [r["macro_f1"] for r in folds] == pytest.approx(f1, abs=1e-12)

    combo = result["combinations"]["U2OS->U2OS"]
    assert combo["n_folds"] == 3 and combo["n_test"] == 11
    assert combo["accuracy"] == pytest.approx(13 / 15, abs=1e-12)
    assert combo["macro_f1"] == pytest.approx(0.875, abs=1e-12)
    # the spread over folds is the population standard deviation of the fold scores
    assert combo["accuracy_std"] == pytest.approx(_population_std(acc), abs=1e-12)
    assert combo["accuracy_std"] == pytest.approx(math.sqrt(8) / 15, abs=1e-12)  # deviations 2/15, 2/15, -4/15
    assert combo["macro_f1_std"] == pytest.approx(_population_std(f1), abs=1e-12)
    assert combo["macro_f1_std"] == pytest.approx(math.sqrt(0.03125), abs=1e-12)  # deviations 1/8, 1/8, -1/4
    assert result["mean"]["accuracy"] == pytest.approx(13 / 15, abs=1e-12)
    assert result["mean"]["n_combinations"] == 1


def test_unseen_labels_count_test_wells_absent_from_training_only():
    # an E well on P1 as well: every fold now trains on some E well, so no test well has an unseen label
    df = _table()
    extra = df[df["Metadata_broad_sample"] == "BRD-E"].iloc[[0]].assign(Metadata_Plate="P1", Metadata_Well="B01")
    df = pd.concat([df, extra], ignore_index=True)
    folds = sorted(evaluate(df, combinations=[("U2OS", "U2OS")])["folds"], key=lambda r: r["fold"])
    assert [r["n_test_unseen_label"] for r in folds] == [0, 0, 0]
    # and a compound only on the test plate of every fold counts once per well
    only = df.assign(Metadata_broad_sample=[f"BRD-{i}" for i in range(len(df))])
    folds = evaluate(only, combinations=[("U2OS", "U2OS")])["folds"]
    assert [r["n_test_unseen_label"] for r in folds] == [r["n_test"] for r in folds]
    assert all(r["accuracy"] == 0.0 for r in folds)
    assert sum(r["n_test"] for r in folds) == len(only)
