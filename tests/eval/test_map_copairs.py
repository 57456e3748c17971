"""Phenotypic consistency: p-values, corrected p-values and the retrieval threshold against copairs called directly.

The planted table is chosen so that some targets' corrected p-values fall below 0.05 and others between 0.05 and 0.5:
a threshold other than the requested one (e.g. 0.5 for 0.05) changes which targets count as retrieved.
"""

import numpy as np
import pandas as pd
import pytest
from copairs.map import average_precision, mean_average_precision

from dinov2_cell.eval.map import consistency_map, map_scores

NULL = 500
TARGET = "Metadata_target"


@pytest.fixture()
def table(make_planted):
    # 24 compounds (12 targets of two compounds), 3 plates, one cell line; structure 0.6 gives mixed evidence
    make, _ = make_planted
    return make(plates=(("U2OS", 3),), n_compounds=24, noise=1.0, structure=0.6, seed=1)


def _features(df):
    return [c for c in df.columns if not c.startswith("Metadata_")]


def _direct(df, threshold, cache):
    """copairs' consistency recipe by hand: one consensus (mean) profile per compound, positives share the target."""
    cpd = df[df["Metadata_pert_iname"] != "DMSO"]
    consensus = cpd.groupby("Metadata_broad_sample")[_features(df)].mean()
    target = cpd.groupby("Metadata_broad_sample")[TARGET].first().loc[consensus.index]
    meta = pd.DataFrame({TARGET: target.to_numpy()})
    ap = average_precision(meta, consensus.to_numpy(), [TARGET], [], [], [TARGET], progress_bar=False)
    out = mean_average_precision(ap, [TARGET], NULL, threshold, 0, progress_bar=False, cache_dir=cache)
    return out.set_index(TARGET)


def _compare(got, ref):
    got = got.set_index(TARGET).loc[ref.index]
    for col in ("mean_average_precision", "p_value", "corrected_p_value"):
        np.testing.assert_allclose(got[col].astype(float), ref[col].astype(float), rtol=1e-12, err_msg=col)
    assert got["below_corrected_p"].astype(bool).tolist() == ref["below_corrected_p"].astype(bool).tolist()


def test_consistency_p_values_and_default_threshold_equal_copairs(table, tmp_path):
    cache = str(tmp_path / "nulls")
    ref = _direct(table, 0.05, cache)
    corrected = ref["corrected_p_value"].astype(float)
    # the case is sensitive to the threshold: retrieved targets and targets between 0.05 and 0.5 both exist
    assert (corrected < 0.05).sum() >= 3 and ((corrected >= 0.05) & (corrected < 0.5)).sum() >= 3
    assert ref["below_corrected_p"].astype(bool).tolist() == (corrected < 0.05).tolist()  # copairs' definition

    got = consistency_map(table, table[_features(table)].to_numpy(), null_size=NULL, cache_dir=cache)
    assert len(got) == 12
    _compare(got, ref)

    # the same through map_scores (all compounds, no activity filter), summary included
    result = map_scores(
        table, null_size=NULL, cache_dir=cache, activity=False, consistency_active_only=False, split_by=None
    )
    con = result["consistency"]
    _compare(con["table"], ref)
    assert con["summary"]["all"]["n_retrieved"] == int((corrected < 0.05).sum())
    assert con["summary"]["all"]["fraction_retrieved"] == pytest.approx(float((corrected < 0.05).mean()))
    assert con["summary"]["all"]["mean_average_precision"] == pytest.approx(ref["mean_average_precision"].mean())


@pytest.mark.parametrize("threshold", [0.1, 0.2])
def test_consistency_threshold_is_the_requested_one(table, tmp_path, threshold):
    cache = str(tmp_path / "nulls")
    ref = _direct(table, threshold, cache)
    got = consistency_map(
        table, table[_features(table)].to_numpy(), null_size=NULL, threshold=threshold, cache_dir=cache
    )
    _compare(got, ref)
    result = map_scores(
        table,
        null_size=NULL,
        threshold=threshold,
        cache_dir=cache,
        activity=False,
        consistency_active_only=False,
        split_by=None,
    )
    _compare(result["consistency"]["table"], ref)
    assert result["config"]["threshold"] == threshold
