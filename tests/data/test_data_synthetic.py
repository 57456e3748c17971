"""Synthetic plate generator: layout, determinism, real plate map, options, round trip through the reader, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from dinov2_cell.data import metadata as md
from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.data.index import discover
from dinov2_cell.data.names import PHENIX_RE
from dinov2_cell.synthetic import (
    REAL_SIXTEEN_SITE_PLATES,
    compound_effect,
    default_plates,
    generate_plates,
    select_wells,
)


def test_layout_and_round_trip(synth, h):
    root = synth.out_dir
    for plate in synth.plates:
        folder = synth.image_dirs[plate]
        assert folder.startswith(f"{root}/images/2020_11_04_CPJUMP1/images/{plate}__")
        assert folder.endswith("-Measurement1/Images")
    files = h.tiff_files(root)
    assert len(files) == synth.n_images == 2 * 6 * 4 * 8
    assert all(PHENIX_RE.match(f.name) for f in files)
    img = tifffile.imread(files[0])
    assert img.dtype == np.uint16 and img.shape == (32, 32)
    csv = pd.read_csv(h.plate_csv(synth, h.U2OS_PLATE))
    for col in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "FileName_OrigDNA", "PathName_OrigLowZBF"):
        assert col in csv.columns
    ds = CPJUMP1Dataset(root=root, channels="all")
    assert len(ds) == 48 and ds.plates == sorted(synth.plates)
    assert set(ds.index["Metadata_Well"]) == set(synth.wells)


def test_real_plate_map_and_cell_lines(synth):
    truth = pd.read_csv(f"{synth.out_dir}/synthetic_truth.csv", keep_default_na=False)
    meta = md.well_metadata(synth.plates)
    merged = truth.merge(meta, on=["Metadata_Plate", "Metadata_Well"], suffixes=("", "_real"))
    assert len(merged) == len(truth) == 12
    for col in ("Metadata_broad_sample", "Metadata_pert_iname", "Metadata_target", "Metadata_cell_line"):
        assert (merged[col] == merged[f"{col}_real"]).all(), col
    assert synth.cell_lines == {"BR00116991": "A549", "BR00116995": "U2OS"}


def test_well_subset_has_dmso_and_target_pairs():
    wells = select_wells(48)
    layout = md.compound_layout().set_index("Metadata_Well").loc[wells]
    assert len(wells) == 48
    assert (layout["Metadata_pert_iname"] == "DMSO").sum() == 8
    per_target = layout[layout["Metadata_broad_sample"] != ""].groupby("Metadata_target")["Metadata_broad_sample"]
    assert (per_target.nunique() == 2).all() and per_target.ngroups == 20
    assert select_wells("all") == sorted(md.compound_layout()["Metadata_Well"])
    assert select_wells("b2,A01") == ["A01", "B02"]
    with pytest.raises(ValueError, match="unknown wells"):
        select_wells(["Q01"])


def test_default_plates_cover_both_cell_lines():
    plates = default_plates(4)
    lines = md.plate_cell_lines(plates)
    assert sorted(lines.values()) == ["A549", "A549", "U2OS", "U2OS"]
    assert not set(plates) & set(REAL_SIXTEEN_SITE_PLATES)
    with pytest.raises(ValueError, match="compound plates"):
        generate_plates("/nonexistent", plates=["BR00117006"])  # an ORF plate


def test_phenotypes_shared_by_target():
    a = compound_effect("X1", "T", "trt", "U2OS", 0)[0]
    b = compound_effect("X2", "T", "trt", "U2OS", 0)[0]
    c = compound_effect("X3", "OTHER", "trt", "U2OS", 0)[0]

    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))

    if np.linalg.norm(a) > 0.05 and np.linalg.norm(b) > 0.05:
        assert cos(a, b) > cos(a, c)
    assert np.all(compound_effect("", "", "control", "A549", 0)[0] == 0)
    np.testing.assert_array_equal(a, compound_effect("X1", "T", "trt", "U2OS", 0)[0])


def test_deterministic_byte_identical(tmp_path, h):
    kw = dict(plates=["BR00117024"], wells=4, sites=2, size=24, seed=5, illum=True, missing_sites=0.5, progress=False)
    a = generate_plates(tmp_path / "a", **kw)
    b = generate_plates(tmp_path / "b", workers=2, **kw)
    ma, mb = h.relpath_map(a.out_dir), h.relpath_map(b.out_dir)
    assert ma.keys() == mb.keys() and all(ma[k] == mb[k] for k in ma)
    c = generate_plates(tmp_path / "c", **{**kw, "seed": 6})
    mc = h.relpath_map(c.out_dir)
    assert any(ma[k] != mc.get(k) for k in ma if k.endswith(".tiff"))
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_plates(tmp_path / "a", **kw)


def test_sixteen_sites_and_missing_sites(tmp_path):
    res = generate_plates(
        tmp_path / "s",
        plates=["BR00117015", "BR00116991"],
        wells=6,
        sites=9,
        missing_sites=1.0,
        size=16,
        progress=False,
    )
    assert res.sites == {"BR00117015": 16, "BR00116991": 9}
    ds = CPJUMP1Dataset(root=res.out_dir, channels="DNA")
    counts = ds.index.groupby(["Metadata_Plate", "Metadata_Well"]).size()
    assert set(counts["BR00117015"]) <= {14, 15} and set(counts["BR00116991"]) <= {7, 8}
    assert len(discover(res.out_dir).csvs) == 2
