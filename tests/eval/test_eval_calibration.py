"""CPJUMP1's published figures computed on profile tables: exact formulas against hand computations, and nulls."""

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.eval.calibration import (
    PUBLISHED,
    calibration_scores,
    dmso_null_labels,
    published_range,
    replicate_map,
)


def _hand_ap(x, labels, query):
    """Average precision of one query by hand: cosine similarity ranking, positives = same label."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn[query]
    others = [i for i in range(len(x)) if i != query]
    order = sorted(others, key=lambda i: -sims[i])
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if labels[i] == labels[query]:
            hits += 1
            precisions.append(hits / rank)
    return float(np.mean(precisions))


def test_replicate_map_equals_hand_computation():
    rng = np.random.default_rng(3)
    labels = ["a", "a", "a", "b", "b", "c", "c", "", "", ""]
    x = rng.normal(size=(len(labels), 6))
    meta = pd.DataFrame({"Metadata_broad_sample": labels})
    got = replicate_map(meta, x).set_index("Metadata_broad_sample")
    hand_labels = [lab or "DMSO" for lab in labels]
    for compound in ("a", "b", "c"):
        queries = [i for i, lab in enumerate(labels) if lab == compound]
        expected = np.mean([_hand_ap(x, hand_labels, q) for q in queries])
        assert got.loc[compound, "mean_average_precision"] == pytest.approx(expected, rel=1e-12)
        assert got.loc[compound, "n_wells"] == len(queries)
    assert "DMSO" not in got.index and "" not in got.index  # DMSO wells are negatives, never queries


def test_dmso_null_labels_one_well_per_plate_and_half_kept_as_reference():
    plates = [f"P{p}" for p in range(4) for _ in range(10)]
    broad = (["", "", "", "", "", "", "X", "Y", "Z", "W"]) * 4
    meta = pd.DataFrame({"Metadata_Plate": plates, "Metadata_broad_sample": broad})
    labels = dmso_null_labels(meta, seed=1)
    assert labels[meta["Metadata_broad_sample"] != ""].isna().all()
    dummies = labels[labels.fillna("").str.startswith("null_")]
    assert sorted(dummies.unique()) == ["null_0", "null_1", "null_2"]  # 6 DMSO wells per plate -> 3 dummies
    for name in dummies.unique():
        rows = meta.loc[dummies.index[dummies == name]]
        assert sorted(rows["Metadata_Plate"]) == ["P0", "P1", "P2", "P3"]
    assert (labels == "DMSO").sum() == 12


def _profiles(signal: float, n_compounds=16, n_dmso=24, plates=4, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_compounds, dim))
    rows, feats = [], []
    for p in range(plates):
        for c in range(n_compounds):
            rows.append(("P%d" % p, f"W{c:03d}", f"BRD-{c}", "A549"))
            feats.append(signal * centres[c] + rng.normal(size=dim))
        for d in range(n_dmso):
            rows.append(("P%d" % p, f"D{d:03d}", "", "A549"))
            feats.append(rng.normal(size=dim))
    meta = pd.DataFrame(
        rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_broad_sample", "Metadata_cell_line"]
    )
    return pd.concat([meta, pd.DataFrame(feats, columns=[f"f{i}" for i in range(dim)])], axis=1)


def test_calibration_scores_separate_signal_from_noise(tmp_path):
    strong = calibration_scores(_profiles(3.0), null_size=500)["A549"]
    none = calibration_scores(_profiles(0.0), null_size=500)["A549"]
    assert strong["activity"] == 1.0 and strong["replicate_map"] > 0.9
    assert strong["replicate_map_shuffled"] < 0.3
    assert none["activity"] <= 0.125 and none["replicate_map"] < 0.3
    for s in (strong, none):
        assert s["n_null"] == 12 and s["dmso_null"] <= 0.1  # DMSO dummies are not "active"
        assert s["n_compounds"] == 16


def test_published_figures_are_the_documented_ones():
    assert published_range("activity") == (0.663, 0.954)
    assert published_range("replicate_map") == (0.332, 0.571)
    assert PUBLISHED["replicate_map"]["U2OS"]["48 h"] == 0.332
