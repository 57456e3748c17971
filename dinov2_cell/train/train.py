"""Training main of our own: setup -> meta-arch -> `prepare_for_distributed_training` -> upstream `do_train`.

Upstream's `dinov2.train.train.main` hard-codes `SSLMetaArch(cfg).to("cuda")` and reads only upstream's config; this
main picks the device (CUDA if present, else CPU with gloo), merges the plugin config, builds the dataset once (to
check its channels against `student.in_chans` before any model is built), plugs the cell augmentation and the
other-site collate into upstream's `do_train` (through the hooks `dinov2_cell.plugin.install()` puts in place), and
trains `LocalAggregationMetaArch`. It runs in one process, under `torchrun`, or inside a SLURM/submitit task (the
environment decides; see `dinov2.distributed.enable`).
"""

from __future__ import annotations

import logging
import os

import torch

from dinov2_cell.data.registry import discard_target
from dinov2_cell.plugin import bind_training_run, import_upstream, install
from dinov2_cell.train import health, probe
from dinov2_cell.train.checkpoint import attach_metric_logger, install_hooks, preemption_signals
from dinov2_cell.train.config import apply_batch_size_total, effective_batch_message
from dinov2_cell.train.config import get_args_parser, prepare_config, write_config  # noqa: F401  (re-exported)
from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch

logger = logging.getLogger("dinov2")


def setup(args, cfg):
    """Enables distributed mode, seeds, logs, derives the per-GPU batch, applies upstream's lr scaling rule and
    writes config.yaml."""
    from dinov2.utils.config import apply_scaling_rules_to_cfg, default_setup
    from omegaconf import OmegaConf

    distributed = import_upstream("dinov2.distributed")
    os.makedirs(args.output_dir, exist_ok=True)
    default_setup(args)
    world_size = distributed.get_global_size()
    apply_batch_size_total(cfg, world_size)  # before the scaling rule, which reads the per-GPU batch
    apply_scaling_rules_to_cfg(cfg)
    logger.info(effective_batch_message(cfg, world_size))
    if distributed.is_main_process():
        write_config(cfg, args.output_dir)
    logger.info("resolved config:\n%s", OmegaConf.to_yaml(cfg))
    return cfg


def build_training_dataset(cfg, transform):
    """Builds the dataset once and checks its channel count against `student.in_chans`."""
    from dinov2.data import make_dataset

    install()  # upstream's dataset-string parser must know the registered names
    dataset = make_dataset(dataset_str=cfg.train.dataset_path, transform=transform, target_transform=discard_target)
    n = getattr(dataset, "num_channels", None)
    if n is not None and n != cfg.student.in_chans:
        raise ValueError(
            f"train.dataset_path gives {n}-channel images ({getattr(dataset, 'channel_names', '?')}) but "
            f"student.in_chans is {cfg.student.in_chans}; set student.in_chans={n} or pick other channels"
        )
    return dataset


def plug_cell_components(cfg, dataset, do_local_aggregation: bool, metric_logger=None):
    """Makes upstream's `do_train` build the cell augmentation and the other-site collate, and reuse `dataset`."""
    from dinov2_cell.augment.cell_augmentation import loader_augmentation

    augmentation = loader_augmentation(cfg, other_site_view=do_local_aggregation)  # same parameters as the device side
    bind_training_run(augmentation=augmentation, dataset=dataset, metric_logger=_resumable(metric_logger))
    return dataset


def _resumable(factory):
    """The metric logger `factory` (None: upstream's) whose meters go into every exact-resume checkpoint."""

    def make(*args, **kwargs):
        if factory is None:
            from dinov2.logging import MetricLogger

            metric_logger = MetricLogger(*args, **kwargs)
        else:
            metric_logger = factory(*args, **kwargs)
        attach_metric_logger(metric_logger)
        return metric_logger

    return make


def main(args) -> str:
    """Trains and returns the path of the final teacher checkpoint."""
    install()
    upstream_train = import_upstream("dinov2.train.train")
    install_hooks(upstream_train)  # exact-resume checkpointers and loader (dinov2_cell.train.checkpoint)
    cfg = prepare_config(args)
    dataset = build_training_dataset(cfg, transform=None)  # wrong channels/paths fail before anything is written
    setup(args, cfg)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = LocalAggregationMetaArch(cfg)
    # collapse diagnostics into training_metrics.json (health.period_iterations)
    # + optional kNN probe and TensorBoard scalars (monitoring.*), checked here, before training
    factory = probe.metric_logger(cfg, model, dataset, health.metric_logger(cfg, model, dataset))
    plug_cell_components(cfg, dataset, model.do_local_aggregation, factory)
    model = model.to(device)
    model.prepare_for_distributed_training()
    logger.info("Model:\n%s", model)
    # SIGUSR2/SIGTERM: checkpoint at the next iteration boundary, exit 75 (dinov2_cell.train.checkpoint)
    with preemption_signals():
        upstream_train.do_train(cfg, model, resume=not args.no_resume)
    upstream_train.do_test(cfg, model, "final")
    path = os.path.join(cfg.train.output_dir, "eval", "final", "teacher_checkpoint.pth")
    logger.info("final teacher checkpoint: %s", path)
    return path
