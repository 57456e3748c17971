"""Primary benchmark: does training help? Pre-registered in ``benchmarks/results/primary_design.md``.

Arms (fluorescent channels only, one tiny ViT per arm and seed):

* ``random_init``: the ``tiny_cpu_fluo`` architecture at its random initialisation;
* ``ssl_nola``: trained with ``local_aggregation.loss_weight=0`` and ``keep_koleo_when_off=true`` (the second-view
  KoLeo term kept, so only the cross-site DINO term is removed);
* ``ssl_la``: trained with the shipped ``tiny_cpu_fluo`` config (local aggregation on).

Each seed ``s`` generates its own plates (data seed ``s``) and trains with training seed ``s``. Profiles are
post-processed identically (per-plate ``mad_robustize`` against DMSO wells) and scored with the challenge kNN
protocol (primary metric: kNN mean), copairs activity mAP (continuous mean and fraction retrieved) and the
within-well minus between-well site cosine. The primary contrasts ``ssl_la - random_init`` and
``ssl_la - ssl_nola`` are tested with an exact sign-flip permutation test, Holm-corrected, beside the t interval.

Outputs under ``--out``: ``seed<s>/`` (plates, runs, profiles; each step skipped when complete),
``results/<arm>/seed<s>.json`` (written atomically, skipped on rerun), ``probe/seed<s>.json`` (``--probe``),
and ``primary.md`` / ``primary.json`` / ``primary.png`` built from whatever results exist.

    python benchmarks/primary.py --out /work/primary --jobs 2                   # the pre-registered 10 seeds
    python benchmarks/primary.py --out /work/primary_tuning --seeds 901,902,903 --probe --jobs 2
    python benchmarks/primary.py --out /tmp/p --iterations 20 --wells 24 --size 64 --seeds 1,2   # smoke
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:  # run as a script from any folder; fidelity.py's statistics and plates are reused
        sys.path.insert(0, path)

from fidelity_pipeline import SeedPipeline, result_path  # noqa: E402

logger = logging.getLogger("dinov2_cell.primary")

PROG = "python benchmarks/primary.py"
DESIGN = os.path.join(HERE, "results", "primary_design.md")
PRIMARY_SEEDS = tuple(range(1001, 1011))
COMBINATIONS = ("U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549")
CONFIG = "tiny_cpu_fluo"
ARMS = {
    "random_init": ("random-init ViT (no training)", None),
    "ssl_nola": (
        "SSL, cross-site DINO term off (its KoLeo kept)",
        ["local_aggregation.loss_weight=0", "local_aggregation.keep_koleo_when_off=true"],
    ),
    "ssl_la": ("SSL with local aggregation (the method)", []),
}
CONTRASTS = (
    ("SSL with local aggregation beats random init", "ssl_la", "random_init"),
    ("local aggregation on beats off (cross-site DINO term)", "ssl_la", "ssl_nola"),
)
NORMALIZE = "mad_robustize"  # pre-registered post-processing, identical for every arm
PROBE_ITERATIONS = (150, 400, 1000, 2000)
METRICS = ("knn_mean", "map_mean", "map_retrieved", "knn_mean_raw", "site_cosine_gap")
METRIC_LABELS = {
    "knn_mean": "kNN mean (primary)",
    "map_mean": "mean mAP activity",
    "map_retrieved": "fraction retrieved",
    "knn_mean_raw": "kNN mean, raw profiles",
    "site_cosine_gap": "within - between well site cosine",
}


# ------------------------------------------------------------------------------------------------------ statistics


def sign_flip_p(diffs) -> float:
    """Two-sided exact sign-flip permutation p-value of the mean of paired differences.

    Every one of the 2^n sign vectors is applied; p = fraction whose |mean| >= the observed |mean| (the identity
    included, so p >= 2^-n).

    Args:
        diffs: per-seed paired differences.

    Returns:
        The p-value (NaN for no differences).
    """
    import numpy as np

    d = np.asarray(list(diffs), dtype=np.float64)
    n = len(d)
    if n == 0:
        return math.nan
    if n > 20:
        raise ValueError(f"exact sign-flip test enumerates 2^n vectors; n = {n} is too many")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    means = np.abs(signs @ d) / n
    observed = abs(d.mean())
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def holm(pvalues) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input order.

    Args:
        pvalues: raw p-values.

    Returns:
        Adjusted p-values.
    """
    p = list(pvalues)
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def seeds_for_power(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest n for which a two-sided paired t-test at ``alpha`` has ``power`` to detect mean difference ``delta``.

    Uses the noncentral t distribution with n - 1 degrees of freedom and noncentrality delta / (sd / sqrt(n)).

    Args:
        sd: standard deviation of the paired differences.
        delta: the difference to detect (same unit).
        alpha: two-sided level.
        power: wanted power.

    Returns:
        n (inf when delta is 0 or sd is not finite; capped search at 100000).
    """
    from scipy import stats

    if not (sd > 0 and math.isfinite(sd)) or delta == 0:
        return math.inf
    for n in itertools.chain(range(2, 1000), range(1000, 100001, 100)):
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        nc = abs(delta) / (sd / math.sqrt(n))
        achieved = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
        if achieved >= power:
            return float(n)
    return math.inf


def site_cosine_gap(df, prefix: str = "fluo_") -> dict:
    """Mean cosine between site embeddings of the same well minus that between sites of different wells.

    Site vectors are read from concat-mode columns ``<prefix>p<pos>_<j>`` (one vector per grid position), centred on
    the mean site vector of the table, then L2-normalised. Within = mean over wells of the mean pairwise cosine of
    the well's sites; between = mean cosine over all pairs of sites from different wells. Computed exactly from
    per-well sums: for unit vectors, the sum of pairwise dot products of a set S is (|sum S|^2 - |S|) / 2.

    Args:
        df: well profiles in concat mode.
        prefix: feature prefix of the model.

    Returns:
        ``{"within", "between", "gap"}``.
    """
    import re

    import numpy as np

    pattern = re.compile(rf"^{re.escape(prefix)}p(\d+)_(\d+)$")
    cols = {}
    for c in df.columns:
        m = pattern.match(str(c))
        if m:
            cols.setdefault(int(m.group(1)), []).append((int(m.group(2)), c))
    if not cols:
        raise ValueError(f"no concat-mode columns {prefix}p<pos>_<j> in the profiles")
    blocks = [[c for _, c in sorted(v)] for _, v in sorted(cols.items())]
    x = np.stack([df[b].to_numpy(np.float64) for b in blocks], axis=1)  # wells x sites x dim
    x = x - x.reshape(-1, x.shape[-1]).mean(axis=0)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    n_wells, n_sites, _ = x.shape
    well_sums = x.sum(axis=1)
    within_pairs = (np.einsum("wd,wd->w", well_sums, well_sums) - n_sites) / 2
    within = float(np.mean(within_pairs / (n_sites * (n_sites - 1) / 2)))
    total = well_sums.sum(axis=0)
    all_pairs = (total @ total - n_wells * n_sites) / 2
    between_pairs = all_pairs - within_pairs.sum()
    n_between = (n_wells * n_sites) * (n_wells * n_sites - 1) / 2 - n_wells * n_sites * (n_sites - 1) / 2
    between = float(between_pairs / n_between)
    return {"within": within, "between": between, "gap": within - between}


def summarise(results: list[dict]) -> dict:
    """Per-arm intervals of every metric and the paired tests of the contrasts.

    Args:
        results: per (arm, seed) result dicts.

    Returns:
        ``{"arms": {arm: {"seeds", metric: ci}}, "contrasts": [...]}``; contrast entries hold per-seed differences,
        the t interval, the sign-flip p, the paired t p, the Holm-adjusted p (primary metric) and the verdict.
    """
    from scipy import stats

    from bench_stats import t_interval

    by_arm: dict[str, dict[int, dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[int(r["seed"])] = r
    arms = {}
    for arm, seeds in by_arm.items():
        arms[arm] = {"seeds": sorted(seeds)}
        for m in METRICS:
            arms[arm][m] = t_interval([seeds[s][m] for s in sorted(seeds) if _finite(seeds[s].get(m))])
    contrasts = []
    for name, better, worse in CONTRASTS:
        common = sorted(set(by_arm.get(better, {})) & set(by_arm.get(worse, {})))
        entry = {"contrast": name, "better": better, "worse": worse, "seeds": common}
        for m in METRICS:
            diffs = [by_arm[better][s][m] - by_arm[worse][s][m] for s in common]
            diffs = [d for d in diffs if _finite(d)]
            ci = t_interval(diffs)
            t_p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) > 1 and ci["sd"] > 0 else math.nan
            entry[m] = {"per_seed": diffs, "diff": ci, "sign_flip_p": sign_flip_p(diffs), "t_p": t_p}
        contrasts.append(entry)
    adjusted = holm([c["knn_mean"]["sign_flip_p"] for c in contrasts])
    for c, p in zip(contrasts, adjusted):
        k = c["knn_mean"]
        k["holm_p"] = p
        if len(c["seeds"]) < 2 or math.isnan(p) or p >= 0.05:
            k["verdict"] = "not shown"
        else:
            k["verdict"] = "holds" if k["diff"]["mean"] > 0 else "reversed"
        sd = k["diff"]["sd"]
        k["seeds_for_80pct_power"] = {
            "observed_difference": seeds_for_power(sd, k["diff"]["mean"]),
            "3.2_points": seeds_for_power(sd, 0.032),
        }
    return {"arms": arms, "contrasts": contrasts}


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


# ------------------------------------------------------------------------------------------------------- pipeline


class SeedRun(SeedPipeline):
    """Plates, trained runs and profiles of one seed, each built once (and skipped when on disk).

    The plates come from the fidelity benchmark's :meth:`SeedPipeline.plates` (same generator call, data seed = seed).
    """

    def _time(self, name: str, t0: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.time() - t0
        print(f"[primary] seed {self.seed}: {name} done in {time.time() - t0:.0f} s", flush=True)

    def overrides(self) -> list[str]:
        from dinov2_cell import demo

        return [
            f"train.dataset_path={demo.dataset_path(CONFIG, self.plates())}",
            f"optim.epochs={self.args.iterations // 10}",
            f"evaluation.eval_period_iterations={self.args.checkpoint_every}",
        ]

    def run(self, arm: str) -> str:
        """The run folder of an arm (trained through the user-facing CLI, or random init), built when missing."""
        from dinov2_cell import demo

        out = os.path.join(self.runs_dir, arm)
        if os.path.isfile(os.path.join(out, "eval", "final", "teacher_checkpoint.pth")):
            return out
        os.makedirs(self.runs_dir, exist_ok=True)
        overrides = self.overrides()
        t0 = time.time()
        extra = ARMS[arm][1]
        if extra is None:
            from dinov2_cell.train.config import build_config, write_config

            template = os.path.join(self.runs_dir, f"{arm}_config")
            os.makedirs(template, exist_ok=True)
            write_config(build_config(CONFIG, overrides), template)
            demo.random_init_run(template, out, self.seed)
        else:
            cmd = [sys.executable, "-m", "dinov2_cell.run.train", "--config-file", CONFIG, "--out", out]
            cmd += ["--seed", str(self.seed), *overrides, *extra]
            demo.run_logged(cmd, os.path.join(self.runs_dir, f"{arm}.log"))
        self._time(f"model {arm}", t0)
        return out

    def profiles(self, arm: str, checkpoint: str | None = None, name: str | None = None):
        """Fluorescent-only well profiles of an arm's final teacher (or of ``checkpoint``)."""
        from dinov2_cell.embed import embed_plates
        from dinov2_cell.profiles.io import read_profiles

        source = checkpoint or self.run(arm)
        out = os.path.join(self.dir, "profiles", name or arm)
        t0 = time.time()
        path = embed_plates({"fluo": source}, self.plates(), out, progress=False, submission=False, device="cpu")
        self._time(f"profiles {name or arm}", t0)
        return read_profiles(path)


def score(df, null_size: int, seed: int, full: bool = True) -> dict:
    """The pre-registered metrics of one profile table.

    Args:
        df: fluorescent-only well profiles (concat mode).
        null_size: copairs null size.
        seed: copairs seed.
        full: also the secondary metrics (mAP, raw kNN, site cosine); False = the primary kNN only (probes).

    Returns:
        ``knn_mean``, ``knn`` per combination, and with ``full``: ``map_mean``, ``map_retrieved`` (each the mean over
        cell lines), ``map_per_line``, ``knn_mean_raw``, ``site_cosine`` and ``site_cosine_gap``, ``chance``.
    """
    from dinov2_cell.eval.knn_wells import evaluate
    from dinov2_cell.eval.map import map_scores

    logging.getLogger("copairs").setLevel(logging.WARNING)
    knn = evaluate(df, normalize=NORMALIZE)
    res = {
        "knn_mean": float(knn["mean"]["accuracy"]),
        "knn": {c: float(v["accuracy"]) for c, v in knn["combinations"].items()},
    }
    if not full:
        return res
    mp = map_scores(df, normalize=NORMALIZE, null_size=null_size, seed=seed, consistency=False)
    per_line = {k: v for k, v in mp["activity"]["summary"].items() if k != "all" and v.get("n")}
    raw = evaluate(df)
    labels = df.loc[df["Metadata_pert_iname"] != "DMSO", "Metadata_broad_sample"]
    cos = site_cosine_gap(df)
    res.update(
        map_mean=sum(v["mean_average_precision"] for v in per_line.values()) / max(len(per_line), 1),
        map_retrieved=sum(v["fraction_retrieved"] for v in per_line.values()) / max(len(per_line), 1),
        map_per_line=per_line,
        knn_mean_raw=float(raw["mean"]["accuracy"]),
        site_cosine=cos,
        site_cosine_gap=cos["gap"],
        chance=1.0 / max(labels.nunique(), 1),
        n_wells=int(len(df)),
    )
    return res


def run_seed(args, seed: int) -> None:
    """Every arm of one seed (then the probe curve with ``--probe``), skipping finished results."""
    from dinov2_cell.atomic import write_text

    pipe = SeedRun(args, seed)
    for arm in ARMS:
        path = result_path(args.out, arm, seed)
        if os.path.isfile(path):
            continue
        train_t0 = time.time()
        run_dir = pipe.run(arm)
        train_s = time.time() - train_t0
        df = pipe.profiles(arm)
        t0 = time.time()
        res = score(df, args.null_size, seed)
        pipe._time(f"scoring {arm}", t0)
        res.update(arm=arm, seed=seed, iterations=0 if ARMS[arm][1] is None else args.iterations)
        res["train_seconds_this_invocation"] = train_s
        metrics = os.path.join(run_dir, "training_metrics.json")
        if os.path.isfile(metrics):
            rows = [json.loads(line) for line in open(metrics)]
            res["final_total_loss"] = rows[-1].get("total_loss") if rows else None
        write_text(path, json.dumps(res, indent=1))
        print(
            f"[primary] {arm} seed {seed}: kNN mean {100 * res['knn_mean']:.1f} % (raw {100 * res['knn_mean_raw']:.1f}),"
            f" mAP {100 * res['map_mean']:.1f}, retrieved {100 * res['map_retrieved']:.0f} %, site cosine gap "
            f"{res['site_cosine_gap']:.3f}",
            flush=True,
        )
    if args.probe:
        probe_seed(args, pipe)
    with open(os.path.join(pipe.dir, "timings.json"), "a") as f:  # appended per invocation (resumed runs)
        f.write(json.dumps(pipe.timings) + "\n")


def probe_seed(args, pipe: SeedRun) -> None:
    """kNN probe (primary post-processing) of each trained arm's teacher at the probe iterations."""
    from dinov2_cell.atomic import write_text

    path = os.path.join(args.out, "probe", f"seed{pipe.seed}.json")
    done = json.load(open(path)) if os.path.isfile(path) else {}
    for arm, (_, extra) in ARMS.items():
        if extra is None:
            continue
        for it in args.probe_iterations:
            key = f"{arm}/{it}"
            if key in done or it > args.iterations:
                continue
            if it == args.iterations:  # the final teacher: its primary result already holds the same kNN
                done[key] = json.load(open(result_path(args.out, arm, pipe.seed)))["knn_mean"]
                write_text(path, json.dumps(done, indent=1))
                continue
            # upstream names a checkpoint by its 0-based iteration
            ckpt = os.path.join(pipe.run(arm), "eval", f"training_{it - 1}", "teacher_checkpoint.pth")
            if not os.path.isfile(ckpt):
                raise FileNotFoundError(f"{ckpt}: no teacher checkpoint at iteration {it} (--checkpoint-every?)")
            df = pipe.profiles(arm, ckpt, f"probe_{arm}_{it}")
            done[key] = score(df, args.null_size, pipe.seed, full=False)["knn_mean"]
            write_text(path, json.dumps(done, indent=1))
            shutil.rmtree(os.path.join(pipe.dir, "profiles", f"probe_{arm}_{it}"), ignore_errors=True)
            print(f"[primary] probe seed {pipe.seed} {arm} iteration {it}: kNN {100 * done[key]:.1f} %", flush=True)


# --------------------------------------------------------------------------------------------------------- report


def load_json_dir(root: str) -> list[dict]:
    """Every ``seed<s>.json`` under ``root`` (recursively)."""
    rows = []
    for dirpath, _, names in sorted(os.walk(root)) if os.path.isdir(root) else []:
        for name in sorted(names):
            if name.startswith("seed") and name.endswith(".json"):
                with open(os.path.join(dirpath, name)) as f:
                    rows.append(json.load(f))
    return rows


def design_sha256() -> str:
    with open(DESIGN, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _pm(ci: dict, scale: float = 100.0, digits: int = 1) -> str:
    if ci["n"] == 0:
        return "-"
    if ci["n"] < 2:
        return f"{scale * ci['mean']:.{digits}f} (n=1)"
    return f"{scale * ci['mean']:.{digits}f} ± {scale * ci['half_width']:.{digits}f}"


def _scale(metric: str) -> tuple[float, int]:
    return (1.0, 3) if metric == "site_cosine_gap" else (100.0, 1)


def probe_table(out: str) -> dict:
    """``{arm: {iteration: [per-seed kNN]}}`` from ``probe/``, plus the random init at iteration 0."""
    curves: dict[str, dict[int, list]] = {}
    probe_dir = os.path.join(out, "probe")
    for name in sorted(os.listdir(probe_dir)) if os.path.isdir(probe_dir) else []:
        seed = int(name[4:-5])
        values = json.load(open(os.path.join(probe_dir, name)))
        rand = result_path(out, "random_init", seed)
        if os.path.isfile(rand):
            curves.setdefault("random_init", {}).setdefault(0, []).append(json.load(open(rand))["knn_mean"])
        for key, v in values.items():
            arm, it = key.split("/")
            curves.setdefault(arm, {}).setdefault(int(it), []).append(v)
    return curves


def format_markdown(summary: dict, meta: dict, probe: dict) -> str:
    """The results page (the design is in ``primary_design.md``)."""
    from bench_stats import t_interval

    lines = [
        "# Primary benchmark results: does training help?",
        "",
        f"Design: [`primary_design.md`](primary_design.md) (SHA-256 `{meta['design_sha256'][:16]}`), fixed before "
        f"the first run. Settings: {meta['settings']}.",
        "",
    ]
    if meta.get("incomplete"):
        lines += [f"**PARTIAL RESULTS**: {meta['incomplete']}", ""]
    lines += [
        "Mean ± half width of the two-sided 95 % t interval over seeds. kNN in %, chance "
        + (f"{100 * meta['chance']:.1f} %." if meta.get("chance") else "-."),
        "",
        "| arm | seeds | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for arm, (desc, _) in ARMS.items():
        a = summary["arms"].get(arm)
        if a:
            cells = [_pm(a[m], *_scale(m)) for m in METRICS]
            lines.append(f"| {arm}: {desc} | {len(a['seeds'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Primary contrasts (kNN mean, paired by seed)",
        "",
        "| contrast | seeds | Δ (points, 95 % t CI) | sign-flip p | Holm p | verdict | seeds for 80 % power (observed Δ; 3.2 points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary["contrasts"]:
        k = c["knn_mean"]
        pw = k["seeds_for_80pct_power"]
        lines.append(
            f"| {c['contrast']} ({c['better']} - {c['worse']}) | {len(c['seeds'])} | {_pm(k['diff'])} | "
            f"{k['sign_flip_p']:.4f} | {k['holm_p']:.4f} | **{k['verdict']}** | "
            f"{_n(pw['observed_difference'])}; {_n(pw['3.2_points'])} |"
        )
    lines += [
        "",
        "## Secondary metrics of the contrasts (unadjusted, paired by seed)",
        "",
        "| contrast | " + " | ".join(f"Δ {METRIC_LABELS[m]} (p)" for m in METRICS[1:]) + " |",
        "|---|" + "---|" * (len(METRICS) - 1),
    ]
    for c in summary["contrasts"]:
        cells = [f"{_pm(c[m]['diff'], *_scale(m))} ({c[m]['sign_flip_p']:.3f})" for m in METRICS[1:]]
        lines.append(f"| {c['better']} - {c['worse']} | " + " | ".join(cells) + " |")
    lines += ["", "Per-seed values (kNN mean %, primary post-processing):", ""]
    seeds = sorted({s for a in summary["arms"].values() for s in a["seeds"]})
    lines += ["| arm | " + " | ".join(map(str, seeds)) + " |", "|---|" + "---|" * len(seeds)]
    for arm in ARMS:
        if arm in meta["per_seed"]:
            vals = meta["per_seed"][arm]
            lines.append(f"| {arm} | " + " | ".join(f"{100 * vals[s]:.1f}" if s in vals else "-" for s in seeds) + " |")
    if probe:
        its = sorted({i for c in probe.values() for i in c})
        lines += [
            "",
            "## kNN probe along training (descriptive; primary post-processing)",
            "",
            "| arm | " + " | ".join(f"it {i}" for i in its) + " |",
            "|---|" + "---|" * len(its),
        ]
        for arm, c in probe.items():
            lines.append(f"| {arm} | " + " | ".join(_pm(t_interval(c[i])) if i in c else "-" for i in its) + " |")
    if meta.get("timings"):
        lines += ["", f"Wall time: {meta['timings']}"]
    return "\n".join(lines) + "\n"


def _n(v: float) -> str:
    return "∞" if not math.isfinite(v) else str(int(v))


def plot(summary: dict, probe: dict, path: str) -> None:
    """PNG: per-seed kNN per arm (lines join a seed's arms) and the probe curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dinov2_cell.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    arms = [a for a in ARMS if a in summary["arms"]]
    per_seed = summary["_per_seed"]
    seeds = sorted({s for a in arms for s in per_seed.get(a, {})})
    for s in seeds:
        ys = [100 * per_seed[a].get(s, np.nan) for a in arms]
        axes[0].plot(range(len(arms)), ys, "o-", color="0.6", lw=0.8, ms=3)
    means = [100 * summary["arms"][a]["knn_mean"]["mean"] for a in arms]
    axes[0].plot(range(len(arms)), means, "s-", color="C3", lw=2, label="mean")
    axes[0].set_xticks(range(len(arms)), arms)
    axes[0].set_ylabel("kNN mean accuracy (%)")
    axes[0].set_title("per seed (grey) and mean (red)")
    axes[0].legend()
    for arm, c in probe.items():
        its = sorted(c)
        axes[1].errorbar(
            its,
            [100 * np.mean(c[i]) for i in its],
            yerr=[100 * np.std(c[i], ddof=1) if len(c[i]) > 1 else 0 for i in its],
            fmt="o-",
            capsize=3,
            label=arm,
        )
    axes[1].set_xlabel("training iteration")
    axes[1].set_ylabel("kNN mean accuracy (%)")
    axes[1].set_title("kNN probe along training (mean ± sd over seeds)")
    if probe:
        axes[1].legend()
    fig.tight_layout()
    with atomic_path(path, suffix="") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_report(args) -> str:
    """``primary.json``, ``primary.md`` and ``primary.png`` from the results on disk; returns the Markdown path."""
    from dinov2_cell.atomic import write_text

    results = [r for r in load_json_dir(os.path.join(args.out, "results")) if int(r["seed"]) in args.seeds]
    summary = summarise(results)
    per_seed: dict = {}
    for r in results:
        per_seed.setdefault(r["arm"], {})[int(r["seed"])] = r["knn_mean"]
    done = {(r["arm"], int(r["seed"])) for r in results}
    missing = [f"{a}/seed{s}" for s in args.seeds for a in ARMS if (a, s) not in done]
    timings = []
    for s in args.seeds:
        tpath = os.path.join(args.out, f"seed{s}", "timings.json")
        if os.path.isfile(tpath):
            total: dict = {}
            for line in open(tpath):
                for k, v in json.loads(line).items():
                    total[k] = total.get(k, 0.0) + v
            # probe embeddings are the descriptive part; plate keys come from SeedPipeline as "seed <s>: <step>"
            main_steps = {
                k.split(": ", 1)[-1]: v for k, v in total.items() if "probe_" not in k
            }  # probe embeddings: descriptive part
            timings.append(f"seed {s}: " + ", ".join(f"{k} {v:.0f} s" for k, v in main_steps.items()))
    meta = {
        "design_sha256": design_sha256(),
        "settings": f"{2 * args.plates_per_line} synthetic 9-site plates ({args.plates_per_line} per cell line), "
        f"{args.wells} wells per plate, {args.size} px sites, {args.iterations} training iterations of batch 8 "
        f"({CONFIG}), post-processing per-plate {NORMALIZE} vs DMSO, copairs null size {args.null_size}, seeds "
        f"{','.join(map(str, args.seeds))}",
        "incomplete": f"missing (arm/seed): {', '.join(missing)}" if missing else "",
        "chance": results[0].get("chance") if results else None,
        "per_seed": per_seed,
        "timings": "; ".join(timings),
    }
    probe = probe_table(args.out)
    out = {"meta": meta, **summary, "probe": {a: {str(i): v for i, v in c.items()} for a, c in probe.items()}}
    out["results"] = results
    write_text(os.path.join(args.out, "primary.json"), json.dumps(out, indent=1, default=str))
    md_path = os.path.join(args.out, "primary.md")
    write_text(md_path, format_markdown(summary, meta, probe) + "\n![primary](primary.png)\n")
    if results:
        plot({**summary, "_per_seed": per_seed}, probe, os.path.join(args.out, "primary.png"))
    return md_path


# ------------------------------------------------------------------------------------------------------------ CLI


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
    p.add_argument(
        "--seeds",
        type=comma_list,
        help=f"comma-separated seeds (default: the pre-registered {PRIMARY_SEEDS[0]}-" f"{PRIMARY_SEEDS[-1]})",
    )
    p.add_argument("--plates-per-line", type=int, default=4, help="synthetic plates per cell line (default 4)")
    p.add_argument("--wells", type=int, default=64, help="wells per plate (default 64)")
    p.add_argument("--size", type=int, default=96, help="site side in pixels (default 96)")
    p.add_argument("--iterations", type=int, default=2000, help="training iterations, a multiple of 10 (default 2000)")
    p.add_argument(
        "--checkpoint-every", type=int, default=50, help="teacher checkpoint period in iterations (default 50)"
    )
    p.add_argument("--null-size", type=int, default=2000, help="copairs null size (default 2000)")
    p.add_argument("--probe", action="store_true", help="also probe the teachers along training (descriptive)")
    p.add_argument(
        "--probe-iterations",
        type=comma_list,
        default=",".join(map(str, PROBE_ITERATIONS)),
        help="iterations probed with --probe, multiples of --checkpoint-every (default %(default)s)",
    )
    p.add_argument("--jobs", type=int, default=1, help="seeds run in parallel, one thread each (default 1)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the results on disk")
    return p


def resolve_args(args) -> argparse.Namespace:
    """Defaults and checks (UsageError names the bad flag)."""
    from dinov2_cell.cli import UsageError

    try:
        args.seeds = [int(s) for s in args.seeds] if args.seeds else list(PRIMARY_SEEDS)
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {args.seeds}")
    if args.plates_per_line < 2:
        raise UsageError("--plates-per-line must be >= 2 (plate-wise folds need 2 plates per cell line)")
    if not 1 <= args.wells <= 384:
        raise UsageError(f"--wells must be in 1..384, got {args.wells}")
    if args.iterations < 10 or args.iterations % 10:
        raise UsageError(f"--iterations must be a positive multiple of 10, got {args.iterations}")
    if args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    try:
        args.probe_iterations = [int(i) for i in args.probe_iterations]
    except ValueError:
        raise UsageError(f"--probe-iterations must be comma-separated integers, got {args.probe_iterations}")
    bad = [i for i in args.probe_iterations if i < 1 or (i % args.checkpoint_every and i != args.iterations)]
    if bad:
        raise UsageError(f"--probe-iterations {bad}: each must be a multiple of --checkpoint-every or --iterations")
    args.workers = 1  # plate generation (SeedPipeline.plates); its output does not depend on it
    args.out = os.path.abspath(args.out)
    return args


def check_settings(args) -> None:
    """Refuses to mix runs of other settings in one folder (the results would not be comparable)."""
    from dinov2_cell.atomic import write_text
    from dinov2_cell.cli import UsageError

    keys = ("plates_per_line", "wells", "size", "iterations", "checkpoint_every", "null_size")
    settings = {k: getattr(args, k) for k in keys}
    path = os.path.join(args.out, "settings.json")
    if os.path.isfile(path):
        earlier = json.load(open(path))
        if earlier != settings:
            raise UsageError(f"{path}: the folder holds a run with other settings {earlier}; use another --out")
    else:
        write_text(path, json.dumps(settings, indent=1))


def main(argv=None) -> int:
    """CLI entry."""
    from dinov2_cell.cli import setup_logging

    args = resolve_args(build_parser().parse_args(argv))
    setup_logging(args.debug)
    os.makedirs(args.out, exist_ok=True)
    check_settings(args)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by the training subprocesses
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    if not args.report_only:
        if args.jobs > 1 and len(args.seeds) > 1:
            # one child per slice of seeds; each writes its own seed folders and result files
            base = [a for a in (argv if argv is not None else sys.argv[1:])]
            base = _strip(base, ("--seeds", "--jobs"))
            procs = []
            for j in range(min(args.jobs, len(args.seeds))):
                part = args.seeds[j :: args.jobs]
                cmd = [
                    sys.executable,
                    os.path.abspath(__file__),
                    *base,
                    "--seeds",
                    ",".join(map(str, part)),
                    "--jobs",
                    "1",
                ]
                procs.append(subprocess.Popen(cmd))
            codes = [p.wait() for p in procs]
            if any(codes):
                # the finished seeds are reported; a rerun resumes the others
                path = write_report(args)
                raise RuntimeError(f"a worker failed (exit codes {codes}); finished seeds in {path}; rerun to resume")
        else:
            for seed in args.seeds:
                run_seed(args, seed)
                write_report(args)
    path = write_report(args)
    print(f"[primary] report: {path} ({time.time() - t0:.0f} s)", flush=True)
    return 0


def _strip(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` without the given flags and their values (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in flags):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    from dinov2_cell.cli import run_main

    sys.exit(run_main(main, prog=PROG))
