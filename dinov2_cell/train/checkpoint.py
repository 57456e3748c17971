"""Exact resume and save-on-signal for upstream's `do_train`.

Contract (for schedulers, wrappers and test harnesses)
------------------------------------------------------
- Signals: SIGUSR2 (what submitit and SLURM's `--signal=USR2@T` send before a time-out or preemption) and SIGTERM.
  While `preemption_signals()` is active (the training main wraps `do_train` in it) either one only sets a flag.
- When: at the next iteration boundary, i.e. once the iteration running when the signal came has finished (optimizer
  step, teacher update, logging). All ranks all-reduce the flag at every boundary, so a signal that reached any rank
  stops all of them after the same iteration N.
- What file: each rank writes `<output_dir>/model_{N:07d}.rank_{r}.pth` (temp file + rename) and points
  `<output_dir>/last_checkpoint.rank_{r}` at it, exactly as a periodic checkpoint; iteration N is lost by nobody.
  If the signal came before the first iteration finished, nothing is written (the newest checkpoint is still the
  latest state).
- Exit: every rank raises `TrainingPreempted`, a `SystemExit` with status `EXIT_REQUEUE` = 75 (EX_TEMPFAIL: "try
  again"); running the same command again resumes at iteration N + 1. If a Python handler was installed for that
  signal before ours (submitit installs one for USR2 in its jobs), it is called first, after the checkpoint is on
  disk: on global rank 0 submitit calls `TrainTask.checkpoint()`, requeues the job (`scontrol requeue`) and exits
  with status 255; other ranks return from it and exit with 75.
- A signal during the last iteration does not stop the run: it finishes normally (status 0).

Exact resume
------------
A checkpoint (`ResumableCheckpointer`, which `do_train` uses under upstream's name `FSDPCheckpointer`) holds besides
the model (with the DINO/iBOT centres), the optimizer and the iteration, a `run_state` entry with: the random
generators of the process (torch CPU and CUDA, numpy, Python; `dinov2_cell.train.rng`), the device-side augmentation
generator (`augmentations.device=model`), the grad scaler, the DINO/iBOT centre updates computed by the last
iteration but not yet applied (upstream applies them lazily at the next step), the metric logger's meters and the
health monitor's pooled values. The data loader (`make_data_loader`, rebound in `dinov2.train.train`) starts the
sampler at iteration x per-rank batch samples into each rank's stream (upstream passes `sampler_advance=0`) with the
sampler seed `train.seed` (upstream passes the start iteration); with `num_workers > 0` every sample's augmentation
draws are seeded by its position in the stream (see `dinov2_cell.train.rng`). The process generators are restored after
the loader has started, right before the first batch, so nothing built in between consumes them.

Checkpoints are written at iteration boundaries (`BoundaryPeriodicCheckpointer`): after the iteration's logging and
health diagnostics, so the resumed run logs exactly what the uninterrupted one does. Loading a checkpoint to resume is
strict: a missing or unexpected model key, a shape mismatch or a missing optimizer state is an error.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Optional

import torch
import torch.distributed as dist
from dinov2.data.samplers import ShardedInfiniteSampler
from dinov2.fsdp import FSDPCheckpointer
from fvcore.common.checkpoint import PeriodicCheckpointer

from dinov2_cell.train import rng

logger = logging.getLogger("dinov2")

EXIT_REQUEUE = 75  # EX_TEMPFAIL (sysexits.h): stopped on purpose, run the same command again to resume
PREEMPTION_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
RUN_STATE_KEY = "run_state"
RUN_STATE_FORMAT = 1
# Upstream's losses with a lazily applied centre update, and the attribute holding the batch size it divides by.
_LOSSES_WITH_CENTRES = {"dino_loss": "len_teacher_output", "ibot_patch_loss": "len_teacher_patch_tokens"}

# The state of the `do_train` call in progress: set when it builds its checkpointer, read by the data loader, the
# periodic checkpointer and the metric logger it builds next.
_current: Optional["RunState"] = None
_signal_received = 0
_previous_handlers: dict = {}


class TrainingPreempted(SystemExit):
    """Raised on every rank after the checkpoint of a preemption signal is written; exit status `EXIT_REQUEUE`.

    Args:
        signum: the signal received.
        iteration: the last iteration trained (and saved), or None if none was trained.
    """

    def __init__(self, signum: int, iteration: Optional[int]):
        super().__init__(EXIT_REQUEUE)
        self.signum, self.iteration = signum, iteration


# ---------------------------------------------------------------------------------------------- signals


def _on_signal(signum, frame):
    # Only a flag: the main thread may be anywhere (inside a kernel, holding the logging lock).
    global _signal_received
    _signal_received = signum


@contextlib.contextmanager
def preemption_signals(signals=PREEMPTION_SIGNALS):
    """Within the block, `signals` set the preemption flag (see the module docstring); handlers are restored after.

    Only the main thread can install signal handlers; elsewhere the block changes nothing.

    Args:
        signals: the signals to catch (default SIGUSR2 and SIGTERM).
    """
    global _signal_received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _signal_received = 0
    _previous_handlers.clear()
    for s in signals:
        _previous_handlers[s] = signal.getsignal(s)
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in _previous_handlers.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _previous_handlers.clear()
        _signal_received = 0


def preemption_requested() -> int:
    """The preemption signal any rank received (0: none); a collective call when more than one process runs."""
    local = int(_signal_received)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([local], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


# ---------------------------------------------------------------------------------------------- run state


def _meters_state(metric_logger) -> Optional[dict]:
    if metric_logger is None:
        return None
    return {
        name: {
            "window": m.deque.maxlen,
            "fmt": m.fmt,
            "values": list(m.deque),
            "total": m.total,
            "count": int(m.count),
        }
        for name, m in metric_logger.meters.items()
    }


def _health_state(metric_logger) -> Optional[dict]:
    monitor = getattr(metric_logger, "monitor", None)
    if monitor is None:
        return None
    return {
        "la_entropy_sum": float(monitor._la_entropy_sum),
        "la_count": int(monitor._la_count),
        "la_prob_sum": monitor._la_prob_sum,
    }


class RunState:
    """The `run_state` checkpointable: everything besides weights, optimizer and iteration that decides the rest of
    the run (see the module docstring).

    Args:
        model: the meta-architecture being trained (its `device_augmentation`, `fp16_scaler` and losses are read).
        checkpointer: the checkpointer that saves it (used for saves outside the period).
    """

    def __init__(self, model, checkpointer):
        self.model, self.checkpointer = model, checkpointer
        self.start_iteration = 0
        self.periodic: Optional[BoundaryPeriodicCheckpointer] = None
        self.metric_logger = None
        self._rng: Optional[dict] = None
        self._meters: Optional[dict] = None
        self._health: Optional[dict] = None
        self._next_iteration: Optional[int] = None

    # -- what is saved

    def _pending_centres(self) -> dict:
        out = {}
        for name, count_attr in _LOSSES_WITH_CENTRES.items():
            loss = getattr(self.model, name, None)
            if loss is None or not hasattr(loss, "updated"):
                continue
            if loss.updated is False:
                if getattr(loss, "reduce_handle", None) is not None:
                    loss.reduce_handle.wait()  # the same all-reduce apply_center_update waits for
                count = int(getattr(loss, count_attr))
                out[name] = {"batch_center": loss.async_batch_center.detach().clone(), "count": count}
            else:
                out[name] = None
        return out

    def state_dict(self) -> dict:
        """The run state now (called by the checkpointer's save).

        Returns:
            Plain types and tensors only (loads with `weights_only=True`).
        """
        augmentation = getattr(self.model, "device_augmentation", None)
        scaler = getattr(self.model, "fp16_scaler", None)
        return {
            "format": RUN_STATE_FORMAT,
            "rng": rng.capture(),
            "device_augmentation": augmentation.state_dict() if augmentation is not None else None,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "pending_centres": self._pending_centres(),
            "meters": _meters_state(self.metric_logger),
            "health": _health_state(self.metric_logger),
        }

    # -- what is restored

    def load_state_dict(self, state: dict) -> None:
        """Restores a saved run state; the process generators wait for the data loader to start, the meters for the
        metric logger to exist.

        Args:
            state: what `state_dict()` returned.

        Raises:
            ValueError: an unknown format, or a state that does not fit this run (augmentation device changed).
        """
        if state.get("format") != RUN_STATE_FORMAT:
            raise ValueError(f"unknown run_state format {state.get('format')!r} (expected {RUN_STATE_FORMAT})")
        augmentation = getattr(self.model, "device_augmentation", None)
        if (augmentation is None) != (state["device_augmentation"] is None):
            raise ValueError("the checkpoint and this run differ in augmentations.device: resume with the same config")
        if augmentation is not None:
            augmentation.load_state_dict(state["device_augmentation"])
        scaler = getattr(self.model, "fp16_scaler", None)
        if scaler is not None and state["grad_scaler"] is not None:
            scaler.load_state_dict(state["grad_scaler"])
        for name, pending in state["pending_centres"].items():
            loss = getattr(self.model, name)
            if pending is None:
                loss.updated = True
            else:
                loss.async_batch_center = pending["batch_center"].to(loss.center.device)
                setattr(loss, _LOSSES_WITH_CENTRES[name], int(pending["count"]))
                loss.reduce_handle = None  # already reduced when it was saved
                loss.updated = False
        self._rng = state["rng"]
        self._meters, self._health = state["meters"], state["health"]
        if self.metric_logger is not None:
            self._restore_logging()

    def attach_metric_logger(self, metric_logger) -> None:
        """Registers the metric logger `do_train` built (its meters are saved, and restored into it)."""
        self.metric_logger = metric_logger
        self._restore_logging()

    def _restore_logging(self) -> None:
        from dinov2.logging.helpers import SmoothedValue

        if self._meters is not None:
            for name, m in self._meters.items():
                meter = SmoothedValue(window_size=m["window"], fmt=m["fmt"])
                meter.deque.extend(m["values"])
                meter.total, meter.count = m["total"], m["count"]
                self.metric_logger.meters[name] = meter
            self._meters = None
        monitor = getattr(self.metric_logger, "monitor", None)
        if monitor is not None and self._health is not None:
            monitor._la_entropy_sum = self._health["la_entropy_sum"]
            monitor._la_count = self._health["la_count"]
            monitor._la_prob_sum = self._health["la_prob_sum"]
            self._health = None

    # -- the loop

    def loader_started(self) -> None:
        """The data loader has started: restore the process generators, count iterations from the start."""
        if self._rng is not None:
            rng.restore(self._rng)
            self._rng = None
        self._next_iteration = None

    def iteration_boundary(self) -> None:
        """Called before each batch is fetched: saves what is due for the iteration just finished, then stops the
        run if a preemption signal was received (see the module docstring).

        Raises:
            TrainingPreempted: after the checkpoint is written, on every rank.
        """
        if self._next_iteration is None:
            completed, self._next_iteration = None, self.start_iteration
        else:
            completed = self._next_iteration
            self._next_iteration += 1
        saved = self.periodic.flush() if self.periodic is not None else False
        signum = preemption_requested()
        if not signum:
            return
        name = signal.Signals(signum).name
        if completed is not None and not saved:
            prefix = self.periodic.file_prefix if self.periodic is not None else "model"
            self.checkpointer.save(f"{prefix}_{completed:07d}", iteration=completed)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # no rank exits (which may make a launcher kill the others) before every file is written
        if completed is None:
            logger.warning("%s received before the first iteration finished: nothing new to save; exiting", name)
        else:
            logger.warning(
                "%s received during iteration %d: saved the checkpoint of iteration %d in %s; exiting with status %d "
                "(run the same command again to resume at iteration %d)",
                name,
                completed,
                completed,
                self.checkpointer.save_dir,
                EXIT_REQUEUE,
                completed + 1,
            )
        previous = _previous_handlers.get(signum)
        if callable(previous):  # e.g. submitit's checkpoint-and-requeue
            previous(signum, None)
        raise TrainingPreempted(signum, completed)


def current_run_state() -> Optional[RunState]:
    """The run state of the `do_train` call in progress (None before its checkpointer exists)."""
    return _current


def attach_metric_logger(metric_logger) -> None:
    """Hands the metric logger `do_train` built to the run in progress (no-op outside `do_train`)."""
    if _current is not None:
        _current.attach_metric_logger(metric_logger)


# ---------------------------------------------------------------------------------------------- checkpointers


class ResumableCheckpointer(FSDPCheckpointer):
    """Upstream's `FSDPCheckpointer` plus the `run_state` checkpointable and strict resume loads.

    Same arguments as fvcore's `Checkpointer` (model, save_dir, save_to_disk, checkpointables).
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk: bool = True, **checkpointables: Any):
        global _current
        self.run_state = RunState(model, self)
        super().__init__(
            model, save_dir, save_to_disk=save_to_disk, **checkpointables, **{RUN_STATE_KEY: self.run_state}
        )
        self._resuming = False
        _current = self.run_state

    def load(self, path: str, checkpointables=None) -> dict:
        """fvcore's load; when resuming (`checkpointables` None) every part must be there and the model load is strict.

        Returns:
            The remaining checkpoint entries (`iteration`).
        """
        self._resuming = bool(path) and checkpointables is None
        try:
            extra = super().load(path, checkpointables=checkpointables)
        finally:
            self._resuming = False
        if path:
            self.run_state.start_iteration = int(extra.get("iteration", -1)) + 1  # what do_train computes from it
        return extra

    def _load_file(self, f):
        checkpoint = super()._load_file(f)
        if self._resuming:
            missing = [k for k in ("model", *self.checkpointables) if k != RUN_STATE_KEY and k not in checkpoint]
            if missing:
                raise KeyError(f"{f}: the checkpoint has no {', '.join(missing)}; cannot resume from it")
            if RUN_STATE_KEY not in checkpoint:
                logger.warning(
                    "%s has no run_state (written by an earlier version): resuming without the random generators; "
                    "the rest of the run will differ from an uninterrupted one",
                    f,
                )
        return checkpoint

    def _load_model(self, checkpoint):
        saved = checkpoint.get("model", {})
        incompatible = super()._load_model(checkpoint)
        if self._resuming and incompatible is not None:
            problems = []
            if incompatible.missing_keys:
                problems.append(f"missing keys {incompatible.missing_keys[:5]}")
            unexpected = [k for k in incompatible.unexpected_keys if not self._flat_param_loaded(k, saved.get(k))]
            if unexpected:
                problems.append(f"unexpected keys {unexpected[:5]}")
            if incompatible.incorrect_shapes:
                problems.append(f"shape mismatches {incompatible.incorrect_shapes[:5]}")
            if problems:
                raise RuntimeError(f"the checkpoint does not fit the model: {'; '.join(problems)}")
        return incompatible

    def _flat_param_loaded(self, key: str, value) -> bool:
        """Whether `key` is the flat parameter of a sharded FSDP unit that holds exactly `value`'s local shard.

        FSDP's local-state-dict load consumes `<unit>._flat_param` but still reports it as unexpected (its pre-load
        hook renames the key): such a report is accepted only when the unit's parameters equal what the file holds.
        """
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        if not key.endswith("._flat_param") or not isinstance(value, ShardedTensor):
            return False
        try:
            unit = self.model.get_submodule(key[: -len("._flat_param")])
        except AttributeError:
            return False
        handle = getattr(unit, "_handle", None)
        if handle is None:
            return False
        flat = handle.flat_param
        valid = flat.numel() - flat._shard_numel_padded
        shard = value.local_tensor()
        return valid == shard.numel() and torch.equal(flat.detach()[:valid], shard)


