"""Optional monitoring during training: a kNN probe of the teacher, and TensorBoard scalars (both off by default).

Config block ``monitoring`` (``configs/cell_default_config.yaml``):

* ``knn_probe_period``: after the first iteration, every N iterations and after the last, the teacher embeds a fixed
  set of wells and a kNN scores them (:func:`knn_accuracy`): each compound well is assigned the compound of its
  nearest well (cosine) on another plate of the same cell line, DMSO left out; the score is the fraction assigned
  correctly, averaged over the cell lines with two plates or more. On up to 5 plates per cell line with equal wells
  per plate that is the within-line score of ``knn_wells`` (leave-one-plate-out folds). The score goes into
  ``training_metrics.json`` (``probe_knn_accuracy``, ``probe_iteration``) and the log (``probe [i]: kNN accuracy
  ... %``), where ``python -m dinov2_cell.report RUN_DIR`` plots it. 0 = off.
* The wells: ``knn_probe_wells_per_plate`` well positions, evenly spaced over the positions every plate has (the
  same positions on every plate, so a compound has one replicate per plate on CPJUMP1's shared plate map), the first
  ``knn_probe_sites_per_well`` sites of each, the whole site resized to the global-crop size without augmentation;
  a well profile is the mean over its sites of CLS + mean patch token (the profiles' site features). They are chosen
  once, at the first probe, and never change. They come from ``knn_probe_dataset_path`` (a dataset string like
  ``train.dataset_path``, e.g. plates held out of training) or, when empty, from the training dataset itself: the
  kNN then holds out plates from the classifier, not images from the SSL training.
* ``knn_probe_normalize``: per-plate normalisation against DMSO before the kNN (as ``knn_wells --normalize``).
* ``tensorboard``: every value written to ``training_metrics.json`` is also a TensorBoard scalar (tag = the meter's
  name) under ``OUTPUT_DIR/tensorboard``. Needs the ``tensorboard`` package; a run that asks for it without the
  package stops before training with an error that says how to install it.

Like the health diagnostics, the probe draws no random number and changes no weight, centre or generator: a run
with it trains exactly as one without it (tested). On multi-GPU runs every rank embeds the probe wells (the FSDP
teacher needs all ranks for its forward pass); the main process writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("dinov2")

PROBE_CHUNK = 64
KEY_ITERATION = "probe_iteration"
KEY_ACCURACY = "probe_knn_accuracy"
KEY_SECONDS = "probe_seconds"


def _settings(cfg) -> dict:
    m = cfg.get("monitoring", None)
    get = (lambda k, d: m.get(k, d)) if m is not None else (lambda k, d: d)  # noqa: E731
    out = {
        "period": int(get("knn_probe_period", 0) or 0),
        "dataset_path": str(get("knn_probe_dataset_path", "") or ""),
        "wells_per_plate": int(get("knn_probe_wells_per_plate", 64)),
        "sites_per_well": int(get("knn_probe_sites_per_well", 1)),
        "normalize": str(get("knn_probe_normalize", "none")),
        "tensorboard": bool(get("tensorboard", False)),
    }
    if out["period"] < 0 or out["wells_per_plate"] < 1 or out["sites_per_well"] < 1:
        raise ValueError(
            "monitoring.knn_probe_period must be >= 0 (0 = off), monitoring.knn_probe_wells_per_plate and "
            f"monitoring.knn_probe_sites_per_well >= 1; got {out['period']}, {out['wells_per_plate']}, "
            f"{out['sites_per_well']}"
        )
    return out


def select_probe_sites(samples, wells_per_plate: int, sites_per_well: int) -> tuple[np.ndarray, list]:
    """The probe's dataset indices and their (plate, well) keys.

    Args:
        samples: the dataset's sample table (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``), one row per
            dataset index.
        wells_per_plate: well positions kept (evenly spaced over the positions every plate has, sorted).
        sites_per_well: first sites (by site number) of each kept well.

    Returns:
        (dataset indices, the (plate, well) of each), sorted by plate, well and site.
    """
    from dinov2_cell.columns import PLATE, SITE, WELL

    s = samples[[PLATE, WELL, SITE]].reset_index(drop=True)
    wells_by_plate = s.groupby(PLATE)[WELL].agg(lambda w: set(map(str, w)))
    common = sorted(set.intersection(*wells_by_plate.tolist())) if len(wells_by_plate) else []
    if not common:
        return np.empty(0, dtype=np.int64), []
    pick = np.unique(np.linspace(0, len(common) - 1, min(wells_per_plate, len(common))).round().astype(int))
    keep = s[s[WELL].astype(str).isin({common[i] for i in pick})]
    keep = keep.sort_values([PLATE, WELL, SITE], kind="stable").groupby([PLATE, WELL], sort=False).head(sites_per_well)
    return keep.index.to_numpy(np.int64), list(zip(keep[PLATE].astype(str), keep[WELL].astype(str)))


def knn_accuracy(x: np.ndarray, labels: np.ndarray, plates: np.ndarray, lines: np.ndarray) -> float:
    """Leave-one-plate-out 1-NN (cosine) label accuracy within each cell line, averaged over the cell lines.

    Args:
        x: (n, D) well profiles (controls already removed).
        labels: (n,) compounds.
        plates: (n,) plate of each well.
        lines: (n,) cell line of each well.

    Returns:
        The mean over cell lines with >= 2 plates of the fraction of wells whose nearest well on another plate of
        their line has their label; NaN when no line has two plates.
    """
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norm > 0, norm, 1.0)
    scores = []
    for line in sorted(set(lines)):
        m = lines == line
        if len(set(plates[m])) < 2:
            continue
        sim = xn[m] @ xn[m].T
        sim[plates[m][:, None] == plates[m][None, :]] = -np.inf  # neighbours only on other plates
        scores.append(float(np.mean(labels[m][np.argmax(sim, axis=1)] == labels[m])))
    return float(np.mean(scores)) if scores else float("nan")


@contextlib.contextmanager
def preserved_random_state():
    """Restore Python's, numpy's global and torch's (CPU and CUDA) generators on exit.

    The training draws from all of them (upstream's masking from Python's ``random``); the probe's own code draws
    nothing, but what it imports may: importing scikit-learn's neighbours module advanced Python's global generator
    on this project's install, which changed every later loss of a run (caught by the probe-on/probe-off test when
    the probe scored with scikit-learn).
    """
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


class KnnProbe:
    """The kNN probe of a training run (see the module docstring).

    Args:
        cfg: the merged config (``monitoring.*``, ``crops.global_crops_size``, ``optim``, ``train``).
        model: the meta-architecture being trained (its teacher backbone is read at probe time).
        dataset: the training dataset (the probe's source unless ``monitoring.knn_probe_dataset_path`` is set).
    """

    def __init__(self, cfg, model, dataset):
        s = _settings(cfg)
        self.period = s["period"]
        self.cfg, self.model, self.settings = cfg, model, s
        self.max_iter = int(cfg.optim.epochs) * int(cfg.train.OFFICIAL_EPOCH_LENGTH)
        self.seconds = 0.0
        self.n_probes = 0
        self._images = None
        self._table = None
        if self.period > 0:
            self.dataset = self._probe_dataset(dataset)
            self._check_labels()

    def _probe_dataset(self, training_dataset):
        if not self.settings["dataset_path"]:
            return training_dataset
        from dinov2.data import make_dataset

        from dinov2_cell.data.registry import discard_target
        from dinov2_cell.plugin import install

        install()
        return make_dataset(dataset_str=self.settings["dataset_path"], transform=None, target_transform=discard_target)

    def _check_labels(self) -> None:
        """Fails before training when the probe wells cannot be scored (no labels, too few plates)."""
        from dinov2_cell.columns import BROAD, CELL_LINE, PLATE, WELL

        if not hasattr(self.dataset, "site_metadata") or not hasattr(self.dataset, "get_image"):
            raise TypeError(
                f"the kNN probe needs a CPJUMP1-like dataset (site_metadata, get_image), got "
                f"{type(self.dataset).__name__}; set monitoring.knn_probe_period=0"
            )
        meta = self.dataset.site_metadata()
        idx, keys = select_probe_sites(meta, self.settings["wells_per_plate"], self.settings["sites_per_well"])
        if len(idx) == 0:
            raise ValueError("the kNN probe found no well position common to every plate of its dataset")
        wells = meta.iloc[idx].drop_duplicates([PLATE, WELL])
        lines = wells.groupby(PLATE)[CELL_LINE].first().astype(str) if CELL_LINE in wells else None
        if lines is None or BROAD not in wells or (lines.isin(["", "nan"])).any():
            raise ValueError(
                "the kNN probe needs compound and cell-line metadata for its plates (CPJUMP1 compound plates); "
                "set monitoring.knn_probe_dataset_path to such plates or monitoring.knn_probe_period=0"
            )
        if lines.value_counts().max() < 2:
            raise ValueError(
                f"the kNN probe's plate-wise folds need >= 2 plates of one cell line; its plates: {lines.to_dict()} "
                "(monitoring.knn_probe_dataset_path)"
            )
        self._index, self._keys, self._meta = idx, keys, meta

    def due(self, iteration: int) -> bool:
        """Whether the probe runs after ``iteration``: the first (a baseline), every ``period``-th (counted from 1,
        as the evaluation checkpoints) and the last."""
        if self.period <= 0:
            return False
        return iteration == 0 or (iteration + 1) % self.period == 0 or iteration == self.max_iter - 1

    def _load(self) -> None:
        t0 = time.perf_counter()
        size = int(self.cfg.crops.global_crops_size)
        images = []
        for i in self._index:
            x = torch.as_tensor(self.dataset.get_image(int(i)), dtype=torch.float32)[None]
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            images.append(x)
        self._images = torch.cat(images)
        logger.info(
            "kNN probe: %d sites of %d wells on %d plates, every %d iterations (read in %.2f s)",
            len(self._index),
            len(set(self._keys)),
            len({p for p, _ in self._keys}),
            self.period,
            time.perf_counter() - t0,
        )

    @torch.no_grad()
    def well_profiles(self):
        """The probe wells' profiles with the current teacher: a table with the Metadata columns and features."""
        import pandas as pd

        from dinov2_cell.columns import PLATE, WELL

        if self._images is None:
            self._load()
        backbone = self.model.teacher.backbone
        device = next(backbone.parameters()).device
        feats = []
        for chunk in self._images.split(PROBE_CHUNK):
            out = backbone(chunk.to(device), is_training=True)
            feats.append(torch.cat([out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(1)], 1).float().cpu())
        x = torch.cat(feats).numpy().astype(np.float64)
        sites = pd.DataFrame(x, columns=[f"f{j:04d}" for j in range(x.shape[1])])
        sites[PLATE] = [p for p, _ in self._keys]
        sites[WELL] = [w for _, w in self._keys]
        wells = sites.groupby([PLATE, WELL], sort=True).mean().reset_index()
        meta_cols = [c for c in self._meta.columns if c.startswith("Metadata_") and c not in ("Metadata_Site",)]
        meta = self._meta[meta_cols].drop_duplicates([PLATE, WELL])
        return meta.merge(wells, on=[PLATE, WELL], how="inner")

    def compute(self, iteration: int) -> dict[str, float]:
        """The probe's values after ``iteration``.

        Args:
            iteration: the iteration that just ran.

        Returns:
            ``{probe_iteration, probe_knn_accuracy, probe_seconds}``.
        """
        with preserved_random_state():
            from dinov2_cell.columns import BROAD, CELL_LINE, PLATE
            from dinov2_cell.eval.postprocess import PostProcess
            from dinov2_cell.profiles.io import feature_columns, is_control

            if self._images is None:
                self._load()  # once; not counted in the per-probe seconds
            t0 = time.perf_counter()
            df = self.well_profiles()
            feats = feature_columns(df)
            df = PostProcess(self.settings["normalize"], False, None)(df, feats).reset_index(drop=True)
            df = df[~is_control(df)]
            accuracy = knn_accuracy(
                df[feats].to_numpy(np.float64),
                df[BROAD].astype(str).to_numpy(),
                df[PLATE].astype(str).to_numpy(),
                df[CELL_LINE].astype(str).to_numpy(),
            )
            seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.n_probes += 1
        return {KEY_ITERATION: float(iteration), KEY_ACCURACY: accuracy, KEY_SECONDS: seconds}


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        ImportError: the ``tensorboard`` package is missing (the message says how to install it or turn it off).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(
            f"monitoring.tensorboard=true needs the tensorboard package ({e}); install it with "
            "`pip install tensorboard` or set monitoring.tensorboard=false"
        ) from None
    return SummaryWriter


class ScalarWriter:
    """TensorBoard scalars of every logged meter (main process only), under ``OUTPUT_DIR/tensorboard``.

    Args:
        log_dir: the folder.

    Raises:
        ImportError: the ``tensorboard`` package is missing (the message says how to install it or turn it off).
    """

    def __init__(self, log_dir: str):
        self.writer = summary_writer_class()(log_dir=log_dir)
        self.log_dir = log_dir

    def write(self, iteration: int, values: dict) -> None:
        """One scalar per value at ``iteration``.

        Args:
            iteration: the step.
            values: name -> number.
        """
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), int(iteration))
        self.writer.flush()


