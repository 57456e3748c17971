"""Training curves of any run folder: what `training_metrics.json` and the log hold, read while the run writes them.

Sources, in the run folder (``--out`` of ``python -m dinov2_cell.run.train``):

* ``training_metrics.json``: one JSON object per logged iteration (upstream's ``MetricLogger``: every 10 iterations
  and the last), with the losses, the schedules and, when computed, the ``health_*`` and ``probe_*`` values. A line
  being written (no closing brace yet) or cut by a crash is skipped and counted. A resumed run appends the iterations
  it replays from its checkpoint: the rows of the abandoned attempt from that iteration on are dropped, so the curves
  show the history the final weights come from.
* ``logs/log.txt`` (upstream's log): the ``health [i]: ...`` and ``probe [i]: ...`` lines of every computation
  (``training_metrics.json`` keeps only those that fall on a logged iteration), the collapse warnings, and, when
  ``training_metrics.json`` is missing, the meters of upstream's console line ``Training [i/N] ... name: value``.
"""

from __future__ import annotations

import json
import os
import re

HEALTH_KEYS = (
    "health_teacher_entropy_frac",
    "health_teacher_batch_entropy_frac",
    "health_rankme",
    "health_la_target_entropy_frac",
    "health_la_target_batch_entropy_frac",
)
PROBE_KEY = "probe_knn_accuracy"
METRICS_FILE = "training_metrics.json"
LOG_FILES = (os.path.join("logs", "log.txt"), "log.txt")
# Loss terms plotted besides the total, when the run logged them.
LOSS_TERMS = (
    "dino_local_crops_loss",
    "dino_global_crops_loss",
    "ibot_loss",
    "koleo_loss",
    "local_aggregation_loss",
    "local_aggregation_koleo_loss",
)

_TRAINING_LINE = re.compile(r"\]\s*Training\s+\[\s*(\d+)/(\d+)\](.*)$")
_METER = re.compile(r"(\w+): (-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)\b")
_HEALTH_LINE = re.compile(
    r"health \[(\d+)\]: teacher entropy ([\d.]+) log K, batch-mean ([\d.]+) log K, RankMe ([\d.]+)"
    r"(?:; local-aggregation targets ([\d.]+) / ([\d.]+) log K)?"
)
_PROBE_LINE = re.compile(r"probe \[(\d+)\]: kNN accuracy ([\d.]+) %")
# Warnings of the training's own loggers; Python's warnings module (py.warnings: library deprecations) is left out.
_WARNING_LINE = re.compile(r"^[WE]\d{8} [\d:.]+ \d+ (?!py\.warnings)\S+ \S+\] (.*)$")


