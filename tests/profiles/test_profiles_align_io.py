"""Cross-plate alignment (exact), profile validation, atomic writes and the submission CSV."""

import os

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.profiles import io
from dinov2_cell.profiles.align import align_cross_plate


def test_alignment_exact(small_profiles):
    df = small_profiles
    out = align_cross_plate(df, alpha=0.25)
    for well, g in df.groupby("Metadata_Well"):
        mu = g[["f0", "f1"]].mean().to_numpy()
        got = out.loc[g.index, ["f0", "f1"]].to_numpy()
        np.testing.assert_allclose(got, 0.25 * g[["f0", "f1"]].to_numpy() + 0.75 * mu, atol=1e-12)
    pd.testing.assert_frame_equal(out.drop(columns=["f0", "f1"]), df.drop(columns=["f0", "f1"]))
    pd.testing.assert_frame_equal(align_cross_plate(df, alpha=1.0), df)
    zero = align_cross_plate(df, alpha=0.0)
    assert zero.groupby("Metadata_Well")["f0"].nunique().max() == 1  # every plate identical per position


def test_alignment_groups_and_errors(small_profiles):
    df = small_profiles.copy()
    df.loc[df["Metadata_Plate"] == "P3", "Metadata_cell_line"] = "A549"
    out = align_cross_plate(df, alpha=0.0, group_by=["Metadata_cell_line"])
    p3 = out[out["Metadata_Plate"] == "P3"]
    np.testing.assert_allclose(p3[["f0", "f1"]], df[df["Metadata_Plate"] == "P3"][["f0", "f1"]])  # alone in its group
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        align_cross_plate(df, alpha=1.5)
    with pytest.raises(ValueError, match="twice"):
        align_cross_plate(pd.concat([df, df.iloc[:1]]), alpha=0.5)


def test_feature_columns_and_controls(small_profiles):
    df = small_profiles.assign(note="x", flag=True, Metadata_n=3)
    assert io.feature_columns(df) == ["f0", "f1"]
    assert list(io.is_control(df)) == [False, True, False, True] * 3
    only_broad = df.drop(columns="Metadata_pert_iname")
    assert list(io.is_control(only_broad)) == [False, True, False, True] * 3


def test_check_profiles_names_bad_column_and_well(small_profiles):
    df = small_profiles.copy()
    df.loc[5, "f1"] = np.nan
    with pytest.raises(ValueError, match=r"'f1'.*Metadata_Plate=P2, Metadata_Well=A02"):
        io.check_profiles(df, source="x.parquet")
    with pytest.raises(ValueError, match="Metadata_cell_line"):
        io.check_profiles(small_profiles.drop(columns="Metadata_cell_line"), required=io.PROFILE_METADATA)
    with pytest.raises(ValueError, match="one row per well"):
        io.check_profiles(pd.concat([small_profiles, small_profiles.iloc[:1]]))
    with pytest.raises(ValueError, match="no numeric feature"):
        io.check_profiles(small_profiles.drop(columns=["f0", "f1"]))


def test_write_table_atomic_and_refuses_overwrite(tmp_path, small_profiles):
    path = tmp_path / "p.parquet"
    io.write_table(small_profiles, path)
    with pytest.raises(FileExistsError, match="overwrite"):
        io.write_table(small_profiles, path)
    io.write_table(small_profiles.iloc[:2], path, overwrite=True)
    assert len(pd.read_parquet(path)) == 2
    assert os.listdir(tmp_path) == ["p.parquet"]  # no temp file left behind


def test_read_profiles_csv_keeps_empty_broad_sample(tmp_path, small_profiles):
    path = tmp_path / "p.csv"
    small_profiles.to_csv(path, index=False)
    back = io.read_profiles(str(path))
    assert back["Metadata_broad_sample"].iloc[1] == ""
    assert io.feature_columns(back) == ["f0", "f1"]
