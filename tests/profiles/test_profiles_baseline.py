"""Classical baseline features: values against numpy, Otsu, and the resumable per-plate profile writer."""

import numpy as np
import pandas as pd
import pytest
import torch

from dinov2_cell.profiles import baseline
from dinov2_cell.profiles.io import PROFILE_METADATA, feature_columns

PLATE_9, PLATE_16 = "BR00116991", "BR00117015"  # the stub dataset's plates (see conftest.py)


def test_site_features_match_numpy():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(2, 20, 20)).astype(np.float32)
    img[1] = img[0]  # identical channels: correlation 1
    f = dict(zip(baseline.feature_names(["a", "b"]), baseline.site_features(torch.from_numpy(img), stride=1)))
    a = img[0].astype(np.float64)
    assert f["a_mean"] == pytest.approx(a.mean())
    assert f["a_std"] == pytest.approx(a.std())
    assert f["a_p25"] == pytest.approx(np.percentile(a, 25), abs=1e-6)
    assert f["a_p99"] == pytest.approx(np.percentile(a, 99), abs=1e-6)
    grad = np.sqrt(np.diff(a, axis=1)[:-1, :] ** 2 + np.diff(a, axis=0)[:, :-1] ** 2).mean()
    assert f["a_grad"] == pytest.approx(grad)
    assert f["corr_a_b"] == pytest.approx(1.0)
    assert len(f) == 2 * len(baseline.CHANNEL_STATS) + 1


def test_otsu_splits_two_levels():
    img = torch.zeros(1, 10, 10)
    img[0, :, :3] = 0.8  # 30 % bright foreground
    f = dict(zip(baseline.feature_names(["x"]), baseline.site_features(img, stride=1)))
    assert 0.0 < f["x_otsu"] < 0.8
    assert f["x_fg_frac"] == pytest.approx(0.3)
    assert f["x_fg_mean"] == pytest.approx(0.8) and f["x_bg_mean"] == pytest.approx(0.0)
    const = dict(zip(baseline.feature_names(["x"]), baseline.site_features(torch.full((1, 8, 8), 0.5), stride=1)))
    assert np.isfinite(list(const.values())).all()


def test_baseline_profiles_resumable(tmp_path, stub_factory):
    out = tmp_path / "baseline"
    kw = dict(channels="fluo", dataset_factory=stub_factory, dataset_kwargs={"wells": ("A01", "A02")}, progress=False)
    path = baseline.baseline_profiles("root", str(out), **kw)
    df = pd.read_parquet(path)
    assert list(df.columns[: len(PROFILE_METADATA)]) == list(PROFILE_METADATA)
    assert sorted(df["Metadata_Plate"].unique()) == [PLATE_9, PLATE_16]
    assert len(df) == 4 and df["Metadata_cell_line"].eq("A549").all()
    assert set(df["Metadata_n_sites"]) == {"9", "16"}
    feats = feature_columns(df)
    assert feats[0] == "c0_mean" and len(feats) == 5 * len(baseline.CHANNEL_STATS) + 10
    assert np.isfinite(df[feats].to_numpy()).all()
    n_calls = len(stub_factory.calls)
    # Second call: every part present -> no dataset built, same file kept.
    assert baseline.baseline_profiles("root", str(out), **kw) == path == str(out / "profiles.parquet")
    assert len(stub_factory.calls) == n_calls + 1  # only the plate listing; no plate was read again
    with pytest.raises(FileExistsError, match="stride"):
        baseline.baseline_profiles("root", str(out), stride=3, **kw)


def test_cli_tiny_run_and_bad_input(tmp_path):
    import os
    import subprocess
    import sys

    from dinov2_cell.synthetic import generate_plates

    data = tmp_path / "plates"
    generate_plates(data, plates=[PLATE_9], wells=["A01", "A02"], sites=9, size=24, progress=False)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "dinov2_cell.profiles.baseline", "--data-root", str(data), "--no-progress"]
    out = subprocess.run(
        cmd + ["--out", str(tmp_path / "b"), "--channels", "fluo"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "b" / "profiles.parquet")
    df = pd.read_parquet(out.stdout.strip())
    assert list(df["Metadata_Well"]) == ["A01", "A02"] and df["Metadata_pert_iname"].iloc[1] == "DMSO"
    # A plate the data root does not hold: one error line naming it, exit 2, nothing written.
    bad = cmd + ["--out", str(tmp_path / "c"), "--plates", "BR00116995"]
    out = subprocess.run(bad, capture_output=True, text=True, env=env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "error:" in lines[0] and "BR00116995" in lines[0], out.stderr
    assert not os.path.exists(tmp_path / "c" / "profiles.parquet")


def test_cli_bad_input_leaves_no_trace_and_the_corrected_rerun_succeeds(tmp_path):
    import os
    import subprocess
    import sys

    from dinov2_cell.synthetic import generate_plates

    data = tmp_path / "plates"
    generate_plates(data, plates=[PLATE_9], wells=["A01", "A02"], sites=9, size=24, progress=False)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "b1"
    cmd = [sys.executable, "-m", "dinov2_cell.profiles.baseline", "--out", str(out), "--no-progress"]
    bad = subprocess.run(cmd + ["--data-root", "/nonexistent"], capture_output=True, text=True, env=env)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "/nonexistent" in lines[0], bad.stderr
    assert not out.exists()
    good = subprocess.run(cmd + ["--data-root", str(data)], capture_output=True, text=True, env=env)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == str(out / "profiles.parquet")
    # b1 now holds a finished run: a bad call (unknown channel; --overwrite, else the recorded options refuse it
    # first) exits 2 and leaves every file as it was.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    bad = cmd + ["--data-root", str(data), "--channels", "XYZ", "--overwrite"]
    bad = subprocess.run(bad, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "XYZ" in bad.stderr, bad.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
