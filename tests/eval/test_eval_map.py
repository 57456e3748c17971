"""copairs mAP: equality with copairs called directly, planted ordering, and errors."""

import numpy as np
import pandas as pd
import pytest
from copairs.map import average_precision, mean_average_precision
from copairs.matching import assign_reference_index

from dinov2_cell.eval.map import format_map, map_scores

NULL = 200


def _direct_activity(sub, cache):
    """copairs' phenotypic activity recipe written out by hand on one cell line."""
    feats = [c for c in sub.columns if not c.startswith("Metadata_")]
    meta = sub[["Metadata_broad_sample"]].reset_index(drop=True).copy()
    dmso = (sub["Metadata_pert_iname"] == "DMSO").to_numpy()
    meta.loc[dmso, "Metadata_broad_sample"] = "DMSO"
    meta = assign_reference_index(meta, "Metadata_broad_sample == 'DMSO'", reference_col="ref", default_value=-1)
    cols = ["Metadata_broad_sample", "ref"]
    ap = average_precision(meta, sub[feats].to_numpy(), cols, [], [], cols, progress_bar=False)
    ap = ap[ap["ref"] == -1]
    return mean_average_precision(ap, ["Metadata_broad_sample"], NULL, 0.05, 0, progress_bar=False, cache_dir=cache)


def _direct_consistency(sub, active, cache):
    feats = [c for c in sub.columns if not c.startswith("Metadata_")]
    cpd = sub[(sub["Metadata_pert_iname"] != "DMSO") & sub["Metadata_broad_sample"].isin(active)]
    consensus = cpd.groupby("Metadata_broad_sample")[feats].mean()
    target = cpd.groupby("Metadata_broad_sample")["Metadata_target"].first().loc[consensus.index]
    meta = pd.DataFrame({"Metadata_target": target.to_numpy()})
    ap = average_precision(
        meta, consensus.to_numpy(), ["Metadata_target"], [], [], ["Metadata_target"], progress_bar=False
    )
    return mean_average_precision(ap, ["Metadata_target"], NULL, 0.05, 0, progress_bar=False, cache_dir=cache)


def test_map_equals_copairs_called_directly(make_planted, tmp_path):
    make, _ = make_planted
    df = make(plates=(("U2OS", 3), ("A549", 3)), noise=1.5, structure=1.0, seed=5)
    cache = str(tmp_path / "cache")
    result = map_scores(df, null_size=NULL, cache_dir=cache)
    for line in ("U2OS", "A549"):
        sub = df[df["Metadata_cell_line"] == line].reset_index(drop=True)
        ref = _direct_activity(sub, cache).set_index("Metadata_broad_sample")
        got = result["activity"]["table"]
        got = got[got["Metadata_cell_line"] == line].set_index("Metadata_broad_sample").loc[ref.index]
        for col in ("mean_average_precision", "p_value", "corrected_p_value"):
            np.testing.assert_allclose(got[col].astype(float), ref[col].astype(float), rtol=1e-12)
        summary = result["activity"]["summary"][line]
        assert summary["mean_average_precision"] == pytest.approx(ref["mean_average_precision"].mean())
        assert summary["fraction_retrieved"] == pytest.approx(ref["below_corrected_p"].mean())
        active = ref.index[ref["below_corrected_p"]].tolist()
        assert len(active) >= 4  # enough for targets with two active compounds
        cref = _direct_consistency(sub, active, cache).set_index("Metadata_target")
        cgot = result["consistency"]["table"]
        cgot = cgot[cgot["Metadata_cell_line"] == line].set_index("Metadata_target").loc[cref.index]
        np.testing.assert_allclose(cgot["mean_average_precision"].astype(float), cref["mean_average_precision"])
    assert "activity" in format_map(result)


def test_planted_activity_beats_shuffled(make_planted, planted, tmp_path):
    make, shuffle = make_planted
    cache = str(tmp_path / "cache")
    good = map_scores(planted, null_size=NULL, cache_dir=cache, consistency=False)["activity"]["summary"]["all"]
    bad = map_scores(shuffle(planted), null_size=NULL, cache_dir=cache, consistency=False)["activity"]["summary"]["all"]
    noise = map_scores(make(structure=0.0), null_size=NULL, cache_dir=cache, consistency=False)["activity"]["summary"]
    assert good["mean_average_precision"] > 0.9 and good["fraction_retrieved"] == 1.0
    assert bad["mean_average_precision"] < good["mean_average_precision"] - 0.3
    assert noise["all"]["fraction_retrieved"] < 0.25
    # Consistency: compounds sharing a target were planted alike.
    con = map_scores(planted, null_size=NULL, cache_dir=cache)["consistency"]["summary"]["all"]
    shuffled_targets = planted.copy()
    cpd = shuffled_targets["Metadata_pert_iname"] != "DMSO"
    perm = {f"BRD-{i:03d}": f"T{j}" for i, j in enumerate(np.random.default_rng(0).permutation(12) // 2)}
    shuffled_targets.loc[cpd, "Metadata_target"] = shuffled_targets.loc[cpd, "Metadata_broad_sample"].map(perm)
    con_bad = map_scores(shuffled_targets, null_size=NULL, cache_dir=cache)["consistency"]["summary"]["all"]
    assert con["mean_average_precision"] > con_bad["mean_average_precision"]


def test_map_errors(planted, tmp_path):
    no_dmso = planted[~((planted["Metadata_cell_line"] == "A549") & (planted["Metadata_pert_iname"] == "DMSO"))]
    with pytest.raises(ValueError, match="A549 has no DMSO"):
        map_scores(no_dmso, null_size=NULL, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Metadata_target"):
        map_scores(planted.drop(columns="Metadata_target"), null_size=NULL, cache_dir=str(tmp_path))