class BoundaryPeriodicCheckpointer(PeriodicCheckpointer):
    """fvcore's `PeriodicCheckpointer` whose saves wait for the iteration boundary (after the iteration's logging),
    except the final one (no boundary follows the last iteration).

    Same arguments as `PeriodicCheckpointer`.
    """

    def __init__(self, checkpointer, period: int, max_iter: Optional[int] = None, **kwargs):
        super().__init__(checkpointer, period, max_iter=max_iter, **kwargs)
        self._due = None
        self.run_state = getattr(checkpointer, "run_state", None)
        if self.run_state is not None:
            self.run_state.periodic = self

    def step(self, iteration: int, **kwargs: Any) -> None:
        """Records the iteration; its saves happen at `flush()` (the final one at once)."""
        self.flush()
        final = self.max_iter is not None and int(iteration) >= self.max_iter - 1
        if self.run_state is None or final:
            super().step(iteration, **kwargs)
        else:
            self._due = (int(iteration), kwargs)

    def flush(self) -> bool:
        """Does the saves due for the recorded iteration.

        Returns:
            True if a checkpoint of that iteration was written.
        """
        if self._due is None:
            return False
        iteration, kwargs = self._due
        self._due = None
        super().step(iteration, **kwargs)
        return (iteration + 1) % self.period == 0


