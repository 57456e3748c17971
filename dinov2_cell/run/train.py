"""`python -m dinov2_cell.run.train`: train locally, under torchrun, or on SLURM (`--slurm`).

Examples:
    python -m dinov2_cell.run.train --config-file configs/tiny_cpu_fluo.yaml --output-dir runs/fluo
    torchrun --nproc_per_node 8 -m dinov2_cell.run.train --config-file configs/cpjump1_vits14_fluo.yaml --output-dir D
    python -m dinov2_cell.run.train --config-file configs/cpjump1_vits14_fluo.yaml --output-dir D --slurm \\
        --nodes 1 --ngpus 4 --partition gpu --timeout 2880
    python -m dinov2_cell.run.train ... optim.epochs=10 train.batch_size_per_gpu=16   # key=value overrides
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def get_args_parser() -> argparse.ArgumentParser:
    """The training parser plus the SLURM options."""
    from dinov2_cell.run.submit import add_slurm_arguments
    from dinov2_cell.train.train import get_args_parser as training_parser

    parser = argparse.ArgumentParser(
        prog="python -m dinov2_cell.run.train",
        description="Local-aggregation DINOv2 training on Cell Painting plates (CPU, torchrun or SLURM).",
        parents=[training_parser(add_help=False)],
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return add_slurm_arguments(parser)


def main(argv=None) -> int:
    """Parses arguments, then trains here or submits; returns the exit code."""
    args = get_args_parser().parse_intermixed_args(argv)
    args.output_dir = os.path.abspath(args.output_dir or "output")
    if not args.slurm:
        from dinov2_cell.train.train import main as train_main

        print(train_main(args))
        return 0

    from dinov2_cell.run.submit import submit
    from dinov2_cell.train.train import prepare_config

    logging.basicConfig(level=logging.INFO)
    prepare_config(args)  # fail here, not in the queue: bad keys or a foreign output dir, before submission
    job = submit(args)
    print(f"submitted job {job.job_id}: output in {args.output_dir}")
    if args.wait:
        print(job.result())
    return 0


if __name__ == "__main__":
    sys.exit(main())
