"""Well-level profiles: the profiling driver and its featurisers, site merging, alignment, I/O and the submission CSV.

Modules:

* :mod:`dinov2_cell.profiles.driver` -- the per-plate loop every profile run goes through (run-config guard,
  resumable atomic parts, metadata, merge) taking a *featuriser*.
* :mod:`dinov2_cell.profiles.sites` -- where a plate's sites come from (:class:`~.sites.PlateSource`) and per-site
  work in DataLoader workers.
* :mod:`dinov2_cell.profiles.ssl` -- the SSL teacher featuriser and the options of an embedding run.
* :mod:`dinov2_cell.profiles.cellprofiler` -- CellProfiler-style features (segmentation, per-cell measurements, the
  pycytominer recipe).
* :mod:`dinov2_cell.profiles.baseline` -- hand-crafted intensity/texture features (a classical stand-in).
* :mod:`dinov2_cell.profiles.io` -- the profile table format (``Metadata_*`` columns + numeric features), validation,
  atomic Parquet/CSV/JSON writes.
* :mod:`dinov2_cell.profiles.parts` -- per-plate parts, the run config, well metadata.
* :mod:`dinov2_cell.profiles.merge` -- site vectors -> well vectors (grid interpolation 4x4 -> 3x3, concat or mean).
* :mod:`dinov2_cell.profiles.align` -- cross-plate alignment toward the mean of the same well position.
* :mod:`dinov2_cell.profiles.submission` -- the challenge submission CSV (writer and check).

Nothing is imported here, and no module of this package imports torch at import time, so profile tables can be read,
checked and scored on a machine without torch.
"""
