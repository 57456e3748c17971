"""Fidelity benchmark: the paper's ablation directions on synthetic plates, with confidence intervals over seeds.

Every arm is scored with the challenge kNN protocol (:func:`dinov2_cell.eval.knn_wells.evaluate`: top-1 compound
accuracy, plate-wise folds, the 4 train->test cell-line combinations and their mean) and copairs phenotypic activity
mAP (:func:`dinov2_cell.eval.map.map_scores`: fraction of compounds retrieved against DMSO at corrected p < 0.05).
Each seed ``s`` regenerates the synthetic plates with data seed ``s`` and trains every model with training seed
``s``, so the spread over seeds covers both sources of variation.

Arms (trained models are shared between the arms that only differ in post-processing):

* ``random_init``: randomly initialised ViTs (fluorescent + brightfield), no training;
* ``ssl_cls``: separate fluorescent and brightfield models with local aggregation, CLS token only per site;
* ``ssl``: the same models, CLS + mean patch token per site, 9 sites concatenated on the 3x3 grid (the method);
* ``joint_8ch``: one model on all 8 channels (fluorescent config with ``in_chans=8``, local aggregation on);
* ``no_local_aggregation``: separate models trained with ``local_aggregation.loss_weight=0``;
* ``site_mean``: the method's models, the 9 grid site vectors averaged instead of concatenated;
* ``aligned``: the method's profiles with cross-plate alignment (USES PLATE-LAYOUT KNOWLEDGE);
* ``fluo_plate_norm`` / ``fluo_percentile_norm``: fluorescent-only profiles of a fluorescent model trained and
  embedded with per-plate normalisation / per-image 0.1-99.9 percentile scaling (the tiny configs' choice: the
  fluorescent part of the method's profiles);
* ``center_ema``: the method with upstream's DINO centre (EMA momentum 0.9) instead of the tiny configs' batch
  centring (``dino.center_momentum=0``);
* ``classical``: the hand-made per-channel intensity/texture statistics (:mod:`dinov2_cell.profiles.baseline`).

Outputs under ``--out``: ``seed<s>/`` (plates, training runs, profiles: every step skipped when complete),
``results/<arm>/seed<s>.json`` (one per finished arm and seed, written atomically; a rerun skips it), and after each
seed ``fidelity.md``, ``fidelity.png`` and ``summary.json`` from whatever results exist.

Confidence intervals are two-sided 95 % Student t intervals over seeds (mean +- t_{0.975, n-1} * sd / sqrt(n), sd with
ddof=1). A paper direction "A beats B" is judged on the paired per-seed difference A - B: ``holds`` when its CI lies
above 0, ``reversed`` when below, ``unresolved`` when it contains 0 (or fewer than 2 paired seeds exist).

    python benchmarks/fidelity.py --out /work/fidelity_cpu                    # CPU preset (~22 min on 2 idle cores)
    python benchmarks/fidelity.py --out runs/fid_gpu --preset gpu             # one H200, ~8 minutes (not yet run)
    python benchmarks/fidelity.py --out /tmp/fid --preset toy --arms random_init,classical --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from any folder
    sys.path.insert(0, REPO)

logger = logging.getLogger("dinov2_cell.fidelity")

PROG = "python benchmarks/fidelity.py"
COMBINATIONS = ("U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549")

# Training runs: channel group -> config, extra overrides. The dataset root and seed are added per seed.
TRAININGS = {
    "fluo_la": ("tiny_cpu_fluo", [], None),
    "bf_la": ("tiny_cpu_bf", [], None),
    "fluo_nola": ("tiny_cpu_fluo", ["local_aggregation.loss_weight=0"], None),
    "bf_nola": ("tiny_cpu_bf", ["local_aggregation.loss_weight=0"], None),
    # One model on all 8 channels: the fluorescent config's augmentations (the paper's 8-channel baseline had no
    # per-group tuning either).
    "joint_la": ("tiny_cpu_fluo", ["student.in_chans=8"], {"channels": "all"}),
    # The tiny configs normalise per image (percentiles); the other normalisation, for its arm:
    "fluo_plate": ("tiny_cpu_fluo", [], {"normalize": "plate"}),
    # Upstream's DINO centre (EMA 0.9) instead of the tiny configs' batch centring (dino.center_momentum 0):
    "fluo_cema": ("tiny_cpu_fluo", ["dino.center_momentum=0.9"], None),
    "bf_cema": ("tiny_cpu_bf", ["dino.center_momentum=0.9"], None),
}
# Random-init ViTs: the trained runs' configs with untrained weights.
RANDOM = {"fluo_random": "tiny_cpu_fluo", "bf_random": "tiny_cpu_bf"}
# Embedded profile sets: name -> {feature prefix: run}.
PROFILE_SETS = {
    "la": {"fluo": "fluo_la", "bf": "bf_la"},
    "nola": {"fluo": "fluo_nola", "bf": "bf_nola"},
    "random": {"fluo": "fluo_random", "bf": "bf_random"},
    "joint": {"joint": "joint_la"},
    "fluo_plate": {"fluo": "fluo_plate"},
    "cema": {"fluo": "fluo_cema", "bf": "bf_cema"},
}
# Arm -> (description, profile set, post-processing).
ARMS = {
    "random_init": ("random-init ViT (fluo + bf)", "random", "full"),
    "ssl_cls": ("SSL, CLS token only", "la", "cls"),
    "ssl": ("SSL: CLS + patch, separate fluo/bf, LA on, concat (method)", "la", "full"),
    "joint_8ch": ("SSL, one joint 8-channel model", "joint", "full"),
    "no_local_aggregation": ("SSL, local aggregation off", "nola", "full"),
    "site_mean": ("SSL, 9 sites averaged", "la", "mean"),
    "aligned": (
        "SSL + cross-plate alignment (LABEL LEAKAGE: same position = same compound, test plates pooled)",
        "la",
        "aligned",
    ),
    "fluo_plate_norm": ("SSL fluo only, plate normalisation", "fluo_plate", "full"),
    "fluo_percentile_norm": ("SSL fluo only, per-image percentile", "la", "fluo"),
    "center_ema": ("SSL with upstream's centre EMA 0.9 (tiny configs: batch centring)", "cema", "full"),
    "classical": ("classical intensity/texture statistics", None, "classical"),
}
# Paper directions: (name, better arm, worse arm, source of the claim).
DIRECTIONS = (
    ("SSL beats random init", "ssl", "random_init", "implicit in the paper"),
    ("CLS + patch beats CLS only", "ssl", "ssl_cls", "paper ablation 20.3 -> 20.9"),
    ("separate fluo/bf beats joint 8-channel", "ssl", "joint_8ch", "paper ablation 20.9 -> 24.9"),
    ("local aggregation on beats off", "ssl", "no_local_aggregation", "paper ablation 35.4 -> 38.6 (main claim)"),
    ("9-site concatenation beats mean", "ssl", "site_mean", "paper Sec. 3.3"),
    ("cross-plate alignment beats none", "aligned", "ssl", "paper Sec. 3.3.3 (challenge score); here label leakage"),
    ("plate normalisation beats per-image percentile", "fluo_plate_norm", "fluo_percentile_norm", "issue 13 item 1"),
    (
        "SSL beats the classical baseline",
        "ssl",
        "classical",
        "paper: 38.6 vs 24.1 for the organisers' example representations (not said to be CellProfiler)",
    ),
    ("batch centring beats centre EMA 0.9", "ssl", "center_ema", "tiny configs' dino.center_momentum 0"),
)

# Size presets. Timings measured on the shared 2-core machine are in the README's fidelity section.
PRESETS = {
    "toy": dict(plates_per_line=2, wells=24, size=64, epochs=1, seeds="0,1", overrides=[], workers=1),
    "cpu": dict(plates_per_line=3, wells=64, size=96, epochs=15, seeds="0,1,2", overrides=[], workers=1),
    # One H200 with 16 CPU cores, sized for one 8-minute run from an ESTIMATE (not run yet: the session that wrote it
    # had no GPU): a 4-layer 192-wide ViT, 112 px global / 56 px local crops, batch 32 (4x the CPU batch), 100
    # iterations per model, 128 wells at 128 px, rendering and the classical features on 16 processes. The run is
    # resumable, so a second call on the same --out continues if the first one is cut short.
    "gpu": dict(
        plates_per_line=3,
        wells=128,
        size=128,
        epochs=10,
        seeds="0,1,2",
        overrides=[
            "student.arch=vit_cell_mini",
            "crops.global_crops_size=112",
            "crops.local_crops_size=56",
            "train.batch_size_per_gpu=32",
            "train.num_workers=8",
        ],
        workers=16,
    ),
}


# ------------------------------------------------------------------------------------------------------ statistics


def t_interval(values, confidence: float = 0.95) -> dict:
    """Mean and two-sided Student t confidence interval over seeds.

    Args:
        values: per-seed values (NaN-free).
        confidence: coverage (default 0.95).

    Returns:
        ``{"n", "mean", "sd", "half_width", "low", "high"}``; with one value the half width is NaN.
    """
    import numpy as np
    from scipy import stats

    x = np.asarray(list(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "half_width": math.nan, "low": math.nan, "high": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": math.nan, "half_width": math.nan, "low": math.nan, "high": math.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "low": mean - half, "high": mean + half}


def verdict(ci: dict) -> str:
    """``holds`` / ``reversed`` / ``unresolved`` for a paired difference (better - worse) and its CI.

    Args:
        ci: :func:`t_interval` of the per-seed differences.

    Returns:
        The verdict (``unresolved`` when fewer than 2 paired seeds exist).
    """
    if ci["n"] < 2 or math.isnan(ci["low"]):
        return "unresolved"
    if ci["low"] > 0:
        return "holds"
    if ci["high"] < 0:
        return "reversed"
    return "unresolved"


def summarise(results: list[dict]) -> dict:
    """Per-arm CIs of every metric and the paired verdict of every paper direction.

    Args:
        results: per (arm, seed) result dicts (``arm``, ``seed``, ``knn_mean``, ``knn`` per combination,
            ``map_activity``).

    Returns:
        ``{"arms": {arm: {metric: ci, "seeds": [...]}}, "directions": [...]}`` with metrics ``knn_mean``,
        ``knn <combination>`` and ``map_activity``.
    """
    by_arm: dict[str, dict[int, dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[int(r["seed"])] = r

    def metric(r: dict, name: str):
        if name.startswith("knn "):
            return r["knn"].get(name[4:])
        return r.get(name)

    metrics = ["knn_mean", *[f"knn {c}" for c in COMBINATIONS], "map_activity"]
    arms = {}
    for arm, seeds in by_arm.items():
        arms[arm] = {"seeds": sorted(seeds)}
        for m in metrics:
            vals = [metric(seeds[s], m) for s in sorted(seeds)]
            arms[arm][m] = t_interval([v for v in vals if v is not None and not math.isnan(v)])
    directions = []
    for name, better, worse, source in DIRECTIONS:
        entry = {"direction": name, "better": better, "worse": worse, "source": source}
        common = sorted(set(by_arm.get(better, {})) & set(by_arm.get(worse, {})))
        entry["seeds"] = common
        for m in ("knn_mean", "map_activity"):
            diffs = [metric(by_arm[better][s], m) - metric(by_arm[worse][s], m) for s in common]
            ci = t_interval(diffs)
            entry[m] = {"diff": ci, "verdict": verdict(ci), "per_seed": diffs}
        directions.append(entry)
    return {"arms": arms, "directions": directions}


def _fmt(ci: dict, scale: float = 100.0) -> str:
    if ci["n"] == 0:
        return "-"
    if ci["n"] < 2:
        return f"{scale * ci['mean']:.1f} (n=1)"
    return f"{scale * ci['mean']:.1f} ± {scale * ci['half_width']:.1f}"


def format_markdown(summary: dict, meta: dict) -> str:
    """The Markdown report: per-arm table (mean ± CI half width), direction verdicts, settings.

    Args:
        summary: :func:`summarise` output.
        meta: settings and progress (preset, sizes, seeds requested, complete/incomplete arms, timings).

    Returns:
        Markdown text.
    """
    arms = summary["arms"]
    lines = [
        "# Fidelity benchmark: paper ablation directions on synthetic plates",
        "",
        f"Settings: {meta['settings']}.",
        "",
        "Mean ± half width of the two-sided 95 % Student t interval over seeds (t_{0.975, n-1} · sd / √n, sd with "
        "ddof 1); each seed = its own synthetic plates (data seed) and its own training seed. kNN: top-1 compound "
        "accuracy %, DMSO omitted, plate-wise folds, mean of the 4 train->test combinations and each; mAP: % of "
        "compounds retrieved vs DMSO (copairs activity, corrected p < 0.05, mean over cell lines).",
        "",
    ]
    if meta.get("incomplete"):
        lines += [f"**PARTIAL RESULTS**: {meta['incomplete']}", ""]
    head = "| arm | seeds | kNN mean | " + " | ".join(COMBINATIONS) + " | mAP activity |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for arm, (desc, _, _) in ARMS.items():
        if arm not in arms:
            continue
        a = arms[arm]
        cells = [_fmt(a["knn_mean"]), *[_fmt(a[f"knn {c}"]) for c in COMBINATIONS], _fmt(a["map_activity"])]
        lines.append(f"| {arm}: {desc} | {','.join(map(str, a['seeds']))} | " + " | ".join(cells) + " |")
    if meta.get("chance"):
        lines += ["", f"Chance (1 / number of compounds): {100 * meta['chance']:.1f} %."]
    lines += [
        "",
        "## Paper directions (paired per-seed difference better - worse, 95 % t interval)",
        "",
        "| direction | source | seeds | Δ kNN mean | verdict (kNN) | Δ mAP activity | verdict (mAP) |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in summary["directions"]:
        k, m = d["knn_mean"], d["map_activity"]
        lines.append(
            f"| {d['direction']} ({d['better']} vs {d['worse']}) | {d['source']} | {len(d['seeds'])} | "
            f"{_fmt(k['diff'])} | {k['verdict']} | {_fmt(m['diff'])} | {m['verdict']} |"
        )
    lines += [
        "",
        "holds: the CI of the difference lies above 0; reversed: below 0; unresolved: it contains 0 (or < 2 seeds).",
    ]
    if meta.get("timings"):
        lines += ["", "Wall time per seed (s, shared machine): " + meta["timings"]]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str, chance: float | None = None) -> None:
    """PNG: kNN mean and mAP activity per arm with 95 % t intervals, and the paired direction differences.

    Args:
        summary: :func:`summarise` output.
        path: PNG path (written atomically).
        chance: kNN chance level (1 / number of compounds), drawn when given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dinov2_cell.atomic import atomic_path

    arms = [a for a in ARMS if a in summary["arms"]]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, m, title in zip(axes[:2], ("knn_mean", "map_activity"), ("kNN mean accuracy (%)", "mAP activity (%)")):
        cis = [summary["arms"][a][m] for a in arms]
        y = np.arange(len(arms))
        mean = [100 * c["mean"] for c in cis]
        err = [0 if math.isnan(c["half_width"]) else 100 * c["half_width"] for c in cis]
        ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3)
        if chance and m == "knn_mean":
            ax.axvline(100 * chance, color="k", ls=":", lw=0.8, label="chance")
            ax.legend(fontsize=8)
        ax.set_yticks(y, arms)
        ax.invert_yaxis()
        ax.set_title(title + ", 95 % t CI over seeds")
        ax.grid(axis="x", alpha=0.3)
    dirs = summary["directions"]
    y = np.arange(len(dirs))
    for off, m, label in ((-0.15, "knn_mean", "kNN mean"), (0.15, "map_activity", "mAP activity")):
        mean = [100 * d[m]["diff"]["mean"] for d in dirs]
        err = [0 if math.isnan(d[m]["diff"]["half_width"]) else 100 * d[m]["diff"]["half_width"] for d in dirs]
        axes[2].errorbar(mean, y + off, xerr=err, fmt="o", capsize=3, label=label)
    axes[2].axvline(0, color="k", lw=0.8)
    axes[2].set_yticks(y, [f"{d['better']} - {d['worse']}" for d in dirs], fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_title("paper directions: paired difference (points)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix="") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------- pipeline


def _log_step(name: str, t0: float, timings: dict) -> None:
    timings[name] = timings.get(name, 0.0) + time.time() - t0
    logger.info("%s done in %.0f s", name, time.time() - t0)


class SeedPipeline:
    """Plates, models and profiles of one seed, each built once (and skipped when already on disk)."""

    def __init__(self, args, seed: int):
        self.args, self.seed = args, seed
        self.dir = os.path.join(args.out, f"seed{seed}")
        self.plates_dir = os.path.join(self.dir, "plates")
        self.runs_dir = os.path.join(self.dir, "runs")
        self.timings: dict[str, float] = {}
        self._profiles: dict = {}

    def plates(self) -> str:
        """Synthetic plates of this seed (data seed = seed), as the demo makes them (10 % of wells lose sites)."""
        from dinov2_cell.synthetic import generate_plates
        from dinov2_cell.synthetic.biology import default_plates

        if not os.path.isfile(os.path.join(self.plates_dir, "synthetic_truth.csv")):
            t0 = time.time()
            shutil.rmtree(self.plates_dir, ignore_errors=True)  # a half-written folder from a killed run
            generate_plates(
                self.plates_dir,
                plates=default_plates(2 * self.args.plates_per_line),
                wells=self.args.wells,
                size=self.args.size,
                missing_sites=0.1,
                seed=self.seed,
                workers=self.args.workers,  # the output does not depend on it
                progress=False,
            )
            _log_step(f"seed {self.seed}: synthetic plates", t0, self.timings)
        return self.plates_dir

    def _overrides(self, config: str, dataset_keys: dict | None) -> list[str]:
        from dinov2_cell import demo

        path = demo.dataset_path(config, self.plates())
        for key, value in (dataset_keys or {}).items():
            tokens = [t for t in path.split(":") if not t.startswith(f"{key}=")]
            path = ":".join(tokens + [f"{key}={value}"])
        return [f"train.dataset_path={path}", f"optim.epochs={self.args.epochs}", *self.args.overrides]

    def run(self, name: str) -> str:
        """A trained (or random-init) run folder, trained through the user-facing CLI when missing."""
        from dinov2_cell import demo

        out = os.path.join(self.runs_dir, name)
        if os.path.isfile(os.path.join(out, "eval", "final", "teacher_checkpoint.pth")):
            return out
        os.makedirs(self.runs_dir, exist_ok=True)
        self.plates()  # before the clock starts: plate generation is timed on its own
        t0 = time.time()
        if name in RANDOM:
            from dinov2_cell.train.config import build_config, write_config

            template = os.path.join(self.runs_dir, f"{name}_config")
            os.makedirs(template, exist_ok=True)
            write_config(build_config(RANDOM[name], self._overrides(RANDOM[name], None)), template)
            demo.random_init_run(template, out, self.seed)
        else:
            config, extra, keys = TRAININGS[name]
            cmd = [sys.executable, "-m", "dinov2_cell.run.train", "--config-file", config, "--output-dir", out]
            cmd += ["--seed", str(self.seed), *self._overrides(config, keys), *extra]
            demo._run(cmd, os.path.join(self.runs_dir, f"{name}.log"))
        _log_step(f"seed {self.seed}: model {name}", t0, self.timings)
        return out

    def profiles(self, set_name: str):
        """Well profiles (DataFrame) of one profile set, embedded once per seed."""
        from dinov2_cell.embed import embed_plates
        from dinov2_cell.profiles.io import read_profiles

        if set_name not in self._profiles:
            if set_name == "classical":
                from dinov2_cell.profiles.baseline import baseline_profiles

                plates = self.plates()
                t0 = time.time()
                path = baseline_profiles(
                    plates,
                    os.path.join(self.dir, "profiles", "classical"),
                    num_workers=self.args.workers - 1,
                    progress=False,
                )
            else:
                runs = {prefix: self.run(run) for prefix, run in PROFILE_SETS[set_name].items()}
                t0 = time.time()
                path = embed_plates(
                    runs,
                    self.plates(),
                    os.path.join(self.dir, "profiles", set_name),
                    progress=False,
                    submission=False,
                    device=self.args.device,
                )
            self._profiles[set_name] = read_profiles(path)
            _log_step(f"seed {self.seed}: profiles {set_name}", t0, self.timings)
        return self._profiles[set_name]


def post_process(df, how: str, align_alpha: float):
    """The arm's post-processing of a profile table (SSL concat profiles: ``{prefix}p{pos}_{j}``).

    Args:
        df: well profiles.
        how: ``full`` (unchanged), ``cls`` (first half of every site vector: CLS token), ``mean`` (the 9 grid site
            vectors averaged), ``aligned`` (cross-plate alignment), ``fluo`` (fluorescent features only),
            ``classical`` (unchanged).
        align_alpha: alignment weight.

    Returns:
        The profile table of the arm.
    """
    import re

    import numpy as np
    import pandas as pd

    from dinov2_cell.profiles.io import feature_columns

    if how in ("full", "classical"):
        return df
    feats = feature_columns(df)
    meta = df.drop(columns=feats)
    if how == "aligned":
        from dinov2_cell.profiles.align import align_cross_plate

        return align_cross_plate(df, align_alpha)
    if how == "fluo":
        return pd.concat([meta, df[[c for c in feats if c.startswith("fluo_")]]], axis=1)
    pattern = re.compile(r"^(.*)p(\d+)_(\d+)$")
    parsed = [pattern.match(c) for c in feats]
    if not all(parsed):
        raise ValueError(f"post-processing {how!r} needs concat-mode columns <prefix>p<pos>_<j>, got {feats[:3]}")
    if how == "cls":
        dims: dict[str, int] = {}
        for m in parsed:
            dims[m.group(1)] = max(dims.get(m.group(1), 0), int(m.group(3)) + 1)
        keep = [c for c, m in zip(feats, parsed) if int(m.group(3)) < dims[m.group(1)] // 2]
        return pd.concat([meta, df[keep]], axis=1)
    if how == "mean":
        groups: dict[tuple, list] = {}
        for c, m in zip(feats, parsed):
            groups.setdefault((m.group(1), int(m.group(3))), []).append(c)
        values = {f"{p}{j:04d}": df[cols].to_numpy(np.float64).mean(axis=1) for (p, j), cols in groups.items()}
        return pd.concat([meta, pd.DataFrame(values, index=df.index)], axis=1)
    raise ValueError(f"unknown post-processing {how!r}")


def score(df, null_size: int, seed: int) -> dict:
    """Challenge kNN (mean and per combination) and activity mAP (fraction retrieved) of one profile table.

    Args:
        df: well profiles with metadata.
        null_size: copairs null size.
        seed: copairs seed.

    Returns:
        ``{"knn_mean", "knn": {combination: accuracy}, "map_activity", "chance", "n_wells"}``.
    """
    import logging as _logging

    from dinov2_cell.eval.knn_wells import evaluate
    from dinov2_cell.eval.map import map_scores

    _logging.getLogger("copairs").setLevel(_logging.WARNING)
    knn = evaluate(df)
    mp = map_scores(df, null_size=null_size, seed=seed, consistency=False)
    summ = [s for s in mp["activity"]["summary"].values() if s.get("n")]
    labels = df.loc[df["Metadata_pert_iname"] != "DMSO", "Metadata_broad_sample"]
    return {
        "knn_mean": float(knn["mean"]["accuracy"]),
        "knn": {c: float(v["accuracy"]) for c, v in knn["combinations"].items()},
        "map_activity": sum(s["fraction_retrieved"] for s in summ) / len(summ) if summ else math.nan,
        "chance": 1.0 / max(labels.nunique(), 1),
        "n_wells": int(len(df)),
    }


def result_path(out: str, arm: str, seed: int) -> str:
    """Where one (arm, seed) result lives."""
    return os.path.join(out, "results", arm, f"seed{seed}.json")


def load_results(out: str) -> list[dict]:
    """Every finished (arm, seed) result under ``out``."""
    rows = []
    root = os.path.join(out, "results")
    for arm in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for name in sorted(os.listdir(os.path.join(root, arm))):
            if name.startswith("seed") and name.endswith(".json"):
                with open(os.path.join(root, arm, name)) as f:
                    rows.append(json.load(f))
    return rows


def write_report(args, timings_by_seed: dict) -> str:
    """Summary JSON, Markdown and PNG from the results on disk; returns the Markdown path."""
    from dinov2_cell.atomic import write_text

    results = [r for r in load_results(args.out) if r["arm"] in args.arms and int(r["seed"]) in args.seeds]
    summary = summarise(results)
    done = {(r["arm"], int(r["seed"])) for r in results}
    missing = [f"{a}/seed{s}" for s in args.seeds for a in args.arms if (a, s) not in done]
    meta = {
        "settings": f"preset {args.preset}; {2 * args.plates_per_line} synthetic 9-site plates "
        f"({args.plates_per_line} U2OS + {args.plates_per_line} A549), {args.wells} wells per plate, {args.size} px "
        f"sites, {args.epochs * 10} training iterations per model (tiny configs"
        + (f", overrides {' '.join(args.overrides)}" if args.overrides else "")
        + f"), alignment alpha {args.align_alpha:g}, seeds requested {','.join(map(str, args.seeds))}",
        "incomplete": f"missing (arm/seed): {', '.join(missing)}" if missing else "",
        "chance": results[0]["chance"] if results else None,
        "timings": "; ".join(
            f"seed {s}: " + ", ".join(f"{k.split(': ', 1)[-1]} {v:.0f}" for k, v in t.items())
            for s, t in sorted(timings_by_seed.items())
            if t
        ),
    }
    write_text(os.path.join(args.out, "summary.json"), json.dumps({"meta": meta, **summary}, indent=1))
    md_path = os.path.join(args.out, "fidelity.md")
    write_text(md_path, format_markdown(summary, meta) + "\n![fidelity](fidelity.png)\n")
    if results:
        plot(summary, os.path.join(args.out, "fidelity.png"), meta["chance"])
    return md_path


def run_benchmark(args) -> str:
    """Every requested (arm, seed), seeds outermost (so a partial run has complete seeds), then the report."""
    from dinov2_cell.atomic import write_text

    timings_by_seed = {}
    t_all = time.time()
    for seed in args.seeds:
        pipe = SeedPipeline(args, seed)
        timings_by_seed[seed] = pipe.timings
        for arm in args.arms:
            path = result_path(args.out, arm, seed)
            if os.path.isfile(path):
                print(f"[fidelity] {arm} seed {seed}: done earlier, skipped", flush=True)
                continue
            t0 = time.time()
            _, set_name, how = ARMS[arm]
            df = post_process(pipe.profiles(set_name or "classical"), how, args.align_alpha)
            t1 = time.time()
            res = score(df, args.null_size, seed)
            pipe.timings[f"seed {seed}: scoring"] = pipe.timings.get(f"seed {seed}: scoring", 0.0) + time.time() - t1
            res.update(arm=arm, seed=seed, seconds=time.time() - t0, n_features=int(df.shape[1]))
            write_text(path, json.dumps(res, indent=1))
            print(
                f"[fidelity] {arm} seed {seed}: kNN mean {100 * res['knn_mean']:.1f} %, mAP activity "
                f"{100 * res['map_activity']:.0f} % ({time.time() - t0:.0f} s; {time.time() - t_all:.0f} s elapsed)",
                flush=True,
            )
        with open(os.path.join(pipe.dir, "timings.json"), "a") as f:  # appended per invocation (resumed runs)
            f.write(json.dumps(pipe.timings) + "\n")
        path = write_report(args, timings_by_seed)
        print(f"[fidelity] seed {seed} complete; report {path}", flush=True)
        if args.clean_plates:
            shutil.rmtree(pipe.plates_dir, ignore_errors=True)
    return write_report(args, timings_by_seed)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    from dinov2_cell.cli import comma_list, common_parser

    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parser()],
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed when it exists)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu", help="size preset (default cpu)")
    p.add_argument("--seeds", type=comma_list, help="comma-separated seeds (data and training); default per preset")
    p.add_argument("--arms", type=comma_list, help=f"comma-separated arms (default all: {','.join(ARMS)})")
    p.add_argument("--plates-per-line", type=int, help="synthetic plates per cell line (>= 2)")
    p.add_argument("--wells", type=int, help="wells per plate (<= 384; 384 = all)")
    p.add_argument("--size", type=int, help="site side in pixels")
    p.add_argument("--epochs", type=int, help="training epochs of 10 iterations per model")
    p.add_argument("--align-alpha", type=float, default=0.5, help="cross-plate alignment weight (default 0.5)")
    p.add_argument("--null-size", type=int, default=2000, help="copairs null size (default 2000)")
    p.add_argument("--device", default=None, help="embedding device (default: cuda if available, else cpu)")
    p.add_argument("--clean-plates", action="store_true", help="delete each seed's plates once it is complete")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/MKL threads of this process and its training subprocesses (default 1: on the shared 2-core machine "
        "torch's default 2 threads made a training step 14x and a classical site 20x slower under load)",
    )
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the results on disk")
    return p


def resolve_args(args) -> argparse.Namespace:
    """Fill preset defaults and check the options (UsageError names the bad flag)."""
    from dinov2_cell.cli import UsageError

    preset = PRESETS[args.preset]
    for key in ("plates_per_line", "wells", "size", "epochs"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.overrides = list(preset["overrides"])
    args.workers = int(preset["workers"])
    try:
        args.seeds = [int(s) for s in (args.seeds or preset["seeds"].split(","))]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {args.seeds}")
    args.arms = list(args.arms or ARMS)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise UsageError(f"--arms: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    if args.plates_per_line < 2:
        raise UsageError("--plates-per-line must be >= 2 (plate-wise folds need 2 plates per cell line)")
    if not 1 <= args.wells <= 384:
        raise UsageError(f"--wells must be in 1..384, got {args.wells}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.epochs < 1 or args.size < 16:
        raise UsageError("--epochs must be >= 1 and --size >= 16")
    if not 0.0 <= args.align_alpha <= 1.0:
        raise UsageError(f"--align-alpha must be in [0, 1], got {args.align_alpha}")
    args.out = os.path.abspath(args.out)
    return args


def main(argv=None) -> int:
    """CLI entry."""
    from dinov2_cell.cli import setup_logging

    args = resolve_args(build_parser().parse_args(argv))
    setup_logging(args.debug)
    os.makedirs(args.out, exist_ok=True)
    keys = ("preset", "plates_per_line", "wells", "size", "epochs", "overrides", "align_alpha", "null_size")
    settings = {k: getattr(args, k) for k in keys}
    settings_path = os.path.join(args.out, "settings.json")
    if os.path.isfile(settings_path):
        with open(settings_path) as f:
            earlier = json.load(f)
        # A key missing from an older settings file (written before it was recorded) is taken as agreeing.
        if any(earlier.get(k, v) != v for k, v in settings.items()):
            from dinov2_cell.cli import UsageError

            raise UsageError(
                f"{settings_path}: the folder holds a run with other settings {earlier}; use another --out"
            )
    else:
        from dinov2_cell.atomic import write_text

        write_text(settings_path, json.dumps(settings, indent=1))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by the training subprocesses
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    path = write_report(args, {}) if args.report_only else run_benchmark(args)
    print(f"[fidelity] report: {path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    from dinov2_cell.cli import run_main

    sys.exit(run_main(main, prog=PROG))