# ---------------------------------------------------------------------------------------------- data


class ResumableShardedInfiniteSampler(ShardedInfiniteSampler):
    """Upstream's sharded infinite sampler with `advance` counted in this rank's samples, across whole passes.

    Upstream skips `advance // sample_count` passes, but a rank's pass holds `sample_count // world_size` samples, so
    with more than one process an advance of a pass or more lands elsewhere in the stream. Whole passes are skipped
    here (by their seed, without drawing them); the parent skips the rest.
    """

    def __iter__(self):
        per_pass = (
            self._sample_count // self._step
            if self._shuffle
            else len(range(self._start, self._sample_count, self._step))
        )
        if per_pass > 0 and self._advance >= per_pass:
            passes, self._advance = divmod(self._advance, per_pass)
            self._iter_count += passes
        yield from super().__iter__()


class _BoundaryIterator:
    def __init__(self, iterator, run_state: RunState):
        self.iterator, self.run_state = iterator, run_state

    def __iter__(self):
        return self

    def __next__(self):
        self.run_state.iteration_boundary()
        return next(self.iterator)


class ResumableDataLoader(torch.utils.data.DataLoader):
    """A DataLoader that tells the run when it starts (the generators are restored then) and before each batch (the
    iteration boundary)."""

    run_state: Optional[RunState] = None

    def __iter__(self):
        iterator = super().__iter__()
        if self.run_state is None:
            return iterator
        self.run_state.loader_started()
        return _BoundaryIterator(iterator, self.run_state)


