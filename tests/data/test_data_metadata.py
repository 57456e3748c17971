"""Packaged CPJUMP1 metadata: real files, unchanged, and the joins other modules rely on."""

import hashlib
import re
from importlib import resources

import pytest

from dinov2_cell.data import metadata as md


def test_packaged_files_match_source_checksums():
    pkg = resources.files("dinov2_cell.data").joinpath("cpjump1")
    source = pkg.joinpath("SOURCE.md").read_text(encoding="utf-8")
    sums = dict(re.findall(r"\| `([^`]+)` \| \d+ \| `([0-9a-f]{64})` \|", source))
    assert len(sums) == 5
    for name, digest in sums.items():
        assert hashlib.sha256(pkg.joinpath(name).read_bytes()).hexdigest() == digest, name


def test_compound_plates():
    plates = md.compound_plates()
    assert len(plates) == 24 and plates == sorted(plates)
    assert len(md.compound_plates("U2OS")) == 8 and len(md.compound_plates("a549")) == 16
    assert set(md.compound_plates("U2OS")) | set(md.compound_plates("A549")) == set(plates)
    with pytest.raises(ValueError, match="unknown cell line 'HeLa'"):
        md.compound_plates("HeLa")


def test_barcode_platemap_agrees_with_experiment_table():
    bp = md.read_barcode_platemap()
    exp = md.read_experiment_metadata()
    exp = exp[exp["Batch"] == md.BATCH]
    assert set(zip(bp["Assay_Plate_Barcode"], bp["Plate_Map_Name"])) == set(
        zip(exp["Assay_Plate_Barcode"], exp["Plate_Map_Name"])
    )


def test_well_metadata():
    wm = md.well_metadata()
    assert len(wm) == 24 * 384
    for col in (
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_broad_sample",
        "Metadata_pert_iname",
        "Metadata_target",
        "Metadata_cell_line",
        "Metadata_pert_type",
        "Metadata_Plate_Map_Name",
    ):
        assert col in wm.columns
    plate = wm[wm["Metadata_Plate"] == "BR00116995"]
    assert set(plate["Metadata_cell_line"]) == {"U2OS"}
    assert set(plate["Metadata_Plate_Map_Name"]) == {"JUMP-Target-1_compound_platemap"}
    dmso = plate[plate["Metadata_broad_sample"] == ""]
    assert len(dmso) == 64 and set(dmso["Metadata_pert_iname"]) == {"DMSO"}
    assert set(dmso["Metadata_pert_type"]) == {"control"} and set(dmso["Metadata_control_type"]) == {"negcon"}
    treated = plate[plate["Metadata_broad_sample"] != ""]
    assert len(treated) == 320 and treated["Metadata_broad_sample"].nunique() == 306
    assert set(plate["Metadata_pert_type"]) == {"trt", "control"}
    a01 = plate.set_index("Metadata_Well").loc["A01"]
    assert a01["Metadata_pert_iname"] == "gabapentin-enacarbil" and a01["Metadata_target"] == "CACNB4"
    # the same map on every plate
    assert (wm.groupby("Metadata_Well")["Metadata_broad_sample"].nunique() == 1).all()


def test_well_metadata_errors():
    with pytest.raises(ValueError, match="JUMP-Target-1_orf_platemap"):
        md.well_metadata(["BR00117006"])
    with pytest.raises(ValueError, match="BR99"):
        md.well_metadata(["BR99"])
    assert md.plate_cell_lines(["BR00116991"]) == {"BR00116991": "A549"}
