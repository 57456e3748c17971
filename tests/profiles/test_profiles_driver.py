"""The profiling driver: run-config guard, skip finished plates, shards, merge, variants, featuriser output checks."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.columns import BROAD, PLATE, WELL
from dinov2_cell.profiles import driver
from dinov2_cell.profiles.driver import BaseFeaturiser, PlateSource, run_profiles

PLATE_9, PLATE_16 = "BR00116991", "BR00117015"  # the stub dataset's plates (see conftest.py)


class MeanFeaturiser(BaseFeaturiser):
    """Mean intensity of channel 0 per well: enough to check what the driver does around a featuriser."""

    name = "mean"

    def __init__(self, scale=1.0):
        self.scale = scale
        self.plates = []

    def describe(self):
        return {"scale": self.scale}

    def featurise_plate(self, plate, dataset):
        self.plates.append(plate)
        index = driver.site_index(dataset)
        values = [float(dataset.get_image(i)[0].mean()) * self.scale for i in range(len(dataset))]
        site = index.assign(f0=values)
        out = site.groupby([PLATE, WELL], as_index=False)["f0"].mean()
        out.attrs["stats"] = {"sites": len(site)}
        return out


def test_driver_parts_resume_and_merge(tmp_path, stub_factory):
    source = PlateSource("root", channels="fluo", factory=stub_factory)
    out = str(tmp_path / "run")
    feat = MeanFeaturiser()
    path = run_profiles(feat, source, out, submission=True)
    assert path == os.path.join(out, "profiles.parquet")
    df = pd.read_parquet(path)
    assert sorted(df[PLATE].unique()) == [PLATE_9, PLATE_16] and len(df) == 6
    assert BROAD in df.columns and np.isfinite(df["f0"]).all()
    # The driver's well means equal a direct computation on the stub images.
    ds = stub_factory("root", [PLATE_9], "fluo")
    idx = driver.site_index(ds)
    first = np.mean([float(ds.get_image(i)[0].mean()) for i in np.flatnonzero(idx[WELL] == "A01")])
    got = df.loc[(df[PLATE] == PLATE_9) & (df[WELL] == "A01"), "f0"].item()
    assert got == pytest.approx(first, rel=1e-6)
    assert os.path.isfile(os.path.join(out, "submission.csv"))
    with open(os.path.join(out, "parts", f"{PLATE_16}.stats.json")) as f:
        assert json.load(f) == {"sites": 48}
    with open(os.path.join(out, "run_config.json")) as f:
        cfg = json.load(f)
    assert cfg["featuriser"] == "mean" and cfg["settings"] == {"scale": 1.0}
    # Second call: every part exists, nothing is featurised again, merged file kept.
    again = MeanFeaturiser()
    assert run_profiles(again, source, out, submission=True) == path and again.plates == []
    # The merge recorded which profile column each submission feature is; a merge-only call still matches.
    assert cfg["outputs"]["submission.csv"] == {"profiles": "profiles.parquet", "features": ["f0"]}
    assert run_profiles(MeanFeaturiser(), source, out, merge_only=True, submission=True) == path
    # Other settings on the same folder are refused, naming the differing key.
    with pytest.raises(FileExistsError, match="settings.scale"):
        run_profiles(MeanFeaturiser(scale=2.0), source, out)


def test_driver_shard_then_merge_only_with_variant(tmp_path, stub_factory):
    source = PlateSource("root", channels="fluo", factory=stub_factory)
    out = str(tmp_path / "run")
    feat = MeanFeaturiser()
    assert run_profiles(feat, source, out, shard="1/2") == os.path.join(out, "parts")
    assert feat.plates == [PLATE_16]  # sorted plates [BR00116991, BR00117015], shard 1 of 2
    run_profiles(feat, source, out, shard="0/2")
    variants = {"doubled": lambda t: t.assign(f0=2 * t["f0"])}
    path = run_profiles(feat, source, out, merge_only=True, variants=variants)
    assert path.endswith("profiles_doubled.parquet")
    plain = pd.read_parquet(os.path.join(out, "profiles.parquet"))
    doubled = pd.read_parquet(path)
    np.testing.assert_allclose(doubled["f0"], 2 * plain["f0"])
    with pytest.raises(ValueError, match="other settings"):
        run_profiles(MeanFeaturiser(scale=3.0), source, out, merge_only=True)
    with pytest.raises(ValueError, match="--shard"):
        run_profiles(feat, source, str(tmp_path / "x"), shard="2/2")


def test_driver_rejects_bad_featuriser_output(tmp_path, stub_factory):
    class Broken(MeanFeaturiser):
        def featurise_plate(self, plate, dataset):
            return super().featurise_plate(plate, dataset).drop(columns=[WELL])

    class Empty(MeanFeaturiser):
        def featurise_plate(self, plate, dataset):
            return super().featurise_plate(plate, dataset).iloc[:0]

    source = PlateSource("root", channels="fluo", factory=stub_factory)
    with pytest.raises(ValueError, match="Metadata_Well"):
        run_profiles(Broken(), source, str(tmp_path / "a"), plates=[PLATE_9])
    with pytest.raises(ValueError, match="no well"):
        run_profiles(Empty(), source, str(tmp_path / "b"), plates=[PLATE_9])
    assert not os.path.exists(os.path.join(tmp_path, "b", "parts", f"{PLATE_9}.parquet"))
