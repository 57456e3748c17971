"""Synthetic CPJUMP1-like plates in the Cell Painting Gallery layout, for tests, benchmarks and the CPU demo.

Usage::

    python -m dinov2_cell.synthetic --out /tmp/synth       # 4 plates (2 U2OS, 2 A549), 48 wells, 9 sites, 96 px
    python -m dinov2_cell.synthetic --out /tmp/s --plates BR00116991,BR00116995 --wells all --size 128 --illum
    python -m dinov2_cell.synthetic --out /tmp/s --num-plates 2 --num-workers 4

Three modules: :mod:`~dinov2_cell.synthetic.biology` (which plates and wells, cell-line baselines, compound
effects), :mod:`~dinov2_cell.synthetic.rendering` (one site's cells, nuisance and camera noise) and
:mod:`~dinov2_cell.synthetic.writing` (TIFFs, LoadData CSVs, illumination functions, truth tables: the layout is in
its docstring). The per-site true cell count is in ``OUT/synthetic_sites.csv`` (column ``n_cells``).

This package is test and demo infrastructure; the production data layer (:mod:`dinov2_cell.data`) never imports it.
"""

from dinov2_cell.synthetic.biology import (
    DEFAULT_WELLS,
    REAL_SIXTEEN_SITE_PLATES,
    compound_effect,
    default_plates,
    select_wells,
)
from dinov2_cell.synthetic.rendering import render_site
from dinov2_cell.synthetic.writing import SyntheticPlates, generate_plates

__all__ = [
    "DEFAULT_WELLS",
    "REAL_SIXTEEN_SITE_PLATES",
    "SyntheticPlates",
    "compound_effect",
    "default_plates",
    "generate_plates",
    "render_site",
    "select_wells",
]
