"""CPJUMP1Dataset: samples, other-site sampling, transform protocol, illumination, filters, DataLoader workers."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from dinov2_cell.data.cpjump1_dataset import CPJUMP1Dataset
from dinov2_cell.data.errors import DataIndexError
from dinov2_cell.data.intensity import RawSite
from dinov2_cell.data.readers import read_illum, read_tiff


@pytest.fixture(scope="module")
def ds(synth):
    return CPJUMP1Dataset(root=synth.out_dir, channels="fluo")


def test_basic_sample(ds, synth):
    assert len(ds) == sum(synth.n_sites.values()) == 2 * 6 * 4
    assert ds.channel_names == ["DNA", "ER", "RNA", "AGP", "Mito"] and ds.num_channels == 5
    img = ds.get_image(3)
    assert img.shape == (5, 32, 32) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    cols = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    assert list(ds.samples.columns[:3]) == cols and ds.samples is ds.index
    keys = ds.index[cols]
    assert not keys.duplicated().any()
    assert keys.equals(keys.sort_values(cols).reset_index(drop=True))
    out, target = ds[3]
    assert torch.equal(out, img)
    plate, well, site = ds.site_key(3)
    assert target == {"plate": plate, "well": well, "site": site, "index": 3}


def test_other_site_stays_in_well(ds):
    rng = np.random.default_rng(0)
    for i in range(len(ds)):
        seen = {ds.other_site_index(i, rng=rng) for _ in range(40)}
        plate, well, _ = ds.site_key(i)
        assert i not in seen
        for j in seen:
            assert ds.site_key(j)[:2] == (plate, well)
        assert seen == set(ds.sites_of_well(i).tolist()) - {i}  # uniform over the 3 others: all seen in 40 draws
    g = torch.Generator().manual_seed(0)
    assert ds.other_site_index(0, rng=g) in (1, 2, 3)
    assert ds.other_site_index(0) in (1, 2, 3)


def test_single_site_well_returns_itself(tiny, h):
    csv = h.plate_csv(tiny, h.A549_PLATE)
    rows = pd.read_csv(csv)
    rows[(rows["Metadata_Well"] == "A02") | (rows["Metadata_Site"] == 1)].to_csv(csv, index=False)
    ds = CPJUMP1Dataset(root=tiny.out_dir, channels="DNA", source="csv")
    assert ds.index["Metadata_Well"].tolist() == ["A01", "A02", "A02", "A02"]
    assert ds.other_site_index(0) == 0
    assert ds.other_site_index(1) in (2, 3)


class _PairTransform:
    wants_other_site = True

    def __call__(self, image, other_site=None):
        return {"a": image, "b": other_site}


def test_transform_protocols(synth):
    ds = CPJUMP1Dataset(root=synth.out_dir, channels="bf", transform=_PairTransform(), target_transform=len)
    out, target = ds[5]
    assert target == 4
    assert out["a"].shape == out["b"].shape == (3, 32, 32)
    assert torch.equal(out["a"], ds.get_image(5))
    others = [ds.get_image(j) for j in ds.sites_of_well(5) if j != 5]
    assert any(torch.equal(out["b"], o) for o in others)
    plain = CPJUMP1Dataset(root=synth.out_dir, channels="bf", transform=lambda x: x.sum())
    assert plain[5][0].ndim == 0


def test_illumination_correction_applied(synth):
    """With illum functions (auto) each channel is raw / illum before normalization; bitdepth keeps that exact."""
    ds = CPJUMP1Dataset(root=synth.out_dir, channels="DNA,Mito", normalize="bitdepth")
    no = CPJUMP1Dataset(root=synth.out_dir, channels="DNA,Mito", normalize="bitdepth", illum="no")
    i = 7
    paths = ds.file_paths(i)
    raw = np.stack([read_tiff(p) for p in paths]).astype(np.float32)
    plate = ds.site_key(i)[0]
    root = synth.out_dir
    illum = np.stack(
        [read_illum(f"{root}/illum/2020_11_04_CPJUMP1/{plate}/{plate}_Illum{c}.npy") for c in ("DNA", "Mito")]
    )
    np.testing.assert_allclose(ds.get_image(i).numpy(), np.clip(raw / illum / 65535, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(no.get_image(i).numpy(), raw / 65535, rtol=1e-6)


def test_plate_normalization_and_filters(synth, h):
    ds = CPJUMP1Dataset(root=synth.out_dir, channels="ER", normalize="plate", plate_stats_sites=4)
    assert set(ds.normalizer.bounds) == set(synth.plates)
    img = ds.get_image(0)
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    u2os = CPJUMP1Dataset(root=synth.out_dir, channels="ER", cell_line="u2os")
    assert u2os.plates == [h.U2OS_PLATE]
    two = CPJUMP1Dataset(root=synth.out_dir, channels="ER", wells=["a1", "A02"])
    assert set(two.index["Metadata_Well"]) == {"A01", "A02"}
    with pytest.raises(DataIndexError, match="U2OS"):
        CPJUMP1Dataset(root=synth.out_dir, channels="ER", plates=[h.A549_PLATE], cell_line="U2OS")


def test_plate_statistics_do_not_depend_on_the_other_plates(synth):
    kw = dict(root=synth.out_dir, channels="ER,DNA", normalize="plate", plate_stats_sites=3, seed=5)
    both = CPJUMP1Dataset(**kw)
    assert len(both.plates) == 2
    for plate in both.plates:
        alone = CPJUMP1Dataset(plates=[plate], **kw)
        np.testing.assert_array_equal(alone.normalizer.bounds[plate], both.normalizer.bounds[plate])
    # the sample is a real choice (3 of 24 sites): another seed gives other statistics
    other = CPJUMP1Dataset(**{**kw, "seed": 6})
    assert any(not np.array_equal(other.normalizer.bounds[p], both.normalizer.bounds[p]) for p in both.plates)


def test_site_metadata_join(ds, synth):
    meta = ds.site_metadata()
    assert len(meta) == len(ds)
    truth = pd.read_csv(f"{synth.out_dir}/synthetic_truth.csv", keep_default_na=False)
    merged = meta.merge(truth, on=["Metadata_Plate", "Metadata_Well"], suffixes=("", "_truth"))
    assert (merged["Metadata_pert_iname"] == merged["Metadata_pert_iname_truth"]).all()
    assert (merged["Metadata_cell_line"] == merged["Metadata_cell_line_truth"]).all()
    assert "DMSO" in set(meta["Metadata_pert_iname"])


class _OtherSiteId:
    """Returns the mean of the other site's image, which identifies which site was drawn."""

    wants_other_site = True

    def __call__(self, image, other_site=None):
        return other_site.double().mean()


