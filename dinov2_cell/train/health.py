"""Training-health diagnostics: is the DINO teacher collapsing?

Every `health.period_iterations` iterations (default: `train.OFFICIAL_EPOCH_LENGTH`; 0 = off) the teacher is run on a
fixed probe set of training sites (the whole site resized to the global-crop size, no augmentation, the same sites
for the whole run) and these are logged into `training_metrics.json` and the console as upstream meters:

- `health_teacher_entropy`: mean per-sample entropy of the teacher's centred/sharpened distribution
  softmax((z - c) / tau_t) (or Sinkhorn-Knopp with `train.centering=sinkhorn_knopp`), with the current centre c and
  teacher temperature tau_t of the training schedule;
- `health_teacher_batch_entropy`: entropy of the probe-set mean of those distributions;
- `health_rankme`: RankMe (Garrido et al. 2023), the exponential of the entropy of the normalised singular values of
  the teacher's CLS embeddings of the probe set (epsilon 1e-7 as in the paper);
- with local aggregation on, `health_la_target_entropy` / `health_la_target_batch_entropy`: the same two entropies
  of the local-aggregation term's targets (the teacher's distributions of v1) as used in training, pooled over every
  iteration since the previous computation;
- each entropy also as a fraction of log K (`..._frac`), and `health_iteration` (the iteration it was computed at).

Reading them: uniform collapse = both entropies ~log K; one-prototype collapse = both ~0; healthy = per-sample low and
batch-mean high. The batch-mean entropy of N distributions cannot exceed log N + the mean per-sample entropy, so the
probe set and the pooled targets are sized well above K^(1/2). A collapsed CLS embedding has RankMe ~1.

The diagnostics never touch the training's random generators, the DINO centre or the weights: a run with them on
trains exactly as one with them off.
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("dinov2")

RANKME_EPS = 1e-7  # Garrido et al. 2023, the epsilon added to the normalised singular values
# Thresholds of `collapse_flags` (fractions of log K; RankMe in dimensions). They flag a run that has clearly failed,
# not one that is merely slow: uniform-collapsed teachers sit at >0.97 log K, one-prototype ones near 0.
UNIFORM_COLLAPSE_FRAC = 0.9
ONE_PROTOTYPE_FRAC = 0.1
RANKME_COLLAPSED = 1.5
PROBE_CHUNK = 64


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of a probability matrix, with 0 log 0 = 0.

    Args:
        probs: (..., K) non-negative rows summing to 1.

    Returns:
        (...,) entropies.
    """
    p = probs.double()
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


def distribution_entropies(probs: torch.Tensor) -> tuple[float, float]:
    """Mean per-sample entropy and entropy of the mean distribution of a batch of distributions.

    Args:
        probs: (N, K) rows summing to 1.

    Returns:
        (mean per-sample entropy, entropy of the row mean), in nats.
    """
    p = probs.double()
    return float(entropy(p).mean()), float(entropy(p.mean(0)))