class TrainingLog:
    """What a run folder tells about its training so far.

    Attributes:
        run_dir: the folder.
        rows: the logged iterations (one dict per ``training_metrics.json`` line, or per console line of the log),
            by iteration, replays of a resumed run removed.
        health: one dict per health computation (``health_iteration`` and the ``HEALTH_KEYS`` present), by iteration.
        probe: one dict per kNN probe (``probe_iteration``, ``probe_knn_accuracy`` in [0, 1]), by iteration.
        warnings: the log's warnings and errors (collapse flags among them; not Python's library warnings), in order.
        skipped_lines: unreadable ``training_metrics.json`` lines (a line being written, or cut by a crash).
        total_iterations: the run's planned iterations (``config.yaml``: epochs x epoch length), or None.
        finished: whether the final teacher checkpoint exists.
        sources: the files read.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.rows: list[dict] = []
        self.health: list[dict] = []
        self.probe: list[dict] = []
        self.warnings: list[str] = []
        self.skipped_lines = 0
        self.total_iterations: int | None = None
        self.finished = os.path.isfile(os.path.join(run_dir, "eval", "final", "teacher_checkpoint.pth"))
        self.sources: list[str] = []

    @property
    def last_iteration(self) -> int | None:
        """The last logged iteration (None before the first)."""
        its = [int(r["iteration"]) for r in self.rows] + [int(h["health_iteration"]) for h in self.health]
        return max(its) if its else None


def _keep_history(rows: list[dict], row: dict, key: str) -> None:
    # A resumed run logs again from its checkpoint's iteration: drop what the abandoned attempt logged from there on.
    while rows and rows[-1][key] >= row[key]:
        rows.pop()
    rows.append(row)


def read_metrics_file(path: str) -> tuple[list[dict], int]:
    """Rows of a ``training_metrics.json`` (JSON lines), tolerant of a line being written.

    Args:
        path: the file.

    Returns:
        (rows by iteration with replays of a resume removed, number of unreadable lines skipped).
    """
    rows: list[dict] = []
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(row, dict) or "iteration" not in row:
                skipped += 1
                continue
            _keep_history(rows, row, "iteration")
    return rows, skipped


def parse_log(path: str) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """Console rows, health computations, probes and warnings of an upstream-format log file.

    Args:
        path: the log (``logs/log.txt``).

    Returns:
        (rows, health, probe, warnings); rows and health by iteration with replays of a resume removed.
    """
    rows: list[dict] = []
    health: dict[int, dict] = {}
    probe: dict[int, dict] = {}
    warnings: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _TRAINING_LINE.search(line)
            if m:
                row = {"iteration": int(m.group(1))}
                for name, value in _METER.findall(m.group(3)):
                    if name not in ("eta", "time", "data", "mem"):
                        row[name] = float(value)
                _keep_history(rows, row, "iteration")
                continue
            m = _HEALTH_LINE.search(line)
            if m:
                it = int(m.group(1))
                h = {
                    "health_iteration": it,
                    "health_teacher_entropy_frac": float(m.group(2)),
                    "health_teacher_batch_entropy_frac": float(m.group(3)),
                    "health_rankme": float(m.group(4)),
                }
                if m.group(5) is not None:
                    h["health_la_target_entropy_frac"] = float(m.group(5))
                    h["health_la_target_batch_entropy_frac"] = float(m.group(6))
                health[it] = h  # a replayed iteration's later computation is the one the run continued from
                continue
            m = _PROBE_LINE.search(line)
            if m:
                probe[int(m.group(1))] = {"probe_iteration": int(m.group(1)), PROBE_KEY: float(m.group(2)) / 100}
                continue
            m = _WARNING_LINE.match(line.rstrip("\n"))
            if m:
                warnings.append(m.group(1))
    return rows, [health[i] for i in sorted(health)], [probe[i] for i in sorted(probe)], warnings


def _total_iterations(run_dir: str) -> int | None:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        return int(cfg.optim.epochs) * int(cfg.train.OFFICIAL_EPOCH_LENGTH)
    except Exception:  # a config of another shape: the report just does not say how far the run is
        return None


def find_log(run_dir: str) -> str | None:
    """The run's log file (``logs/log.txt``, else ``log.txt``), or None."""
    for name in LOG_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    return None


