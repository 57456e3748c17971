"""The profiling recipe's control wells: the JUMP column and a control query, as pycytominer's samples."""

import numpy as np
import pandas as pd
from pycytominer import normalize

from dinov2_cell.profiles.cellprofiler import build_parser
from dinov2_cell.profiles.recipe import RecipeSettings, normalize_per_plate, run_recipe


def _wells(seed=0):
    """Two plates x 10 wells; wells A01-A04 are the vehicle controls, named so that no DMSO rule finds them."""
    rng = np.random.default_rng(seed)
    rows = []
    for plate in ("P1", "P2"):
        for i in range(10):
            ctrl = i < 4
            rows.append(
                {
                    "Metadata_Plate": plate,
                    "Metadata_Well": f"A{i + 1:02d}",
                    "Metadata_broad_sample": "BRD-VEH" if ctrl else f"BRD-{i}",
                    "Metadata_pert_iname": "vehicle" if ctrl else f"cpd{i}",
                    **{f"Cells_F{j}": rng.normal(loc=j, scale=1 + j) for j in range(5)},
                }
            )
    return pd.DataFrame(rows)


def _direct(df, samples):
    parts = []
    for _, rows in df.groupby("Metadata_Plate", sort=False):
        meta = [c for c in rows.columns if c.startswith("Metadata_")]
        feats = [c for c in rows.columns if not c.startswith("Metadata_")]
        out = normalize(rows, features=feats, meta_features=meta, samples=samples, method="mad_robustize")
        out.index = rows.index
        parts.append(out)
    return pd.concat(parts).loc[df.index]


def test_query_and_negcon_column_are_the_reference():
    df = _wells()
    feats = [c for c in df.columns if c.startswith("Cells_")]
    expected = _direct(df, "Metadata_pert_iname == 'vehicle'")[feats].to_numpy()
    by_query = normalize_per_plate(df, control_query="Metadata_pert_iname == 'vehicle'")
    np.testing.assert_allclose(by_query[feats].to_numpy(), expected, rtol=1e-12)
    jump = df.assign(Metadata_control_type=np.where(df["Metadata_pert_iname"] == "vehicle", "negcon", "trt"))
    by_column = normalize_per_plate(jump)
    np.testing.assert_allclose(by_column[feats].to_numpy(), expected, rtol=1e-12)


def test_recipe_settings_carry_the_query_and_the_cli_offers_it():
    df = _wells()
    settings = RecipeSettings(operations=("variance_threshold",), control_query="Metadata_pert_iname == 'vehicle'")
    out = run_recipe(df, settings)
    ref = _direct(df, "Metadata_pert_iname == 'vehicle'")
    np.testing.assert_allclose(out["Cells_F0"].to_numpy(), ref["Cells_F0"].to_numpy(), rtol=1e-12)
    assert settings.describe()["control_query"] == "Metadata_pert_iname == 'vehicle'"
    assert "control_query" not in RecipeSettings().describe()  # configs recorded without it stay equal
    args = build_parser().parse_args(["--data-root", "x", "--out", "y", "--control-query", "Metadata_Well == 'A01'"])
    assert args.control_query == "Metadata_Well == 'A01'"
