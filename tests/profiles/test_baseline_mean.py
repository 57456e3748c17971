"""The hand-made baseline's well profile is the arithmetic mean of its sites' feature vectors (computed here by hand)."""

import numpy as np
import pandas as pd
import pytest
import torch

from dinov2_cell.profiles import baseline

CHANNELS = ["DNA", "Mito"]
PLATE = "BR00116991"
# sites in a shuffled order (wells interleaved) and of unequal counts: 3 in A01, 4 in A02, 1 in B05
SITES = [("A02", 3), ("A01", 1), ("A02", 1), ("B05", 2), ("A01", 3), ("A02", 4), ("A01", 2), ("A02", 2)]


class _Plate:
    """A CPJUMP1-like dataset: `index`, `channel_names`, `get_image` (C x H x W in [0, 1])."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.index = pd.DataFrame(SITES, columns=["Metadata_Well", "Metadata_Site"]).assign(Metadata_Plate=PLATE)
        self.channel_names, self.num_channels = CHANNELS, len(CHANNELS)
        self.images = []
        for k in range(len(SITES)):
            # skewed brightness across sites (one much brighter site per well): mean and median of any
            # statistic differ
            scale = 0.15 * (1 + k % 3) ** 2 / 9 + 0.05
            self.images.append((scale * rng.gamma(2.0, 1.0, size=(len(CHANNELS), 24, 24))).clip(0, 1).astype("f4"))

    def __len__(self):
        return len(SITES)

    def get_image(self, i):
        return torch.from_numpy(self.images[i])


def test_well_profile_is_the_mean_of_its_sites():
    ds = _Plate()
    out = baseline.plate_features(ds, stride=1, progress=False)
    names = baseline.feature_names(CHANNELS)
    assert list(out["Metadata_Well"]) == ["A01", "A02", "B05"]  # one row per well, sorted
    assert list(out["Metadata_n_sites"]) == ["3", "4", "1"]
    per_site = np.stack([baseline.site_features(img, stride=1) for img in ds.images])
    for _, row in out.iterrows():
        rows = [i for i, (w, _) in enumerate(SITES) if w == row["Metadata_Well"]]
        mean = per_site[rows].sum(0) / len(rows)  # by hand
        np.testing.assert_allclose(row[names].to_numpy(dtype=np.float64), mean, rtol=2e-6, atol=1e-7)
        if len(rows) >= 3:  # the case separates mean from median on most features
            median = np.median(per_site[rows], axis=0)
            assert np.mean(np.abs(median - mean) > 1e-3 * (np.abs(mean) + 1e-3)) > 0.5
    assert out[names].dtypes.eq(np.float32).all()


def test_featuriser_plate_equals_the_hand_mean_too():
    ds = _Plate(seed=1)
    featuriser = baseline.BaselineFeaturiser(stride=1, progress=False)
    out = featuriser.featurise_plate(PLATE, ds).set_index("Metadata_Well")
    names = baseline.feature_names(CHANNELS)
    per_site = np.stack([baseline.site_features(img, stride=1) for img in ds.images])
    a02 = [i for i, (w, _) in enumerate(SITES) if w == "A02"]
    np.testing.assert_allclose(
        out.loc["A02", names].to_numpy(dtype=np.float64), per_site[a02].mean(0), rtol=2e-6, atol=1e-7
    )
    assert out.loc["A02", "DNA_mean"] == pytest.approx(float(np.mean([ds.images[i][0].mean() for i in a02])), rel=1e-5)
