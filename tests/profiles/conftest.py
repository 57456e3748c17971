"""Fixtures for the profile tests: a CPJUMP1-like stub dataset (no files) and small profile tables."""

import zlib

import numpy as np
import pandas as pd
import pytest
import torch

N_CHANNELS = {"fluo": 5, "bf": 3, "all": 8}
PLATE_9 = "BR00116991"  # A549, 9 sites per well
PLATE_16 = "BR00117015"  # A549, one of the real 16-site plates


class StubDataset:
    """The CPJUMP1Dataset surface the profile code uses: ``index``, ``len``, ``get_image``, ``channel_names``.

    Images are deterministic noise seeded by (plate, well, site) plus a per-well brightness, so that wells differ.
    """

    def __init__(self, root, plates, channels, wells=("A01", "A02", "A03"), size=24, missing=()):
        plates = [PLATE_9, PLATE_16] if plates is None else list(plates)
        rows = []
        for p in plates:
            for w in wells:
                for s in range(1, (16 if p == PLATE_16 else 9) + 1):
                    if (p, w, s) not in missing:
                        rows.append((p, w, s))
        self.index = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
        self.num_channels = N_CHANNELS[channels]
        self.channel_names = [f"c{i}" for i in range(self.num_channels)]
        self.size = size
        self.calls = 0

    def __len__(self):
        return len(self.index)

    def get_image(self, i):
        p, w, s = self.index.iloc[i]
        g = torch.Generator().manual_seed(zlib.crc32(f"{p}/{w}/{s}".encode()))
        level = 0.2 + 0.2 * (zlib.crc32(w.encode()) % 3)
        return (level * torch.rand(self.num_channels, self.size, self.size, generator=g)).clamp(0, 1)


@pytest.fixture()
def stub_factory():
    """A dataset factory with the embed/baseline signature that counts its calls."""
    calls = []

    def factory(root, plates, channels, **kwargs):
        calls.append((root, None if plates is None else tuple(plates), channels))
        return StubDataset(root, plates, channels, **kwargs)

    factory.calls = calls
    return factory


@pytest.fixture()
def small_profiles():
    """3 plates x 4 wells, two features, with the profile Metadata columns."""
    rng = np.random.default_rng(0)
    rows = []
    for p in ("P1", "P2", "P3"):
        for w, (b, n) in zip(
            ("A01", "A02", "A03", "A04"), (("BRD-1", "c1"), ("", "DMSO"), ("BRD-2", "c2"), ("", "DMSO"))
        ):
            rows.append(
                dict(
                    Metadata_Plate=p,
                    Metadata_Well=w,
                    Metadata_broad_sample=b,
                    Metadata_pert_iname=n,
                    Metadata_target="T" if b else "",
                    Metadata_cell_line="U2OS",
                    f0=rng.normal(),
                    f1=rng.normal(),
                )
            )
    return pd.DataFrame(rows)
