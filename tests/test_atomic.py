"""Atomic writes end with the mode a plain open() gives under the current umask (shared filesystems)."""

import os
import stat

import numpy as np
import pytest

from dinov2_cell.atomic import atomic_path, current_umask, write_text


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as f:
            f.write("x")
        written = write_text(tmp_path / "atomic.txt", "x")
        with atomic_path(tmp_path / "arr.npy", suffix="") as tmp:
            np.save(tmp, np.zeros(3))
    finally:
        os.umask(old)
    expected = stat.S_IMODE(os.stat(plain).st_mode)
    assert expected == 0o666 & ~mask
    for path in (written, tmp_path / "arr.npy"):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left behind
