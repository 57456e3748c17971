"""docs/ stays true: the pycytominer + copairs snippet of docs/profiles.md runs on SSL-style profiles as written."""

import os
import re

import numpy as np
import pandas as pd
import pytest

from helpers import REPO


def _ssl_profiles(style):
    """Two plates x 12 wells with SSL-style feature names; 4 control wells per plate. ``ours``: controls are DMSO by
    name (no control-type column); ``jump``: controls are only marked by Metadata_control_type == "negcon" (their
    name and broad_sample would not say so), as JUMP tables do."""
    rng = np.random.default_rng(0)
    rows = []
    for plate in ("P1", "P2"):
        for i in range(12):
            ctrl = i < 4
            row = {
                "Metadata_Plate": plate,
                "Metadata_Well": f"A{i + 1:02d}",
                "Metadata_broad_sample": ("" if style == "ours" else "BRD-VEHICLE") if ctrl else f"BRD-{i}",
                "Metadata_pert_iname": ("DMSO" if style == "ours" else "vehicle") if ctrl else f"cpd{i}",
            }
            if style == "jump":
                row["Metadata_control_type"] = "negcon" if ctrl else "trt"
            # a compound's two wells share a direction, so replicates are retrievable
            center = np.random.default_rng(100 + i).normal(size=9)
            x = (0 if ctrl else 1.0) * center + 0.5 * rng.normal(size=9)
            row.update({f"fluo_p0_{j:04d}": x[j] for j in range(6)})
            row.update({f"bf_p0_{j:04d}": x[6 + j] for j in range(3)})
            rows.append(row)
    return pd.DataFrame(rows)


def _hand_average_precision(treated, kept, i):
    """AP of row i: positives = same compound on another plate, negatives = other compounds, ranked by cosine."""
    x = treated[kept].to_numpy(dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x[i]
    same = treated["Metadata_broad_sample"].to_numpy() == treated["Metadata_broad_sample"].iloc[i]
    other_plate = treated["Metadata_Plate"].to_numpy() != treated["Metadata_Plate"].iloc[i]
    pos, neg = same & other_plate, ~same
    cand = np.flatnonzero(pos | neg)
    order = cand[np.argsort(-sims[cand], kind="stable")]
    hits = pos[order]
    precision = np.cumsum(hits) / np.arange(1, len(order) + 1)
    return float(precision[hits].mean())


@pytest.mark.parametrize("style", ["ours", "jump"])
def test_pycytominer_copairs_snippet_runs_on_ssl_profiles(tmp_path, monkeypatch, style):
    text = open(os.path.join(REPO, "docs", "profiles.md")).read()
    snippet = re.search(r"## Using the profiles with pycytominer.*?```python\n(.*?)```", text, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # copairs caches its null distributions under ~/.copairs
    os.makedirs("profiles")
    _ssl_profiles(style).to_parquet("profiles/profiles.parquet")
    scope = {}
    exec(compile(snippet, "docs/profiles.md", "exec"), scope)
    selected, kept = scope["selected"], scope["kept"]
    assert len(selected) == 24 and kept and all(c.startswith(("fluo_", "bf_")) for c in kept)
    negcon = scope["normed"][scope["normed"]["Metadata_control_type"] == "negcon"]
    assert len(negcon) == 8 and set(negcon["Metadata_Well"]) == {"A01", "A02", "A03", "A04"}
    # mad_robustize against the negative controls: their median is 0 on every plate
    for _, g in negcon.groupby("Metadata_Plate"):
        assert np.allclose(g[scope["feats"]].median(), 0, atol=1e-9)
    # copairs' average precision equals a hand ranking for every treated well
    treated, ap = scope["treated"], scope["ap"]
    assert len(ap) == 16
    hand = [_hand_average_precision(treated, kept, i) for i in range(len(treated))]
    np.testing.assert_allclose(ap["average_precision"].to_numpy(), hand, rtol=1e-9)
    maps = scope["maps"]
    assert sorted(maps["Metadata_broad_sample"]) == sorted(f"BRD-{i}" for i in range(4, 12))
    means = ap.groupby("Metadata_broad_sample")["average_precision"].mean()
    got = maps.set_index("Metadata_broad_sample")["mean_average_precision"]
    np.testing.assert_allclose(got.loc[means.index].to_numpy(), means.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("style", ["ours", "jump"])
def test_readme_pycytominer_snippet_runs_on_ssl_profiles(tmp_path, monkeypatch, style):
    text = open(os.path.join(REPO, "README.md")).read()
    snippet = re.search(r"## Using the profiles with pycytominer.*?```python\n(.*?)```", text, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    os.makedirs("profiles")
    _ssl_profiles(style).to_parquet("profiles/profiles.parquet")
    scope = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    normed = scope["normed"]
    assert len(normed) == 24
    negcon = normed[normed["Metadata_control_type"] == "negcon"]
    assert set(negcon["Metadata_Well"]) == {"A01", "A02", "A03", "A04"} and len(negcon) == 8
    feats = [c for c in normed.columns if c.startswith(("fluo_", "bf_"))]
    assert len(feats) == 9
    for _, g in negcon.groupby("Metadata_Plate"):
        assert np.allclose(g[feats].median(), 0, atol=1e-9)
