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


def _tree(folder):
    """Every path under ``folder`` with its modification time (what a failed call must leave unchanged)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = os.stat(path).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def one_plate(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    root = tmp_path_factory.mktemp("plates")
    generate_plates(root, plates=[PLATE_9], wells=["A01", "A02"], sites=9, size=24, progress=False)
    return str(root)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(root="/nonexistent/plates"), "does not exist"),
        (dict(plates=["BR00116995"]), "BR00116995"),  # a plate the root does not hold
        (dict(channels="XYZ"), "unknown channel 'XYZ'"),
        (dict(metadata="/nonexistent/meta.csv"), "meta.csv"),
        (dict(shard="3/2"), "--shard"),
    ],
    ids=["root", "plate", "channels", "metadata", "shard"],
)
def test_bad_input_leaves_no_trace_and_the_corrected_run_succeeds(tmp_path, one_plate, bad, match):
    def run(out, root=one_plate, channels="fluo", **kw):
        return run_profiles(MeanFeaturiser(), PlateSource(root, channels=channels), str(out), progress=False, **kw)

    out = tmp_path / "run"
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run(out, **bad)
    assert not out.exists()
    path = run(out)  # the corrected call on the same folder is not refused as "a run with different options"
    assert list(pd.read_parquet(path)[WELL]) == ["A01", "A02"]
    # A folder that holds a finished run: a bad call adds, removes and rewrites nothing in it.
    before = _tree(out)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run(out, overwrite=True, **bad)
    assert _tree(out) == before


def test_a_first_plate_that_fails_records_no_run_config(tmp_path, stub_factory):
    class Broken(MeanFeaturiser):
        name = "broken"

        def featurise_plate(self, plate, dataset):
            raise ValueError("this featuriser cannot read the plate")

    source = PlateSource("root", channels="fluo", factory=stub_factory)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="cannot read"):
        run_profiles(Broken(), source, str(out), progress=False)
    assert not out.exists()
    # another featuriser in the same folder is not refused: nothing was recorded for the failed one
    path = run_profiles(MeanFeaturiser(), source, str(out), progress=False)
    with open(out / "run_config.json") as f:
        assert json.load(f)["featuriser"] == "mean"
    assert len(pd.read_parquet(path)) == 6


def test_a_call_whose_plates_all_have_parts_opens_no_dataset(tmp_path, stub_factory):
    source = PlateSource("root", channels="fluo", factory=stub_factory)
    out = str(tmp_path / "run")
    run_profiles(MeanFeaturiser(), source, out, plates=[PLATE_9, PLATE_16], progress=False)
    n = len(stub_factory.calls)
    again = MeanFeaturiser()
    run_profiles(again, source, out, plates=[PLATE_9, PLATE_16], progress=False)
    assert again.plates == [] and len(stub_factory.calls) == n
    # with plates given, the check before writing opens only the plates still to featurise, once
    run_profiles(MeanFeaturiser(), source, str(tmp_path / "new"), plates=[PLATE_16], progress=False)
    assert stub_factory.calls[n] == ("root", (PLATE_16,), "fluo")


def test_run_folder_reads_without_writing_and_owns_the_layout(tmp_path):
    from dinov2_cell.profiles.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    config = {"featuriser": "mean", "settings": {"scale": (1, 2)}}
    assert folder.check_config(config) is True and folder.saved_config() is None and folder.parts_present() == []
    assert not os.path.exists(folder.path)  # checks create nothing
    folder.record_config(config)
    assert folder.check_config(config) is False  # the tuple compares as the JSON list it was recorded as
    folder.record_output("submission.csv", {"features": ["f0"]})
    assert folder.check_config(config) is False  # output descriptions are not options
    with pytest.raises(FileExistsError, match="settings.scale"):
        folder.check_config({**config, "settings": {"scale": 3}})
    assert folder.check_config({**config, "settings": {"scale": 3}}, overwrite=True) is True
    with pytest.raises(ValueError, match="settings.scale"):
        folder.check_same_config({**config, "settings": {"scale": 3}})
    assert folder.merged_paths("x") == (
        os.path.join(folder.path, "profiles_x.parquet"),
        os.path.join(folder.path, "submission_x.csv"),
    )
    with pytest.raises(ValueError, match="bad plate name"):
        folder.part_path("../P1")
    table = pd.DataFrame({PLATE: ["P1", "P1"], WELL: ["A02", "A01"], "f0": [2.0, 1.0]})
    folder.write_part(table, "P1", stats={"sites": 2})
    assert folder.parts_present() == ["P1"] and os.path.isfile(folder.stats_path("P1"))
    assert list(folder.merge_parts()[WELL]) == ["A01", "A02"]  # sorted by plate and well
    with pytest.raises(FileNotFoundError, match="P2"):
        folder.merge(["P1", "P2"])
    path = folder.merge()
    folder.write_part(table.assign(**{PLATE: "P2"}), "P2")
    with pytest.raises(FileExistsError, match="--overwrite"):
        folder.merge()  # profiles.parquet holds P1 only
    assert folder.merge(overwrite=True) == path and len(pd.read_parquet(path)) == 4


def test_embed_cli_bad_data_root_leaves_no_trace_and_the_corrected_rerun_succeeds(tmp_path, one_plate):
    import subprocess
    import sys

    from test_embed import make_run  # a tiny teacher checkpoint and its config, as the embed tests build it

    run = make_run(tmp_path / "fluo", 5)
    out = tmp_path / "e1"
    cmd = [sys.executable, "-m", "dinov2_cell.embed", "--fluo", run, "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    bad = subprocess.run(cmd + ["--data-root", "/nonexistent"], capture_output=True, text=True, env=env)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and "error:" in lines[-1] and "/nonexistent" in lines[-1], bad.stderr
    assert not out.exists()
    good = subprocess.run(cmd + ["--data-root", one_plate], capture_output=True, text=True, env=env)
    assert good.returncode == 0, good.stderr
    assert list(pd.read_parquet(out / "profiles.parquet")[WELL]) == ["A01", "A02"]