def _monitoring_class(base):
    class MonitoringMetricLogger(base):
        """``base`` (upstream's ``MetricLogger`` or the health logger) plus the kNN probe and TensorBoard scalars."""

        def __init__(self, *args, knn_probe: KnnProbe | None, scalar_writer=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.knn_probe = knn_probe
            self.scalar_writer = scalar_writer

        def log_every(self, iterable, print_freq, header=None, n_iterations=None, start_iteration=0):
            i = start_iteration
            for obj in super().log_every(iterable, print_freq, header, n_iterations, start_iteration):
                yield obj
                # the step of iteration i has run; the base loggers (health, then upstream's dump) follow
                if self.knn_probe is not None and self.knn_probe.due(i):
                    from dinov2.logging import SmoothedValue

                    values = self.knn_probe.compute(i)
                    for k, v in values.items():
                        if k not in self.meters:
                            self.add_meter(k, SmoothedValue(window_size=1, fmt="{value:.4f}"))
                        self.meters[k].update(v)
                    logger.info(
                        "probe [%d]: kNN accuracy %.1f %% (%.2f s)", i, 100 * values[KEY_ACCURACY], values[KEY_SECONDS]
                    )
                i += 1
            if self.knn_probe is not None and self.knn_probe.n_probes:
                logger.info(
                    "kNN probe: %d probes, %.2f s each on average",
                    self.knn_probe.n_probes,
                    self.knn_probe.seconds / self.knn_probe.n_probes,
                )

        def dump_in_output_file(self, iteration, iter_time, data_time):
            super().dump_in_output_file(iteration, iter_time, data_time)
            if self.scalar_writer is not None:
                values = {"iter_time": iter_time, "data_time": data_time}
                values.update({k: m.median for k, m in self.meters.items()})
                self.scalar_writer.write(iteration, values)

    return MonitoringMetricLogger


def metric_logger(cfg, model, dataset, base_factory=None):
    """Wrap the run's ``MetricLogger`` factory with the kNN probe and TensorBoard scalars when the config asks.

    Checks the settings (and builds the TensorBoard writer) now, before training starts.

    Args:
        cfg: the merged config.
        model: the meta-architecture ``do_train`` will train.
        dataset: the training dataset.
        base_factory: the factory to extend (:func:`dinov2_cell.train.health.metric_logger`'s), or None for
            upstream's ``MetricLogger``.

    Returns:
        ``base_factory`` unchanged when both are off, else a factory of a subclass of its class.
    """
    s = _settings(cfg)
    if s["period"] <= 0 and not s["tensorboard"]:
        return base_factory
    from dinov2.distributed import is_main_process
    from dinov2.logging import MetricLogger

    knn_probe = KnnProbe(cfg, model, dataset) if s["period"] > 0 else None
    writer = None
    if s["tensorboard"]:
        summary_writer_class()  # every rank fails alike, before training, when the package is missing
        log_dir = os.path.join(cfg.train.output_dir, "tensorboard")
        writer = ScalarWriter(log_dir) if is_main_process() else None
        logger.info("TensorBoard scalars under %s", log_dir)
    if isinstance(base_factory, partial):
        base, kwargs = base_factory.func, dict(base_factory.keywords)
    else:
        base, kwargs = (base_factory or MetricLogger), {}
    return partial(_monitoring_class(base), knn_probe=knn_probe, scalar_writer=writer, **kwargs)
