"""Reports (PNG figures + a short Markdown page) for any training run and any profiles.

* :mod:`~dinov2_cell.report.training`: loss, health and kNN-probe curves of a training run folder, read from its
  ``training_metrics.json`` and log while the run writes them or after (``python -m dinov2_cell.report RUN_DIR``).
* :mod:`~dinov2_cell.report.evaluation`: the evaluation report of well profiles (``python -m
  dinov2_cell.eval.knn_wells PROFILES --report DIR``): the per-compound table, mAP against -log10 q, kNN per
  train->test combination and PCA embeddings coloured by plate, cell line and target.

The demo (``python -m dinov2_cell.demo``) draws its figures with the same functions. Plotting uses matplotlib's
file-only Agg backend; every file is written atomically.
"""
