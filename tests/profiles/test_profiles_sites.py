"""iterate_sites: unreadable sites raise by default; with a ``skipped`` list they are left out and reported."""

import pytest
import torch

from dinov2_cell.data.errors import DataReadError
from dinov2_cell.profiles.sites import iterate_sites


class FlakySites:
    """Site i is a 1 x 2 x 2 image filled with i; the sites in ``bad`` cannot be read."""

    def __init__(self, n, bad):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def get_image(self, i):
        if i in self.bad:
            raise DataReadError(f"site {i}: failed to read 8192 bytes, got 92", f"/x/{i}.tiff")
        return torch.full((1, 2, 2), float(i))


def _double(image):
    return 2 * image


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_sites_are_left_out_and_reported_in_order(num_workers):
    ds = FlakySites(11, bad=(0, 4, 5, 6, 10))  # batch 2 = sites 4, 5: nothing readable in it
    skipped = []
    batches = list(iterate_sites(ds, _double, 2, num_workers, progress=False, skipped=skipped))
    got = torch.cat(batches)[:, 0, 0, 0].tolist()
    assert got == [2.0 * i for i in (1, 2, 3, 7, 8, 9)]  # readable sites in order, none substituted
    assert [i for i, _ in skipped] == [0, 4, 5, 6, 10]
    assert skipped[0][1] == "site 0: failed to read 8192 bytes, got 92"


def test_unreadable_site_raises_without_a_skipped_list():
    with pytest.raises(DataReadError, match="site 4: failed to read"):
        list(iterate_sites(FlakySites(6, bad=(4,)), _double, 2, 0, progress=False))
    batches = list(iterate_sites(FlakySites(5, bad=()), _double, 2, 0, progress=False))
    assert [len(b) for b in batches] == [2, 2, 1]  # the usual batches when nothing is skipped
