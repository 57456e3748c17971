"""Negative controls: the JUMP column, the DMSO spellings, a user's query; mark_controls for pycytominer."""

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.profiles.io import CONTROL_TYPE, control_rule, is_control, mark_controls


def _table(with_type):
    df = pd.DataFrame(
        {
            "Metadata_Plate": ["P1"] * 6,
            "Metadata_Well": ["A01", "A02", "A03", "A04", "A05", "A06"],
            "Metadata_broad_sample": ["", "BRD-1", "DMSO", "BRD-2", "BRD-3", "BRD-4"],
            "Metadata_pert_iname": ["DMSO", "cpd1", "DMSO", "dmso", "cpd3", "cpd4"],
            "f0": np.arange(6.0),
        }
    )
    if with_type:
        # JUMP convention; deliberately disagreeing with the names on A02 (negcon) and A03/A04 (not negcon)
        df.insert(4, CONTROL_TYPE, ["negcon", "NegCon ", "trt", "poscon_cp", "", "trt"])
    return df


def test_dmso_spellings_without_the_column():
    df = _table(False)
    assert is_control(df).tolist() == [True, False, True, True, False, False]
    assert control_rule(df) == "Metadata_pert_iname == 'DMSO' or an empty Metadata_broad_sample"


def test_negcon_column_wins_when_present():
    df = _table(True)
    assert is_control(df).tolist() == [True, True, False, False, False, False]
    assert control_rule(df) == "Metadata_control_type == 'negcon'"


def test_query_wins_over_both_and_bad_queries_are_named():
    df = _table(True)
    q = "Metadata_Well in ['A05', 'A06']"
    assert is_control(df, q).tolist() == [False, False, False, False, True, True]
    assert control_rule(df, q) == f"query {q!r}"
    with pytest.raises(ValueError, match=r"control query 'Metadata_nope == 1'.*metadata columns"):
        is_control(df, "Metadata_nope == 1")
    with pytest.raises(ValueError, match="must give one True/False per row"):
        is_control(df, "f0 + 1")
    with pytest.raises(ValueError, match="need column Metadata_control_type"):
        is_control(df[["Metadata_Plate", "f0"]])


def test_mark_controls_for_pycytominer_samples():
    marked = mark_controls(_table(False))
    assert list(marked.columns) == [*list(_table(False).columns)[:4], CONTROL_TYPE, "f0"]  # after the metadata
    assert marked[CONTROL_TYPE].tolist() == ["negcon", "trt", "negcon", "negcon", "trt", "trt"]
    # a query: selected rows become negcon, unselected negcon rows trt, other values (poscon) kept
    marked = mark_controls(_table(True), "Metadata_Well == 'A05'")
    assert marked[CONTROL_TYPE].tolist() == ["trt", "trt", "trt", "poscon_cp", "negcon", "trt"]
    assert marked.query("Metadata_control_type == 'negcon'")["Metadata_Well"].tolist() == ["A05"]
    assert _table(True)[CONTROL_TYPE].tolist()[0] == "negcon"  # the input is not modified
