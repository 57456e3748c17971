"""Well-level profiles: site merging, cross-plate alignment, profile I/O, submission CSV and a classical baseline.

Modules:

* :mod:`dinov2_cell.profiles.io` -- the profile table format (``Metadata_*`` columns + numeric features), validation,
  atomic Parquet/CSV writes, the challenge submission CSV.
* :mod:`dinov2_cell.profiles.merge` -- site vectors -> well vectors (grid interpolation 4x4 -> 3x3, concat or mean).
* :mod:`dinov2_cell.profiles.align` -- cross-plate alignment toward the mean of the same well position.
* :mod:`dinov2_cell.profiles.baseline` -- hand-crafted intensity/texture features (stand-in for CellProfiler).

Nothing is imported here so that ``import dinov2_cell.profiles.io`` stays light (no torch).
"""
