"""knn_wells with the JUMP control column and --control-query: the controls left out and normalised against."""

import json
import subprocess
import sys

import numpy as np
import pytest

from dinov2_cell.eval.knn_wells import evaluate
from dinov2_cell.profiles.io import is_control


def _vehicle(planted):
    """planted with its DMSO wells renamed so that only a query (or the JUMP column) can find them."""
    df = planted.copy()
    dmso = is_control(df)
    df.loc[dmso, "Metadata_pert_iname"] = "vehicle"
    df.loc[dmso, "Metadata_broad_sample"] = "BRD-VEHICLE"
    return df, dmso


def test_query_and_column_select_the_wells_left_out_and_normalised_against(planted):
    df, dmso = _vehicle(planted)
    base = evaluate(planted, normalize="standardize")
    by_query = evaluate(df, normalize="standardize", control_query="Metadata_pert_iname == 'vehicle'")
    by_column = evaluate(df.assign(Metadata_control_type=np.where(dmso, "negcon", "trt")), normalize="standardize")
    for r in (by_query, by_column):
        assert r["config"]["n_wells"] == int((~dmso).sum()) == base["config"]["n_wells"]
        assert r["mean"] == base["mean"] and r["folds"] == base["folds"]
    assert by_query["config"]["controls"] == "query \"Metadata_pert_iname == 'vehicle'\""
    assert by_column["config"]["controls"] == "Metadata_control_type == 'negcon'"
    # without either, the renamed controls are neither left out nor found for normalisation
    with pytest.raises(ValueError, match="0 DMSO well"):
        evaluate(df, normalize="standardize")


def test_cli_control_query(tmp_path, planted):
    df, _ = _vehicle(planted)
    df.to_parquet(tmp_path / "p.parquet")
    cmd = [
        sys.executable,
        "-m",
        "dinov2_cell.eval.knn_wells",
        str(tmp_path / "p.parquet"),
        "--normalize",
        "standardize",
    ]
    out = subprocess.run(
        cmd + ["--control-query", "Metadata_pert_iname == 'vehicle'", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "o" / "knn.json").read_text())
    assert result["config"]["controls"] == "query \"Metadata_pert_iname == 'vehicle'\""
    assert result["config"]["n_wells"] == int((df["Metadata_pert_iname"] != "vehicle").sum())
    out = subprocess.run(cmd + ["--control-query", "Metadata_pert_iname =="], capture_output=True, text=True)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "control query" in lines[0], out.stderr
