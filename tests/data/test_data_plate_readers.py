"""Plate readers: one per plate, chosen once (store, LoadData CSV or Phenix scan); the dataset reads through them."""

import shutil

import numpy as np

from dinov2_cell.data.names import resolve_channels
from dinov2_cell.data.prepare import prepare_store
from dinov2_cell.data.plate_readers import StorePlateReader, TiffPlateReader, open_plate_readers
from dinov2_cell.data.store import PlateStore


def test_one_source_per_plate_chosen_once(synth, tmp_path, h):
    root = tmp_path / "root"
    shutil.copytree(synth.out_dir, root)
    # the U2OS plate loses its LoadData CSV: it is indexed from its Phenix folder instead
    for csv in (root / "load_data_csv").rglob("*.csv"):
        if h.U2OS_PLATE in str(csv):
            csv.unlink()
    channels = resolve_channels("fluo")
    readers = open_plate_readers(root=root, store=None, plates=None, channels=channels)
    by_plate = {s.plate: s for s in readers}
    assert [s.plate for s in readers] == sorted(synth.plates)
    assert by_plate[h.U2OS_PLATE].indexed_from == "scan" and by_plate[h.A549_PLATE].indexed_from == "csv"
    assert all(isinstance(s, TiffPlateReader) for s in readers)

    store = tmp_path / "store"
    prepare_store(synth.out_dir, store, plates=[h.A549_PLATE], channels="all", progress=False)
    mixed = open_plate_readers(root=root, store=PlateStore(store), plates=None, channels=channels)
    kinds = {s.plate: s.kind for s in mixed}
    assert kinds == {h.A549_PLATE: "store", h.U2OS_PLATE: "tiff"}
    st = next(s for s in mixed if isinstance(s, StorePlateReader))
    tiff = by_plate[h.A549_PLATE]
    assert st.sites.equals(tiff.sites)
    for i in (0, len(st.sites) - 1):
        np.testing.assert_array_equal(st.read_raw(i), tiff.read_raw(i))
        np.testing.assert_array_equal(np.asarray(st.read(i)), np.asarray(tiff.read(i)))  # illumination applied
        assert st.file_paths(i) == [] and len(tiff.file_paths(i)) == len(channels)


def test_wells_filter_keeps_per_site_arrays_aligned(synth):
    channels = resolve_channels("DNA")
    full = {s.plate: s for s in open_plate_readers(root=synth.out_dir, store=None, plates=None, channels=channels)}
    wells = synth.wells[1:3]
    some = open_plate_readers(root=synth.out_dir, store=None, plates=None, channels=channels, wells=wells)
    assert len(some) == 2
    for s in some:
        assert set(s.sites["Metadata_Well"]) == set(wells)
        whole = full[s.plate]
        for i, row in s.sites.iterrows():
            j = int(np.flatnonzero((whole.sites == row).all(axis=1).to_numpy())[0])
            assert s.file_paths(i) == whole.file_paths(j)
