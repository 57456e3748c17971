"""SLURM submission through submitit: a requeue-able training task and the executor set-up.

The task is a callable object with `checkpoint()`: when SLURM preempts or times out the job, submitit calls it and
resubmits a fresh task with the same arguments; the new job finds the checkpoints in `--output-dir` and resumes
(`do_train(..., resume=True)`), and the output-dir check accepts it because the config is the same.
"""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger("dinov2_cell")

SUBMITIT_DIR = "submitit"  # inside --output-dir; ignored when deciding whether the output dir is empty


def add_slurm_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the SLURM options (used only with --slurm) to a parser."""
    g = parser.add_argument_group("SLURM (with --slurm)")
    g.add_argument("--slurm", action="store_true", help="submit to SLURM through submitit instead of running here")
    g.add_argument("--nodes", type=int, default=1, help="nodes to request (default 1)")
    g.add_argument("--ngpus", "--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    g.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per GPU task (default 10)")
    g.add_argument("--mem-gb", type=int, default=0, help="memory per node in GB (default: SLURM's)")
    g.add_argument("--partition", default=os.environ.get("SLURM_PARTITION", ""), help="partition (env SLURM_PARTITION)")
    g.add_argument("--account", default=os.environ.get("SLURM_ACCOUNT", ""), help="account (env SLURM_ACCOUNT)")
    g.add_argument("--qos", default="", help="quality of service")
    g.add_argument("--timeout", type=int, default=2880, help="job time limit in minutes (default 2880 = 48 h)")
    g.add_argument("--comment", default="", help="comment passed to the scheduler")
    g.add_argument("--exclude", default="", help="nodes to exclude")
    g.add_argument("--job-name", default="dinov2_cell", help="SLURM job name")
    g.add_argument(
        "--submitit-cluster",
        default=None,
        choices=["slurm", "local", "debug"],
        help="submitit backend (default: slurm if available); 'local' runs the task here, as the tests do",
    )
    g.add_argument("--wait", action="store_true", help="block until the job ends and print its result")
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
        """Called by submitit on preemption/timeout: resubmit the same task, which resumes from checkpoints."""
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
        timeout_min=args.timeout,
        nodes=args.nodes,
        tasks_per_node=args.ngpus,
        gpus_per_node=args.ngpus,
        cpus_per_task=args.cpus_per_task,
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