def _wrap_make_data_loader(upstream_make_data_loader):
    from dinov2.data import SamplerType

    def make_data_loader(
        *,
        dataset,
        batch_size: int,
        num_workers: int,
        shuffle: bool = True,
        seed: int = 0,
        sampler_type=SamplerType.INFINITE,
        sampler_size: int = -1,
        sampler_advance: int = 0,
        drop_last: bool = True,
        persistent_workers: bool = False,
        collate_fn=None,
    ):
        state = _current
        sharded = (SamplerType.SHARDED_INFINITE, SamplerType.SHARDED_INFINITE_NEW)
        if state is None or sampler_type not in sharded or sampler_size > 0:
            return upstream_make_data_loader(
                dataset=dataset,
                batch_size=batch_size,
                num_workers=num_workers,
                shuffle=shuffle,
                seed=seed,
                sampler_type=sampler_type,
                sampler_size=sampler_size,
                sampler_advance=sampler_advance,
                drop_last=drop_last,
                persistent_workers=persistent_workers,
                collate_fn=collate_fn,
            )
        if seed != state.start_iteration:  # upstream's do_train passes its start iteration as the seed
            raise RuntimeError(
                f"make_data_loader got seed={seed} but the run starts at iteration {state.start_iteration}: upstream's "
                "do_train no longer builds its loader as dinov2_cell.train.checkpoint expects"
            )
        advance = state.start_iteration * int(batch_size) + int(sampler_advance)
        sampler = ResumableShardedInfiniteSampler(
            sample_count=len(dataset),
            shuffle=shuffle,
            seed=int(state.model.cfg.train.seed),
            advance=advance,
            use_new_shuffle_tensor_slice=sampler_type == SamplerType.SHARDED_INFINITE_NEW,
        )
        if num_workers > 0:
            import dinov2.distributed as distributed

            run_seed, rank = torch.initial_seed(), distributed.get_global_rank()
            sampler = rng.PositionedSampler(sampler, advance)
            dataset = rng.SeededSamples(dataset, run_seed, rank)
            collate_fn = rng.SeededCollate(collate_fn, run_seed, rank)
        logger.info(
            "data loader: sampler seed train.seed=%d, starting %d samples into each rank's stream (iteration %d)",
            int(state.model.cfg.train.seed),
            advance,
            state.start_iteration,
        )
        loader = ResumableDataLoader(
            dataset,
            sampler=sampler,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=True,
            drop_last=drop_last,
            persistent_workers=persistent_workers,
            collate_fn=collate_fn,
        )
        loader.run_state = state
        return loader

    make_data_loader.__dinov2_cell_hook__ = upstream_make_data_loader
    make_data_loader.__doc__ = "Upstream's make_data_loader, resumable (see dinov2_cell.train.checkpoint)."
    return make_data_loader


def install_hooks(train_module) -> None:
    """Rebinds `FSDPCheckpointer`, `PeriodicCheckpointer` and `make_data_loader` in `dinov2.train.train`.

    Replaces: the names `do_train` looks up in its module to build its checkpointers and its data loader.
    Needed because: upstream saves neither the random generators nor the loader position (a resumed run replays the
    first samples), and saves nothing when a preemption signal arrives.
    When: always (GPU and CPU); idempotent.

    Args:
        train_module: `dinov2.train.train`.
    """
    if train_module.FSDPCheckpointer is not ResumableCheckpointer:
        train_module.FSDPCheckpointer = ResumableCheckpointer
    if train_module.PeriodicCheckpointer is not BoundaryPeriodicCheckpointer:
        train_module.PeriodicCheckpointer = BoundaryPeriodicCheckpointer
    if getattr(train_module.make_data_loader, "__dinov2_cell_hook__", None) is None:
        train_module.make_data_loader = _wrap_make_data_loader(train_module.make_data_loader)