def read_training(run_dir: str, log: str | None = None) -> TrainingLog:
    """Everything :class:`TrainingLog` holds for a run folder.

    Health and probe values come from ``training_metrics.json`` and, finer-grained, from the log's own lines (the
    log wins for an iteration both have: it has every computation).

    Args:
        run_dir: the run folder.
        log: the log file (default: :func:`find_log`).

    Returns:
        A :class:`TrainingLog`.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder, or holds neither ``training_metrics.json`` nor a log (named).
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: not a folder")
    out = TrainingLog(run_dir)
    metrics = os.path.join(run_dir, METRICS_FILE)
    log = log or find_log(run_dir)
    if not os.path.isfile(metrics) and log is None:
        raise FileNotFoundError(
            f"{run_dir}: no {METRICS_FILE} and no log ({' or '.join(LOG_FILES)}); is it a training run's "
            "--out, and has its first iteration been logged?"
        )
    health: dict[int, dict] = {}
    probe: dict[int, dict] = {}
    if os.path.isfile(metrics):
        out.rows, out.skipped_lines = read_metrics_file(metrics)
        out.sources.append(metrics)
        for r in out.rows:
            if "health_iteration" in r:
                health[int(r["health_iteration"])] = {k: r[k] for k in ("health_iteration", *HEALTH_KEYS) if k in r}
            if "probe_iteration" in r and PROBE_KEY in r:
                probe[int(r["probe_iteration"])] = {"probe_iteration": r["probe_iteration"], PROBE_KEY: r[PROBE_KEY]}
    if log is not None:
        rows, log_health, log_probe, out.warnings = parse_log(log)
        out.sources.append(log)
        if not out.rows:
            out.rows = rows
        for h in log_health:
            health[int(h["health_iteration"])] = {**health.get(int(h["health_iteration"]), {}), **h}
        for p in log_probe:
            probe[int(p["probe_iteration"])] = p
    out.health = [health[i] for i in sorted(health)]
    out.probe = [probe[i] for i in sorted(probe)]
    out.total_iterations = _total_iterations(run_dir)
    return out


# ------------------------------------------------------------------------------------------------------- figures


def plot_losses(ax, rows: list[dict], label: str = "", terms: bool = True, style: str = "-") -> None:
    """Total loss (and each logged loss term, dashed) against iteration on ``ax``.

    Args:
        ax: a matplotlib axis.
        rows: :attr:`TrainingLog.rows`.
        label: prefix of the legend entries.
        terms: also plot the terms of :data:`LOSS_TERMS` the rows carry.
        style: line style of the total.
    """
    prefix = f"{label}: " if label else ""
    its = [r["iteration"] for r in rows if "total_loss" in r]
    ax.plot(its, [r["total_loss"] for r in rows if "total_loss" in r], style, label=f"{prefix}total")
    if terms:
        for key in LOSS_TERMS:
            pts = [(r["iteration"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), "--", lw=1, label=f"{prefix}{key.replace('_loss', '')}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")


def plot_health(entropy_ax, rank_ax, health: list[dict], label: str = "", color=None) -> None:
    """Teacher entropies (per sample solid, batch mean dashed, / log K) and RankMe against iteration.

    Args:
        entropy_ax: axis of the entropies.
        rank_ax: axis of RankMe.
        health: :attr:`TrainingLog.health`.
        label: legend label of the run.
        color: line colour (default: the axis cycle).
    """
    its = [h["health_iteration"] for h in health]
    name = f"{label}: " if label else ""
    (line,) = entropy_ax.plot(
        its, [h.get("health_teacher_entropy_frac") for h in health], color=color, label=f"{name}per sample"
    )
    color = line.get_color()
    batch = [h.get("health_teacher_batch_entropy_frac") for h in health]
    entropy_ax.plot(its, batch, "--", color=color, label=f"{name}batch mean")
    rank_ax.plot(its, [h.get("health_rankme") for h in health], color=color, label=label or "RankMe")
    entropy_ax.axhline(0.5, color="k", lw=0.5, ls=":")
    entropy_ax.set_ylim(0, 1.02)
    entropy_ax.set_title("teacher entropy / log K (probe sites)")
    rank_ax.set_title("RankMe of teacher CLS (probe sites)")
    for ax in (entropy_ax, rank_ax):
        ax.set_xlabel("iteration")


def plot_probe(ax, probe: list[dict], label: str = "", chance: float | None = None) -> None:
    """kNN probe accuracy (%) against iteration.

    Args:
        ax: axis.
        probe: one dict per probe (``probe_iteration`` or ``iteration``, and ``probe_knn_accuracy`` or
            ``knn_mean_accuracy`` in [0, 1]).
        label: legend label.
        chance: chance level in [0, 1], drawn dotted when given.
    """
    its = [p.get("probe_iteration", p.get("iteration")) for p in probe]
    acc = [100 * p.get(PROBE_KEY, p.get("knn_mean_accuracy")) for p in probe]
    ax.plot(its, acc, "o-", label=label or "kNN probe")
    if chance is not None:
        ax.axhline(100 * chance, color="k", ls=":", label="chance")
    ax.set_xlabel("iteration")
    ax.set_ylabel("kNN accuracy (%)")


# -------------------------------------------------------------------------------------------------------- report


def health_table(health: list[dict], label: str | None = None, picks: str = "quarter") -> list[str]:
    """Markdown rows (no header) of chosen health computations with their collapse flags.

    Args:
        health: :attr:`TrainingLog.health`.
        label: first column (a run name), or None for no such column.
        picks: ``quarter`` (the one a quarter of the way and the last, as the demo shows) or ``all``.

    Returns:
        Lines.
    """
    from dinov2_cell.train.health import collapse_flags

    if not health:
        return []
    chosen = health if picks == "all" else [health[len(health) // 4], health[-1]]
    lines = []
    for r in chosen:
        la = r.get("health_la_target_entropy_frac")
        cells = [
            f"{r['health_iteration']:.0f}",
            f"{r.get('health_teacher_entropy_frac', float('nan')):.2f}",
            f"{r.get('health_teacher_batch_entropy_frac', float('nan')):.2f}",
            f"{r.get('health_rankme', float('nan')):.1f}",
        ]
        if label is None:
            cells.append("-" if la is None else f"{la:.2f}")
        cells.append("; ".join(collapse_flags(r)) or "none")
        lines.append("| " + " | ".join(([label] if label is not None else []) + cells) + " |")
    return lines


def write_training_report(run_dir: str, out_dir: str | None = None, log: str | None = None) -> dict:
    """PNGs and a short ``README.md`` of one run's training so far.

    Args:
        run_dir: the run folder.
        out_dir: where to write (default ``RUN_DIR/report``; replaced files are this report's own).
        log: the log file (default: :func:`find_log`).

    Returns:
        ``{"markdown": path, "figures": [paths], "training": TrainingLog}``.
    """
    from dinov2_cell.atomic import write_text
    from dinov2_cell.report._figures import pyplot, save_figure

    t = read_training(run_dir, log)
    out_dir = out_dir or os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    plt = pyplot()
    figures = []
    md = [f"# Training report: {os.path.abspath(run_dir)}", ""]
    progress = "finished" if t.finished else "in progress (or stopped)"
    of = f" of {t.total_iterations}" if t.total_iterations else ""
    last = t.last_iteration
    md += [
        f"Status: {progress}; last logged iteration {'-' if last is None else last}{of}. Read from "
        + ", ".join(f"`{os.path.relpath(s, run_dir)}`" for s in t.sources)
        + (f" ({t.skipped_lines} unreadable line(s) skipped)" if t.skipped_lines else "")
        + ".",
        "",
    ]
    if t.rows and any("total_loss" in r for r in t.rows):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        plot_losses(axes[0], t.rows, terms=False)
        axes[0].set_title("total loss")
        plot_losses(axes[1], t.rows, terms=True, style=":")
        axes[1].set_title("loss terms")
        axes[1].legend(fontsize=6)
        figures.append(save_figure(fig, os.path.join(out_dir, "loss_curves.png")))
        r = t.rows[-1]
        terms = ", ".join(f"{k} {r[k]:.4g}" for k in LOSS_TERMS if k in r)
        md += [
            "## Loss",
            "",
            f"Iteration {r['iteration']}: total {r.get('total_loss', float('nan')):.4g}"
            + (f" ({terms})" if terms else "")
            + (f"; lr {r['lr']:.3g}" if "lr" in r else "")
            + ".",
            "",
            "![loss curves](loss_curves.png)",
            "",
        ]
    if t.health:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        plot_health(axes[0], axes[1], t.health)
        key = "health_la_target_entropy_frac"
        la = [(h["health_iteration"], h[key]) for h in t.health if key in h]
        if la:
            axes[0].plot(*zip(*la), ":", label="local-aggregation targets, per sample")
        axes[0].legend(fontsize=7)
        figures.append(save_figure(fig, os.path.join(out_dir, "health_curves.png")))
        md += [
            "## Training health",
            "",
            "Teacher collapse diagnostics on fixed probe sites (uniform collapse: both entropies near 1; "
            "one-prototype collapse: both near 0; healthy: per-sample low, batch mean high; RankMe: effective rank "
            "of the teacher's CLS embeddings).",
            "",
            "| iteration | teacher entropy / log K | batch-mean / log K | RankMe | LA targets / log K | flags |",
            "|---|---|---|---|---|---|",
            *health_table(t.health, picks="all" if len(t.health) <= 12 else "quarter"),
            "",
            "![health curves](health_curves.png)",
            "",
        ]
    if t.probe:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        plot_probe(ax, t.probe)
        ax.set_title("kNN probe on held-out wells")
        ax.legend(fontsize=7)
        figures.append(save_figure(fig, os.path.join(out_dir, "probe_curve.png")))
        md += [
            "## kNN probe",
            "",
            "| iteration | kNN accuracy (%) |",
            "|---|---|",
            *[f"| {p['probe_iteration']:.0f} | {100 * p[PROBE_KEY]:.1f} |" for p in t.probe],
            "",
            "![kNN probe](probe_curve.png)",
            "",
        ]
    if t.warnings:
        shown = t.warnings[-20:]
        md += ["## Warnings in the log", ""]
        if len(t.warnings) > len(shown):
            md.append(f"(last {len(shown)} of {len(t.warnings)})")
            md.append("")
        md += [f"- {w}" for w in shown] + [""]
    if not (t.rows or t.health or t.probe):
        md += ["Nothing logged yet.", ""]
    path = write_text(os.path.join(out_dir, "README.md"), "\n".join(md))
    return {"markdown": path, "figures": figures, "training": t}
