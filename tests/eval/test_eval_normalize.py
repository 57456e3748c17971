"""Per-plate DMSO normalisation: standardise, robustise, ZCA sphering, and the no-DMSO error."""

import numpy as np
import pytest

from dinov2_cell.eval.normalize import normalize_profiles, zca_apply, zca_fit
from dinov2_cell.profiles.io import is_control


def _feats(df):
    return [c for c in df.columns if not c.startswith("Metadata_")]


def test_standardize_per_plate(planted):
    out = normalize_profiles(planted, "standardize")
    ctrl = is_control(out)
    for plate, g in out[ctrl].groupby("Metadata_Plate"):
        np.testing.assert_allclose(g[_feats(out)].mean(), 0, atol=1e-12)
        np.testing.assert_allclose(g[_feats(out)].std(ddof=0), 1, atol=1e-12)
    # Compound wells move with their plate's DMSO statistics (a hand computation for one value).
    p = planted[planted["Metadata_Plate"] == "PL000"]
    d = p[is_control(p)]["f03"]
    expected = (p["f03"].iloc[0] - d.mean()) / d.std(ddof=0)
    assert out.loc[p.index[0], "f03"] == pytest.approx(expected)


def test_robustize_per_plate(planted):
    out = normalize_profiles(planted, "robustize")
    p = planted[planted["Metadata_Plate"] == "PL004"]
    d = p[is_control(p)]["f00"].to_numpy()
    mad = 1.4826 * np.median(np.abs(d - np.median(d)))
    assert out.loc[p.index[2], "f00"] == pytest.approx((p["f00"].iloc[2] - np.median(d)) / mad)


def test_zca_whitens_controls_and_matches_full_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    fit = zca_fit(x, eps=1e-6)
    w = zca_apply(x, fit)
    np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(6), atol=1e-4)
    # Full ZCA with the D x D covariance (pycytominer's formula) gives the same map.
    cov = np.cov(x, rowvar=False)
    lam, u = np.linalg.eigh(cov)
    full = (x - x.mean(0)) @ (u @ np.diag(1 / np.sqrt(lam + 1e-6)) @ u.T)
    np.testing.assert_allclose(w, full, atol=1e-6)
    # D > n: the null space of the controls is scaled by 1/sqrt(eps), as the full formula does.
    small = rng.normal(size=(4, 6))
    fit = zca_fit(small, eps=1e-2)
    cov = np.cov(small, rowvar=False)
    lam, u = np.linalg.eigh(cov)
    full = (small - small.mean(0)) @ (u @ np.diag(1 / np.sqrt(np.clip(lam, 0, None) + 1e-2)) @ u.T)
    np.testing.assert_allclose(zca_apply(small, fit), full, atol=1e-8)


def test_spherize_runs_on_planted(planted):
    out = normalize_profiles(planted, "spherize")
    assert np.isfinite(out[_feats(out)].to_numpy()).all()
    assert list(out.columns) == list(planted.columns)


def test_plate_without_dmso_is_named(planted):
    bad = planted[~((planted["Metadata_Plate"] == "PL007") & (planted["Metadata_pert_iname"] == "DMSO"))]
    for method in ("standardize", "robustize", "spherize"):
        with pytest.raises(ValueError, match="plate PL007: 0 DMSO"):
            normalize_profiles(bad, method)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_profiles(planted, "zscore")
