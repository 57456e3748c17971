"""A store written with on_error=skip: every remaining site holds exactly its own TIFFs (read here with tifffile).

The sites after a failed one must not be shifted onto its zero-filled row (or onto each other): each site the store
lists is compared with the Phenix TIFFs of its well, site and channel, through the store itself and through the
training dataset.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.data.names import PHENIX_CHANNELS, phenix_filename
from dinov2_cell.data.prepare import prepare_store
from dinov2_cell.data.store import PlateStore
from dinov2_cell.synthetic import generate_plates

PLATE = "BR00116991"
CHANNEL_NUMBER = {name: num for num, name in PHENIX_CHANNELS.items()}
WELLS = ["A01", "A02", "B03"]
BROKEN = [("A01", 1, "DNA"), ("A02", 2, "Mito"), ("B03", 3, "AGP")]  # the plate's first site, a middle one, the last


def _tiff(folder, well, site, channel):
    row, col = ord(well[0]) - 64, int(well[1:])
    return folder / phenix_filename(row, col, site, CHANNEL_NUMBER[channel])


@pytest.fixture()
def skipped_store(tmp_path):
    res = generate_plates(tmp_path / "src", plates=[PLATE], wells=WELLS, sites=3, size=16, seed=3, progress=False)
    folder = Path(res.image_dirs[PLATE])
    for well, site, channel in BROKEN:
        _tiff(folder, well, site, channel).write_bytes(b"not a tiff")
    out = tmp_path / "store"
    result = prepare_store(res.out_dir, out, channels="fluo", on_error="skip", progress=False)
    assert result["skips"] == {"unreadable sites": len(BROKEN)}
    return out, folder


def test_every_remaining_site_matches_its_tiffs(skipped_store):
    out, folder = skipped_store
    store = PlateStore(out)
    channels = store.channel_names
    assert channels == ["DNA", "ER", "RNA", "AGP", "Mito"]
    index = store.site_index()
    broken_sites = {(w, s) for w, s, _ in BROKEN}
    expected_sites = {(w, s) for w in WELLS for s in (1, 2, 3)} - broken_sites
    listed = list(zip(index["Metadata_Well"], index["Metadata_Site"]))
    assert sorted(listed) == sorted(expected_sites) and len(listed) == len(set(listed))
    rows_seen = set()
    for well, site, row in zip(index["Metadata_Well"], index["Metadata_Site"], index["store_row"]):
        got = store.read(PLATE, int(row), slice(None))
        assert got.dtype == np.uint16
        for k, ch in enumerate(channels):
            want = tifffile.imread(_tiff(folder, well, site, ch))
            np.testing.assert_array_equal(got[k], want, err_msg=f"{well} site {site} {ch}")
        assert got.max() > 0  # a real image, not a zero-filled row
        rows_seen.add(int(row))
    assert len(rows_seen) == len(expected_sites)

    # the failed sites keep zero rows marked ok = 0 (written, never served)
    table = pd.read_csv(out / "plates" / f"{PLATE}.index.csv", dtype={"Metadata_Well": str})
    arr = np.load(out / "plates" / f"{PLATE}.npy", mmap_mode="r")
    for r, (well, site, ok) in enumerate(zip(table["Metadata_Well"], table["Metadata_Site"], table["ok"])):
        assert ok == (0 if (well, site) in broken_sites else 1), (well, site)
        if not ok:
            assert not arr[r].any() and r not in rows_seen
    info = json.loads((out / "plates" / f"{PLATE}.json").read_text())
    assert info["n_failed"] == len(BROKEN) and info["n_sites"] == 3 * len(WELLS)


def test_training_dataset_serves_each_remaining_site_from_its_tiffs(skipped_store):
    out, folder = skipped_store
    ds = CPJUMP1Dataset(root=out, channels="fluo")
    assert len(ds) == 3 * len(WELLS) - len(BROKEN)
    assert (ds.index["source"] == "store").all()
    for i, (well, site) in enumerate(zip(ds.index["Metadata_Well"], ds.index["Metadata_Site"])):
        raw = ds.read_raw(i)
        want = np.stack([tifffile.imread(_tiff(folder, well, int(site), ch)) for ch in ds.channel_names])
        np.testing.assert_array_equal(raw, want, err_msg=f"sample {i}: {well} site {site}")
