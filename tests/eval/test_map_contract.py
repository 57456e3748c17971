"""Contract of :mod:`dinov2_cell.eval.map`: every output column, option, message and edge case.

References are copairs called directly (with our own control labels and reference indices) or hand-written values;
the code under test is never used to make its own expectation.
"""

import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
from copairs.map import average_precision, mean_average_precision

from dinov2_cell.eval.map import (
    activity_map,
    annotate_compounds,
    consistency_map,
    format_map,
    map_scores,
    map_summary,
    paired_average_precision,
)

NULL = 60
BROAD, PERT, TARGET, LINE, PLATE = (
    "Metadata_broad_sample",
    "Metadata_pert_iname",
    "Metadata_target",
    "Metadata_cell_line",
    "Metadata_Plate",
)
COPAIRS = ["mean_average_precision", "mean_normalized_average_precision", "p_value", "corrected_p_value"]
FLAGS = ["below_p", "below_corrected_p"]
EMPTY = ["mean_average_precision", "p_value", "corrected_p_value", "below_corrected_p"]


def _feats(df):
    return [c for c in df.columns if not c.startswith("Metadata_")]


def _table(make, plates=(("U2OS", 3), ("A549", 2)), seed=3):
    """8 compounds (targets T0..T3), 4 DMSO wells first on each plate, compound 7 pure noise (inactive)."""
    df = make(plates=plates, n_compounds=8, n_dmso=4, dim=8, noise=1.0, structure=1.0, seed=seed)
    rng = np.random.default_rng(seed + 100)
    noise = df[BROAD] == "BRD-007"
    df.loc[noise, _feats(df)] = rng.normal(size=(int(noise.sum()), 8))
    # DMSO rows first in each plate: rows 0..3 of every group are controls (reference indices 0, 1, 2, ...)
    order = df.assign(_c=df[PERT] != "DMSO").sort_values([PLATE, "_c"], kind="stable").index
    return df.loc[order].reset_index(drop=True)


def _ref_activity(sub, null=NULL, seed=0, threshold=0.05, distance="cosine", cache=None, dmso=None, label=BROAD):
    """copairs' activity recipe by hand: each control its own reference index, compounds share index -1."""
    feats = _feats(sub)
    dmso = (sub[PERT] == "DMSO").to_numpy() if dmso is None else dmso
    meta = pd.DataFrame(
        {"cpd": np.where(dmso, "control", sub[label].astype(str)), "ref": np.where(dmso, np.arange(len(sub)), -1)}
    )
    cols = ["cpd", "ref"]
    ap = average_precision(
        meta, sub[feats].to_numpy(np.float64), cols, [], [], cols, distance=distance, progress_bar=False
    )
    out = mean_average_precision(ap[~dmso], ["cpd"], null, threshold, seed, progress_bar=False, cache_dir=cache)
    return out.set_index("cpd")


def _ref_consistency(sub, compounds, null=NULL, seed=0, threshold=0.05, distance="cosine", cache=None, target=TARGET):
    """copairs' consistency recipe by hand: mean profile per compound, annotated targets only."""
    cpd = sub[(sub[PERT] != "DMSO") & sub[BROAD].isin(compounds)]
    consensus = cpd.groupby(BROAD)[_feats(sub)].mean()
    tgt = cpd.groupby(BROAD)[target].first().loc[consensus.index].astype(str)
    keep = ((tgt.str.strip() != "") & (tgt != "nan")).to_numpy()
    meta = pd.DataFrame({"t": tgt[keep].to_numpy()})
    ap = average_precision(
        meta, consensus.to_numpy()[keep], ["t"], [], [], ["t"], distance=distance, progress_bar=False
    )
    out = mean_average_precision(ap, ["t"], null, threshold, seed, progress_bar=False, cache_dir=cache)
    return out.set_index("t")


