"""Challenge submission CSV: the organisers' layout, the check against the packaged plate map, kNN on a submission."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.columns import BROAD, CELL_LINE, PLATE, WELL
from dinov2_cell.data.metadata import well_metadata
from dinov2_cell.profiles import submission

PLATES = ["BR00116991", "BR00116995"]  # one A549, one U2OS compound plate


@pytest.fixture(scope="module")
def profiles():
    """Every well (DMSO included) of two real compound plates with 3 random features, in reverse well order."""
    meta = well_metadata(PLATES)[[PLATE, WELL, BROAD, "Metadata_pert_iname", CELL_LINE]]
    rng = np.random.default_rng(0)
    feats = pd.DataFrame(rng.normal(size=(len(meta), 3)), columns=["z_c", "a_b", "m_x"])
    return pd.concat([meta.reset_index(drop=True), feats], axis=1).iloc[::-1].reset_index(drop=True)


def test_writer_layout_and_feature_order(tmp_path, profiles):
    path = submission.write_submission(profiles, tmp_path / "sub.csv")
    sub = pd.read_csv(path, dtype={BROAD: str, PLATE: str, WELL: str})
    assert list(sub.columns) == [BROAD, PLATE, WELL, "feature_0", "feature_1", "feature_2"]
    assert len(sub) == 2 * 320 and not sub[BROAD].str.strip().eq("").any()  # 64 DMSO wells per plate left out
    assert list(sub[PLATE] + sub[WELL]) == sorted(sub[PLATE] + sub[WELL])
    # feature_i is the profile's i-th feature column, exactly.
    assert submission.feature_map(profiles) == {"feature_0": "z_c", "feature_1": "a_b", "feature_2": "m_x"}
    row = profiles[(profiles[PLATE] == "BR00116995") & (profiles[WELL] == "A01")]
    got = sub[(sub[PLATE] == "BR00116995") & (sub[WELL] == "A01")]
    assert (
        got[["feature_0", "feature_1", "feature_2"]].to_numpy().tolist()
        == row[["z_c", "a_b", "m_x"]].to_numpy().tolist()
    )
    assert submission.check_submission(path, plates=PLATES) == []
    # Against all 24 compound plates the 22 absent ones are reported.
    (problem,) = submission.check_submission(path)
    assert "7040 compound well(s) missing" in problem and "BR00116992" in problem and "--plates" in problem
    with pytest.raises(FileExistsError):
        submission.write_submission(profiles, path)
    bad = profiles.copy()
    bad.loc[5, "a_b"] = np.nan
    with pytest.raises(ValueError, match="'a_b'"):
        submission.write_submission(bad, tmp_path / "nan.csv")
    assert not (tmp_path / "nan.csv").exists()


def _broken(tmp_path, profiles, kind):
    sub = submission.submission_table(profiles)
    if kind == "column":
        sub = sub.rename(columns={"feature_1": "feat_1"})
    elif kind == "duplicate":
        sub = pd.concat([sub, sub.iloc[[3]]], ignore_index=True)
    elif kind == "duplicate_other_features":  # one well twice with different features: still a duplicate well
        sub = pd.concat([sub, sub.iloc[[3]].assign(feature_0=sub["feature_0"].iloc[3] + 1.0)], ignore_index=True)
    elif kind == "partial":  # three wells of one plate missing: the plate is partial, not absent
        sub = sub.drop(index=sub.index[sub[PLATE] == PLATES[1]][:3])
    elif kind == "absent":
        sub = sub[sub[PLATE] != PLATES[1]]
    elif kind == "foreign":  # a row of a plate that is not a compound plate
        sub = pd.concat([sub, sub.iloc[[0]].assign(**{PLATE: "BR00117054"})], ignore_index=True)
    elif kind == "dmso":
        dmso = profiles[profiles["Metadata_pert_iname"] == "DMSO"].iloc[[0]]
        extra = dmso[[BROAD, PLATE, WELL]].assign(feature_0=0.0, feature_1=0.0, feature_2=0.0)
        sub = pd.concat([sub, extra], ignore_index=True)
    elif kind == "nan":
        sub.loc[7, "feature_2"] = np.nan
    elif kind == "broad":
        sub.loc[0, BROAD] = "BRD-K00000000-000-00-0"
    path = tmp_path / f"{kind}.csv"
    sub.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "kind,expected,not_expected",
    [
        ("column", "column 5 is 'feat_1', expected feature_1", None),
        ("duplicate", "1 duplicated well(s)", None),
        ("duplicate_other_features", "1 duplicated well(s) (each well exactly once): BR00116991", None),
        ("dmso", "1 DMSO well(s), not compound-containing", None),
        ("nan", "1 missing, infinite or non-numeric feature value(s), first feature_2", None),
        ("broad", "differs from the packaged plate map", None),
        ("partial", "3 compound well(s) missing; partial plates (missing/expected): BR00116995 (3/320)", "absent"),
        ("absent", "320 compound well(s) missing; plates absent: BR00116995", "partial plates"),
        ("foreign", "1 row(s) of plate(s) outside the expected compound plates: BR00117054", None),
    ],
)
def test_check_finds_each_problem(tmp_path, profiles, kind, expected, not_expected):
    problems = submission.check_submission(_broken(tmp_path, profiles, kind), plates=PLATES)
    assert len(problems) == 1 and expected in problems[0], problems
    assert not_expected is None or not_expected not in problems[0]


def test_cli_check_and_knn_on_a_submission(tmp_path, profiles):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    good = submission.write_submission(profiles, tmp_path / "sub.csv")
    cmd = [sys.executable, "-m", "dinov2_cell.profiles.validate_submission"]
    out = subprocess.run(cmd + [good, "--plates", ",".join(PLATES)], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    # Two problem classes at once: one error line each, exit 2.
    sub = pd.read_csv(_broken(tmp_path, profiles, "dmso"))
    sub.loc[2, "feature_0"] = np.inf
    sub.to_csv(tmp_path / "two.csv", index=False)
    out = subprocess.run(
        cmd + [str(tmp_path / "two.csv"), "--plates", ",".join(PLATES)], capture_output=True, text=True
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 2 and all(" error: " in x for x in lines), out.stderr
    # knn_wells scores the submission file itself (cell lines from the packaged metadata): 2 plates per cell line,
    # features = a per-compound direction + noise, so a replicate on another plate is the nearest neighbour.
    from dinov2_cell.data.metadata import compound_plates

    four = compound_plates("A549")[:2] + compound_plates("U2OS")[:2]
    meta = well_metadata(four)[[PLATE, WELL, BROAD, "Metadata_pert_iname"]].reset_index(drop=True)
    rng = np.random.default_rng(1)
    codes = pd.factorize(meta[BROAD])[0]
    centers = rng.normal(size=(codes.max() + 1, 8))
    planted = pd.concat([meta, pd.DataFrame(centers[codes] + 0.1 * rng.normal(size=(len(meta), 8)))], axis=1)
    planted.columns = [str(c) for c in planted.columns]
    path = submission.write_submission(planted, tmp_path / "four.csv")
    knn = [sys.executable, "-m", "dinov2_cell.eval.knn_wells", path, "--out", str(tmp_path / "knn")]
    out = subprocess.run(knn, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "knn" / "knn.json").read_text())
    assert set(result["combinations"]) == {"U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549"}
    assert result["mean"]["accuracy"] > 0.9 and result["config"]["n_wells"] == 4 * 320
