"""Bad input: one clear error naming the file/column, or (on_error=skip) a counted, logged skip; never silent."""

import logging
import struct

import numpy as np
import pandas as pd
import pytest
import tifffile

from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.data.errors import DataIndexError, DataReadError
from dinov2_cell.data.names import phenix_filename
from dinov2_cell.data.readers import read_tiff


def _img(tiny, well="A01", site=2, ch=5):
    r, c = ord(well[0]) - 64, int(well[1:])
    return tiny.image_dirs[tiny.plates[0]] + "/" + phenix_filename(r, c, site, ch)


def _skip_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]


def test_missing_tiff_from_csv(tiny, caplog):
    path = _img(tiny)
    import os

    os.remove(path)
    ds = CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="csv")
    i = ds.index.index[(ds.index["Metadata_Well"] == "A01") & (ds.index["Metadata_Site"] == 2)][0]
    with pytest.raises(DataReadError, match=f"missing image file: {path}") as err:
        ds[i]
    assert err.value.path == path and "well A01, site 2" in str(err.value)
    skip = CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="csv", on_error="skip")
    with caplog.at_level(logging.WARNING):
        img, target = skip[i]
    assert img.shape[0] == 5 and target["index"] != i
    assert skip.skipped == {"unreadable samples (replaced by a random sample)": 1}
    assert any("1 skipped so far" in m and path in m for m in _skip_warnings(caplog))


def test_missing_tiff_from_scan(tiny, caplog):
    import os

    path = _img(tiny, ch=1)
    os.remove(path)
    with pytest.raises(DataIndexError, match=f"lacks channel.*Mito.*expected file {path}"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="scan")
    with caplog.at_level(logging.WARNING):
        ds = CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="scan", on_error="skip")
    assert len(ds) == 5
    assert ds.skipped == {"sites missing a channel": 1}
    assert _skip_warnings(caplog)
    # the other channels are fine without Mito
    assert len(CPJUMP1Dataset(root=tiny.out_dir, channels="DNA,ER", source="scan")) == 6


@pytest.mark.parametrize(
    "content, match",
    [
        (b"this is not a tiff", "cannot read TIFF"),
        (np.zeros((16, 16), np.uint8), "expected dtype uint16, got uint8"),
        (np.zeros((16, 16), np.float32), "expected dtype uint16, got float32"),
        (np.zeros((20, 16), np.uint16), r"shape \(20, 16\) differs"),
        (np.zeros((16, 16, 3), np.uint16), "expected a 2-D"),
        (np.zeros((2, 16, 16), np.uint16), "single-page"),
    ],
)
def test_unreadable_or_wrong_tiff(tiny, content, match):
    path = _img(tiny, site=3, ch=4)
    if isinstance(content, bytes):
        with open(path, "wb") as f:
            f.write(content)
    else:
        kw = {"photometric": "rgb"} if content.ndim == 3 and content.shape[-1] == 3 else {}
        tifffile.imwrite(path, content, **kw)
    ds = CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="csv")
    bad = int(ds.index.index[(ds.index["Metadata_Well"] == "A01") & (ds.index["Metadata_Site"] == 3)][0])
    ds.get_image(0)  # fixes the plate's image shape (16, 16) first
    with pytest.raises(DataReadError, match=match) as err:
        ds.get_image(bad)
    assert path in str(err.value)


def test_compressed_tiff_without_imagecodecs(tmp_path):
    """An LZW TIFF needs imagecodecs; without it the error says so (the Compression tag is patched to LZW)."""
    pytest.importorskip("tifffile")
    try:
        import imagecodecs  # noqa: F401

        pytest.skip("imagecodecs installed: LZW is readable")
    except ImportError:
        pass
    path = tmp_path / "lzw.tiff"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16))
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["Compression"].valueoffset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<H", 5))
    with pytest.raises(DataReadError, match="imagecodecs"):
        read_tiff(path)


def test_channel_missing_from_csv(tiny, h, caplog):
    csv = h.plate_csv(tiny, h.A549_PLATE)
    pd.read_csv(csv).drop(columns=["FileName_OrigMito"]).to_csv(csv, index=False)
    with pytest.raises(DataIndexError, match=f"{csv}: channel 'Mito' missing: no column FileName_OrigMito"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="csv")
    assert len(CPJUMP1Dataset(root=tiny.out_dir, channels="DNA", source="csv")) == 6
    # skip: the CSV is counted as unusable; the plate's Phenix folder is used instead (source=auto)
    with caplog.at_level(logging.WARNING):
        ds = CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", on_error="skip")
    assert ds.skipped == {"unusable LoadData CSVs": 1} and len(ds) == 6
    assert any("FileName_OrigMito" in m for m in _skip_warnings(caplog))


def test_missing_path_column_and_bad_site(tiny, h):
    csv = h.plate_csv(tiny, h.A549_PLATE)
    df = pd.read_csv(csv)
    df.drop(columns=["PathName_OrigER"]).to_csv(csv, index=False)
    with pytest.raises(DataIndexError, match="missing column PathName_OrigER"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="csv")
    df.assign(Metadata_Site="x").to_csv(csv, index=False)
    with pytest.raises(DataIndexError, match="Metadata_Site must hold integers"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="csv")
    df.assign(FileName_OrigDNA="").to_csv(csv, index=False)
    with pytest.raises(DataIndexError, match="column FileName_OrigDNA is empty in 6 row"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="csv")


