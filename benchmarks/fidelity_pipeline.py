"""The fidelity benchmark's per-seed pipeline: plates, models and profiles built once each, post-processing, scoring."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _path in (REPO, HERE):
    if _path not in sys.path:  # run as a script from any folder
        sys.path.insert(0, _path)

from fidelity_design import PROFILE_SETS, RANDOM, TRAININGS  # noqa: E402

logger = logging.getLogger("dinov2_cell.fidelity")


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
            cmd = [sys.executable, "-m", "dinov2_cell.run.train", "--config-file", config, "--out", out]
            cmd += ["--seed", str(self.seed), *self._overrides(config, keys), *extra]
            demo.run_logged(cmd, os.path.join(self.runs_dir, f"{name}.log"))
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
