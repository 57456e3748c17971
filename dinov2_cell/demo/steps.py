"""The demo's data and model steps: synthetic plates, trainings, random-init controls, profiles, checkpoint probe.

Each step is resumable: re-running skips what is complete.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
import time

logger = logging.getLogger("dinov2_cell.demo")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"fluo": "tiny_cpu_fluo", "bf": "tiny_cpu_bf"}  # packaged configs, by name
# The CellProfiler baseline's cost decides its settings. Measured per 96 px site of the demo's plates (one thread,
# shared machine): Costes' colocalization alone ~5 s; segmentation + every other family except the intensity
# Zernike moments 0.59 CPU s, so the demo's ~2000 sites would still need ~10 min of 2 cores. Hence: every core
# family except the intensity Zernikes, colocalization without Costes, the first --cp-sites-per-well sites of a well.
CP_FAMILIES = ("intensity", "sizeshape", "texture", "granularity", "radial_distribution", "correlation")
CP_CORRELATIONS = ("pearson", "manders_fold", "rwc")
# Two plates per cell line (plate-wise folds become leave-one-plate-out); BR00117015 is imaged with 16 sites per well.
DEMO_PLATES = ("BR00116995", "BR00117010", "BR00116991", "BR00117015")


def run_logged(cmd: list[str], log_path: str) -> None:
    """Runs a command from the repository root with its output appended to ``log_path``.

    Args:
        cmd: the command line.
        log_path: the log file (appended to).

    Raises:
        RuntimeError: the command failed; the message holds the last 30 lines of its log.
    """
    logger.info("$ %s", " ".join(cmd))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\nlast lines of {log_path}:\n{tail}")


def plate_request(plates: list[str]):
    """The ``plates`` argument of :func:`dinov2_cell.synthetic.generate_plates` for ``--plates`` (a count or names)."""
    return int(plates[0]) if len(plates) == 1 and plates[0].isdigit() else plates


def generate(args, plates_dir: str) -> None:
    """Step 1: synthetic plates (skipped when the folder already holds them)."""
    from dinov2_cell.synthetic import generate_plates

    if os.path.isfile(os.path.join(plates_dir, "synthetic_truth.csv")):
        logger.info("plates: %s already there", plates_dir)
        return
    generate_plates(
        plates_dir,
        plates=plate_request(args.plates),
        wells=args.wells,
        size=args.size,
        missing_sites=0.1,
        seed=args.seed,
        progress=not args.no_progress,
    )


def dataset_path(config_file: str, root: str) -> str:
    """The config's dataset string with `root` pointed at the demo's plates (its other keys, e.g. normalize, kept)."""
    from omegaconf import OmegaConf

    from dinov2_cell.train.config import resolve_config_file

    tokens = str(OmegaConf.load(resolve_config_file(config_file)).train.dataset_path).split(":")
    return ":".join([tokens[0], f"root={root}"] + [t for t in tokens[1:] if not t.startswith("root=")])


def train(args, plates_dir: str, runs_dir: str) -> dict[str, str]:
    """Step 2: the four trainings, each through the user-facing CLI (resumes if interrupted)."""
    runs = {}
    for group in ("fluo", "bf"):
        for variant, weight in (("la", None), ("nola", "0")):
            out = os.path.join(runs_dir, f"{group}_{variant}")
            runs[f"{group}_{variant}"] = out
            if os.path.isfile(os.path.join(out, "eval", "final", "teacher_checkpoint.pth")):
                continue
            cmd = [sys.executable, "-m", "dinov2_cell.run.train", "--config-file", CONFIGS[group], "--out", out]
            cmd.append(f"train.dataset_path={dataset_path(CONFIGS[group], plates_dir)}")
            if args.epochs is not None:
                cmd.append(f"optim.epochs={args.epochs}")
            if weight is not None:
                cmd.append(f"local_aggregation.loss_weight={weight}")
            if (group, variant) == ("fluo", "la"):  # teacher checkpoints along the run for the kNN probe curve
                cmd.append(f"evaluation.eval_period_iterations={probe_period(args, CONFIGS[group])}")
            t0 = time.time()
            run_logged(cmd, os.path.join(runs_dir, f"{group}_{variant}.log"))
            logger.info("trained %s in %.0f s", out, time.time() - t0)
    return runs


def probe_period(args, config_file: str) -> int:
    """Iterations between the teacher checkpoints of the kNN probe (``--probe-checkpoints`` along the run)."""
    from omegaconf import OmegaConf

    from dinov2_cell.train.config import resolve_config_file

    cfg = OmegaConf.load(resolve_config_file(config_file))
    epochs = args.epochs if args.epochs is not None else int(cfg.optim.epochs)
    return max(1, epochs * int(cfg.train.OFFICIAL_EPOCH_LENGTH) // args.probe_checkpoints)


def checkpoint_probe(args, plates_dir: str, run: str, random_run: str, out: str) -> list[dict]:
    """kNN probe of the teacher along one run: fluorescent-only profiles of each `eval/training_<i>` checkpoint.

    The random-init control (same architecture, not trained) stands at iteration 0.

    Returns:
        [{"iteration", "knn_mean_accuracy"}], by iteration.
    """
    from dinov2_cell.embed import embed_plates
    from dinov2_cell.eval.knn_wells import evaluate
    from dinov2_cell.profiles.io import read_profiles

    points = [(0, os.path.join(random_run, "eval", "final", "teacher_checkpoint.pth"))]
    for ckpt in glob.glob(os.path.join(run, "eval", "training_*", "teacher_checkpoint.pth")):
        points.append((int(os.path.basename(os.path.dirname(ckpt)).split("_")[-1]) + 1, ckpt))
    curve = []
    for iteration, ckpt in sorted(points):
        path = embed_plates({"fluo": ckpt}, plates_dir, os.path.join(out, f"iter_{iteration}"), progress=False)
        knn = evaluate(read_profiles(path), normalize=args.normalize)
        curve.append({"iteration": iteration, "knn_mean_accuracy": knn["mean"]["accuracy"]})
        logger.info("kNN probe, fluo teacher at iteration %d: %.1f %%", iteration, 100 * curve[-1]["knn_mean_accuracy"])
    return curve


def random_init_run(trained_run: str, out: str, seed: int) -> str:
    """Step 3: a run folder holding a randomly initialised teacher with the trained run's config."""
    import torch
    from omegaconf import OmegaConf

    from dinov2_cell.models.multichannel_vit import build_model

    ckpt = os.path.join(out, "eval", "final", "teacher_checkpoint.pth")
    if os.path.isfile(ckpt):
        return out
    cfg = OmegaConf.load(os.path.join(trained_run, "config.yaml"))
    torch.manual_seed(seed)
    backbone, _ = build_model(
        cfg.student, only_teacher=True, img_size=cfg.crops.global_crops_size, in_chans=int(cfg.student.in_chans)
    )
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    OmegaConf.save(cfg, os.path.join(out, "config.yaml"))
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, ckpt + ".tmp")
    os.replace(ckpt + ".tmp", ckpt)
    return out


