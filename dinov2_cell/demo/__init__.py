"""`python -m dinov2_cell.demo`: the whole method on synthetic plates in the real CPJUMP1 layout, on CPU.

Steps (each resumable: re-running skips what is complete):
1. synthetic plates (both cell lines, 9- and 16-site plates, some missing sites) -> OUT/plates
2. four tiny ViTs with `python -m dinov2_cell.run.train`: fluorescent and brightfield, with local aggregation
   and without it (`local_aggregation.loss_weight=0`) -> OUT/runs/{fluo,bf}_{la,nola}
3. a randomly initialised ViT of the same architecture (the "no training" control) -> OUT/runs/{fluo,bf}_random
4. well profiles (`dinov2_cell.embed`: CLS + mean patch token per site, sites concatenated on the 3x3 grid,
   fluorescent + brightfield) for the three ViT variants, and CellProfiler features (the classical baseline:
   segmentation + cp_measure on the first sites of each well, pycytominer's per-plate DMSO normalisation and
   feature selection, through the CellProfiler featuriser of the profiling driver)
5. the challenge kNN protocol (4 train->test cell-line combinations) and copairs mAP for each -> OUT/eval/<model>
6. a kNN probe of the fluorescent local-aggregation teacher at checkpoints along its run
7. a report (Markdown + PNG): loss and training-health curves, the kNN probe curve, kNN per combination, a 2-D
   projection of the well embeddings -> OUT/report

Every option is checked before anything is written: a bad one ends in one error line and leaves no folder.
"""

from dinov2_cell.demo.options import get_args_parser, validate
from dinov2_cell.demo.pipeline import run_demo
from dinov2_cell.demo.report_page import HEALTH_RUNS, read_health, report
from dinov2_cell.demo.scoring import (
    COMBINATIONS,
    DEFAULT_BLOCK_WEIGHTS,
    DEFAULT_FEATURE_SELECT,
    DEFAULT_NORMALIZE,
    MODELS,
    evaluate_all,
    format_results,
    model_label,
    postprocess,
)
from dinov2_cell.demo.steps import (
    CONFIGS,
    CP_CORRELATIONS,
    CP_FAMILIES,
    DEMO_PLATES,
    checkpoint_probe,
    dataset_path,
    generate,
    probe_period,
    profiles,
    random_init_run,
    train,
)

__all__ = [
    "COMBINATIONS",
    "CONFIGS",
    "CP_CORRELATIONS",
    "CP_FAMILIES",
    "DEFAULT_BLOCK_WEIGHTS",
    "DEFAULT_FEATURE_SELECT",
    "DEFAULT_NORMALIZE",
    "DEMO_PLATES",
    "HEALTH_RUNS",
    "MODELS",
    "checkpoint_probe",
    "dataset_path",
    "evaluate_all",
    "format_results",
    "generate",
    "get_args_parser",
    "model_label",
    "postprocess",
    "probe_period",
    "profiles",
    "random_init_run",
    "read_health",
    "report",
    "run_demo",
    "train",
    "validate",
]