def test_pickles_and_random_differs_across_workers(synth):
    ds = CPJUMP1Dataset(root=synth.out_dir, channels="DNA", transform=_OtherSiteId())
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone.get_image(1), ds.get_image(1))
    sampler = [0] * 16  # the same sample, 8 times per worker
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=2, multiprocessing_context="fork")
    batches = [b[0].tolist() for b in loader]
    assert len(batches) == 2 and batches[0] != batches[1]
    allowed = {round(float(ds.get_image(j).double().mean()), 6) for j in (1, 2, 3)}
    assert {round(v, 6) for b in batches for v in b} <= allowed


def test_repr_and_skip_counter(ds):
    assert "CPJUMP1Dataset" in repr(ds) and ds.skipped == {}


@pytest.mark.parametrize("normalize", ["percentile", "plate", "bitdepth"])
def test_raw_site_crops_equal_get_image_crops(synth, normalize):
    ds = CPJUMP1Dataset(root=synth.out_dir, channels="DNA,Mito", normalize=normalize, plate_stats_sites=2)
    for i in (0, 9):
        site, full = ds.get_site(i), ds.get_image(i)
        assert site.shape == tuple(full.shape)
        torch.testing.assert_close(site.crop(3, 5, 20, 17), full[:, 3:23, 5:22], atol=0, rtol=0)
        torch.testing.assert_close(site.to_tensor(), full, atol=0, rtol=0)


@pytest.mark.parametrize("device", ["loader", "model"])
def test_training_sample_through_raw_site_equals_normalise_then_crop(synth, tmp_path, device):
    # The dataset hands CellDataAugmentation the raw site (its crops converted after cutting); the same seed through
    # the float get_image path gives the same crops, bit for bit, from TIFFs and from a prepared store.
    from dinov2_cell.augment.cell_augmentation import CellDataAugmentation
    from dinov2_cell.data.prepare import prepare_store

    store = tmp_path / "store"
    prepare_store(synth.out_dir, store, channels="fluo", progress=False)
    aug = CellDataAugmentation((0.32, 1.0), (0.05, 0.32), 3, 16, 8, device=device, other_site_view=True)
    for root in (synth.out_dir, store):
        ds = CPJUMP1Dataset(root=root, channels="fluo", transform=aug)
        torch.manual_seed(7)
        out, _ = ds[4]
        torch.manual_seed(7)  # same stream: the other site's draw, then the augmentation's
        j = ds.other_site_index(4)
        ref = aug(ds.get_image(4), other_site=ds.get_image(j))
        assert len(out["other_site_crops"]) == 1 and isinstance(ds.get_site(4), RawSite)
        for key in ("global_crops", "local_crops", "other_site_crops"):
            for a, b in zip(out[key], ref[key]):
                torch.testing.assert_close(a, b, atol=0, rtol=0)
