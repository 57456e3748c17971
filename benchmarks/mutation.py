"""Mutation testing of the core modules with mutmut: ``make mutation`` / ``python benchmarks/mutation.py``.

For each core module (``MODULES``), mutmut makes small changes to its source one at a time (an operator flipped, a
constant changed, an argument dropped, ...) and runs that module's tests only (the test files listed beside it); a
mutant is *killed* when a test fails. The score of a module is killed / (mutants - skipped): a surviving mutant is
either a gap in the tests or an equivalent change (one that cannot alter behaviour, e.g. a log message), which
``docs/testing.md`` asks to be listed with its reason.

The working tree is never modified: each module is run in its own copy of the repository under ``--work`` (default a
fresh temporary folder), where mutmut writes its ``mutants/`` tree. In that copy the top-level ``patches/`` folder
is also placed inside the package (``dinov2_cell/patches``), the name it is imported under, so that mutants of
``patches/fsdp.py`` are the code the tests run.

Outputs: one line per module (killed, survived, no tests, timeout, suspicious, total, score), a summary JSON
(``--json``) and, for each module, the diffs of its surviving mutants (``<work>/<module>/survivors.txt``).
The run takes long on a laptop (each mutant reruns the module's tests); pass module keys to run some only, e.g.
``python benchmarks/mutation.py profiles/merge.py train/local_aggregation.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dinov2_cell.cli import HelpFormatter, UsageError, common_parser, run_main

REPO = Path(__file__).resolve().parent.parent
PROG = "python benchmarks/mutation.py"

# module (under dinov2_cell/, or patches/) -> the tests that exercise it
MODULES = {
    "train/local_aggregation.py": [
        "tests/train/test_local_aggregation.py",
        "tests/train/test_local_aggregation_grad.py",
        "tests/train/test_local_aggregation_config.py",
    ],
    "augment/": [
        "tests/augment/test_augment_transforms.py",
        "tests/augment/test_augment_pipeline.py",
        "tests/augment/test_augment_params.py",
        "tests/augment/test_augment_device.py",
        "tests/augment/test_augment_elastic_frame.py",
        "tests/augment/test_augment_contract.py",
    ],
    "profiles/merge.py": ["tests/profiles/test_profiles_merge.py", "tests/profiles/test_merge_contract.py"],
    "profiles/submission.py": [
        "tests/profiles/test_profiles_submission.py",
        "tests/profiles/test_profiles_submission_final.py",
        "tests/profiles/test_submission_contract.py",
    ],
    "eval/knn_wells.py": [
        "tests/eval/test_eval_knn.py",
        "tests/eval/test_knn_fields.py",
        "tests/eval/test_eval_knn_published.py",
        "tests/eval/test_eval_controls.py",
        "tests/eval/test_knn_contract.py",
    ],
    "eval/map.py": [
        "tests/eval/test_eval_map.py",
        "tests/eval/test_map_copairs.py",
        "tests/eval/test_map_contract.py",
    ],
    "data/store.py": [
        "tests/data/test_data_store.py",
        "tests/data/test_store_skip.py",
        "tests/data/test_store_contract.py",
    ],
    "patches/fsdp.py": ["tests/patches/test_patches.py", "tests/patches/test_fsdp_contract.py"],
    "train/health.py": [
        "tests/train/test_health.py",
        "tests/train/test_health_targets.py",
        "tests/train/test_health_contract.py",
    ],
}
# not copied into the work folders
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "mutants", "demo_output", "__pycache__", "*.egg-info", "build", ".ruff_cache", ".pytest_cache"
)
STATUS = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped", "not checked", "segfault")


def source_glob(module: str) -> str:
    """The ``only_mutate`` pattern of a module key (paths as mutmut sees them in the work copy).

    Args:
        module: a key of :data:`MODULES` (``patches/...`` or a path under ``dinov2_cell/``; a folder ends in ``/``).

    Returns:
        A glob such as ``dinov2_cell/profiles/merge.py`` or ``dinov2_cell/augment/*``.
    """
    path = "dinov2_cell/" + module
    return path + "*" if module.endswith("/") else path


def write_config(work: Path, module: str, tests: list[str]) -> None:
    """The ``[mutmut]`` section of ``setup.cfg`` in the work copy (mutmut reads it from the current folder)."""
    lines = [
        "[mutmut]",
        "source_paths = dinov2_cell",
        "only_mutate = " + source_glob(module),
        # torch is not fork-safe once used: mutants are forked from a clean server process
        "process_isolation = forkserver",
        "pytest_add_cli_args_test_selection =",
        *[f"    {t}" for t in tests],
        "pytest_add_cli_args =",
        "    -p",
        "    no:cacheprovider",
        "    -q",
        "also_copy =",
        *[f"    {p}" for p in ("configs", "patches", "benchmarks", "slurm", "docs", "pytest.ini", "README.md")],
        "",
    ]
    (work / "setup.cfg").write_text("\n".join(lines))


def prepare(work: Path) -> None:
    """Copy the repository into ``work`` with ``patches/`` also inside the package."""
    shutil.copytree(REPO, work, ignore=IGNORE)
    shutil.copytree(REPO / "patches", work / "dinov2_cell" / "patches", ignore=IGNORE)


def parse_results(text: str) -> dict[str, str]:
    """``mutmut results --all true`` lines (``    name: status``) -> {mutant name: status}."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(\S+): (.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def score(statuses: dict[str, str]) -> dict:
    """Counts per status and the score: killed (timeouts count as killed) / (mutants - skipped).

    Args:
        statuses: {mutant name: status}.

    Returns:
        Dict with one count per status, ``total`` and ``score`` (None without mutants).
    """
    counts = {s: 0 for s in STATUS}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    considered = len(statuses) - counts["skipped"]
    caught = counts["killed"] + counts["timeout"]
    return {**counts, "total": len(statuses), "score": caught / considered if considered else None}


def sample_names(names: list[str], n: int | None, seed: int) -> list[str]:
    """A seeded uniform sample of ``n`` mutant names (all of them, sorted, when ``n`` is None or not smaller).

    Args:
        names: every mutant of the module.
        n: sample size.
        seed: random seed (fixed before the run, so the sample does not depend on results).

    Returns:
        The chosen names, sorted.
    """
    names = sorted(names)
    if n is None or n >= len(names):
        return names
    return sorted(random.Random(seed).sample(names, n))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``k / n`` (the score estimated from a sample of mutants).

    Args:
        k: mutants killed.
        n: mutants considered.
        z: normal quantile (1.96: 95 %).

    Returns:
        (low, high); (0, 1) when ``n`` is 0.
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def run_module(
    module: str,
    tests: list[str],
    root: Path,
    max_children: int,
    python: str,
    sample: int | None = None,
    seed: int = 0,
) -> dict:
    """Run mutmut on one module in its own copy of the repository.

    Args:
        module: a key of :data:`MODULES`.
        tests: its test files.
        root: parent folder of the work copies.
        max_children: mutmut's parallel workers.
        python: the interpreter with mutmut and the project installed.
        sample: run only this many mutants, drawn with ``seed`` (the score is then an estimate, with its interval).
        seed: the sample's seed.

    Returns:
        The :func:`score` dict plus ``module``, ``seconds``, ``work``, ``survivors`` (names) and, for a sample,
        ``sampled_from`` (all mutants) and ``interval`` (95 % Wilson interval of the score).
    """
    work = root / module.strip("/").replace("/", "__")
    if work.exists():
        shutil.rmtree(work)
    prepare(work)
    write_config(work, module, tests)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()

    def results() -> dict[str, str]:
        res = subprocess.run(
            [python, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True
        )
        return parse_results(res.stdout)

    chosen: list[str] = []
    with open(work / "mutmut_run.log", "w") as log:  # mutmut's progress, readable while it runs
        if sample is not None:
            # mutmut lists its mutants once it has generated them (and mapped tests to functions, which it caches):
            # a run for a name that matches nothing does both and then stops
            subprocess.run(
                [python, "-m", "mutmut", "run", "--max-children", str(max_children), "__list_only__"],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            everything = results()
            chosen = sample_names(list(everything), sample, seed)
        run = subprocess.run(
            [python, "-m", "mutmut", "run", "--max-children", str(max_children), *chosen],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    seconds = time.perf_counter() - t0
    statuses = results()
    extra = {}
    if sample is not None:
        extra["sampled_from"] = len(statuses)
        statuses = {k: v for k, v in statuses.items() if k in set(chosen)}
    if run.returncode != 0 and not statuses:
        raise RuntimeError(f"mutmut failed on {module} (exit {run.returncode}); see {work / 'mutmut_run.log'}")
    survivors = sorted(k for k, v in statuses.items() if v not in ("killed", "timeout", "skipped"))
    with open(work / "survivors.txt", "w") as f:
        for name in survivors:
            show = subprocess.run(
                [python, "-m", "mutmut", "show", name], cwd=work, env=env, capture_output=True, text=True
            )
            f.write(show.stdout + "\n")
    row = {"module": module, **score(statuses), "seconds": round(seconds, 1), "work": str(work), "survivors": survivors}
    if extra:
        considered = row["total"] - row["skipped"]
        row.update(extra, interval=wilson_interval(row["killed"] + row["timeout"], considered))
    return row


def format_row(r: dict) -> str:
    pct = "-" if r["score"] is None else f"{100 * r['score']:.1f} %"
    line = (
        f"{r['module']:<28}{r['killed']:>7}{r['survived']:>9}{r['no tests']:>9}{r['timeout']:>8}{r['suspicious']:>11}"
        f"{r['total']:>7}{pct:>9}{r['seconds']:>9.0f}"
    )
    if "sampled_from" in r:
        low, high = r["interval"]
        line += f"   sample of {r['total']} of {r['sampled_from']} mutants, 95 % {100 * low:.0f}-{100 * high:.0f} %"
    return line


HEADER = f"{'module':<28}{'killed':>7}{'survived':>9}{'no tests':>9}{'timeout':>8}{'suspicious':>11}{'total':>7}"
HEADER += f"{'score':>9}{'s':>9}"


def main(argv=None) -> int:
    """CLI entry point.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status: 0, or 1 when a module scores below ``--fail-under``.
    """
    p = argparse.ArgumentParser(
        prog=PROG,
        description="mutmut mutation testing of the core modules, each against its own tests, in copies of the "
        "repository (the working tree is never modified). Prints the score per module.",
        formatter_class=HelpFormatter,
        parents=[common_parser()],
    )
    p.add_argument("modules", nargs="*", help=f"module keys to run (default all): {', '.join(MODULES)}")
    p.add_argument("--work", default=None, help="folder for the copies (default: a new temporary folder)")
    p.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="mutmut workers")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--fail-under", type=float, default=None, help="exit 1 if a module scores below this (0-1)")
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="run N mutants per module drawn at random with --seed (default: all); the score is then an estimate, "
        "printed with its 95%% interval",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (choose it before the run)")
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        raise UsageError(f"unknown module(s) {unknown}; choose among {', '.join(MODULES)}")
    if args.sample is not None and args.sample < 1:
        raise UsageError(f"--sample must be >= 1, got {args.sample}")
    if args.max_children < 1:
        raise UsageError(f"--max-children must be >= 1, got {args.max_children}")
    root = Path(args.work or tempfile.mkdtemp(prefix="dinov2_cell_mutation_")).resolve()
    if REPO == root or REPO in root.parents:
        raise UsageError(f"--work {root} lies inside the repository; use a folder outside it")
    root.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {root}", flush=True)
    print(HEADER, flush=True)
    rows = []
    for module in args.modules or list(MODULES):
        row = run_module(module, MODULES[module], root, args.max_children, sys.executable, args.sample, args.seed)
        rows.append(row)
        print(format_row(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    for r in rows:
        if r["survivors"]:
            print(f"{r['module']}: {len(r['survivors'])} not killed, diffs in {r['work']}/survivors.txt")
    if args.fail_under is not None and any(r["score"] is not None and r["score"] < args.fail_under for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
