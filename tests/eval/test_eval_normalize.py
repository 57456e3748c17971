"""Per-plate DMSO normalisation: each method equals pycytominer called directly; the no-DMSO error."""

import numpy as np
import pandas as pd
import pytest
from pycytominer import normalize

from dinov2_cell.eval.normalize import METHODS, normalize_profiles
from dinov2_cell.profiles.io import is_control


def _feats(df):
    return [c for c in df.columns if not c.startswith("Metadata_")]


def _direct_per_plate(df, method):
    """pycytominer.normalize on each plate with its DMSO wells as samples, written out by hand."""
    parts = []
    for _, rows in df.groupby("Metadata_Plate", sort=False):
        rows = rows.assign(Metadata_ref=np.where(is_control(rows), "y", "n"))
        meta = [c for c in rows.columns if c.startswith("Metadata_")]
        out = normalize(rows, features=_feats(df), meta_features=meta, samples="Metadata_ref == 'y'", method=method)
        out.index = rows.index
        parts.append(out)
    return pd.concat(parts).loc[df.index]


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
def test_per_plate_methods_equal_pycytominer(planted, method):
    out = normalize_profiles(planted, method)
    ref = _direct_per_plate(planted, method)
    feats = _feats(planted)
    assert list(out.columns) == list(planted.columns)
    np.testing.assert_allclose(out[feats].to_numpy(), ref[feats].to_numpy(), rtol=1e-12, atol=1e-12)


def test_standardize_hand_computation(planted):
    out = normalize_profiles(planted, "standardize")
    p = planted[planted["Metadata_Plate"] == "PL000"]
    d = p[is_control(p)]["f03"]
    expected = (p["f03"].iloc[0] - d.mean()) / d.std(ddof=0)
    assert out.loc[p.index[0], "f03"] == pytest.approx(expected)


def test_mad_robustize_hand_computation(planted):
    out = normalize_profiles(planted, "mad_robustize")
    p = planted[planted["Metadata_Plate"] == "PL004"]
    d = p[is_control(p)]["f00"].to_numpy()
    mad = 1.4826 * np.median(np.abs(d - np.median(d)))
    expected = (p["f00"].to_numpy() - np.median(d)) / mad
    np.testing.assert_allclose(out.loc[p.index, "f00"], expected, rtol=1e-9)


def test_spherize_equals_pycytominer_and_whitens_controls(planted):
    out = normalize_profiles(planted, "spherize")
    feats = _feats(planted)
    std = _direct_per_plate(planted, "standardize").assign(Metadata_ref=lambda d: np.where(is_control(d), "y", "n"))
    meta = [c for c in std.columns if c.startswith("Metadata_")]
    ref = normalize(
        std,
        features=feats,
        meta_features=meta,
        samples="Metadata_ref == 'y'",
        method="spherize",
        spherize_method="ZCA",
        spherize_center=True,
    )
    np.testing.assert_allclose(out[feats].to_numpy(), ref[feats].to_numpy(), rtol=1e-9, atol=1e-9)
    ctrl = out.loc[is_control(out), feats].to_numpy()
    cov = np.cov(ctrl, rowvar=False)
    np.testing.assert_allclose(cov, np.eye(len(feats)), atol=1e-6)


def test_errors(planted):
    bad = planted[~(is_control(planted) & (planted["Metadata_Plate"] == "PL002"))]
    for method in ("standardize", "mad_robustize", "spherize"):
        with pytest.raises(ValueError, match="PL002"):
            normalize_profiles(bad, method)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_profiles(planted, "zscore")
    assert normalize_profiles(planted, "none").equals(planted)
    assert set(METHODS) >= {"standardize", "robustize", "mad_robustize", "spherize"}


def test_spherize_with_fewer_controls_than_features_is_a_clear_error(planted):
    wide = planted.copy()
    for j in range(80):  # 66 DMSO wells, 16 + 80 features
        wide[f"g{j:02d}"] = np.random.default_rng(j).normal(size=len(wide))
    with pytest.raises(ValueError, match="66 DMSO wells for 96 features"):
        normalize_profiles(wide, "spherize")


def _jump_style(planted):
    """planted with Metadata_control_type: "negcon" on only the first 4 DMSO wells of each plate (the rest "trt"),
    so that the column rule and the DMSO rule select different references."""
    df = planted.copy()
    first = df[is_control(df)].groupby("Metadata_Plate").head(4).index
    kind = pd.Series("trt", index=df.index)
    kind[first] = "negcon"
    df.insert(5, "Metadata_control_type", kind)
    return df


@pytest.mark.parametrize("method", ["standardize", "mad_robustize"])
def test_negcon_column_is_the_reference_as_pycytominer_samples(planted, method):
    df = _jump_style(planted)
    out = normalize_profiles(df, method)
    feats = _feats(df)
    parts = []
    for _, rows in df.groupby("Metadata_Plate", sort=False):
        meta = [c for c in rows.columns if c.startswith("Metadata_")]
        ref = normalize(
            rows, features=feats, meta_features=meta, samples="Metadata_control_type == 'negcon'", method=method
        )
        ref.index = rows.index
        parts.append(ref)
    ref = pd.concat(parts).loc[df.index]
    np.testing.assert_allclose(out[feats].to_numpy(), ref[feats].to_numpy(), rtol=1e-12, atol=1e-12)
    # ... which differs from normalising against every DMSO well
    assert not np.allclose(out[feats].to_numpy(), normalize_profiles(planted, method)[feats].to_numpy())


def test_control_query_overrides_the_column(planted):
    df = _jump_style(planted)
    out = normalize_profiles(df, "standardize", control_query="Metadata_pert_iname == 'DMSO'")
    feats = _feats(df)
    # the query selects every DMSO well again: the same numbers as the DMSO rule on the table without the column
    expected = normalize_profiles(planted, "standardize")
    np.testing.assert_allclose(out[feats].to_numpy(), expected[feats].to_numpy(), rtol=1e-12, atol=1e-12)
    # metadata untouched (the column keeps its own values), same columns and order
    assert list(out.columns) == list(df.columns)
    assert out["Metadata_control_type"].tolist() == df["Metadata_control_type"].tolist()
    with pytest.raises(ValueError, match="control query 'Metadata_nope == 1'"):
        normalize_profiles(df, "standardize", control_query="Metadata_nope == 1")
    with pytest.raises(ValueError, match="PL000: 0 DMSO well"):
        normalize_profiles(
            df, "standardize", control_query="Metadata_Plate != 'PL000' and Metadata_pert_iname == 'DMSO'"
        )