def profiles(args, plates_dir: str, runs: dict[str, str], out: str, elapsed: dict | None = None) -> dict[str, str]:
    """Step 4: well profiles of every model variant (fluorescent + brightfield concatenated)."""
    from dinov2_cell.embed import embed_plates

    paths = {}
    pairs = {
        "ssl_local_aggregation": (runs["fluo_la"], runs["bf_la"]),
        "ssl_no_local_aggregation": (runs["fluo_nola"], runs["bf_nola"]),
        "random_init": (runs["fluo_random"], runs["bf_random"]),
    }
    for name, (fluo, bf) in pairs.items():
        t0 = time.time()
        paths[name] = embed_plates(
            {"fluo": fluo, "bf": bf}, plates_dir, os.path.join(out, name), progress=not args.no_progress
        )
        logger.info("profiles %s: %s (%.0f s)", name, paths[name], time.time() - t0)
    # A finished run is not recomputed: the driver skips plates with a part and keeps a merged table of them.
    # The user-facing CLI in its own process: its worker pool then forks a process that has not run torch.
    t0 = time.time()
    cp_out = os.path.join(out, "cellprofiler")
    cmd = [sys.executable, "-m", "dinov2_cell.profiles.cellprofiler", "--data-root", plates_dir, "--out", cp_out]
    cmd += ["--families", ",".join(CP_FAMILIES), "--correlations", ",".join(CP_CORRELATIONS)]
    cmd += [
        "--max-sites-per-well",
        str(args.cp_sites_per_well),
        "--num-workers",
        str(args.num_workers),
        "--no-progress",
    ]
    os.makedirs(out, exist_ok=True)
    run_logged(cmd, os.path.join(out, "cellprofiler.log"))
    paths["cellprofiler"] = os.path.join(cp_out, "profiles.parquet")
    logger.info("profiles cellprofiler: %s (%.0f s)", paths["cellprofiler"], time.time() - t0)
    if elapsed is not None:
        elapsed[f"CellProfiler features ({args.cp_sites_per_well} sites/well, {args.num_workers} workers)"] = (
            time.time() - t0
        )
    return paths
