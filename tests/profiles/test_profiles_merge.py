"""Site -> well merging: grid placement, exact 4x4 -> 3x3 interpolation, missing sites, whole-table merging."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dinov2_cell.profiles import merge


def _sites(n, dim=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_4x4_grid_matches_hand_interpolation():
    v = _sites(16)
    s = {i + 1: v[i] for i in range(16)}  # site number -> vector; row-major: site = 4 * row + col + 1
    # align_corners=True, 4 -> 3: output nodes sample input coordinates 0, 1.5, 3 on each axis.
    expected = [
        s[1], (s[2] + s[3]) / 2, s[4],
        (s[5] + s[9]) / 2, (s[6] + s[7] + s[10] + s[11]) / 4, (s[8] + s[12]) / 2,
        s[13], (s[14] + s[15]) / 2, s[16],
    ]  # fmt: skip
    out, n_missing = merge.merge_well(list(range(1, 17)), v, side=4, mode="concat")
    assert n_missing == 0
    np.testing.assert_allclose(out, np.concatenate(expected), rtol=0, atol=1e-12)


def test_interpolation_equals_torch_bilinear_align_corners():
    grid = _sites(16, dim=5, seed=1).reshape(4, 4, 5)
    ref = F.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=(3, 3), mode="bilinear", align_corners=True)
    np.testing.assert_allclose(merge.interpolate_grid(grid), ref[0].permute(1, 2, 0).numpy(), atol=1e-12)


def test_3x3_grid_is_used_as_is_in_site_order():
    v = _sites(9)
    order = [3, 1, 2, 9, 8, 7, 4, 5, 6]  # rows given shuffled: the grid position comes from the site number
    out, _ = merge.merge_well(order, v[np.array(order) - 1], side=3)
    np.testing.assert_array_equal(out, v.reshape(-1))


def test_snake_order_reverses_odd_rows():
    assert merge.site_position(4, 3, "row-major") == (1, 0)
    assert merge.site_position(4, 3, "snake") == (1, 2)
    assert merge.site_position(7, 3, "snake") == (2, 0)
    with pytest.raises(ValueError, match="outside"):
        merge.site_position(10, 3)


def test_missing_sites_filled_with_mean_of_present_and_counted():
    v = _sites(9)
    present = [1, 2, 3, 4, 6, 7, 8]  # 5 and 9 missing (a 7-site well)
    out, n_missing = merge.merge_well(present, v[np.array(present) - 1], side=3)
    assert n_missing == 2
    grid = out.reshape(3, 3, -1)
    fill = v[np.array(present) - 1].mean(axis=0)
    np.testing.assert_allclose(grid[1, 1], fill)
    np.testing.assert_allclose(grid[2, 2], fill)
    np.testing.assert_allclose(grid[0, 0], v[0])
    with pytest.raises(ValueError, match="missing='error'"):
        merge.merge_well(present, v[np.array(present) - 1], side=3, missing="error")


def test_mean_mode_is_mean_of_present_sites():
    v = _sites(16)
    out, n = merge.merge_well(list(range(1, 17)), v, side=4, mode="mean")
    np.testing.assert_allclose(out, v.mean(axis=0))
    assert n == 0


def test_duplicate_site_and_bad_site_labels():
    with pytest.raises(ValueError, match="duplicated"):
        merge.merge_well([1, 1], _sites(2), side=3)
    assert merge.parse_site("f07") == 7 and merge.parse_site("07") == 7 and merge.parse_site(np.int64(3)) == 3
    with pytest.raises(ValueError, match="Metadata_Site"):
        merge.parse_site("x1")


def test_merge_sites_table_mixed_layouts():
    rows, feats = [], []
    rng = np.random.default_rng(2)
    for plate, n in (("P9", 9), ("P16", 16)):
        for well in ("A01", "B02"):
            for site in range(1, n + 1):
                if (plate, well, site) == ("P9", "B02", 5):
                    continue  # one missing site
                rows.append((plate, well, site))
                feats.append(rng.normal(size=4))
    index = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
    feats = np.array(feats)
    wells, stats = merge.merge_sites(index, feats, prefix="fluo_")
    assert list(wells["Metadata_Plate"]) == ["P16", "P16", "P9", "P9"]
    assert wells.shape[1] == 2 + 9 * 4
    assert wells.columns[2] == "fluo_p0_0000" and wells.columns[-1] == "fluo_p8_0003"
    assert stats["sites_per_well"] == {"P16": 16, "P9": 9}
    assert stats["wells_with_missing_sites"] == 1
    assert stats["sites_present_histogram"] == {8: 1, 9: 1, 16: 2}
    # P16/A01 equals merge_well on its own sites.
    sel = ((index["Metadata_Plate"] == "P16") & (index["Metadata_Well"] == "A01")).to_numpy()
    ref, _ = merge.merge_well(list(index.loc[sel, "Metadata_Site"]), feats[sel], side=4)
    np.testing.assert_allclose(wells.iloc[0, 2:].to_numpy(dtype=float), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="Metadata_Site"):
        merge.merge_sites(index.drop(columns="Metadata_Site"), feats)
