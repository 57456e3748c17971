"""Site -> well merging: the parts of the contract the main merge tests leave open, each worked out by hand.

Boundaries of the site layouts, the serpentine site order end to end, ``mode``/``order``/``missing`` passed through
``merge_sites``, its column order, dtypes and stats, the missing-site warning, and every error message. Written
after a mutation-testing run of ``dinov2_cell/profiles/merge.py`` (docs/testing.md) left these unchecked.
"""

import logging

import numpy as np
import pandas as pd
import pytest

from dinov2_cell.profiles import merge


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture()
def warnings_of_profiles():
    handler = _Records()
    log = logging.getLogger("dinov2_cell.profiles")
    log.addHandler(handler)
    yield handler.messages
    log.removeHandler(handler)


def _index(rows):
    return pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"])


def test_layout_boundaries_and_messages():
    assert [merge.infer_sites_per_well(m) for m in (1, 9, 10, 16)] == [9, 9, 16, 16]
    with pytest.raises(ValueError, match="site number 17 > 16: only 3x3 and 4x4 site grids"):
        merge.infer_sites_per_well(17)
    assert merge.grid_side(9) == 3 and merge.grid_side(16) == 4
    with pytest.raises(ValueError, match=r"sites per well must be 9 \(3x3\) or 16 \(4x4\), got 12"):
        merge.grid_side(12)
    assert merge.parse_site("f07") == 7 and merge.parse_site(np.int64(3)) == 3
    with pytest.raises(ValueError, match="site numbers start at 1, got 'f00'"):
        merge.parse_site("f00")
    with pytest.raises(ValueError, match=r"cannot parse site 'x1'"):
        merge.parse_site("x1")


def test_snake_order_by_hand():
    # odd rows run right to left: 3x3 sites 4 5 6 sit at columns 2 1 0 of row 1; rows 0 and 2 are row-major
    pos3 = [merge.site_position(s, 3, "snake") for s in range(1, 10)]
    assert pos3 == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0), (2, 0), (2, 1), (2, 2)]
    pos4 = [merge.site_position(s, 4, "snake") for s in range(1, 17)]
    assert pos4[4:8] == [(1, 3), (1, 2), (1, 1), (1, 0)] and pos4[12:16] == [(3, 3), (3, 2), (3, 1), (3, 0)]
    assert pos4[8:12] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    with pytest.raises(ValueError, match="unknown site order 'diagonal'; choose from"):
        merge.site_position(1, 3, "diagonal")
    with pytest.raises(ValueError, match=r"site 10 outside a 3x3 grid \(1\.\.9\)"):
        merge.site_position(10, 3)


def test_resample_matrix_small_cases_and_errors():
    np.testing.assert_array_equal(merge.linear_resample_matrix(2, 3), [[1, 0], [0.5, 0.5], [0, 1]])
    np.testing.assert_array_equal(merge.linear_resample_matrix(3, 2), [[1, 0, 0], [0, 0, 1]])
    for n_in, n_out in ((1, 3), (3, 1)):
        with pytest.raises(ValueError, match=f"at least 2 nodes per side, got {n_in} -> {n_out}"):
            merge.linear_resample_matrix(n_in, n_out)


def test_interpolate_grid_copies_and_refuses_non_square():
    grid = np.arange(18.0).reshape(3, 3, 2)
    out = merge.interpolate_grid(grid)
    np.testing.assert_array_equal(out, grid)
    assert not np.shares_memory(out, grid)
    with pytest.raises(ValueError, match=r"site grid must be square, got \(3, 4\)"):
        merge.interpolate_grid(np.zeros((3, 4, 2)))


def test_well_grid_defaults_single_site_and_errors():
    v = np.array([[1.0, 2.0]])
    grid, n_missing = merge.well_grid([5], v, 3)  # defaults: row-major order, empty positions filled with the mean
    assert n_missing == 8 and (grid == v[0]).all()
    with pytest.raises(ValueError, match="^a well needs at least one site$"):
        merge.well_grid([], np.zeros((0, 2)), 3)
    with pytest.raises(ValueError, match=r"well has 1 of 9 sites \(missing='error'\)"):
        merge.well_grid([5], v, 3, missing="error")
    with pytest.raises(ValueError, match="unknown missing-site policy 'zero'"):
        merge.well_grid([5], v, 3, missing="zero")
    # snake order passed through merge_well: site 4 lands on grid node (1, 2) = concatenation block 5
    feats = np.arange(9.0)[:, None] + 1  # site s has the value s
    out, _ = merge.merge_well(list(range(1, 10)), feats, 3, order="snake")
    assert out.tolist() == [1, 2, 3, 6, 5, 4, 7, 8, 9]


def test_merge_well_options_and_errors():
    feats = np.arange(16.0)[:, None]  # 4x4 row-major: value = 4 * row + col
    out, _ = merge.merge_well(list(range(1, 17)), feats, 4, out_side=2)  # 4x4 -> 2x2 keeps only the corners
    assert out.tolist() == [0.0, 3.0, 12.0, 15.0]
    with pytest.raises(ValueError, match=r"unknown site merge mode 'max'; choose from \('concat', 'mean'\)"):
        merge.merge_well([1], feats[:1], 3, mode="max")
    with pytest.raises(ValueError, match=r"duplicated site numbers in one well: \[1, 1\]"):
        merge.merge_well([1, 1], feats[:2], 3, mode="mean")
    out, n = merge.merge_well([1, 2, 5], feats[[0, 1, 4]], 3, mode="mean")
    assert out.tolist() == [5 / 3] and n == 0
    assert merge.well_feature_names(2, "mean") == ["0000", "0001"]  # no prefix by default
    assert merge.well_feature_names(1, "concat", "bf_", out_side=2) == [
        "bf_p0_0000",
        "bf_p1_0000",
        "bf_p2_0000",
        "bf_p3_0000",
    ]


