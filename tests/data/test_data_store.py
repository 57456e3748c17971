"""Prepared store: same samples as the TIFFs, resumable per plate, transparent reading, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.data.errors import DataIndexError, DataReadError
from dinov2_cell.data.prepare import cli, prepare_store
from dinov2_cell.data.store import PlateStore, is_store


@pytest.fixture(scope="module")
def store(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "s"
    result = prepare_store(synth.out_dir, out, channels="all", progress=False)
    assert result["written"] == sorted(synth.plates)
    return out


def test_store_reads_like_tiffs(synth, store):
    assert is_store(store)
    for channels in ("fluo", "bf", "Mito,DNA"):
        tiff = CPJUMP1Dataset(root=synth.out_dir, channels=channels)
        st = CPJUMP1Dataset(root=store, channels=channels)
        assert (st.index["source"] == "store").all() and len(st) == len(tiff)
        assert st.index.drop(columns="source").equals(tiff.index.drop(columns="source"))
        for i in (0, 11, len(st) - 1):
            assert torch.equal(st.get_image(i), tiff.get_image(i)), (channels, i)  # illumination copied too
            np.testing.assert_array_equal(st.read_raw(i), tiff.read_raw(i))
    via_key = CPJUMP1Dataset(store=store, channels="bf", normalize="plate", plate_stats_sites=2)
    assert len(via_key) == len(tiff)


def test_store_normalises_with_percentiles_precomputed_at_prepare_time(synth, store, monkeypatch):
    from dinov2_cell.data import intensity

    cases = [dict(), dict(illum="no"), dict(percentile_low=1.0, percentile_high=99.0)]
    expected = {}
    for k, kw in enumerate(cases):
        tiff = CPJUMP1Dataset(root=synth.out_dir, channels="Mito,DNA", **kw)
        expected[k] = [tiff.get_image(i) for i in (0, 5)]

    def no_estimate(*args, **kwargs):
        raise AssertionError("percentiles estimated at read time")

    monkeypatch.setattr(intensity, "channel_percentiles", no_estimate)
    for k, kw in enumerate(cases):
        st = CPJUMP1Dataset(root=store, channels="Mito,DNA", **kw)
        for got, want in zip([st.get_image(i) for i in (0, 5)], expected[k]):
            assert torch.equal(got, want), kw
    # percentiles the store does not hold fall back to the per-image estimate
    with pytest.raises(AssertionError, match="read time"):
        CPJUMP1Dataset(root=store, channels="DNA", percentile_low=3.0).get_image(0)


def test_store_with_root_mixes_sources(synth, store, h, tmp_path):
    partial = tmp_path / "partial"
    prepare_store(synth.out_dir, partial, plates=[h.U2OS_PLATE], channels="fluo", progress=False)
    ds = CPJUMP1Dataset(root=synth.out_dir, store=partial, channels="DNA")
    by_plate = ds.index.groupby("Metadata_Plate")["source"].unique()
    assert list(by_plate[h.U2OS_PLATE]) == ["store"] and list(by_plate[h.A549_PLATE]) == ["tiff"]
    with pytest.raises(DataIndexError, match=f"{h.A549_PLATE}.*not in store"):
        CPJUMP1Dataset(store=partial, plates=[h.A549_PLATE])
    with pytest.raises(DataIndexError, match="lacks channel"):
        CPJUMP1Dataset(store=partial, channels="bf")


def test_resumable_per_plate(synth, tmp_path, h):
    out = tmp_path / "r"
    first = prepare_store(synth.out_dir, out, plates=[h.A549_PLATE], channels="DNA", progress=False)
    assert first["written"] == [h.A549_PLATE]
    marker = out / "plates" / f"{h.A549_PLATE}.json"
    stamp = marker.stat().st_mtime_ns
    # a killed run leaves only a hidden temporary array of the plate in progress
    (out / "plates" / f".{h.U2OS_PLATE}.k1ll3d.npy").write_bytes(b"half")
    second = prepare_store(synth.out_dir, out, channels="DNA", progress=False)
    assert second["skipped_complete"] == [h.A549_PLATE] and second["written"] == [h.U2OS_PLATE]
    assert marker.stat().st_mtime_ns == stamp
    assert not list((out / "plates").glob(".*")), "temporaries left behind"
    assert sorted(PlateStore(out).plates) == sorted(synth.plates)
    with pytest.raises(DataIndexError, match="holds channels"):
        prepare_store(synth.out_dir, out, channels="fluo", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    with pytest.raises(DataIndexError, match="not a store"):
        prepare_store(synth.out_dir, tmp_path / "busy", progress=False)


def test_unreadable_site_raise_and_skip(tiny, tmp_path, h):
    bad = os.path.join(tiny.image_dirs[h.A549_PLATE], "r01c02f02p01-ch5sk1fk1fl1.tiff")
    with open(bad, "wb") as f:
        f.write(b"broken")
    with pytest.raises(DataReadError, match="broken|cannot read TIFF") as err:
        prepare_store(tiny.out_dir, tmp_path / "a", channels="fluo", progress=False)
    assert bad in str(err.value) and "well A02 site 2" in str(err.value)
    assert not list((tmp_path / "a" / "plates").glob("*.npy*"))  # nothing half-written left
    res = prepare_store(tiny.out_dir, tmp_path / "b", channels="fluo", on_error="skip", progress=False)
    assert res["skips"] == {"unreadable sites": 1}
    info = json.loads((tmp_path / "b" / "plates" / f"{h.A549_PLATE}.json").read_text())
    assert info["n_failed"] == 1 and info["n_sites"] == 6
    ds = CPJUMP1Dataset(root=tmp_path / "b", channels="fluo")
    assert len(ds) == 5 and ("A02", 2) not in set(zip(ds.index["Metadata_Well"], ds.index["Metadata_Site"]))


def test_cli_help_and_tiny_run(tiny, tmp_path, capsys):
    cmd = [sys.executable, "-m", "dinov2_cell.data.prepare"]
    out = str(tmp_path / "cli")
    run = cmd + ["--data-root", tiny.out_dir, "--out", out, "--channels", "fluo", "--no-progress"]
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in (cmd + ["--help"], run)
    ]
    (help_out, _), (run_out, run_err) = [p.communicate(timeout=120) for p in procs]
    assert procs[0].returncode == 0 and "--on-error" in help_out and "resumable" in help_out
    assert "--data-root" in help_out and "--root" not in help_out.replace("--data-root", "")  # hidden alias
    assert procs[1].returncode == 0, run_err
    assert json.loads(run_out)["written"] == tiny.plates
    assert len(CPJUMP1Dataset(root=tmp_path / "cli")) == 6
    # bad input in a subprocess: one "error:" line naming the culprit, exit 2, no traceback
    bad = subprocess.run(
        cmd + ["--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert lines[0].startswith("python -m dinov2_cell.data.prepare: error:") and "nothing" in lines[0]
    # the old spelling --root still works (hidden, for one release); complete plates are skipped, or rewritten
    assert cli(["--root", tiny.out_dir, "--out", out, "--channels", "fluo", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_complete"] == tiny.plates
    assert cli(["--data-root", tiny.out_dir, "--out", out, "--channels", "fluo", "--no-progress", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == tiny.plates
    assert cli(["--out", out]) == 2 and "--data-root" in capsys.readouterr().err


def test_parallel_plates_match_sequential(synth, tmp_path):
    a = prepare_store(synth.out_dir, tmp_path / "a", channels="DNA", progress=False)
    b = prepare_store(synth.out_dir, tmp_path / "b", channels="DNA", progress=False, num_workers=2)
    assert sorted(a["written"]) == sorted(b["written"]) == sorted(synth.plates)
    for plate in synth.plates:
        for suffix in (".npy", ".index.csv", ".json"):
            name = f"plates/{plate}{suffix}"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_store_dataset_pickles_to_workers(store):
    import pickle

    ds = CPJUMP1Dataset(root=store, channels="fluo")
    want = [ds.get_image(i) for i in (0, 3)]  # opens the memory maps and fills the illumination cache
    clone = pickle.loads(pickle.dumps(ds))
    assert all(src.store._mm == {} for src in clone.readers if src.kind == "store")  # reopened lazily
    assert all(torch.equal(clone.get_image(i), w) for i, w in zip((0, 3), want))
