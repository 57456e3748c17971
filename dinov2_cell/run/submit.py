"""SLURM submission through submitit: a requeue-able training task and the executor set-up.

The task is a callable object with `checkpoint()`: when SLURM preempts or times out the job (SIGUSR2,
`slurm_signal_delay_s` before the end), the training first finishes the iteration in progress and every rank saves
it (`dinov2_cell.train.checkpoint`, which also states the signal/file/exit-status contract); then submitit's handler
calls `checkpoint()`, resubmits a fresh task with the same arguments and requeues the job. The new job finds the
checkpoints in `--out` and resumes exactly where the old one stopped (`do_train(..., resume=True)`), and the
output-dir check accepts it because the config is the same.
"""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger("dinov2_cell")

SUBMITIT_DIR = "submitit"  # inside --out; ignored when deciding whether the output dir is empty


def slurm_time_minutes(value: str) -> int:
    """argparse type for `--time` in SLURM's syntax, as whole minutes (rounded up).

    Accepts what `sbatch --time` accepts: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.

    Args:
        value: the raw flag value, e.g. `48:00:00`, `2-00:00:00` or `2880`.

    Returns:
        The time limit in minutes (at least 1).
    """
    text = str(value).strip()
    try:
        days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
        parts = [int(p) for p in rest.split(":")]
        days = int(days)
        if days < 0 or any(p < 0 for p in parts) or not 1 <= len(parts) <= 3:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS), got {value!r}"
        ) from None
    if "-" in text:  # D-H, D-H:M, D-H:M:S
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:  # H:M:S
        h, m, s = parts
    else:  # M or M:S
        h, m, s = 0, parts[0], parts[1] if len(parts) == 2 else 0
    minutes = days * 1440 + h * 60 + m + (1 if s else 0)
    if minutes < 1:
        raise argparse.ArgumentTypeError(f"the time limit must be at least one minute, got {value!r}")
    return minutes


def add_slurm_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the SLURM options (used only with --slurm) to a parser.

    The names, units and defaults are those of `slurm/launch.sh train`: `--nodes`, `--gpus-per-node` (default 4,
    the paper's setup), `--cpus-per-gpu`, `--time` in SLURM syntax, `--partition`, `--account`, `--qos`, `--mem-gb`,
    `--exclude`, `--comment`. The old spellings `--ngpus`, `--gpus`, `--cpus-per-task` and `--timeout` (minutes)
    are accepted for one release and hidden from the help.

    Args:
        parser: the parser to extend.

    Returns:
        The same parser.
    """
    g = parser.add_argument_group("SLURM (with --slurm; the same options as slurm/launch.sh train)")
    g.add_argument("--slurm", action="store_true", help="submit to SLURM through submitit instead of running here")
    g.add_argument("--nodes", type=int, default=1, help="nodes to request (default 1)")
    g.add_argument("--gpus-per-node", type=int, default=4, help="GPUs per node, one task each (default 4)")
    g.add_argument("--cpus-per-gpu", type=int, default=10, help="CPU cores per GPU task (default 10)")
    g.add_argument(
        "--time",
        type=slurm_time_minutes,
        default=48 * 60,
        metavar="T",
        help="time limit, SLURM syntax: minutes, HH:MM:SS or D-HH:MM:SS (default 48:00:00)",
    )
    g.add_argument("--partition", default=os.environ.get("SLURM_PARTITION", ""), help="partition (env SLURM_PARTITION)")
    g.add_argument("--account", default=os.environ.get("SLURM_ACCOUNT", ""), help="account (env SLURM_ACCOUNT)")
    g.add_argument("--qos", default="", help="quality of service")
    g.add_argument("--mem-gb", type=int, default=0, help="memory per node in GB (default: SLURM's)")
    g.add_argument("--exclude", default="", help="nodes to exclude")
    g.add_argument("--comment", default="", help="comment passed to the scheduler")
    g.add_argument("--job-name", default="dinov2_cell_train", help="SLURM job name")
    g.add_argument(
        "--submitit-cluster",
        default=None,
        choices=["slurm", "local", "debug"],
        help="submitit backend (default: slurm if available); 'local' runs the task here, as the tests do",
    )
    g.add_argument("--wait", action="store_true", help="block until the job ends and print its result")
    # Old spellings, kept for one release.
    g.add_argument(
        "--ngpus", "--gpus", dest="gpus_per_node", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    g.add_argument("--cpus-per-task", dest="cpus_per_gpu", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    g.add_argument("--timeout", dest="time", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # minutes
    return parser


class TrainTask:
    """The training job submitit runs; requeued with the same arguments on preemption or timeout.

    Args:
        args: the parsed training arguments (config file, output dir, overrides).
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self) -> str:
        import submitit

        from dinov2_cell.train.train import main

        # Upstream's distributed.enable reads SLURM's variables itself; other backends (local) need torchrun's.
        if "SLURM_JOB_ID" not in os.environ:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return main(self.args)

    def checkpoint(self):
        """Called by submitit on preemption/timeout, after the checkpoint of the current iteration is written:
        resubmit the same task, which resumes from it."""
        import submitit

        logger.info(
            "requeuing %s (resumes from the last checkpoint in %s)", self.args.config_file, self.args.output_dir
        )
        return submitit.helpers.DelayedSubmission(type(self)(self.args))


def submit(args: argparse.Namespace):
    """Submits `TrainTask(args)` and returns the submitit job."""
    import submitit

    folder = os.path.join(args.output_dir, SUBMITIT_DIR, "%j")
    executor = submitit.AutoExecutor(folder=folder, cluster=args.submitit_cluster, slurm_max_num_timeout=30)
    params = dict(
        name=args.job_name,
        timeout_min=args.time,
        nodes=args.nodes,
        tasks_per_node=args.gpus_per_node,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_gpu,
    )
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    slurm = dict(partition=args.partition, account=args.account, qos=args.qos, comment=args.comment)
    slurm["exclude"] = args.exclude
    if executor.cluster == "slurm":
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v})
        params["slurm_signal_delay_s"] = 120  # time for submitit's checkpoint() before SLURM kills the job
    else:
        params = {k: v for k, v in params.items() if k in ("name", "timeout_min", "nodes", "tasks_per_node")}
        params["tasks_per_node"] = 1  # local/debug backends: one process on this machine
    executor.update_parameters(**params)
    job = executor.submit(TrainTask(args))
    logger.info("submitted job %s; logs in %s", job.job_id, folder.replace("%j", str(job.job_id)))
    return job
