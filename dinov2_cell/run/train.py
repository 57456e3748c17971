"""`python -m dinov2_cell.run.train`: train locally, under torchrun, or on SLURM (`--slurm`).

`--config-file` takes a packaged config's name (`tiny_cpu_fluo`, `cpjump1_vits14_fluo`, ...; a wrong name lists them)
or a path to a yaml file. Bad input prints one `error: ...` line and exits with status 2 (`--debug`: traceback).

Examples:
    python -m dinov2_cell.run.train --config-file tiny_cpu_fluo --out runs/fluo
    torchrun --nproc_per_node 4 -m dinov2_cell.run.train --config-file cpjump1_vits14_fluo --out D
    python -m dinov2_cell.run.train --config-file cpjump1_vits14_fluo --out D --slurm \\
        --nodes 1 --gpus-per-node 4 --partition gpu --time 48:00:00
    python -m dinov2_cell.run.train ... optim.epochs=10 train.batch_size_total=256   # key=value overrides
    python -m dinov2_cell.run.train ... train.batch_size_total=null train.batch_size_per_gpu=16   # opt out
"""

from __future__ import annotations

import argparse
import os
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
        help="only validate, write nothing: config keys, warm-ups vs optim.epochs, output dir, the total batch over "
        "--nodes x --gpus-per-node GPUs, and the data (train.dataset_path resolved: root, plates, channels vs "
        "student.in_chans, one readable site per plate); print a summary and exit (slurm/launch.sh runs this before "
        "submitting)",
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
    data = check_dataset(cfg)
    print(f"ok: {args.config_file}: {world} GPU(s) x batch {per_gpu} = total batch {world * per_gpu}; {data}")
    return 0


def check_dataset(cfg) -> str:
    """Opens `train.dataset_path` as training will and reads the first site of every plate.

    Checks that the root (or store) exists, that every plate named in `plates=` was found, that the channel count
    equals `student.in_chans`, and that one site per plate reads as a finite image. `normalize=plate` is checked as
    `percentile` (its per-plate statistics read many sites; the run computes them). A dataset name the plugin does not
    register (an upstream one) is only checked for an existing `root=`.

    Args:
        cfg: the prepared config (interpolations resolvable).

    Returns:
        A one-line summary, e.g. `data CPJUMP1: 2 plates, 54 sites, channels DNA,ER,RNA,AGP,Mito (= student.in_chans),
        first site of each plate read (64x64)`.

    Raises:
        FileNotFoundError: no such root or store.
        ValueError: a missing plate, a channel-count mismatch, an empty or unreadable dataset (named).
    """
    import numpy as np

    from dinov2_cell.columns import PLATE
    from dinov2_cell.data.registry import discard_target, parse_dataset_str

    dataset_str = str(cfg.train.dataset_path)
    name = dataset_str.split(":", 1)[0]
    parsed = parse_dataset_str(dataset_str)
    keys = dict(t.split("=", 1) for t in dataset_str.split(":")[1:] if "=" in t)
    for key in ("root", "store"):
        if keys.get(key) and not os.path.exists(keys[key]):
            raise FileNotFoundError(f"train.dataset_path: {key}={keys[key]}: no such file or folder")
    if parsed is None:
        return f"data {name}: not a plugin dataset, only its root was checked"
    class_, kwargs = parsed
    if kwargs.get("normalize") == "plate":
        kwargs["normalize"] = "percentile"
    try:
        dataset = class_(transform=None, target_transform=discard_target, **kwargs)
    except ValueError as e:  # DataIndexError included: say which setting it came from
        raise ValueError(f"train.dataset_path: {e}") from e
    if len(dataset) == 0:
        raise ValueError(f"train.dataset_path {dataset_str!r}: no sites")
    n = getattr(dataset, "num_channels", None)
    if n is not None and n != cfg.student.in_chans:
        raise ValueError(
            f"train.dataset_path gives {n}-channel images ({','.join(getattr(dataset, 'channel_names', []))}) but "
            f"student.in_chans is {cfg.student.in_chans}; set student.in_chans={n} or pick other channels"
        )
    plates = list(getattr(dataset, "plates", []))
    missing = [p for p in kwargs.get("plates") or [] if p not in plates]
    if missing:
        raise ValueError(f"train.dataset_path: plate(s) {', '.join(missing)} not found (found: {', '.join(plates)})")
    index = getattr(dataset, "index", None)
    firsts = [0] if index is None or PLATE not in index else list(np.flatnonzero(~index[PLATE].duplicated().to_numpy()))
    shape = None
    for i in firsts:
        image = dataset[int(i)][0]
        array = np.asarray(image)
        if array.ndim != 3 or not np.isfinite(array).all():
            where = getattr(dataset, "site_key", lambda j: j)(int(i))
            raise ValueError(f"train.dataset_path: sample {where} reads as shape {array.shape}, not finite C x H x W")
        shape = array.shape
    channels = ",".join(getattr(dataset, "channel_names", [])) or f"{shape[0]}"
    return (
        f"data {name}: {len(plates) or '?'} plate(s), {len(dataset)} sites, channels {channels} (= student.in_chans), "
        f"first site of {'each plate' if plates else 'the dataset'} read ({shape[1]}x{shape[2]})"
    )


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
