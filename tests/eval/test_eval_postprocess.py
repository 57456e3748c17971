"""Post-processing applied identically to every feature set: block scaling, feature selection, through the scorers."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.eval.knn_wells import evaluate
from dinov2_cell.eval.map import map_scores
from dinov2_cell.eval.normalize import normalize_profiles
from dinov2_cell.eval.postprocess import PostProcess, parse_block_weights, scale_blocks
from dinov2_cell.profiles.recipe import select_features


def fused(planted, bf_scale=20.0, seed=0):
    """The planted table's features as a ``fluo`` block plus a large, label-free ``bf`` block of noise."""
    rng = np.random.default_rng(seed)
    feats = [c for c in planted.columns if c.startswith("f")]
    meta = planted.drop(columns=feats)
    fluo = planted[feats].set_axis([f"fluo_p0_{j:04d}" for j in range(len(feats))], axis=1)
    bf = pd.DataFrame(bf_scale * rng.normal(size=(len(planted), 8)), columns=[f"bf_p0_{j:04d}" for j in range(8)])
    return pd.concat([meta, fluo, bf.set_index(planted.index)], axis=1)


def test_scale_blocks_by_hand(planted):
    df = fused(planted)
    out = scale_blocks(df, {"bf": 0.5})
    fl = [c for c in df.columns if c.startswith("fluo_")]
    bf = [c for c in df.columns if c.startswith("bf_")]
    for cols, w in ((fl, 1.0), (bf, 0.5)):
        x = df[cols].to_numpy()
        expected = x * w / np.mean(np.sqrt((x**2).sum(axis=1)))
        np.testing.assert_allclose(out[cols].to_numpy(), expected, rtol=1e-12)
        assert np.mean(np.linalg.norm(out[cols].to_numpy(), axis=1)) == pytest.approx(w)
    assert list(out.columns) == list(df.columns)
    dropped = scale_blocks(df, {"bf": 0})
    assert not any(c.startswith("bf_") for c in dropped.columns)
    with pytest.raises(ValueError, match=r"\['dna'\].*blocks \['bf', 'fluo'\]"):
        scale_blocks(df, {"dna": 1})
    with pytest.raises(ValueError, match="bf=-1"):
        scale_blocks(df, {"bf": -1})


def test_parse_block_weights():
    assert parse_block_weights("fluo=1, bf=0.5") == {"fluo": 1.0, "bf": 0.5}
    assert parse_block_weights(None) is None and parse_block_weights("") is None
    for bad in ("fluo", "fluo=x", "=1"):
        with pytest.raises(ValueError, match="BLOCK=WEIGHT"):
            parse_block_weights(bad)


def test_postprocess_steps_equal_the_pieces(planted):
    df = fused(planted, bf_scale=1.0)
    pp = PostProcess("mad_robustize", feature_select=True, block_weights={"bf": 0.5})
    got = pp(df)
    ref = scale_blocks(select_features(normalize_profiles(df, "mad_robustize"))[0], {"bf": 0.5})
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref.reset_index(drop=True))
    assert (
        pp.describe()
        == "per-plate mad_robustize vs DMSO, feature selection, blocks scaled to unit mean norm x weight (bf 0.5)"
    )
    assert PostProcess().describe() == "raw"
    with pytest.raises(ValueError, match="normalize"):
        PostProcess("zscore")


def test_a_dominant_empty_block_dilutes_and_block_weights_restore(planted):
    """The review's finding in miniature: a large label-free block wins the cosine unless blocks are scaled."""
    df = fused(planted)
    fluo_only = evaluate(df.drop(columns=[c for c in df.columns if c.startswith("bf_")]))["mean"]["accuracy"]
    raw = evaluate(df)["mean"]["accuracy"]
    dropped = evaluate(df, block_weights={"bf": 0})
    assert dropped["mean"]["accuracy"] == fluo_only  # weight 0 = the block is not used at all
    scaled = evaluate(df, block_weights={"bf": 0.25})["mean"]["accuracy"]
    assert raw < fluo_only - 0.2 and scaled > raw + 0.2
    assert dropped["config"]["block_weights"] == {"bf": 0.0}
    assert "unit mean norm" in dropped["config"]["postprocess"]
    mp = map_scores(df, null_size=200, consistency=False, block_weights={"bf": 0})
    ref = map_scores(df.drop(columns=[c for c in df.columns if c.startswith("bf_")]), null_size=200, consistency=False)
    assert mp["activity"]["summary"]["all"] == ref["activity"]["summary"]["all"]


def test_cli_block_weights_and_bad_value(tmp_path, planted):
    path = tmp_path / "fused.parquet"
    fused(planted).to_parquet(path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dinov2_cell.eval.knn_wells", str(path)]
    ok = subprocess.run(
        cmd + ["--normalize", "mad_robustize", "--block-weights", "fluo=1,bf=0.25"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(cmd + ["--block-weights", "bf"], capture_output=True, text=True, env=env, timeout=120)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "--block-weights" in lines[0], bad.stderr
