"""Plate index: LoadData CSVs and Phenix folder scans agree; channel mapping; path re-rooting; channel groups."""

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.data.errors import DataIndexError
from dinov2_cell.data.index import discover, index_plates, site_table
from dinov2_cell.data.loaddata import read_load_data_csv
from dinov2_cell.data.names import (
    ALL_CHANNELS,
    BF_CHANNELS,
    FLUO_CHANNELS,
    normalize_well,
    phenix_filename,
    plate_from_folder,
    resolve_channels,
)

KEY = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "channel", "path"]


def test_csv_and_scan_give_the_same_index(synth):
    csv = index_plates(synth.out_dir, channels="all", source="csv", illum="no")
    scan = index_plates(synth.out_dir, channels="all", source="scan")
    assert len(csv) == sum(synth.n_sites.values()) * 8
    pd.testing.assert_frame_equal(csv[KEY], scan[KEY])
    assert set(csv["origin"].str.endswith("load_data.csv")) == {True}


def test_csv_with_illum_preferred_by_default(synth):
    idx = index_plates(synth.out_dir, channels="fluo")
    assert idx["origin"].str.endswith("load_data_with_illum.csv").all()
    assert idx["illum_path"].str.endswith(".npy").all()
    assert (index_plates(synth.out_dir, channels="fluo", illum="no")["illum_path"] == "").all()


def test_channel_groups_and_names():
    assert resolve_channels("fluo") == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert resolve_channels("bf") == ["Brightfield", "HighZBF", "LowZBF"]
    assert resolve_channels("all") == list(FLUO_CHANNELS + BF_CHANNELS) == list(ALL_CHANNELS)
    assert resolve_channels("mito,dna") == ["Mito", "DNA"]
    assert resolve_channels(["ER"]) == ["ER"]
    with pytest.raises(ValueError, match="unknown channel 'Actin'.*valid names: DNA"):
        resolve_channels("DNA,Actin")
    with pytest.raises(ValueError, match="twice"):
        resolve_channels("DNA,dna")


def test_phenix_channel_numbers_map_to_names(tmp_path, h):
    """Each file holds its Phenix channel number; the dataset must return them in canonical name order."""
    folder = tmp_path / "BR00000001__2021-01-01T00_00_00-Measurement1" / "Images"
    h.write_phenix_plate(folder, wells=("B03",), sites=(1, 2))
    ds = CPJUMP1Dataset(root=tmp_path, channels="all", normalize="bitdepth")
    got = (ds.get_image(0).numpy()[:, 0, 0] * 65535).round().astype(int).tolist()
    # DNA ch5, ER ch4, RNA ch3, AGP ch2, Mito ch1, Brightfield ch8, HighZBF ch6, LowZBF ch7
    assert got == [5, 4, 3, 2, 1, 8, 6, 7]
    assert ds.index.iloc[0].tolist()[:3] == ["BR00000001", "B03", 1]
    # explicit order and an overriding channel map
    ds = CPJUMP1Dataset(root=tmp_path, channels="LowZBF,DNA", normalize="bitdepth", channel_map="5/DNA,7/LowZBF")
    assert (ds.get_image(1).numpy()[:, 0, 0] * 65535).round().astype(int).tolist() == [7, 5]


def test_csv_channels_map_to_names(synth):
    """The synthetic CSV names each channel; the file behind FileName_OrigMito must be Phenix ch1, etc."""
    idx = index_plates(synth.out_dir, channels="all", source="csv", illum="no")
    expected = {"Mito": 1, "AGP": 2, "RNA": 3, "ER": 4, "DNA": 5, "HighZBF": 6, "LowZBF": 7, "Brightfield": 8}
    for ch, num in expected.items():
        assert idx[idx["channel"] == ch]["path"].str.contains(f"-ch{num}sk1").all(), ch