def rankme(embeddings: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe: exp of the entropy of p_k = sigma_k / ||sigma||_1 + eps over the singular values of the embeddings.

    Args:
        embeddings: (N, D) matrix (not centred, as in the paper).
        eps: the paper's epsilon.

    Returns:
        The effective rank, between ~1 and min(N, D).
    """
    s = torch.linalg.svdvals(embeddings.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def collapse_flags(values: dict) -> list[str]:
    """Names the collapse modes a row of health values shows (empty list: none).

    Args:
        values: a `training_metrics.json` row or the dict `HealthMonitor.compute` returns.

    Returns:
        Messages such as "uniform collapse: teacher per-sample entropy 0.99 log K".
    """
    flags = []
    h = values.get("health_teacher_entropy_frac")
    hb = values.get("health_teacher_batch_entropy_frac")
    rank = values.get("health_rankme")
    if h is not None and h >= UNIFORM_COLLAPSE_FRAC:
        flags.append(f"uniform collapse: teacher per-sample entropy {h:.2f} log K (>= {UNIFORM_COLLAPSE_FRAC})")
    if hb is not None and hb <= ONE_PROTOTYPE_FRAC:
        flags.append(f"one-prototype collapse: teacher batch-mean entropy {hb:.2f} log K (<= {ONE_PROTOTYPE_FRAC})")
    if rank is not None and rank <= RANKME_COLLAPSED:
        flags.append(f"dimensional collapse: RankMe of teacher CLS {rank:.2f} (<= {RANKME_COLLAPSED})")
    la = values.get("health_la_target_entropy_frac")
    if la is not None and la >= UNIFORM_COLLAPSE_FRAC:
        flags.append(f"uniform collapse of the local-aggregation targets: entropy {la:.2f} log K")
    return flags


def probe_indices(n_samples: int, n_probe: int) -> np.ndarray:
    """Evenly spaced sample indices (deterministic, no random generator): every plate and well range is visited."""
    if n_samples <= 0:
        raise ValueError("the training dataset is empty: no probe sites for the health diagnostics")
    return np.unique(np.linspace(0, n_samples - 1, min(n_probe, n_samples)).round().astype(np.int64))


def load_probe_images(dataset, n_probe: int, size: int) -> torch.Tensor:
    """The probe set: whole sites (no augmentation) resized to the global-crop size.

    Args:
        dataset: a dataset with `get_image(index)` returning a C x H x W float tensor (the CPJUMP1 dataset).
        n_probe: number of sites.
        size: side in pixels (`crops.global_crops_size`).

    Returns:
        (n, C, size, size) float32 tensor.
    """
    if not hasattr(dataset, "get_image"):
        raise TypeError(
            f"health diagnostics need a dataset with get_image(index) (got {type(dataset).__name__}); "
            "set health.period_iterations=0"
        )
    images = []
    for i in probe_indices(len(dataset), n_probe):
        x = torch.as_tensor(dataset.get_image(int(i)), dtype=torch.float32)[None]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images.append(x)
    return torch.cat(images)


class HealthMonitor:
    """Computes the health values of a `SSLMetaArch` (or subclass) during upstream's `do_train`.

    Args:
        cfg: the merged config (`health.*`, `train.*`, `teacher.*`, `crops.*`).
        model: the meta-architecture being trained (teacher read at compute time).
        dataset: the training dataset (probe sites are read from it once, lazily).
    """

    def __init__(self, cfg, model, dataset):
        hcfg = cfg.get("health", None)
        period = hcfg.get("period_iterations", None) if hcfg is not None else None
        self.period = int(cfg.train.OFFICIAL_EPOCH_LENGTH if period is None else period)
        self.n_probe = int(hcfg.get("probe_sites", 256)) if hcfg is not None else 256
        if self.period < 0 or self.n_probe < 2:
            raise ValueError(
                f"health.period_iterations must be >= 0 and health.probe_sites >= 2, got {self.period}, {self.n_probe}"
            )
        self.cfg, self.model, self.dataset = cfg, model, dataset
        self.centering = str(cfg.train.centering)
        self.max_iter = int(cfg.optim.epochs) * int(cfg.train.OFFICIAL_EPOCH_LENGTH)
        self._probe = None
        self._teacher_temp = None
        self._la_entropy_sum, self._la_count, self._la_prob_sum = 0.0, 0, None
        self.seconds = 0.0

    def due(self, iteration: int) -> bool:
        """Whether values are computed after `iteration` (the first, every `period`-th and the last)."""
        if self.period <= 0:
            return False
        return iteration % self.period == 0 or iteration == self.max_iter - 1

    def teacher_temp(self, iteration: int) -> float:
        """The teacher temperature the training uses at `iteration` (upstream's own schedule)."""
        if self._teacher_temp is None:
            from dinov2_cell.plugin import import_upstream

            self._teacher_temp = import_upstream("dinov2.train.train").build_schedulers(self.cfg)[3]
        return float(self._teacher_temp[min(iteration, self.max_iter - 1)])

    def observe_step(self) -> None:
        """Pools the local-aggregation targets of the step that just ran (when the model exposes them)."""
        if self.period <= 0:
            return
        t0 = time.perf_counter()
        targets = getattr(self.model, "last_local_aggregation_targets", None)
        if targets is not None:
            p = targets.detach().double().cpu()
            self._la_entropy_sum += float(entropy(p).sum())
            self._la_count += p.shape[0]
            s = p.sum(0)
            self._la_prob_sum = s if self._la_prob_sum is None else self._la_prob_sum + s
            self.model.last_local_aggregation_targets = None
        self.seconds += time.perf_counter() - t0

    @torch.no_grad()
    def teacher_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher CLS embeddings and DINO-head logits of `images`, in chunks."""
        teacher = self.model.teacher
        device = next(teacher.parameters()).device
        cls_list, logit_list = [], []
        for chunk in images.split(PROBE_CHUNK):
            out = teacher.backbone(chunk.to(device), is_training=True)
            cls = out["x_norm_clstoken"]
            cls_list.append(cls.float().cpu())
            logit_list.append(teacher.dino_head(cls).float().cpu())
        return torch.cat(cls_list), torch.cat(logit_list)

    def teacher_probabilities(self, logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """The centred/sharpened teacher distribution, with the training's current centre (left unchanged)."""
        loss = self.model.dino_loss
        if self.centering == "sinkhorn_knopp":
            return loss.sinkhorn_knopp_teacher(logits.to(loss.center.device), teacher_temp).float().cpu()
        center = loss.center.detach().float().cpu()
        return torch.softmax((logits - center) / teacher_temp, dim=-1)

    def compute(self, iteration: int) -> dict[str, float]:
        """The health values after `iteration` (see the module docstring for the keys).

        Args:
            iteration: the iteration that just ran.
        """
        t0 = time.perf_counter()
        if self._probe is None:
            self._probe = load_probe_images(self.dataset, self.n_probe, int(self.cfg.crops.global_crops_size))
        cls, logits = self.teacher_outputs(self._probe)
        probs = self.teacher_probabilities(logits, self.teacher_temp(iteration))
        log_k = math.log(probs.shape[1])
        h, hb = distribution_entropies(probs)
        values = {
            "health_iteration": float(iteration),
            "health_teacher_entropy": h,
            "health_teacher_entropy_frac": h / log_k,
            "health_teacher_batch_entropy": hb,
            "health_teacher_batch_entropy_frac": hb / log_k,
            "health_rankme": rankme(cls),
        }
        if self._la_count:
            la_h = self._la_entropy_sum / self._la_count
            la_hb = float(entropy(self._la_prob_sum / self._la_count))
            values.update(
                health_la_target_entropy=la_h,
                health_la_target_entropy_frac=la_h / log_k,
                health_la_target_batch_entropy=la_hb,
                health_la_target_batch_entropy_frac=la_hb / log_k,
            )
            self._la_entropy_sum, self._la_count, self._la_prob_sum = 0.0, 0, None
        self.seconds += time.perf_counter() - t0
        return values


def _health_metric_logger_class():
    from dinov2.logging import MetricLogger, SmoothedValue

    class HealthMetricLogger(MetricLogger):
        """Upstream's `MetricLogger` that also computes the health values at their period.

        The values are meters with a window of one (the dumped median is the latest value) added in upstream's idiom,
        so they appear in `training_metrics.json` and in upstream's console line; each computation is also logged on
        its own line with any collapse flag as a warning.
        """

        def __init__(self, *args, monitor: HealthMonitor, **kwargs):
            super().__init__(*args, **kwargs)
            self.monitor = monitor

        def log_every(self, iterable, print_freq, header=None, n_iterations=None, start_iteration=0):
            t_start = time.perf_counter()
            i = start_iteration
            for obj in super().log_every(iterable, print_freq, header, n_iterations, start_iteration):
                yield obj
                # the step of iteration i has run (loss, optimizer, teacher EMA); upstream dumps after this
                self.monitor.observe_step()
                if self.monitor.due(i):
                    values = self.monitor.compute(i)
                    for k, v in values.items():
                        if k not in self.meters:
                            self.add_meter(k, SmoothedValue(window_size=1, fmt="{value:.4f}"))
                        self.meters[k].update(v)
                    logger.info(
                        "health [%d]: teacher entropy %.3f log K, batch-mean %.3f log K, RankMe %.2f%s",
                        i,
                        values["health_teacher_entropy_frac"],
                        values["health_teacher_batch_entropy_frac"],
                        values["health_rankme"],
                        (
                            f"; local-aggregation targets {values['health_la_target_entropy_frac']:.3f} / "
                            f"{values['health_la_target_batch_entropy_frac']:.3f} log K"
                            if "health_la_target_entropy_frac" in values
                            else ""
                        ),
                    )
                    for flag in collapse_flags(values):
                        logger.warning("health [%d]: %s", i, flag)
                i += 1
            total = time.perf_counter() - t_start
            if self.monitor.period > 0 and total > 0:
                logger.info(
                    "health diagnostics took %.2f s of %.1f s of training (%.2f %%)",
                    self.monitor.seconds,
                    total,
                    100 * self.monitor.seconds / total,
                )

    return HealthMetricLogger


def metric_logger(cfg, model, dataset):
    """The `MetricLogger` factory that makes upstream's `do_train` log the health values, or None when the period is 0.

    Bind it with `dinov2_cell.plugin.bind_training_run(metric_logger=...)`.

    Args:
        cfg: the merged config.
        model: the meta-architecture `do_train` will train (its teacher is read at compute time, after FSDP wrapping).
        dataset: the training dataset (source of the probe sites).
    """
    monitor = HealthMonitor(cfg, model, dataset)
    if monitor.period <= 0:
        return None
    logger.info("health diagnostics every %d iterations on %d probe sites", monitor.period, monitor.n_probe)
    return partial(_health_metric_logger_class(), monitor=monitor)