def test_float32_sites_are_averaged_in_float64():
    # in float32, 1e8 + 1 rounds to 1e8, so a float32 mean of (1e8, 1, -1e8) is 0 instead of 1/3
    feats = np.array([[1e8], [1.0], [-1e8]], dtype=np.float32)
    out, _ = merge.merge_well([1, 2, 3], feats, 3, mode="mean")
    assert out[0] == pytest.approx(1 / 3, rel=1e-12)
    grid, n_missing = merge.well_grid([1, 2, 3], feats, 3)  # the six empty positions get that mean
    assert n_missing == 6 and grid[2, 2, 0] == pytest.approx(1 / 3, rel=1e-12)


def test_merge_sites_mean_mode_snake_order_and_stats(warnings_of_profiles):
    rows, feats = [], []
    for well, sites in (("A01", range(1, 9)), ("A02", range(2, 10)), ("A03", range(1, 10))):  # 8, 8, 9 sites
        for s in sites:
            rows.append(("P1", well, f"f{s:02d}"))
            feats.append([10.0 * s, 1.0])
    index, feats = _index(rows), np.array(feats)

    out, stats = merge.merge_sites(index, feats, mode="mean", prefix="fluo_")
    assert list(out.columns) == ["Metadata_Plate", "Metadata_Well", "fluo_0000", "fluo_0001"]
    assert out["Metadata_Well"].tolist() == ["A01", "A02", "A03"] and (out["Metadata_Plate"] == "P1").all()
    assert out["fluo_0000"].tolist() == [45.0, 55.0, 50.0] and out["fluo_0000"].dtype == np.float32
    assert stats == {
        "wells": 3,
        "sites": 25,
        "wells_with_missing_sites": 2,
        "sites_present_histogram": {8: 2, 9: 1},
        "sites_per_well": {"P1": 9},
    }
    assert warnings_of_profiles == [
        "plate(s) P1: 2 of 3 wells have missing sites (sites present: {8: 2, 9: 1}); mean of present"
    ]

    warnings_of_profiles.clear()
    out, stats = merge.merge_sites(index, feats, order="snake")  # concat: 9 blocks of 2, no prefix
    assert list(out.columns[:4]) == ["Metadata_Plate", "Metadata_Well", "p0_0000", "p0_0001"]
    assert out.shape == (3, 2 + 18) and (out.dtypes.iloc[2:] == np.float32).all()
    a03 = out.set_index("Metadata_Well").loc["A03", [f"p{p}_0000" for p in range(9)]].tolist()
    assert a03 == [10, 20, 30, 60, 50, 40, 70, 80, 90]  # serpentine: row 1 holds sites 6 5 4
    a01 = out.set_index("Metadata_Well").loc["A01", [f"p{p}_0000" for p in range(9)]].tolist()
    assert a01[8] == 45.0  # site 9 is missing: the mean of the 8 present sites fills its node
    assert stats["wells_with_missing_sites"] == 2
    assert warnings_of_profiles == [
        "plate(s) P1: 2 of 3 wells have missing sites (sites present: {8: 2, 9: 1}); mean of present sites filled "
        "the empty grid positions"
    ]
    with pytest.raises(ValueError, match=r"well has 8 of 9 sites \(missing='error'\)"):
        merge.merge_sites(index, feats, missing="error")


def test_merge_sites_layouts_counts_and_errors(warnings_of_profiles):
    # two plates: Q2 sorted after P1 in the warning; only the first well of P1 misses a site, the last well is full
    rows = [("P1", "A01", s) for s in range(1, 9)] + [("P1", "B01", s) for s in range(1, 10)]
    rows += [("Q2", "A01", s) for s in range(1, 9)] + [("Q2", "B01", s) for s in range(1, 10)]
    feats = np.ones((len(rows), 1))
    _, stats = merge.merge_sites(_index(rows), feats)
    assert stats["wells_with_missing_sites"] == 2 and stats["sites_per_well"] == {"P1": 9, "Q2": 9}
    assert warnings_of_profiles[0].startswith("plate(s) P1,Q2: 2 of 4 wells have missing sites")

    # an explicit layout: 16 sites per well although only sites 1..9 are present
    out, stats = merge.merge_sites(_index(rows[:17]), feats[:17], sites_per_well=16)
    assert stats["sites_per_well"] == {"P1": 16} and stats["wells_with_missing_sites"] == 2
    _, stats = merge.merge_sites(_index(rows[:17]), feats[:17], sites_per_well=9)  # site 9 fits a 9-site layout
    assert stats["sites_per_well"] == {"P1": 9}
    with pytest.raises(ValueError, match="plate P1: site 12 with sites_per_well=9"):
        merge.merge_sites(_index([("P1", "A01", 12)]), np.ones((1, 1)), sites_per_well=9)
    with pytest.raises(ValueError, match=r"site features \(17, 1, 1\) do not match the site index \(17 rows\)"):
        merge.merge_sites(_index(rows[:17]), np.ones((17, 1, 1)))
    with pytest.raises(ValueError, match="missing column Metadata_Site"):
        merge.merge_sites(_index(rows[:1]).drop(columns="Metadata_Site"), np.ones((1, 1)))

    empty, stats = merge.merge_sites(_index([]), np.zeros((0, 2)))
    assert empty.shape == (0, 2 + 18) and (empty.dtypes.iloc[2:] == np.float32).all()
    assert stats["wells"] == 0 and stats["sites"] == 0
