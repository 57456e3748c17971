"""The recipe's own correlation filter and feature selection against pycytominer's, on tables built to hit each rule."""

import numpy as np
import pandas as pd
import pytest
from pycytominer import feature_select
from pycytominer.operations import correlation_threshold

from dinov2_cell.profiles.recipe import SELECT_OPERATIONS, RecipeSettings, correlation_excluded, select_features


def _table(seed: int, n: int = 40, width: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, width))
    cols = {f"Cells_F_{i:02d}": base[:, i] for i in range(width)}
    # correlated groups of several sizes and strengths, a strong negative correlation (kept: the rule is signed),
    # exact duplicates (equal correlation sums: the tie goes by pycytominer's sort) and a constant column (NaN rows)
    for k, (src, noise) in enumerate([(0, 0.05), (0, 0.2), (1, 0.01), (2, 0.4), (3, 0.3), (3, 0.31)]):
        cols[f"Cells_G_{k}"] = base[:, src] * (1 + k) + noise * rng.normal(size=n)
    cols["Cells_Neg"] = -base[:, 4] + 0.01 * rng.normal(size=n)
    cols["Cells_Dup_a"] = base[:, 5] * 3
    cols["Cells_Dup_b"] = base[:, 5] * 3
    cols["Cells_Const"] = np.full(n, 2.0)
    meta = {"Metadata_Plate": ["P1"] * n, "Metadata_Well": [f"A{i:02d}" for i in range(n)]}
    return pd.DataFrame({**meta, **cols})


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_correlation_excluded_equals_pycytominer(seed, threshold):
    df = _table(seed)
    feats = [c for c in df.columns if c.startswith("Cells_") and c != "Cells_Const"]
    ref = correlation_threshold(df, features=feats, threshold=threshold)
    ours = correlation_excluded(df, feats, threshold)
    assert sorted(ours) == sorted(ref)
    assert ours == [f for f in feats if f in set(ref)]  # in the order of the features given
    if threshold == 0.9:  # signed: a correlation of -0.99 excludes neither feature
        assert "Cells_Neg" not in ours and "Cells_F_04" not in ours


def test_the_rule_by_hand():
    """Of a pair above the threshold, the feature with the larger summed |correlation| goes."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=50)
    c = rng.normal(size=50)
    df = pd.DataFrame({"a": a, "b": a + 0.1 * rng.normal(size=50), "c": c + 0.3 * a})
    r = np.corrcoef(df.to_numpy().T)
    assert r[0, 1] > 0.9 and abs(r[0, 2]) < 0.9 and abs(r[1, 2]) < 0.9
    sums = np.abs(r).sum(axis=0)
    assert correlation_excluded(df, ["a", "b", "c"], 0.9) == ["a" if sums[0] > sums[1] else "b"]
    assert correlation_excluded(df, ["a", "b", "c"], r[0, 1]) == []  # strictly above


def test_constant_and_missing_values_take_pycytominers_own_path():
    df = _table(2)
    feats = [c for c in df.columns if c.startswith("Cells_")]  # the constant column: NaN correlations, never above
    assert sorted(correlation_excluded(df, feats, 0.9)) == sorted(correlation_threshold(df, features=feats))
    df.loc[3, "Cells_G_0"] = np.nan
    assert sorted(correlation_excluded(df, feats, 0.9)) == sorted(correlation_threshold(df, features=feats))
    assert correlation_excluded(df, feats[:1], 0.9) == [] and correlation_excluded(df, [], 0.5) == []
    with pytest.raises(ValueError, match="between"):
        correlation_excluded(df, feats, 1.5)


@pytest.mark.parametrize(
    "operations",
    [
        SELECT_OPERATIONS,
        ("correlation_threshold",),
        ("correlation_threshold", "variance_threshold", "drop_outliers"),
        ("drop_na_columns", "blocklist", "correlation_threshold"),
        ("drop_na_columns", "variance_threshold", "blocklist", "drop_outliers"),
    ],
)
def test_select_features_equals_pycytominer_feature_select(operations):
    df = _table(3)
    df["Cells_NaNcol"] = np.where(np.arange(len(df)) == 5, np.nan, 1.0 + np.arange(len(df)))
    df["Nuclei_Correlation_Manders_AGP_DNA"] = df["Cells_F_07"] + 0.5  # on pycytominer's blocklist
    df["Cells_Outlier"] = np.where(np.arange(len(df)) == 0, 900.0, df["Cells_F_08"])  # beyond drop_outliers' 500
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    settings = RecipeSettings(operations=tuple(operations))
    ours, stats = select_features(df, settings)
    direct = feature_select(
        df, features=feats, operation=list(operations), na_cutoff=settings.na_cutoff, corr_threshold=0.9
    )
    # the last NaN check of select_features drops what pycytominer kept with a NaN in it
    expected = [c for c in direct.columns if c.startswith("Metadata_") or np.isfinite(direct[c]).all()]
    assert list(ours.columns) == expected
    pd.testing.assert_frame_equal(ours, direct[expected])
    assert stats["features_in"] == len(feats)
    assert stats["features_out"] == len([c for c in expected if not c.startswith("Metadata_")])
