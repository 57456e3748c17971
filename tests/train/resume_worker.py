"""`python -m dinov2_cell.run.train` with test instrumentation, for the exact-resume tests (also under torchrun).

    resume_worker.py RECORD_DIR STOP_AT STOP_HOW STOP_RANK [--upstream-resume] -- TRAINING ARGS...

- Every `MetricLogger.update` call is appended to RECORD_DIR/updates.rank{R}.jsonl with the iteration it belongs to.
- STOP_AT >= 0: when iteration STOP_AT starts its step on rank STOP_RANK (-1: every rank), STOP_HOW decides:
  `crash` raises (a kill after the last checkpoint; the ranks first meet at a barrier so every rank's boundary
  checkpoint is on disk), `signal` sends SIGUSR2 to this process (the save-on-signal path).
- `--upstream-resume` puts upstream's checkpointer, periodic checkpointer and data loader back (the behaviour before
  exact resume), to measure what it changes.
"""

import json
import os
import signal
import sys

import torch.distributed as dist


def main():
    argv = sys.argv[1:]
    split = argv.index("--")
    own, train_args = argv[:split], argv[split + 1 :]
    upstream_resume = "--upstream-resume" in own
    own = [a for a in own if a != "--upstream-resume"]
    record_dir, stop_at, stop_how, stop_rank = own[0], int(own[1]), own[2], int(own[3])

    from dinov2_cell.plugin import import_upstream, install

    install()
    from dinov2.logging.helpers import MetricLogger

    from dinov2_cell.train import checkpoint
    from dinov2_cell.train.local_aggregation import LocalAggregationMetaArch

    train = import_upstream("dinov2.train.train")
    if upstream_resume:
        import dinov2.fsdp
        import fvcore.common.checkpoint

        train.FSDPCheckpointer = dinov2.fsdp.FSDPCheckpointer
        train.PeriodicCheckpointer = fvcore.common.checkpoint.PeriodicCheckpointer
        train.make_data_loader = train.make_data_loader.__dinov2_cell_hook__

    iteration = {"n": None, "seen": -1}

    def current_iteration():
        state = checkpoint.current_run_state()
        if state is not None and state._next_iteration is not None:
            return state._next_iteration
        return iteration["n"]

    def rank():
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    original_update = MetricLogger.update

    def update(self, **kwargs):
        original_update(self, **kwargs)
        row = {"iteration": current_iteration(), **{k: float(v) for k, v in kwargs.items()}}
        with open(os.path.join(record_dir, f"updates.rank{rank()}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    MetricLogger.update = update

    original_forward_backward = LocalAggregationMetaArch.forward_backward

    def forward_backward(self, images, teacher_temp):
        # without the resume hooks there is no run state: count steps from "Starting training from iteration N"
        iteration["seen"] += 1
        if checkpoint.current_run_state() is None or upstream_resume:
            iteration["n"] = iteration["seen"] + start["iteration"]
        it = current_iteration()
        if it == stop_at and stop_rank in (-1, rank()):
            if stop_how == "crash":
                if dist.is_available() and dist.is_initialized():
                    dist.barrier()
                raise RuntimeError(f"test crash at iteration {it}")
            os.kill(os.getpid(), signal.SIGUSR2)
        return original_forward_backward(self, images, teacher_temp)

    LocalAggregationMetaArch.forward_backward = forward_backward

    start = {"iteration": 0}
    original_resume_or_load = train.FSDPCheckpointer.resume_or_load

    def resume_or_load(self, path, *, resume=True):
        out = original_resume_or_load(self, path, resume=resume)
        start["iteration"] = out.get("iteration", -1) + 1
        return out

    train.FSDPCheckpointer.resume_or_load = resume_or_load

    from dinov2_cell.cli import run_main
    from dinov2_cell.run.train import PROG
    from dinov2_cell.run.train import main as train_main

    sys.exit(run_main(train_main, train_args, prog=PROG))


if __name__ == "__main__":
    main()
