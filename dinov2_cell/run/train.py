"""`python -m dinov2_cell.run.train`: train locally, under torchrun, or on SLURM (`--slurm`).

`--config-file` takes a packaged config's name (`tiny_cpu_fluo`, `cpjump1_vits14_fluo`, ...; a wrong name lists them)
or a path to a yaml file. Bad input prints one `error: ...` line and exits with status 2 (`--debug`: traceback).

Examples:
    python -m dinov2_cell.run.train --config-file tiny_cpu_fluo --output-dir runs/fluo
    torchrun --nproc_per_node 4 -m dinov2_cell.run.train --config-file cpjump1_vits14_fluo --output-dir D
    python -m dinov2_cell.run.train --config-file cpjump1_vits14_fluo --output-dir D --slurm \\
        --nodes 1 --gpus-per-node 4 --partition gpu --time 48:00:00
    python -m dinov2_cell.run.train ... optim.epochs=10 train.batch_size_total=256   # key=value overrides
    python -m dinov2_cell.run.train ... train.batch_size_total=null train.batch_size_per_gpu=16   # opt out
"""

from __future__ import annotations

import argparse
import sys

from dinov2_cell.cli import run_main, setup_logging

PROG = "python -m dinov2_cell.run.train"


def get_args_parser() -> argparse.ArgumentParser:
    """The training parser plus `--debug` and the SLURM options.

    Returns:
        The parser.
    """
    from dinov2_cell.run.submit import add_slurm_arguments
    from dinov2_cell.train.config import get_args_parser as training_parser

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Local-aggregation DINOv2 training on Cell Painting plates (CPU, torchrun or SLURM).",
        parents=[training_parser(add_help=False)],
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only validate: config keys, output dir, and the total batch over --nodes x --gpus-per-node GPUs; print "
        "the effective per-GPU batch and exit (slurm/launch.sh runs this before submitting)",
    )
    return add_slurm_arguments(parser)


def main(argv=None) -> int:
    """Parses arguments, then trains here or submits.

    Bad input (a missing config file or name, an unknown config key, a foreign output dir, channels that do not
    match `student.in_chans`) raises before anything is written; `run_main` reports it in one line.

    Args:
        argv: command-line arguments (default `sys.argv[1:]`).

    Returns:
        The exit code.
    """
    from dinov2_cell.train.config import prepare_config

    args = get_args_parser().parse_intermixed_args(argv)
    setup_logging(args.debug)
    if args.check:
        return _check(args)
    # Bad keys, a missing config or a foreign output dir fail here: before the training stack is imported, and
    # with --slurm before anything is queued.
    prepare_config(args)
    if not args.slurm:
        from dinov2_cell.train.train import main as train_main

        print(train_main(args))
        return 0

    from dinov2_cell.run.submit import submit

    job = submit(args)
    print(f"submitted job {job.job_id}: output in {args.output_dir}")
    if args.wait:
        print(job.result())
    return 0


def _check(args) -> int:
    # Validates as a --slurm submission of --nodes x --gpus-per-node processes would, without submitting.
    from dinov2_cell.train.config import per_gpu_batch_size, prepare_config

    args.slurm, args.submitit_cluster = True, None
    cfg = prepare_config(args)
    world = int(args.nodes) * int(args.gpus_per_node)
    per_gpu = per_gpu_batch_size(cfg, world)
    print(f"ok: {args.config_file}: {world} GPU(s) x batch {per_gpu} = total batch {world * per_gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
