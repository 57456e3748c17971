"""Well-level profiles: the profiling driver and its featurisers, site merging, alignment, I/O and the submission CSV.

Modules:

* :mod:`dinov2_cell.profiles.driver` -- the per-plate loop every profile run goes through (checks before writing,
  run-config guard, resumable atomic parts, metadata, merge) taking a *featuriser*.
* :mod:`dinov2_cell.profiles.sites` -- where a plate's sites come from (:class:`~.sites.PlateSource`) and per-site
  work in DataLoader workers.
* :mod:`dinov2_cell.profiles.ssl` -- the SSL teacher featuriser and the options of an embedding run.
* :mod:`dinov2_cell.profiles.cellprofiler` -- CellProfiler-style features (segmentation, per-cell measurements, the
  pycytominer recipe): the command line; ``cellprofiler_measure``, ``cellprofiler_wells`` and
  ``cellprofiler_featuriser`` hold the measurements, the per-well assembly and the featuriser.
* :mod:`dinov2_cell.profiles.baseline` -- hand-crafted intensity/texture features (a classical stand-in).
* :mod:`dinov2_cell.profiles.io` -- the profile table format (``Metadata_*`` columns + numeric features), validation,
  atomic Parquet/CSV/JSON writes.
* :mod:`dinov2_cell.profiles.run_folder` -- a run's output folder (:class:`~.run_folder.RunFolder`: layout, run
  config, per-plate parts, merge, submission files).
* :mod:`dinov2_cell.profiles.parts` -- per-well metadata of a run.
* :mod:`dinov2_cell.profiles.merge` -- site vectors -> well vectors (grid interpolation 4x4 -> 3x3, concat or mean).
* :mod:`dinov2_cell.profiles.align` -- cross-plate alignment toward the mean of the same well position.
* :mod:`dinov2_cell.profiles.submission` -- the challenge submission CSV (writer and check).

Nothing is imported here, and no module of this package imports torch at import time, so profile tables can be read,
checked and scored on a machine without torch.
"""