def test_paths_from_another_machine_are_rerooted(synth, tmp_path, h):
    """Gallery CSVs hold absolute paths of the original machine or s3:// URLs; the tail that exists under root wins."""
    src = pd.read_csv(h.plate_csv(synth, h.A549_PLATE))
    relative = src["PathName_OrigDNA"].copy()  # images/2020_11_04_CPJUMP1/images/<plate folder>/Images
    for ch in ALL_CHANNELS:
        src[f"PathName_Orig{ch}"] = "s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/" + src[f"PathName_Orig{ch}"]
    # the original machine's layout lacks the leading "images/": found through the discovered Phenix folders
    src.loc[::2, "PathName_OrigDNA"] = "/home/ubuntu/bucket/projects/2019_07_11_JUMP-CP-pilots/" + relative[::2].str[7:]
    csv = tmp_path / "elsewhere" / "load_data.csv.gz"
    csv.parent.mkdir()
    with gzip.open(csv, "wt") as f:
        src.to_csv(f, index=False)
    known = [f for folders in discover(synth.out_dir).phenix.values() for f, _ in folders]
    idx = read_load_data_csv(csv, channels="fluo", root=synth.out_dir, known_dirs=known)
    ref = index_plates(synth.out_dir, plates=[h.A549_PLATE], channels="fluo", source="scan")
    got = idx[KEY].astype(str).sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref[KEY].astype(str).sort_values(KEY).reset_index(drop=True))
    # without the discovered folders that path cannot be found: clear error naming the column
    with pytest.raises(DataIndexError, match="PathName_OrigDNA not found"):
        read_load_data_csv(csv, channels="fluo", root=synth.out_dir)


def test_row_col_and_field_columns(synth, tmp_path, h):
    src = pd.read_csv(h.plate_csv(synth, h.A549_PLATE)).drop(columns=["Metadata_Well"])
    src = src.rename(columns={"Metadata_Site": "Metadata_Field"})
    csv = tmp_path / "my_plate.csv"
    src.to_csv(csv, index=False)
    idx = read_load_data_csv(csv, channels="DNA", root=synth.out_dir)
    assert set(idx["Metadata_Well"]) == set(synth.wells)


def test_root_may_be_a_csv_and_plates_filter(synth, h):
    ds = CPJUMP1Dataset(root=h.plate_csv(synth, h.U2OS_PLATE), channels="DNA")
    assert ds.plates == [h.U2OS_PLATE] and len(ds) == synth.n_sites[h.U2OS_PLATE]
    ds = CPJUMP1Dataset(root=synth.out_dir, plates=h.U2OS_PLATE, channels="DNA")
    assert ds.plates == [h.U2OS_PLATE]


def test_discover_finds_csvs_and_folders(synth):
    found = discover(synth.out_dir)
    assert len(found.csvs) == 4  # load_data + load_data_with_illum for 2 plates
    assert sorted(found.phenix) == sorted(synth.plates)


def test_names():
    assert normalize_well("a1") == "A01" and normalize_well("P24") == "P24"
    assert phenix_filename(16, 24, 9, 5) == "r16c24f09p01-ch5sk1fk1fl1.tiff"
    assert plate_from_folder("/x/BR00116991__2020-11-05T19_51_35-Measurement1/Images") == "BR00116991"


def test_site_table_wide_form(synth):
    long = index_plates(synth.out_dir, channels="fluo", illum="no")
    wide = site_table(long, list(FLUO_CHANNELS))
    assert list(wide.columns[:3]) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    assert len(wide) == sum(synth.n_sites.values())
    assert wide["Metadata_Site"].dtype.kind == "i"
    assert np.all(wide.groupby(["Metadata_Plate", "Metadata_Well"]).size() == 4)


def test_scan_ignores_unrelated_files(tmp_path, h):
    folder = h.write_phenix_plate(tmp_path / "BR7__t-Measurement1" / "Images", wells=("A01",), sites=(1,))
    (folder / "notes.txt").write_text("x")
    (folder / "thumbnail.tiff").write_bytes(b"junk")
    shutil.copy(folder / phenix_filename(1, 1, 1, 1), tmp_path / "loose.tiff")
    ds = CPJUMP1Dataset(root=tmp_path, channels="fluo")
    assert len(ds) == 1
