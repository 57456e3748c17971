"""Calibration of the synthetic plates against CPJUMP1's published CellProfiler figures.

``python benchmarks/calibration.py --out /tmp/calibration [--seeds 0,1,2] [--phenotype KEY=VALUE ...]``

For each data seed: synthetic plates (4 per cell line, as CPJUMP1 has 4 replicate plates per cell line and time
point; all 384 wells of the real plate map), CellProfiler features of every well (segmentation + cp_measure,
per-well median, then CPJUMP1's recipe through pycytominer: per-plate ``mad_robustize`` against DMSO,
``feature_select``), and the published figures computed the same way (:mod:`dinov2_cell.eval.calibration`):
phenotypic activity (fraction of compounds retrieved against DMSO), replicate retrieval mAP among all perturbations,
the same with labels shuffled, and the DMSO-vs-DMSO null. Mean and 95 % t-interval over seeds, per cell line, side by
side with the published range. ``--family-report`` adds one run per phenotype family with every other family
switched off (``family.<other>=0``) on a smaller design, which says how much of the CellProfiler score each kind of
signal carries, plus one with every family off (the null: no compound phenotype at all).

Resumable: plates, per-plate feature parts and per-seed scores are kept under ``--out``, keyed by the settings, so an
interrupted run continues where it stopped. Cost is dominated by cp_measure (printed per run). The machine's load is
printed: timings on a shared machine are upper bounds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):  # run as a script from any folder; fidelity.py holds the shared t-interval
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_stats import t_interval  # noqa: E402

DEFAULT_FAMILIES = "intensity,sizeshape,texture,radial_distribution"
METRICS = ("activity", "replicate_map", "replicate_map_shuffled", "dmso_null", "activity_map")


def _key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def _write_json(path: str, obj) -> None:
    from dinov2_cell.atomic import write_text

    write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def run_one(out: str, seed: int, phenotype, design: dict, families, workers: int, null_size: int, log) -> dict:
    """Plates, CellProfiler profiles and calibration scores of one (settings, seed); cached under ``out``.

    Args:
        out: benchmark folder.
        seed: data seed.
        phenotype: :class:`~dinov2_cell.synthetic.biology.PhenotypeSettings`.
        design: ``plates_per_line``, ``wells``, ``sites``, ``size``.
        families: cp_measure families.
        workers: processes for generation and featurisation.
        null_size: copairs null size.
        log: print function.

    Returns:
        Scores (cell line -> metrics) plus ``seconds`` spent per step (only for steps run now).
    """
    from dinov2_cell.eval.calibration import calibration_scores
    from dinov2_cell.profiles.cellprofiler import CellProfilerFeaturiser, MeasureSettings
    from dinov2_cell.profiles.driver import PlateSource, run_profiles
    from dinov2_cell.synthetic import generate_plates
    from dinov2_cell.synthetic.biology import default_plates

    settings = {
        "phenotype": phenotype.describe(),
        "design": design,
        "families": list(families),
        "seed": int(seed),
        "null_size": int(null_size),
    }
    folder = os.path.join(out, f"{_key(settings)}")
    os.makedirs(folder, exist_ok=True)
    _write_json(os.path.join(folder, "settings.json"), settings)
    scores_path = os.path.join(folder, "scores.json")
    if os.path.exists(scores_path):
        with open(scores_path) as f:
            return json.load(f)
    seconds = {}
    plates = default_plates(2 * int(design["plates_per_line"]))
    plates_dir = os.path.join(folder, "plates")
    if not os.path.exists(os.path.join(plates_dir, "synthetic_manifest.json")):
        tmp = plates_dir + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.time()
        generate_plates(
            tmp,
            plates=plates,
            wells=design["wells"],
            sites=int(design["sites"]),
            size=int(design["size"]),
            seed=int(seed),
            phenotype=phenotype,
            workers=workers,
            progress=False,
        )
        os.replace(tmp, plates_dir)
        seconds["generate"] = time.time() - t0
    t0 = time.time()
    featuriser = CellProfilerFeaturiser(
        measure=MeasureSettings(families=tuple(families)), num_workers=workers, progress=False
    )
    profiles = run_profiles(
        featuriser,
        PlateSource(plates_dir, channels="fluo"),
        os.path.join(folder, "cellprofiler"),
        plates,
        progress=False,
    )
    seconds["cellprofiler"] = time.time() - t0
    t0 = time.time()
    scores = calibration_scores(profiles, null_size=null_size, seed=int(seed))
    seconds["score"] = time.time() - t0
    result = {"scores": scores, "seconds": seconds, "settings": settings}
    _write_json(scores_path, result)
    log(f"  seed {seed}: {json.dumps({k: round(v, 1) for k, v in seconds.items()})} s")
    return result


def summarise(results: list[dict]) -> dict:
    """Mean and 95 % t-interval over seeds of every metric, per cell line.

    Args:
        results: :func:`run_one` outputs (one per seed).

    Returns:
        Cell line -> metric -> :func:`t_interval` dict.
    """
    lines = sorted({line for r in results for line in r["scores"]})
    return {
        line: {m: t_interval([r["scores"][line][m] for r in results if line in r["scores"]]) for m in METRICS}
        for line in lines
    }


def _fmt(ci: dict) -> str:
    if ci["n"] == 0:
        return "-"
    if ci["n"] < 2:
        return f"{ci['mean']:.3f}"
    return f"{ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def table(summary: dict, n_seeds: int) -> str:
    """Markdown table: synthetic (mean [95 % CI] over seeds) vs published, per cell line.

    Args:
        summary: :func:`summarise` output.
        n_seeds: number of data seeds.

    Returns:
        Markdown.
    """
    from dinov2_cell.eval.calibration import PUBLISHED, published_range

    rows = [
        f"| cell line | metric | synthetic (mean [95 % CI], {n_seeds} seeds) | published 24 h / 48 h | inside range |",
        "|---|---|---|---|---|",
    ]
    names = {
        "activity": "phenotypic activity (fraction retrieved vs DMSO)",
        "replicate_map": "replicate mAP among all perturbations",
        "replicate_map_shuffled": "replicate mAP, labels shuffled",
        "dmso_null": "DMSO-vs-DMSO null (fraction retrieved)",
    }
    for line, metrics in summary.items():
        for m, label in names.items():
            pub = PUBLISHED.get(m, {}).get(line)
            pub_s = f"{pub['24 h']:.3f} / {pub['48 h']:.3f}" if pub else "chance (<= 0.05)"
            if m in ("activity", "replicate_map"):
                lo, hi = published_range(m)
                inside = "yes" if lo <= metrics[m]["mean"] <= hi else "no"
            elif m == "dmso_null":
                inside = "yes" if metrics[m]["mean"] <= 0.05 else "no"
            else:
                inside = ""
            rows.append(f"| {line} | {label} | {_fmt(metrics[m])} | {pub_s} | {inside} |")
    return "\n".join(rows)


def main() -> None:
    """Parse arguments, run every seed (and the family report), print and write the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="benchmark folder (resumable cache)")
    p.add_argument("--seeds", default="0,1,2", help="data seeds (comma-separated)")
    p.add_argument("--plates-per-line", type=int, default=4, help="plates per cell line (CPJUMP1: 4 replicates)")
    p.add_argument("--wells", default="all", help="wells per plate: all, or a count (select_wells)")
    p.add_argument("--sites", type=int, default=1, help="sites per well (all are measured)")
    p.add_argument("--size", type=int, default=96, help="image side (pixels)")
    p.add_argument("--families", default=DEFAULT_FAMILIES, help="cp_measure families (comma-separated)")
    p.add_argument("--phenotype", action="append", default=[], metavar="KEY=VALUE", help="generator overrides")
    p.add_argument("--family-report", action="store_true", help="also one run per phenotype family alone")
    p.add_argument("--family-wells", default="128", help="wells per plate of the family report runs")
    p.add_argument("--null-size", type=int, default=10000, help="copairs null size")
    p.add_argument("--workers", type=int, default=2, help="processes")
    p.add_argument(
        "--results",
        default=None,
        help="also write RESULTS.md and RESULTS.json (e.g. benchmarks/results/" "calibration)",
    )
    args = p.parse_args()

    import logging
    import warnings

    from dinov2_cell.synthetic.biology import PHENOTYPE_FAMILIES, PhenotypeSettings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        phenotype = PhenotypeSettings.from_overrides(args.phenotype)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    design = {"plates_per_line": args.plates_per_line, "wells": args.wells, "sites": args.sites, "size": args.size}
    os.makedirs(args.out, exist_ok=True)
    log(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; phenotype {phenotype.describe()}")
    t0 = time.time()
    results = []
    for seed in seeds:
        results.append(run_one(args.out, seed, phenotype, design, families, args.workers, args.null_size, log))
        log(json.dumps({line: {m: round(v, 3) for m, v in s.items()} for line, s in results[-1]["scores"].items()}))
    summary = summarise(results)
    md = [
        f"Design: {args.plates_per_line} plates per cell line x {args.wells} wells x {args.sites} site(s) per well at "
        f"{args.size} px; cp_measure families {','.join(families)}; copairs null size {args.null_size}.",
        "",
        table(summary, len(seeds)),
    ]
    family_rows = {}
    if args.family_report:
        fam_design = {**design, "wells": args.family_wells}
        names = list(PHENOTYPE_FAMILIES) + ["none"]
        for fam in names:
            off = [f"family.{other}=0" for other in PHENOTYPE_FAMILIES if other != fam]
            ph = PhenotypeSettings.from_overrides(off, base=phenotype)
            r = run_one(args.out, seeds[0], ph, fam_design, families, args.workers, args.null_size, log)
            family_rows[fam] = r["scores"]
            log(f"family {fam}: {json.dumps(r['scores'])}")
        full = run_one(args.out, seeds[0], phenotype, fam_design, families, args.workers, args.null_size, log)
        family_rows["all"] = full["scores"]
        lines = sorted(full["scores"])
        md += [
            "",
            f"Phenotype families alone (seed {seeds[0]}, {args.family_wells} wells per plate; every other family's "
            "effect set to 0; `none`: no compound effect at all):",
            "",
            "| families on | " + " | ".join(f"{line} activity | {line} replicate mAP" for line in lines) + " |",
            "|---|" + "---|---|" * len(lines),
        ]
        for fam in ["all"] + names:
            cells = " | ".join(
                f"{family_rows[fam][line]['activity']:.3f} | {family_rows[fam][line]['replicate_map']:.3f}"
                for line in lines
            )
            md.append(f"| {fam} | {cells} |")
    text = "\n".join(md)
    print()
    print(text)
    print(f"\ntotal {time.time() - t0:.0f} s (load average now {os.getloadavg()[0]:.1f})")
    if args.results:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        from dinov2_cell.atomic import write_text

        write_text(args.results + ".md", text + "\n")
        _write_json(
            args.results + ".json",
            {
                "design": design,
                "families": families,
                "seeds": seeds,
                "phenotype": phenotype.describe(),
                "summary": summary,
                "per_seed": [r["scores"] for r in results],
                "family_report": family_rows,
            },
        )


if __name__ == "__main__":
    main()
