"""Challenge-style kNN compound classification on well profiles: ``python -m dinov2_cell.eval.knn_wells``.

The CVDD Cell Line Transferability protocol (DESIGN.md, "Evaluation protocol"), with the choices it leaves open made
explicit (every one is an option):

* **Wells.** Compound plates, DMSO wells omitted (:func:`dinov2_cell.profiles.io.is_control`); the label is the
  compound (``Metadata_broad_sample``). Input: any table with the Metadata columns (ours, or CellProfiler profiles);
  features are all non-``Metadata_`` numeric columns.
* **Folds** are groups of plates, made per cell line: its plates sorted by barcode and dealt round-robin into
  ``n_folds`` (default 5) groups (fold ``i`` = plates ``i, i+5, i+10, ...``). CPJUMP1 barcodes run in blocks of one
  condition (time point, density), so dealing spreads every condition over the folds. A cell line with fewer than
  ``n_folds`` plates gets leave-one-plate-out folds. ``seed`` shuffles the plates before dealing.
* **Combinations** source -> target, default U2OS->U2OS, U2OS->A549, A549->U2OS, A549->A549 (those whose cell lines
  are present). For target fold ``f``: the test set is the target cell line's fold ``f``; the training set is the
  source cell line's plates *outside* its fold ``f mod n_source_folds``. Within a cell line that is ordinary
  plate-wise cross-validation; across cell lines it trains on the same share of source plates and the test plates
  (another cell line) are trivially unseen. Test plates are never in training (asserted).
* **Cross-line training set** (``cross_line_train``; the protocol does not say). ``fold`` (default, as above):
  source -> target of different lines also leaves the source's fold ``f`` out, so every combination trains on the
  same number of plates and within- and cross-line scores compare like for like. ``all``: cross-line combinations
  train on every source plate (nothing of the target line can leak), as a transfer test that uses all the source
  data would; same-line combinations keep plate-wise cross-validation. A source line with a single plate can then
  be evaluated across lines.
* **Classifier.** scikit-learn ``KNeighborsClassifier(algorithm="brute")`` with ``k=1`` (default), cosine distance
  (default) and ``uniform`` weights (default; ``distance`` available). Why k=1: a compound has one or two wells per
  plate, so a training set holds only ~4-13 replicate wells of a compound; a single nearest replicate is the
  quantity the challenge rewards (retrieve a replicate from another plate), and larger k mostly adds votes from
  other compounds. Test wells whose compound is absent from training count as errors.
* **Scores** per fold: accuracy (headline) and macro-F1 over the compounds present in the test fold
  (``f1_score(average="macro", labels=test compounds)``). A combination's score is the mean over its folds (std also
  given); the overall score is the mean over the combinations.
* **Normalisation** (optional, default none): per-plate DMSO standardisation / robustisation / sphering
  (:mod:`dinov2_cell.eval.normalize`), fitted on DMSO wells only, before splitting.
* **Controls** (the wells normalised against and left out): ``Metadata_control_type == "negcon"`` when the table has
  that column (JUMP convention), else ``Metadata_pert_iname == "DMSO"`` or an empty ``Metadata_broad_sample``;
  ``control_query`` (a pandas query string, ``--control-query``) overrides both
  (:func:`dinov2_cell.profiles.io.is_control`).

Outputs: a table on stdout (percentages); with ``--out DIR``: ``knn_folds.csv`` (every fold of every combination),
``knn_summary.csv`` (combinations + mean), ``knn.json`` (everything, config included), ``compounds.csv`` (per compound
and cell line: kNN hits per combination, and the activity mAP with ``--map``;
:func:`dinov2_cell.eval.outputs.compound_table`) and, with ``--map``, mAP tables (:mod:`dinov2_cell.eval.map`). With
``--report DIR``: the evaluation report (:mod:`dinov2_cell.report.evaluation`). Existing files are never replaced
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from dinov2_cell.cli import HelpFormatter, UsageError, comma_list, common_parser, positive_int, run_main, setup_logging
from dinov2_cell.columns import BROAD, CELL_LINE, CELL_LINES, PERT, PLATE, TARGET, WELL
from dinov2_cell.eval.inputs import (  # noqa: F401  (part of this API)
    add_missing_metadata,
    expand_profile_paths,
    is_submission,
    load_table,
    load_tables,
)
from dinov2_cell.eval.normalize import METHODS
from dinov2_cell.eval.postprocess import PostProcess, parse_block_weights
from dinov2_cell.eval.outputs import KNN_FILES, format_table, write_outputs  # noqa: F401  (part of this API)
from dinov2_cell.profiles.io import (
    check_profiles,
    control_rule,
    feature_columns,
    is_control,
    mark_controls,
    read_profiles,
)

logger = logging.getLogger("dinov2_cell.eval")

PROG = "python -m dinov2_cell.eval.knn_wells"
DEFAULT_COMBINATIONS = tuple((s, t) for s in CELL_LINES for t in CELL_LINES)
WEIGHTS = ("uniform", "distance")
CROSS_LINE_TRAIN = ("fold", "all")  # training set of a source -> target combination of two cell lines


def combination_name(source: str, target: str) -> str:
    """``"U2OS->A549"``.

    Args:
        source: training cell line.
        target: test cell line.

    Returns:
        The name.
    """
    return f"{source}->{target}"


def plate_cell_lines(df: pd.DataFrame, cell_line_col: str = CELL_LINE) -> dict[str, str]:
    """Plate -> cell line, from the profile table.

    Args:
        df: profile table.
        cell_line_col: cell line column.

    Returns:
        Dict barcode -> cell line.

    Raises:
        ValueError: a plate with several (or empty) cell lines, named.
    """
    lines = df.groupby(df[PLATE].astype(str))[cell_line_col].agg(lambda s: sorted(set(map(str, s))))
    out = {}
    for plate, values in lines.items():
        if len(values) != 1 or values[0] in ("", "nan"):
            raise ValueError(f"plate {plate}: {cell_line_col} must be one non-empty value, got {values}")
        out[plate] = values[0]
    return out


def make_folds(plates: Sequence[str], n_folds: int = 5, seed: int | None = None) -> list[list[str]]:
    """Plate groups of one cell line (see module docstring).

    Args:
        plates: barcodes.
        n_folds: wanted folds; fewer plates than that gives leave-one-plate-out.
        seed: optional shuffle of the plates before dealing (default: sorted order).

    Returns:
        List of folds, each a sorted list of barcodes; together they partition ``plates``.
    """
    plates = sorted(set(map(str, plates)))
    if not plates:
        return []
    if seed is not None:
        rng = np.random.default_rng(seed)
        plates = [plates[i] for i in rng.permutation(len(plates))]
    if len(plates) < n_folds:
        return [[p] for p in sorted(plates)]
    return [sorted(plates[i::n_folds]) for i in range(n_folds)]


def splits(
    folds: dict[str, list[list[str]]], combinations: Sequence[tuple[str, str]], cross_line_train: str = "fold"
) -> list[tuple[str, str, int, list[str], list[str]]]:
    """Every (source, target, fold, train plates, test plates) of the protocol.

    Args:
        folds: cell line -> its folds (:func:`make_folds`).
        combinations: (source, target) pairs.
        cross_line_train: ``fold`` (source plates outside fold ``f``) or ``all`` (every source plate) when source and
            target are different cell lines; a same-line combination always leaves fold ``f`` out.

    Returns:
        List of splits.

    Raises:
        ValueError: an unknown ``cross_line_train``.
    """
    if cross_line_train not in CROSS_LINE_TRAIN:
        raise ValueError(f"cross_line_train must be one of {CROSS_LINE_TRAIN}, got {cross_line_train!r}")
    out = []
    for source, target in combinations:
        src_folds, tgt_folds = folds[source], folds[target]
        for f, test in enumerate(tgt_folds):
            held = [] if source != target and cross_line_train == "all" else src_folds[f % len(src_folds)]
            train = sorted(p for fold in src_folds for p in fold if p not in held)
            if set(train) & set(test):
                raise AssertionError(f"{source}->{target} fold {f}: test plates in training")
            out.append((source, target, f, train, list(test)))
    return out


def knn_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int = 1, metric: str = "cosine", weights="uniform"
) -> np.ndarray:
    """Predict test labels with scikit-learn's brute-force kNN.

    Args:
        x_train: (n, D) training features.
        y_train: (n,) labels.
        x_test: (m, D) test features.
        k: neighbours (capped at n).
        metric: any scikit-learn brute-force metric (``cosine``, ``euclidean``, ``correlation``, ...).
        weights: ``uniform`` or ``distance``.

    Returns:
        (m,) predicted labels.
    """
    from sklearn.neighbors import KNeighborsClassifier  # deferred: keeps `--help` fast

    clf = KNeighborsClassifier(n_neighbors=min(k, len(x_train)), metric=metric, weights=weights, algorithm="brute")
    with warnings.catch_warnings():
        # one class per compound with a few replicates each is the protocol, not a regression problem
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        clf.fit(x_train, y_train)
    return clf.predict(x_test)


def evaluate(
    profiles: pd.DataFrame | str,
    k: int = 1,
    metric: str = "cosine",
    weights: str = "uniform",
    n_folds: int = 5,
    normalize: str = "none",
    label_col: str = BROAD,
    cell_line_col: str = CELL_LINE,
    combinations: Sequence[tuple[str, str]] | None = None,
    plates: Sequence[str] | None = None,
    seed: int | None = None,
    feature_cols: Sequence[str] | None = None,
    source: str | None = None,
    cross_line_train: str = "fold",
    feature_select: bool = False,
    block_weights: dict | None = None,
    control_query: str | None = None,
) -> dict:
    """Run the challenge kNN protocol (see module docstring).

    Args:
        profiles: profile table or path (Parquet/CSV).
        k: neighbours.
        metric: distance (scikit-learn name), default cosine.
        weights: ``uniform`` or ``distance``.
        n_folds: plate folds per cell line.
        normalize: ``none``, ``standardize``, ``robustize`` or ``spherize`` (per plate, against DMSO).
        label_col: class label column (compound).
        cell_line_col: cell line column.
        combinations: (source, target) pairs; default the four U2OS/A549 pairs whose cell lines are present.
        plates: restrict to these plates (default: all in the table).
        seed: shuffle plates before making folds (default: deterministic sorted dealing).
        feature_cols: features (default: all non-Metadata numeric columns).
        source: name of the table in error messages (default: its path, or "profiles").
        cross_line_train: training set of a combination of two cell lines: ``fold`` (the source's plates outside
            fold ``f``, as within a line) or ``all`` (every source plate).
        feature_select: pycytominer feature selection after normalising (:mod:`dinov2_cell.eval.postprocess`).
        block_weights: scale each model block (``fluo_``, ``bf_``) to unit mean norm times its weight (``{}``: all
            1); None keeps the raw concatenation.
        control_query: pandas query string selecting the negative controls (default: ``Metadata_control_type ==
            "negcon"`` when present, else the DMSO spellings; see :func:`dinov2_cell.profiles.io.is_control`).

    Returns:
        Dict with ``config``, ``folds`` (one dict per fold and combination: plates, sizes, accuracy, macro_f1),
        ``combinations`` (name -> mean/std over folds), ``mean`` (over combinations), ``skipped`` and
        ``predictions`` (DataFrame, one row per test well and combination: combination, fold, plate, well, label,
        compound name and target where the table has them, predicted, correct).

    Raises:
        ValueError: bad option, missing column, NaN features, no combination to evaluate, or a plate without DMSO
            when normalising (all named).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if normalize not in METHODS:
        raise ValueError(f"normalize must be one of {METHODS}, got {normalize!r}")
    if cross_line_train not in CROSS_LINE_TRAIN:
        raise ValueError(f"cross_line_train must be one of {CROSS_LINE_TRAIN}, got {cross_line_train!r}")
    source = source or (profiles if isinstance(profiles, str) else "profiles")
    df = read_profiles(profiles)
    controls = control_rule(df, control_query)
    if control_query is not None:
        # Written into Metadata_control_type, so normalisation and the DMSO filter below use the same wells.
        df = mark_controls(df, control_query)
    feats = check_profiles(df, required=(PLATE, label_col, cell_line_col), source=source)
    feats = list(feature_cols) if feature_cols is not None else feats
    if plates is not None:
        df = df[df[PLATE].astype(str).isin(set(map(str, plates)))].reset_index(drop=True)
        if df.empty:
            raise ValueError(f"{source}: none of the requested plates is in the table")
    post = PostProcess(normalize, feature_select, block_weights)
    df = post(df, feats)
    feats = [c for c in feature_columns(df) if c in set(feats)]
    keep = ~is_control(df)
    df = df[keep].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{source}: no non-DMSO well left")
    line_of = plate_cell_lines(df, cell_line_col)
    by_line: dict[str, list[str]] = {}
    for plate, line in line_of.items():
        by_line.setdefault(line, []).append(plate)
    wanted = list(combinations) if combinations is not None else list(DEFAULT_COMBINATIONS)
    counts = {line: len(p) for line, p in by_line.items()}
    # Training plates are the source line's plates outside the held-out fold: a source line with one plate would
    # train on nothing, unless a cross-line combination trains on all of them.
    todo = [
        (s, t)
        for s, t in wanted
        if t in by_line and counts.get(s, 0) >= (1 if s != t and cross_line_train == "all" else 2)
    ]
    skipped = [combination_name(s, t) for s, t in wanted if (s, t) not in todo]
    if not todo:
        absent = sorted({x for pair in wanted for x in pair} - set(by_line))
        raise ValueError(
            f"{source}: no train->test combination can be evaluated: plate-wise folds need >= 2 plates per cell "
            f"line, plates per cell line ({cell_line_col}): {counts}"
            + (f"; absent cell line(s): {absent}" if absent else "")
        )
    if skipped:
        logger.warning("skipped combinations %s (plates per cell line: %s)", skipped, counts)
    from sklearn.metrics import f1_score

    folds = {line: make_folds(p, n_folds, seed) for line, p in by_line.items()}
    x = df[feats].to_numpy(dtype=np.float64)
    y = df[label_col].astype(str).to_numpy()
    plate_arr = df[PLATE].astype(str).to_numpy()
    well_arr = df[WELL].astype(str).to_numpy() if WELL in df.columns else np.full(len(df), "")
    rows, predictions = [], []
    for s, t, f, train, test in splits(folds, todo, cross_line_train):
        tr = np.isin(plate_arr, train)
        te = np.isin(plate_arr, test)
        pred = knn_predict(x[tr], y[tr], x[te], k=k, metric=metric, weights=weights)
        truth = y[te]
        predictions.append(
            pd.DataFrame(
                {
                    "combination": combination_name(s, t),
                    "fold": f,
                    PLATE: plate_arr[te],
                    WELL: well_arr[te],
                    label_col: truth,
                    **{c: df[c].astype(str).to_numpy()[te] for c in (PERT, TARGET) if c in df and c != label_col},
                    "predicted": pred,
                    "correct": pred == truth,
                }
            )
        )
        rows.append(
            {
                "combination": combination_name(s, t),
                "source": s,
                "target": t,
                "fold": f,
                "train_plates": train,
                "test_plates": test,
                "n_train": int(tr.sum()),
                "n_test": int(te.sum()),
                "n_test_unseen_label": int((~np.isin(truth, y[tr])).sum()),
                "accuracy": float(np.mean(pred == truth)),
                "macro_f1": float(f1_score(truth, pred, labels=np.unique(truth), average="macro", zero_division=0)),
            }
        )
    table = pd.DataFrame(rows)
    combos = {}
    for name, g in table.groupby("combination", sort=False):
        combos[name] = {
            "accuracy": float(g["accuracy"].mean()),
            "accuracy_std": float(g["accuracy"].std(ddof=0)),
            "macro_f1": float(g["macro_f1"].mean()),
            "macro_f1_std": float(g["macro_f1"].std(ddof=0)),
            "n_folds": int(len(g)),
            "n_test": int(g["n_test"].sum()),
        }
    mean = {
        "accuracy": float(np.mean([c["accuracy"] for c in combos.values()])),
        "macro_f1": float(np.mean([c["macro_f1"] for c in combos.values()])),
        "n_combinations": len(combos),
    }
    config = {
        "k": k,
        "metric": metric,
        "weights": weights,
        "n_folds": n_folds,
        "normalize": normalize,
        "feature_select": bool(feature_select),
        "block_weights": None if block_weights is None else dict(block_weights),
        "postprocess": post.describe(),
        "controls": controls,
        "label_col": label_col,
        "cell_line_col": cell_line_col,
        "seed": seed,
        "cross_line_train": cross_line_train,
        "n_features": len(feats),
        "n_wells": int(len(df)),
        "plates": {line: sorted(p) for line, p in by_line.items()},
        "folds": folds,
    }
    return {
        "config": config,
        "folds": rows,
        "combinations": combos,
        "mean": mean,
        "skipped": skipped,
        # every test well's prediction (a DataFrame; kept out of knn.json): per-compound hits, the report's table
        "predictions": pd.concat(predictions, ignore_index=True),
    }


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m dinov2_cell.eval.knn_wells``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Challenge kNN compound classification (plate-wise CV, U2OS/A549 train->test combinations) and "
        "optional copairs mAP on well profiles (Parquet/CSV with Metadata_* columns + numeric features). DMSO wells "
        "are left out of the kNN protocol.",
        formatter_class=HelpFormatter,
        parents=[common_parser()],
    )
    p.add_argument(
        "profiles",
        nargs="+",
        help="profiles file(s) or folder(s) (.parquet, .csv, .csv.gz; e.g. CPJUMP1's per-plate "
        "<plate>_normalized_feature_select_negcon_batch.csv.gz), or a challenge submission CSV; Metadata columns a "
        "file lacks (e.g. the cell line) come from the packaged CPJUMP1 metadata",
    )
    p.add_argument(
        "--metadata-test",
        default=None,
        metavar="FILE",
        help="the organisers' metadata_test.csv (columns ID, plate, well; found by name), to score a final-layout "
        "submission (ID, feature_1 ...): its IDs are mapped to plates and wells",
    )
    g = p.add_argument_group("protocol")
    g.add_argument("--k", type=positive_int, default=1, help="neighbours")
    g.add_argument("--metric", default="cosine", help="scikit-learn distance (cosine, euclidean, correlation, ...)")
    g.add_argument("--weights", choices=WEIGHTS, default="uniform")
    g.add_argument(
        "--folds", type=positive_int, default=5, help="plate folds per cell line (fewer plates: leave-one-plate-out)"
    )
    g.add_argument("--normalize", choices=METHODS, default="none", help="per-plate normalisation against DMSO wells")
    g.add_argument(
        "--control-query",
        default=None,
        metavar="QUERY",
        help="pandas query selecting the negative control wells (normalised against, left out of the kNN, the mAP "
        "reference), e.g. \"Metadata_pert_iname == 'DMSO'\"; default: Metadata_control_type == 'negcon' when the "
        "table has that column, else Metadata_pert_iname == 'DMSO' or an empty Metadata_broad_sample",
    )
    g.add_argument(
        "--feature-select",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pycytominer feature selection (the JUMP recipe's operations) after normalising",
    )
    g.add_argument(
        "--block-weights",
        default=None,
        metavar="BLOCK=W,...",
        help="scale each model's features (column prefix: fluo, bf, ...) to unit mean norm times its weight, e.g. "
        "fluo=1,bf=0.5 ('all' = every block at 1); default: the raw concatenation",
    )
    g.add_argument("--label-col", default=BROAD, help="class label column")
    g.add_argument("--cell-line-col", default=CELL_LINE, help="cell line column")
    g.add_argument("--plates", type=comma_list, default=None, metavar="A,B,...", help="comma-separated plates to use")
    g.add_argument("--seed", type=int, default=None, help="shuffle plates before making folds")
    g.add_argument(
        "--cross-line-train",
        choices=CROSS_LINE_TRAIN,
        default="fold",
        help="training set of a combination of two cell lines (e.g. U2OS->A549) for target fold f: 'fold' = the "
        "source line's plates outside its fold f, the same share as within a line (default); 'all' = every source "
        "plate (the test plates are of another line, so none can leak); within-line combinations always leave fold "
        "f out",
    )
    g = p.add_argument_group("mAP")
    g.add_argument("--map", action="store_true", help="also compute copairs mAP (activity and consistency)")
    g.add_argument("--null-size", type=positive_int, default=10000, help="mAP null distribution size")
    g.add_argument("--map-cache-dir", default=None, help="copairs null-distribution cache (default ~/.copairs)")
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for knn_folds.csv, knn_summary.csv, knn.json, compounds.csv (+ map files)",
    )
    g.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="evaluation report (implies --map): compounds.csv (per compound and cell line: name, target, mAP, "
        "corrected p, retrieved, kNN hits per combination), mAP vs -log10 q, kNN per combination and PCA "
        "embeddings by plate, cell line and target (PNG), README.md",
    )
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def run(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """Do the CLI's work from parsed arguments (prints the table, writes ``--out``).

    Args:
        args: output of :func:`build_parser`.

    Returns:
        (kNN result, mAP result or None).
    """
    plates = args.plates or None
    try:
        block_weights = {} if args.block_weights == "all" else parse_block_weights(args.block_weights)
    except ValueError as e:
        raise UsageError(f"--block-weights: {e}")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: not a folder")
    if args.out and not args.overwrite:
        # Fail before the (possibly long) computation rather than after it.
        for n in KNN_FILES:
            if os.path.exists(os.path.join(args.out, n)):
                raise FileExistsError(f"{os.path.join(args.out, n)} exists; refusing to overwrite (pass --overwrite)")
    if args.report:
        from dinov2_cell.report.evaluation import check_report_dir

        check_report_dir(args.report, args.overwrite)
    profiles = load_tables(args.profiles, metadata_test=args.metadata_test)
    source = args.profiles[0] if len(args.profiles) == 1 else f"{len(args.profiles)} profile paths"
    result = evaluate(
        profiles,
        k=args.k,
        metric=args.metric,
        weights=args.weights,
        n_folds=args.folds,
        normalize=args.normalize,
        label_col=args.label_col,
        cell_line_col=args.cell_line_col,
        plates=plates,
        seed=args.seed,
        source=source,
        cross_line_train=args.cross_line_train,
        feature_select=args.feature_select,
        block_weights=block_weights,
        control_query=args.control_query,
    )
    result["config"]["profiles"] = (
        os.path.abspath(args.profiles[0]) if len(args.profiles) == 1 else [os.path.abspath(p) for p in args.profiles]
    )
    map_result = None
    if args.map or args.report:
        from dinov2_cell.eval.map import map_scores

        if plates is not None:
            profiles = profiles[profiles[PLATE].astype(str).isin(plates)]
        if args.control_query is not None:
            profiles = mark_controls(profiles, args.control_query)  # the same controls as the kNN's
        map_result = map_scores(
            profiles,
            normalize=args.normalize,
            null_size=args.null_size,
            label_col=args.label_col,
            split_by=(args.cell_line_col,),
            cache_dir=args.map_cache_dir,
            feature_select=args.feature_select,
            block_weights=block_weights,
        )
    print(format_table(result, map_result))
    if args.out:
        for path in write_outputs(result, args.out, map_result, overwrite=args.overwrite):
            logger.info("wrote %s", path)
    if args.report:
        from dinov2_cell.report.evaluation import write_evaluation_report

        # `profiles` as the mAP saw them: the requested plates, the same controls
        paths = write_evaluation_report(profiles, result, map_result, args.report, args.overwrite, source)
        print(f"report: {paths[-1]}")
    return result, map_result


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (the error policy is :func:`dinov2_cell.cli.run_main`'s).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog=PROG))
