"""Fixtures for the data-layer tests: tiny synthetic plates written on the fly, and helpers to write raw files."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile

from dinov2_cell.data.names import PHENIX_CHANNELS, phenix_filename
from dinov2_cell.synthetic import generate_plates

U2OS_PLATE = "BR00116995"
A549_PLATE = "BR00116991"


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Two plates (one U2OS, one A549), 6 wells, 4 sites, 32 px, with illumination functions. Read-only."""
    out = tmp_path_factory.mktemp("synth")
    return generate_plates(
        out, plates=[A549_PLATE, U2OS_PLATE], wells=6, sites=4, size=32, seed=0, illum=True, progress=False
    )


@pytest.fixture()
def tiny(tmp_path):
    """One plate, wells A01 + A02 (3 sites each), 16 px, writable (for bad-input tests)."""
    return generate_plates(
        tmp_path / "tiny", plates=[A549_PLATE], wells=["A01", "A02"], sites=3, size=16, seed=1, progress=False
    )


@pytest.fixture()
def copy_of(tmp_path):
    """Copy a read-only fixture tree into tmp_path so a test can damage it."""

    def _copy(src, name="copy"):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy


def write_phenix_plate(folder, wells=("A01",), sites=(1,), channels=tuple(PHENIX_CHANNELS), shape=(8, 8), value=None):
    """Write Phenix-named uint16 TIFFs; ``value(well, site, ch)`` gives each file's constant (default: ch number)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for well in wells:
        r, c = ord(well[0]) - 64, int(well[1:])
        for s in sites:
            for ch in channels:
                v = ch if value is None else value(well, s, ch)
                tifffile.imwrite(folder / phenix_filename(r, c, s, ch), np.full(shape, v, np.uint16))
    return folder


def load_data_csv(sites_csv_rows, path):
    """Write a LoadData CSV from a list of row dicts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(sites_csv_rows).to_csv(path, index=False)
    return path


def tiff_files(root):
    """All TIFF files under root, sorted."""
    return sorted(Path(root).rglob("*.tiff"))


def plate_csv(res, plate):
    """The plain load_data.csv of a plate of a SyntheticPlates result."""
    return Path(res.out_dir) / "load_data_csv" / "2020_11_04_CPJUMP1" / plate / "load_data.csv"


def relpath_map(root):
    """{relative path: bytes} of every file under root (for byte-identity checks)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def h():
    """The helper functions of this module (test modules cannot import a conftest by name)."""
    return SimpleNamespace(
        write_phenix_plate=write_phenix_plate,
        load_data_csv=load_data_csv,
        tiff_files=tiff_files,
        plate_csv=plate_csv,
        relpath_map=relpath_map,
        U2OS_PLATE=U2OS_PLATE,
        A549_PLATE=A549_PLATE,
    )
