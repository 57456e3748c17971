"""The plate store's contract, in-process and exact: files written by ``write_plate`` (array, index, marker,
percentiles, illumination) against the TIFFs read with tifffile and percentiles computed with ``np.percentile``;
``PlateStore`` reads, caches and error messages; ``init_store``, ``plate_is_complete`` and ``forget_plate``.

The source plates are written here by hand (a few 6 x 8 TIFFs per plate, illumination functions as ``.npy``) so every
expected value is known independently of the code under test. The barcodes are all digits so that a reader that let
pandas guess the column types would turn them into integers.
"""

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from dinov2_cell.data.errors import DataIndexError, DataReadError, SkipLog
from dinov2_cell.data.store import (
    STORE_PERCENTILES,
    PlateStore,
    forget_plate,
    init_store,
    is_store,
    plate_is_complete,
    write_plate,
)

CHANNELS = ["DNA", "Mito"]
H, W = 6, 8  # not square: a swapped axis would show
GOOD, SKIPPED = "0042", "0043"
# rows in the order the table gives them; the store sorts them by well, then site
SITES = [("B02", 2), ("A01", 1), ("B02", 1), ("A01", 2)]
SORTED = sorted(SITES)
Q = np.array(STORE_PERCENTILES)


def _site_table(folder: Path, plate: str, seed: int, illum: dict | None = None) -> pd.DataFrame:
    """Write one random uint16 TIFF per site and channel; the site table as ``site_table`` gives it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for well, site in SITES:
        row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
        for ch in CHANNELS:
            path = folder / f"{plate}_{well}_s{site}_{ch}.tiff"
            tifffile.imwrite(path, rng.integers(1, 60000, (H, W), dtype=np.uint16))
            row[f"path_{ch}"] = str(path)
        if illum is not None:
            row.update({f"illum_{ch}": illum.get(ch, "") for ch in CHANNELS})
        rows.append(row)
    return pd.DataFrame(rows)


def _tiffs(table: pd.DataFrame, well: str, site: int) -> np.ndarray:
    """The site's channels read with tifffile (the reference for the store's rows)."""
    row = table[(table["Metadata_Well"] == well) & (table["Metadata_Site"] == site)].iloc[0]
    return np.stack([tifffile.imread(row[f"path_{ch}"]) for ch in CHANNELS])


def _build(root: Path, records: list | None = None) -> dict:
    """A store with plate GOOD (illumination for DNA only) and plate SKIPPED (no illumination; its first site's DNA
    and a middle site's Mito files broken, written with on_error="skip" and no SkipLog of the caller's)."""
    dna_illum = np.random.default_rng(7).uniform(0.5, 2.0, (H, W)).astype(np.float32)
    np.save(root / "dna_illum.npy", dna_illum)
    good = _site_table(root / "src", GOOD, seed=1, illum={"DNA": str(root / "dna_illum.npy")})
    bad = _site_table(root / "src", SKIPPED, seed=2)
    broken = [bad.loc[1, "path_DNA"], bad.loc[2, "path_Mito"]]  # A01 site 1 (sorted first), B02 site 1
    for path in broken:
        Path(path).write_bytes(b"not a tiff")
    out = init_store(root / "store", CHANNELS)
    handler = _ListHandler(records) if records is not None else None
    logger = logging.getLogger("dinov2_cell.data")
    if handler:
        logger.addHandler(handler)
    try:
        info_good = write_plate(out, GOOD, good, CHANNELS, progress=False)
        info_bad = write_plate(out, SKIPPED, bad, CHANNELS, on_error="skip", progress=False)
    finally:
        if handler:
            logger.removeHandler(handler)
    return dict(out=out, good=good, bad=bad, broken=broken, illum=dna_illum, info={GOOD: info_good, SKIPPED: info_bad})


class _ListHandler(logging.Handler):
    def __init__(self, records):
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record):
        self.records.append(record.getMessage())


@pytest.fixture()
def built(tmp_path):
    # function-scoped on purpose: mutmut maps tests to the functions they call, fixture setup included, so each test
    # that checks what write_plate wrote must run write_plate itself (a module-scoped store maps to its first user only)
    records = []
    b = _build(tmp_path, records)
    b["records"] = records
    return b


@pytest.fixture()
def fresh(tmp_path):
    """A store of its own, for tests that damage it."""
    return _build(tmp_path)


def _percentiles(image: np.ndarray) -> np.ndarray:
    return np.stack([np.percentile(ch.astype(np.float64), Q) for ch in image])


# ----------------------------------------------------------------------------------------------------------------
# what write_plate writes


def test_array_index_and_marker_match_the_tiffs(built):
    out, good, bad = built["out"], built["good"], built["bad"]
    arr = np.load(out / "plates" / f"{GOOD}.npy")
    assert arr.dtype == np.uint16 and arr.shape == (4, 2, H, W)
    for r, (well, site) in enumerate(SORTED):
        np.testing.assert_array_equal(arr[r], _tiffs(good, well, site), err_msg=f"{well} {site}")
    # the documented index: one line per array row, ok as 0/1 integers, barcode spelled as given
    lines = [f"{GOOD},{w},{s},1" for w, s in SORTED]
    assert (out / "plates" / f"{GOOD}.index.csv").read_bytes() == (
        "Metadata_Plate,Metadata_Well,Metadata_Site,ok\n" + "\n".join(lines) + "\n"
    ).encode()
    want = {
        "plate": GOOD,
        "n_sites": 4,
        "n_failed": 0,
        "shape": [4, 2, H, W],
        "channels": CHANNELS,
        "illum": True,
        "percentiles": list(STORE_PERCENTILES),
    }
    assert built["info"][GOOD] == want
    assert json.loads((out / "plates" / f"{GOOD}.json").read_text()) == want

    # the skipped plate: zero rows marked ok = 0 where a channel was unreadable, the other rows intact
    arr = np.load(out / "plates" / f"{SKIPPED}.npy")
    failed = {("A01", 1), ("B02", 1)}
    for r, (well, site) in enumerate(SORTED):
        if (well, site) in failed:
            assert not arr[r].any()
        else:
            np.testing.assert_array_equal(arr[r], _tiffs(bad, well, site))
    lines = [f"{SKIPPED},{w},{s},{0 if (w, s) in failed else 1}" for w, s in SORTED]
    assert (out / "plates" / f"{SKIPPED}.index.csv").read_text() == (
        "Metadata_Plate,Metadata_Well,Metadata_Site,ok\n" + "\n".join(lines) + "\n"
    )
    info = json.loads((out / "plates" / f"{SKIPPED}.json").read_text())
    assert info == {**want, "plate": SKIPPED, "n_failed": 2, "illum": False} == built["info"][SKIPPED]
    assert not (out / "plates" / f"{SKIPPED}.illum.npy").exists()


def test_percentiles_and_illumination_files(built):
    out, good, bad = built["out"], built["good"], built["bad"]
    illum = np.load(out / "plates" / f"{GOOD}.illum.npy")
    assert illum.dtype == np.float32 and illum.shape == (2, H, W)
    np.testing.assert_array_equal(illum[0], built["illum"])
    np.testing.assert_array_equal(illum[1], np.ones((H, W), np.float32))  # no function for Mito: divide by 1

    pct = np.load(out / "plates" / f"{GOOD}.percentiles.npy")
    assert pct.dtype == np.float64 and pct.shape == (4, 2, 2, len(Q))
    for r, (well, site) in enumerate(SORTED):
        raw = _tiffs(good, well, site)
        np.testing.assert_array_equal(pct[r, 0], _percentiles(raw))
        corrected = np.stack([raw[0].astype(np.float32) / built["illum"], raw[1].astype(np.float32)])
        np.testing.assert_array_equal(pct[r, 1], _percentiles(corrected))
    assert not np.array_equal(pct[:, 0, 0], pct[:, 1, 0])  # the DNA correction changed them

    pct = np.load(out / "plates" / f"{SKIPPED}.percentiles.npy")
    assert pct.shape == (4, 2, 2, len(Q))
    for r, (well, site) in enumerate(SORTED):
        if (well, site) in {("A01", 1), ("B02", 1)}:
            assert not pct[r].any()
        else:
            want = _percentiles(_tiffs(bad, well, site))
            np.testing.assert_array_equal(pct[r, 0], want)
            np.testing.assert_array_equal(pct[r, 1], want)  # no illumination: corrected = raw


def test_skips_are_logged_with_the_file(built):
    first, middle = built["broken"]
    skips = [m for m in built["records"] if "skipped" in m]
    assert len(skips) == 2
    assert skips[0].startswith("prepare: skipped unreadable sites (1 skipped so far): ") and first in skips[0]
    assert skips[1].startswith("prepare: skipped unreadable sites (2 skipped so far): ") and middle in skips[1]


def test_write_plate_errors(tmp_path):
    table = _site_table(tmp_path / "src", GOOD, seed=3)
    out = init_store(tmp_path / "store", CHANNELS)

    # default on_error is "raise": the first site's first channel broken (read while finding the plate's shape)
    first = table.loc[1, "path_DNA"]
    Path(first).write_bytes(b"broken")
    with pytest.raises(DataReadError) as err:
        write_plate(out, GOOD, table, CHANNELS, progress=False)
    assert err.value.path == first
    # skipping every site leaves no readable one
    shutil.copy(table.loc[0, "path_DNA"], first)
    broken_all = table.copy()
    for k in range(len(broken_all)):
        broken_all.loc[k, "path_DNA"] = str(tmp_path / "missing.tiff")
    log = SkipLog("mine")
    with pytest.raises(DataIndexError, match=f"^plate {GOOD}: no readable site$"):
        write_plate(out, GOOD, broken_all, CHANNELS, on_error="skip", skips=log, progress=False)
    assert log.counts == {"unreadable sites": 4}

    # a later site: the message names plate, well and site, and the error keeps the file
    later = table.loc[0, "path_Mito"]  # B02 site 2
    Path(later).write_bytes(b"broken")
    with pytest.raises(DataReadError, match=f"^plate {GOOD} well B02 site 2: ") as err:
        write_plate(out, GOOD, table, CHANNELS, on_error="raise", progress=False)
    assert err.value.path == later
    assert not list((out / "plates").iterdir())  # nothing half-written left
    shutil.copy(table.loc[2, "path_Mito"], later)

    # a site of another shape than the plate's first: the message says which images it was compared with
    tifffile.imwrite(later, np.zeros((H, W + 1), np.uint16))
    with pytest.raises(DataReadError, match=r"differs from \(6, 8\) \(other images of this plate\)") as err:
        write_plate(out, GOOD, table, CHANNELS, progress=False)
    assert err.value.path == later


def test_write_plate_illumination_errors(tmp_path):
    ill = tmp_path / "a.npy", tmp_path / "b.npy"
    for path in ill:
        np.save(path, np.ones((H, W), np.float32))
    table = _site_table(tmp_path / "src", GOOD, seed=4, illum={"Mito": str(ill[0])})
    table.loc[3, "illum_Mito"] = str(ill[1])
    out = init_store(tmp_path / "store", CHANNELS)
    with pytest.raises(DataIndexError) as err:
        write_plate(out, GOOD, table, CHANNELS, progress=False)
    assert str(err.value) == (
        f"plate {GOOD}: channel Mito uses 2 illumination files ({ill[0]}, {ill[1]}, ...); "
        "the store keeps one per plate and channel"
    )
    np.save(ill[1], np.ones((H + 1, W), np.float32))  # one file, of the wrong shape
    table["illum_Mito"] = str(ill[1])
    with pytest.raises(DataReadError, match="differs from image shape") as err:
        write_plate(out, GOOD, table, CHANNELS, progress=False)
    assert err.value.path == str(ill[1])
    # illumination columns that are all empty: no illumination
    table["illum_Mito"] = ""
    assert write_plate(out, GOOD, table, CHANNELS, progress=False)["illum"] is False


def test_write_plate_clears_stale_temporaries_and_shows_a_transient_bar(tmp_path, capsys):
    table = _site_table(tmp_path / "src", GOOD, seed=5)
    out = init_store(tmp_path / "store", CHANNELS)
    stale = out / "plates" / f".{GOOD}.k1ll3d.npy"
    stale.write_bytes(b"half")
    capsys.readouterr()
    write_plate(out, GOOD, table, CHANNELS)  # progress on by default
    err = capsys.readouterr().err
    assert f"prepare {GOOD}:" in err and "0/4 [" in err and "?site/s]" in err
    assert err.endswith("\r") and "\n" not in err  # cleared when done (leave=False): no line left per plate
    assert not stale.exists()
    assert sorted(p.name for p in (out / "plates").iterdir()) == [
        f"{GOOD}.index.csv",
        f"{GOOD}.json",
        f"{GOOD}.npy",
        f"{GOOD}.percentiles.npy",
    ]
    forget_plate(out, GOOD)
    write_plate(out, GOOD, table, CHANNELS, progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------------------------
# reading


def test_site_index(built):
    store = PlateStore(built["out"])
    assert store.channel_names == CHANNELS and list(store.plates) == [GOOD, SKIPPED]
    index = store.site_index()
    assert list(index.columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "store_row"]
    kept = [(GOOD, w, s, r) for r, (w, s) in enumerate(SORTED)]
    kept += [(SKIPPED, w, s, r) for r, (w, s) in enumerate(SORTED) if (w, s) not in {("A01", 1), ("B02", 1)}]
    assert list(index.itertuples(index=False, name=None)) == kept
    assert list(index.index) == list(range(len(kept)))
    assert [type(v) for v in index["Metadata_Plate"]] == [str] * len(kept)
    only = store.site_index([SKIPPED])
    assert list(only.index) == [0, 1] and list(only["store_row"]) == [1, 3]

    with pytest.raises(DataIndexError) as err:
        store.site_index([GOOD, "0099"])
    assert str(err.value) == f"plate(s) ['0099'] not in store {store.path} (complete plates: {GOOD}, {SKIPPED})"


def test_site_index_errors(tmp_path, fresh):
    empty = PlateStore(init_store(tmp_path / "empty", CHANNELS))
    with pytest.raises(DataIndexError) as err:
        empty.site_index([GOOD])
    assert str(err.value) == f"plate(s) ['{GOOD}'] not in store {empty.path} (complete plates: none)"

    csv = fresh["out"] / "plates" / f"{GOOD}.index.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataIndexError) as err:
        PlateStore(fresh["out"]).site_index([GOOD])
    assert str(err.value) == f"{csv}: 3 rows but the plate array has 4 sites"


def test_read_view_percentiles_illum(built):
    store = PlateStore(built["out"])
    good = built["good"]
    for r, (well, site) in enumerate(SORTED):
        want = _tiffs(good, well, site)
        got = store.read(GOOD, r, slice(None))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(store.read(GOOD, r, [1]), want[[1]])
        view = store.view(GOOD, r, slice(None))
        np.testing.assert_array_equal(view, want)
        assert not view.flags.writeable  # a view of the read-only memory map
        # read returns a copy of its own: changing it changes nothing in the store
        assert got.flags.writeable and not np.shares_memory(got, view)
        got[:] = 0
        np.testing.assert_array_equal(store.read(GOOD, r, slice(None)), want)

        raw = _percentiles(want)
        corrected = _percentiles(np.stack([want[0].astype(np.float32) / built["illum"], want[1]]))
        np.testing.assert_array_equal(store.percentiles(GOOD, r, [0, 1], [0.1, 99.9], corrected=False), raw[:, [1, 8]])
        got_pct = store.percentiles(GOOD, r, [1, 0], [99.9, 0.1, 2.0], corrected=True)
        assert got_pct.shape == (2, 3)
        assert list(Q[[8, 1, 4]]) == [99.9, 0.1, 2.0]
        np.testing.assert_array_equal(got_pct, corrected[[1, 0]][:, [8, 1, 4]])
    assert store.percentiles(GOOD, 0, [0], [3.0], corrected=False) is None  # not a stored percentile
    assert isinstance(store._pct[GOOD], np.memmap)  # mapped (shared page cache), not loaded per process

    np.testing.assert_array_equal(store.illum(GOOD), np.stack([built["illum"], np.ones((H, W), np.float32)]))
    assert store.illum(SKIPPED) is None


def test_maps_are_opened_once_and_not_pickled(fresh):
    store = PlateStore(fresh["out"])
    want = store.read(GOOD, 2, slice(None))
    pct = store.percentiles(GOOD, 2, [0, 1], [0.1, 99.9], corrected=True)
    ill = store.illum(GOOD)
    clone = pickle.loads(pickle.dumps(store))
    assert set(vars(clone)) == set(vars(store))
    assert clone._mm == {} and clone._illum == {} and clone._pct == {}  # reopened lazily in each worker
    assert set(store._mm) == set(store._illum) == set(store._pct) == {GOOD}  # the original keeps its own
    np.testing.assert_array_equal(clone.read(GOOD, 2, slice(None)), want)
    # later reads use the maps opened at first use: they work after the files are gone (the mapping keeps them)
    for suffix in (".npy", ".percentiles.npy", ".illum.npy"):
        os.remove(fresh["out"] / "plates" / f"{GOOD}{suffix}")
    np.testing.assert_array_equal(store.read(GOOD, 2, slice(None)), want)
    np.testing.assert_array_equal(store.percentiles(GOOD, 2, [0, 1], [0.1, 99.9], corrected=True), pct)
    np.testing.assert_array_equal(store.illum(GOOD), ill)


def test_damaged_arrays(fresh):
    out = fresh["out"]
    npy = out / "plates" / f"{GOOD}.npy"
    arr = np.load(npy)
    npy.write_bytes(b"not an npy file")
    with pytest.raises(DataReadError, match=f"^cannot open store array {npy}: ") as err:
        PlateStore(out).read(GOOD, 0, slice(None))
    assert err.value.path == str(npy)
    for bad in (arr[:3], arr.astype(np.int32)):  # wrong shape, right dtype; right shape, wrong dtype
        npy.unlink()
        np.save(npy, bad)
        with pytest.raises(DataReadError) as err:
            PlateStore(out).view(GOOD, 0, slice(None))
        assert str(err.value) == f"{npy}: array {bad.shape} {bad.dtype} does not match its marker (4, 2, {H}, {W})"
        assert err.value.path == str(npy)


def test_store_marker_errors(tmp_path, fresh):
    out = fresh["out"]
    assert is_store(out) and not is_store(None) and not is_store(tmp_path)
    with pytest.raises(DataIndexError) as err:
        PlateStore(tmp_path / "nothing")
    assert str(err.value) == f"not a prepared store (no store.json): {tmp_path / 'nothing'}"
    marker = out / "store.json"
    meta = json.loads(marker.read_text())
    marker.write_text("{broken")
    with pytest.raises(DataIndexError, match=f"^cannot read {marker}: "):
        PlateStore(out)
    for fmt, version in (("other-store", 1), ("dinov2_cell-plate-store", 2), (None, 1)):
        marker.write_text(json.dumps({**meta, "format": fmt, "version": version}))
        with pytest.raises(DataIndexError) as err:
            PlateStore(out)
        assert str(err.value) == f"{marker}: unsupported store format {fmt!r} v{version}"
    marker.write_text(json.dumps(meta))
    npy = out / "plates" / f"{SKIPPED}.npy"
    npy.unlink()
    with pytest.raises(DataIndexError) as err:
        PlateStore(out)
    assert (
        str(err.value)
        == f"store plate {SKIPPED}: marker {out / 'plates' / (SKIPPED + '.json')} exists but {npy} is missing"
    )


# ----------------------------------------------------------------------------------------------------------------
# init_store, plate_is_complete, forget_plate


def test_init_store(tmp_path):
    out = init_store(tmp_path / "a" / "s", CHANNELS)
    assert out == (tmp_path / "a" / "s").resolve() and (out / "plates").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["plates", "store.json"]
    meta = {"format": "dinov2_cell-plate-store", "version": 1, "channel_names": CHANNELS}
    assert json.loads((out / "store.json").read_text()) == meta
    assert init_store(out, CHANNELS) == out  # reopened
    with pytest.raises(DataIndexError) as err:
        init_store(out, ["DNA"])
    assert str(err.value) == f"store {out} holds channels ['DNA', 'Mito'], not ['DNA']; use another --out"
    (out / "store.json").write_text(json.dumps({"format": "dinov2_cell-plate-store", "version": 1}))
    with pytest.raises(DataIndexError) as err:
        init_store(out, CHANNELS)
    assert str(err.value) == f"store {out} holds channels None, not ['DNA', 'Mito']; use another --out"

    (tmp_path / "empty").mkdir()
    assert is_store(init_store(tmp_path / "empty", CHANNELS))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    with pytest.raises(DataIndexError) as err:
        init_store(tmp_path / "busy", CHANNELS)
    assert (
        str(err.value)
        == f"--out {tmp_path / 'busy'} exists, is not empty and is not a store; refusing to write into it"
    )


def test_plate_is_complete_and_forget_plate(fresh):
    out = fresh["out"]
    plates = out / "plates"
    assert plate_is_complete(out, GOOD, CHANNELS) and plate_is_complete(out, SKIPPED, CHANNELS)
    assert not plate_is_complete(out, GOOD, ["Mito", "DNA"]) and not plate_is_complete(out, "0099", CHANNELS)

    marker = plates / f"{GOOD}.json"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "shape": [4, 2, H, W + 1]}))
    assert not plate_is_complete(out, GOOD, CHANNELS)
    marker.write_text(json.dumps({k: v for k, v in info.items() if k != "shape"}))
    assert not plate_is_complete(out, GOOD, CHANNELS)
    marker.write_text(json.dumps(info))
    npy = plates / f"{GOOD}.npy"
    data = npy.read_bytes()
    npy.write_bytes(b"garbage")
    assert not plate_is_complete(out, GOOD, CHANNELS)
    npy.write_bytes(data)
    assert plate_is_complete(out, GOOD, CHANNELS)

    forget_plate(out, GOOD)
    assert not marker.exists() and npy.exists()
    assert not plate_is_complete(out, GOOD, CHANNELS)  # the array alone does not make a complete plate
    assert list(PlateStore(out).plates) == [SKIPPED]
    forget_plate(out, GOOD)  # already forgotten: nothing to do
    forget_plate(str(out), "0099")
    npy.unlink()
    marker.write_text(json.dumps(info))
    assert not plate_is_complete(out, GOOD, CHANNELS)  # a marker without its array