def test_unknown_channel(tiny):
    with pytest.raises(ValueError, match="unknown channel 'Actin'"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="DNA,Actin")


def test_empty_plate(tiny, h, tmp_path):
    csv = h.plate_csv(tiny, h.A549_PLATE)
    pd.read_csv(csv).iloc[:0].to_csv(csv, index=False)
    with pytest.raises(DataIndexError, match=f"LoadData CSV {csv} has no rows"):
        CPJUMP1Dataset(root=tiny.out_dir, source="csv")
    with pytest.raises(DataIndexError, match="plate BR00000000: no sites found"):
        CPJUMP1Dataset(root=tiny.out_dir, plates="BR00000000", source="scan")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataIndexError, match="no images found under"):
        CPJUMP1Dataset(root=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CPJUMP1Dataset(root=tmp_path / "nope")


def test_inconsistent_site_counts(tiny, h, caplog):
    folder = tiny.image_dirs[h.A549_PLATE]
    h.write_phenix_plate(folder, wells=("A01",), sites=(4, 5), shape=(16, 16))  # A01: 5 sites, A02: 3
    h.write_phenix_plate(folder, wells=("A03",), sites=(1, 3), shape=(16, 16))  # A03: 2 sites (one missing)
    with pytest.raises(DataIndexError, match="inconsistent site counts.*well A01 has 5, up to site 5"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="scan")
    with caplog.at_level(logging.WARNING):
        ds = CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="scan", on_error="skip")
    assert set(ds.index["Metadata_Well"]) == {"A02", "A03"} and ds.skipped == {"wells with too many sites": 1}
    assert _skip_warnings(caplog)
    assert len(CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="scan", sites_per_well=5)) == 10
    with pytest.raises(DataIndexError, match="more than 2 sites"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="fluo", source="scan", sites_per_well=2)


def test_duplicate_plate_folders(tiny, h, copy_of, caplog):
    import shutil
    from pathlib import Path

    src = Path(tiny.image_dirs[h.A549_PLATE]).parent
    shutil.copytree(src, src.with_name(src.name.replace("Measurement1", "Measurement2")))
    with pytest.raises(DataIndexError, match="has images in several folders"):
        CPJUMP1Dataset(root=tiny.out_dir, channels="DNA", source="scan")
    with caplog.at_level(logging.WARNING):
        ds = CPJUMP1Dataset(root=tiny.out_dir, channels="DNA", source="scan", on_error="skip")
    assert ds.skipped == {"duplicate plate folders": 1} and "Measurement2" in ds.file_paths(0)[0]
    # a LoadData CSV removes the ambiguity
    assert "Measurement1" in CPJUMP1Dataset(root=tiny.out_dir, channels="DNA").file_paths(0)[0]


def test_missing_illumination_file(synth, copy_of, caplog):
    import os

    root = copy_of(synth.out_dir)
    plate = synth.plates[0]
    illum = root / "illum" / "2020_11_04_CPJUMP1" / plate / f"{plate}_IllumDNA.npy"
    os.remove(illum)
    with pytest.raises(DataIndexError, match=f"illumination file {illum.name} .*FileName_IllumDNA.* not found"):
        CPJUMP1Dataset(root=root, channels="DNA", plates=[plate], illum="yes")
    with caplog.at_level(logging.WARNING):
        auto = CPJUMP1Dataset(root=root, channels="DNA,ER", plates=[plate])  # illum=auto: DNA uncorrected, logged
    assert any(illum.name in r.getMessage() and "without illumination" in r.getMessage() for r in caplog.records)
    raw = auto.read_raw(0).astype(np.float32)
    ill = auto.illumination(0, raw.shape[1:])
    assert np.all(ill[0] == 1) and not np.all(ill[1] == 1)
    no = CPJUMP1Dataset(root=root, channels="DNA", plates=[plate], illum="no")
    assert no.illumination(0, raw.shape[1:]) is None
    # a function that exists at indexing time but is unreadable when read: error naming it
    er = root / "illum" / "2020_11_04_CPJUMP1" / plate / f"{plate}_IllumER.npy"
    er.write_bytes(b"junk")
    with pytest.raises(DataReadError, match=f"cannot read illumination file {er}"):
        CPJUMP1Dataset(root=root, channels="ER", plates=[plate]).get_image(0)
    with pytest.raises(DataIndexError, match="illum='yes' but there is no column FileName_IllumDNA"):
        CPJUMP1Dataset(root=root / "load_data_csv" / "2020_11_04_CPJUMP1" / plate / "load_data.csv", illum="yes")


def test_bad_options(tiny):
    with pytest.raises(ValueError, match="on_error"):
        CPJUMP1Dataset(root=tiny.out_dir, on_error="ignore")
    with pytest.raises(ValueError, match="source"):
        CPJUMP1Dataset(root=tiny.out_dir, source="s3")
    with pytest.raises(ValueError, match="root="):
        CPJUMP1Dataset()
    with pytest.raises(ValueError, match="unknown normalize"):
        CPJUMP1Dataset(root=tiny.out_dir, normalize="zscore")