def _same(got, ref, key):
    got = got.set_index(key)
    assert sorted(got.index) == sorted(ref.index)
    got = got.loc[ref.index]
    for col in COPAIRS:
        np.testing.assert_allclose(got[col].astype(float), ref[col].astype(float), rtol=1e-12, err_msg=col)
    for col in FLAGS:
        assert got[col].astype(bool).tolist() == ref[col].astype(bool).tolist(), col


def _summ(ref):
    flags = ref["below_corrected_p"].astype(bool)
    return {
        "mean_average_precision": pytest.approx(float(ref["mean_average_precision"].mean()), rel=1e-12),
        "fraction_retrieved": pytest.approx(flags.sum() / len(ref), rel=1e-12),
        "n": len(ref),
        "n_retrieved": int(flags.sum()),
    }


def _is_empty_summary(s):
    return (
        set(s) == {"mean_average_precision", "fraction_retrieved", "n", "n_retrieved"}
        and (math.isnan(s["mean_average_precision"]) and math.isnan(s["fraction_retrieved"]) and s["n"] == 0)
        and s["n_retrieved"] == 0
    )


def test_map_scores_every_column_against_copairs(make_planted, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    make, _ = make_planted
    df = _table(make)
    # compound 6 has a single U2OS well: no positive pair there, so no activity row (and not active) in U2OS
    df = df[~((df[BROAD] == "BRD-006") & df[PLATE].isin(["PL001", "PL002"]))].reset_index(drop=True)
    cache = tmp_path / "cache"
    result = map_scores(df, null_size=NULL, cache_dir=str(cache))
    assert capsys.readouterr().err == ""  # no progress bars by default
    assert sorted(p.name for p in (cache / "seed0").iterdir()) == [f"ns{NULL}"]
    assert any((cache / "seed0" / f"ns{NULL}").iterdir())
    assert not (tmp_path / "home" / ".copairs").exists()  # nothing cached outside cache_dir
    assert result["config"] == {
        "normalize": "none",
        "postprocess": "raw",
        "null_size": NULL,
        "threshold": 0.05,
        "seed": 0,
        "distance": "cosine",
        "label_col": BROAD,
        "target_col": TARGET,
        "split_by": [LINE],
        "consistency_active_only": True,
        "n_features": 8,
    }
    act, con = result["activity"], result["consistency"]
    assert list(act["table"].columns) == [
        BROAD,
        PERT,
        TARGET,
        LINE,
        *COPAIRS[:2],
        "p_value",
        "corrected_p_value",
        *FLAGS,
    ]
    assert list(con["table"].columns) == [TARGET, *COPAIRS, *FLAGS, LINE]
    for part in (act, con):
        assert list(part["summary"]) == ["A549", "U2OS", "all"]  # groups sorted, pooled last
        assert list(part["table"].index) == list(range(len(part["table"])))
    refs, crefs = {}, {}
    for line in ("A549", "U2OS"):
        sub = df[df[LINE] == line].reset_index(drop=True)
        ref = refs[line] = _ref_activity(sub, cache=str(cache))
        got = act["table"][act["table"][LINE] == line]
        _same(got, ref, BROAD)
        idx = [int(c[-3:]) for c in got[BROAD]]
        assert got[PERT].tolist() == [f"cpd{i}" for i in idx] and got[TARGET].tolist() == [f"T{i // 2}" for i in idx]
        assert act["summary"][line] == _summ(ref)
        active = ref.index[ref["below_corrected_p"].astype(bool)].tolist()
        assert len(active) >= 4
        cref = crefs[line] = _ref_consistency(sub, active, cache=str(cache))
        _same(con["table"][con["table"][LINE] == line], cref, TARGET)
        assert con["summary"][line] == _summ(cref)
    assert "BRD-006" in refs["A549"].index and "BRD-006" not in refs["U2OS"].index
    assert act["table"][LINE].tolist() == ["A549"] * len(refs["A549"]) + ["U2OS"] * len(refs["U2OS"])
    assert act["summary"]["all"] == _summ(pd.concat([refs["A549"], refs["U2OS"]]))
    assert con["summary"]["all"] == _summ(pd.concat([crefs["A549"], crefs["U2OS"]]))
    assert map_summary(result) == {
        "config": result["config"],
        "activity": act["summary"],
        "consistency": con["summary"],
    }


def test_options_pooled_threshold_seed_distance_and_all_compounds(make_planted, tmp_path):
    make, _ = make_planted
    df = _table(make, plates=(("U2OS", 3),), seed=4)
    # targets: T0 (0, 1), T1 (2 and an unannotated 3), "nan" text on 4 and 5 (unannotated), T3 (6, 7)
    df.loc[df[BROAD] == "BRD-003", TARGET] = " "
    df.loc[df[BROAD].isin(["BRD-004", "BRD-005"]), TARGET] = "nan"
    cache = str(tmp_path / "c")
    opts = {"null_size": NULL, "threshold": 0.3, "seed": 5, "distance": "euclidean", "cache_dir": cache}
    result = map_scores(df, split_by=None, consistency_active_only=False, **opts)
    ref = _ref_activity(df, null=NULL, seed=5, threshold=0.3, distance="euclidean", cache=cache)
    act, con = result["activity"], result["consistency"]
    assert list(act["table"].columns) == [BROAD, PERT, TARGET, *COPAIRS, *FLAGS]
    _same(act["table"], ref, BROAD)
    assert list(act["summary"]) == ["all"] and act["summary"]["all"] == _summ(ref)
    assert not ref.loc["BRD-007", "below_corrected_p"]  # the inactive compound still counts for consistency
    cref = _ref_consistency(df, [f"BRD-{i:03d}" for i in range(8)], NULL, 5, 0.3, "euclidean", cache)
    assert sorted(cref.index) == ["T0", "T3"]
    assert list(con["table"].columns) == [TARGET, *COPAIRS, *FLAGS]
    _same(con["table"], cref, TARGET)
    assert list(con["summary"]) == ["all"] and con["summary"]["all"] == _summ(cref)
    cfg = result["config"]
    assert (cfg["threshold"], cfg["seed"], cfg["distance"], cfg["split_by"]) == (0.3, 5, "euclidean", [])
    assert cfg["consistency_active_only"] is False
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["seed5"]


def test_renamed_columns_negcon_controls_and_two_split_columns(make_planted, tmp_path):
    make, _ = make_planted
    df = _table(make, plates=(("U2OS", 3),), seed=6)
    dmso = (df[PERT] == "DMSO").to_numpy()
    # JUMP convention: controls told by Metadata_control_type; no pert_iname column at all
    df = df.drop(columns=PERT).rename(columns={BROAD: "Metadata_cpd", TARGET: "Metadata_moa"})
    df.insert(0, "Metadata_control_type", np.where(dmso, "NegCon", "trt"))
    df.insert(0, "Metadata_batch", "b1")
    cache = str(tmp_path / "c")
    result = map_scores(
        df,
        null_size=NULL,
        label_col="Metadata_cpd",
        target_col="Metadata_moa",
        split_by=(LINE, "Metadata_batch"),
        consistency=False,
        cache_dir=cache,
    )
    table = result["activity"]["table"]
    assert list(table.columns) == ["Metadata_cpd", "Metadata_moa", LINE, "Metadata_batch", *COPAIRS, *FLAGS]
    assert list(result["activity"]["summary"]) == ["U2OS/b1", "all"]
    assert set(table[LINE]) == {"U2OS"} and set(table["Metadata_batch"]) == {"b1"}
    assert table["Metadata_moa"].tolist() == [f"T{int(c[-3:]) // 2}" for c in table["Metadata_cpd"]]
    ref = _ref_activity(df.assign(**{PERT: ""}), cache=cache, dmso=dmso, label="Metadata_cpd")
    _same(table, ref, "Metadata_cpd")
    assert result["consistency"] == {"summary": {}, "table": result["consistency"]["table"]}
    assert list(result["consistency"]["table"].columns) == ["Metadata_cpd", *EMPTY]
    assert (result["config"]["label_col"], result["config"]["target_col"]) == ("Metadata_cpd", "Metadata_moa")


def _ours(caplog):
    # copairs logs its progress at INFO; whether that reaches caplog depends on what earlier tests set up
    return [r.getMessage() for r in caplog.records if r.name.startswith("dinov2_cell")]


def test_one_plate_line_no_replicates_and_empty_tables(make_planted, tmp_path, caplog):
    make, _ = make_planted
    df = _table(make, plates=(("U2OS", 2), ("A549", 1)), seed=7)
    cache = str(tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="dinov2_cell.eval"):
        result = map_scores(df, null_size=NULL, cache_dir=cache)
    # copairs' own words for a table without positive pairs
    with pytest.raises(Exception) as unpaired:
        average_precision(pd.DataFrame({"t": ["a", "b"]}), np.eye(2), ["t"], [], [], ["t"], progress_bar=False)
    assert type(unpaired.value).__name__ == "UnpairedException"
    assert _ours(caplog) == [f"phenotypic activity: {unpaired.value}"]
    for part in ("activity", "consistency"):
        assert _is_empty_summary(result[part]["summary"]["A549"])
    u2os = _ref_activity(df[df[LINE] == "U2OS"].reset_index(drop=True), cache=cache)
    assert result["activity"]["summary"]["all"] == _summ(u2os) == result["activity"]["summary"]["U2OS"]
    assert set(result["activity"]["table"][LINE]) == {"U2OS"}

    sub = df[df[LINE] == "A549"].reset_index(drop=True)
    x = sub[_feats(sub)].to_numpy()
    assert list(activity_map(sub, x, null_size=NULL, cache_dir=cache).columns) == [BROAD, *EMPTY]
    empty = consistency_map(sub, x, compounds=[], null_size=NULL, cache_dir=cache)
    assert list(empty.columns) == [TARGET, *EMPTY] and len(empty) == 0

    # every target has a single compound: empty, silently (no pair search at all)
    caplog.clear()
    single = sub.assign(**{TARGET: [f"U{i}" for i in range(len(sub))]})
    with caplog.at_level(logging.WARNING, logger="dinov2_cell.eval"):
        empty = consistency_map(single, x, null_size=NULL, cache_dir=cache)
    assert list(empty.columns) == [TARGET, *EMPTY] and len(empty) == 0 and _ours(caplog) == []

    # neither metric: empty tables, no summaries
    none = map_scores(
        df, null_size=NULL, cache_dir=cache, activity=False, consistency=False, consistency_active_only=False
    )
    for part in ("activity", "consistency"):
        assert none[part]["summary"] == {} and list(none[part]["table"].columns) == [BROAD, *EMPTY]


def test_consistency_two_targets_and_a_single_compound_target(make_planted, tmp_path):
    make, _ = make_planted
    df = _table(make, plates=(("U2OS", 2),), seed=8)
    cache = str(tmp_path / "c")
    x = df[_feats(df)].to_numpy()
    four = [f"BRD-{i:03d}" for i in range(4)]  # exactly two targets, T0 and T1
    got = consistency_map(df, x, compounds=four, null_size=NULL, cache_dir=cache)
    assert list(got.columns) == [TARGET, *COPAIRS, *FLAGS]
    _same(got, _ref_consistency(df, four, cache=cache), TARGET)
    # T0 with two compounds, T1 with one: a one-row table, summarised as such
    three = df[df[BROAD].isin(["BRD-000", "BRD-001", "BRD-002"]) | (df[PERT] == "DMSO")]
    result = map_scores(three, null_size=NULL, cache_dir=cache, activity=False, consistency_active_only=False)
    ref = _ref_consistency(three, ["BRD-000", "BRD-001", "BRD-002"], cache=cache)
    assert list(ref.index) == ["T0"]
    _same(result["consistency"]["table"], ref, TARGET)
    assert result["consistency"]["summary"]["U2OS"] == _summ(ref)
    assert result["activity"]["summary"] == {}


def test_defaults_and_progress(make_planted, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # copairs' default cache goes under ~/.copairs
    make, _ = make_planted
    df = _table(make, plates=(("U2OS", 2),), seed=9)
    x = df[_feats(df)].to_numpy()
    got = activity_map(df, x)  # null_size 10000, threshold 0.05, seed 0, cosine
    assert capsys.readouterr().err == ""
    assert list(got.columns) == [BROAD, *COPAIRS, *FLAGS]
    ref = _ref_activity(df, null=10000)
    _same(got, ref, BROAD)
    assert not ref.loc["BRD-007", "below_corrected_p"] and ref["below_corrected_p"].any()
    assert (tmp_path / ".copairs" / "seed0" / "ns10000").is_dir()
    result = map_scores(df, consistency=False)  # the same defaults through map_scores
    assert result["config"]["null_size"] == 10000 and capsys.readouterr().err == ""
    _same(result["activity"]["table"], ref, BROAD)
    cpds = [f"BRD-{i:03d}" for i in range(8)]
    got = consistency_map(df, x)
    assert capsys.readouterr().err == ""
    _same(got, _ref_consistency(df, cpds, null=10000), TARGET)
    meta = pd.DataFrame({"t": ["a", "a", "b", "b", "c"]})
    feats = np.random.default_rng(0).normal(size=(5, 4))
    got = paired_average_precision(meta, feats, ["t"], "demo")
    ref = average_precision(meta, feats, ["t"], [], [], ["t"], progress_bar=False)
    np.testing.assert_allclose(got["average_precision"], ref["average_precision"], rtol=1e-12)
    assert capsys.readouterr().err == ""
    # progress=True reaches copairs (its tqdm bars go to stderr)
    activity_map(df, x, null_size=NULL, cache_dir=str(tmp_path / "c"), progress=True)
    assert capsys.readouterr().err != ""
    consistency_map(df, x, null_size=NULL, cache_dir=str(tmp_path / "c"), progress=True)
    assert capsys.readouterr().err != ""


def test_postprocess_and_feature_options(make_planted, tmp_path):
    make, _ = make_planted
    df = _table(make, plates=(("U2OS", 2),), seed=10)
    df = df.rename(columns={f"f{j:02d}": ("a_" if j < 4 else "b_") + str(j) for j in range(8)})
    cache = str(tmp_path / "c")
    a_cols = [f"a_{j}" for j in range(4)]
    meta_cols = [c for c in df.columns if c.startswith("Metadata_")]
    ref = _ref_activity(df[meta_cols + a_cols], cache=cache)
    kw = {"null_size": NULL, "cache_dir": cache, "consistency": False}
    # a block weight of 0 drops the block; one block left, scaled by a constant: cosine ranks unchanged
    blocks = map_scores(df, block_weights={"b": 0}, **kw)
    assert blocks["config"]["postprocess"] == "no DMSO normalisation, blocks scaled to unit mean norm x weight (b 0)"
    assert blocks["config"]["n_features"] == 4
    _same(blocks["activity"]["table"], ref, BROAD)
    subset = map_scores(df, feature_cols=a_cols, **kw)
    assert subset["config"]["n_features"] == 4 and subset["config"]["postprocess"] == "raw"
    _same(subset["activity"]["table"], ref, BROAD)
    fs = map_scores(df, feature_select=True, **kw)
    assert fs["config"]["postprocess"] == "no DMSO normalisation, feature selection"
    # spherizing only the chosen features is the same as spherizing a table that has only them
    sph = map_scores(df, normalize="spherize", feature_cols=a_cols, **kw)
    alone = map_scores(df[meta_cols + a_cols], normalize="spherize", **kw)
    pd.testing.assert_frame_equal(sph["activity"]["table"], alone["activity"]["table"])
    # the target column is only required for consistency; duplicated wells are accepted
    no_target = df.drop(columns=TARGET).assign(Metadata_Well="A01")
    got = map_scores(no_target, feature_cols=a_cols, **kw)
    assert list(got["activity"]["table"].columns) == [BROAD, PERT, LINE, *COPAIRS, *FLAGS]
    _same(got["activity"]["table"], ref, BROAD)


def test_errors_name_the_source(make_planted, tmp_path):
    make, _ = make_planted
    df = _table(make, plates=(("U2OS", 2), ("A549", 2)), seed=11)
    with pytest.raises(ValueError) as e:
        map_scores(df, normalize="bogus", null_size=NULL)
    assert str(e.value) == (
        "normalize must be one of ('none', 'standardize', 'robustize', 'mad_robustize', 'spherize'), got 'bogus'"
    )
    no_dmso = df[~((df[LINE] == "A549") & (df[PERT] == "DMSO"))]
    with pytest.raises(ValueError) as e:
        map_scores(no_dmso, null_size=NULL, cache_dir=str(tmp_path))
    assert str(e.value) == "profiles: group A549 has no DMSO wells; phenotypic activity needs them"
    path = str(tmp_path / "p.csv")
    no_dmso.to_csv(path, index=False)
    with pytest.raises(ValueError) as e:
        map_scores(path, null_size=NULL, cache_dir=str(tmp_path))
    assert str(e.value) == f"{path}: group A549 has no DMSO wells; phenotypic activity needs them"
    df.drop(columns=TARGET).to_csv(path, index=False)
    with pytest.raises(ValueError, match=re.escape(f"{path}: missing metadata column(s) ['Metadata_target']")):
        map_scores(path, null_size=NULL)
    sub = no_dmso[no_dmso[LINE] == "A549"]
    with pytest.raises(ValueError) as e:
        activity_map(sub, sub[_feats(sub)].to_numpy(), null_size=NULL)
    assert str(e.value) == "phenotypic activity needs DMSO wells; none found"


def test_annotate_compounds_first_non_empty_value():
    profiles = pd.DataFrame(
        {
            BROAD: ["BRD-A"] * 5 + ["BRD-B"] * 2,
            PERT: [np.nan, "", "  ", "nan", "alpha", np.nan, np.nan],
            TARGET: ["tA", "tA2", "", "", "", "", "tB"],
            "score": [9] * 7,
        }
    )
    table = pd.DataFrame({BROAD: ["BRD-B", "BRD-A", "BRD-C"], "score": [1, 2, 3]})
    out = annotate_compounds(table, profiles, BROAD, (BROAD, PERT, "Metadata_missing", "score", TARGET))
    assert list(out.columns) == [BROAD, PERT, TARGET, "score"]
    assert out[PERT].tolist() == ["", "alpha", ""]
    assert out[TARGET].tolist() == ["tB", "tA", ""]
    assert out["score"].tolist() == [1, 2, 3]  # present in the table: kept, not overwritten
    assert list(table.columns) == [BROAD, "score"]  # input untouched


def test_format_map_exact_text():
    nan = float("nan")
    result = {
        "config": {"null_size": 100, "threshold": 0.05, "distance": "cosine", "normalize": "none"},
        "activity": {
            "summary": {
                "U2OS": {"mean_average_precision": 0.5, "fraction_retrieved": 0.25, "n": 4, "n_retrieved": 1},
                "A549": {"mean_average_precision": 0.75, "fraction_retrieved": 1.0, "n": 1, "n_retrieved": 1},
            }
        },
        "consistency": {
            "summary": {"U2OS": {"mean_average_precision": nan, "fraction_retrieved": nan, "n": 0, "n_retrieved": 0}}
        },
    }
    assert format_map(result) == (
        "copairs mAP (null_size=100, corrected p < 0.05, cosine, normalize=none)\n"
        "metric        group          mAP   retrieved     n\n"
        "activity      U2OS         0.500      25.0 %     4\n"
        "activity      A549         0.750     100.0 %     1\n"
        "consistency   U2OS             -           -     0"
    )
    assert map_summary({**result, "activity": {"summary": 1, "table": 2}, "consistency": {"summary": 3}}) == {
        "config": result["config"],
        "activity": 1,
        "consistency": 3,
    }
