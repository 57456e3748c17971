"""`python -m dinov2_cell.demo`: the whole method on synthetic plates in the real CPJUMP1 layout, on CPU.

Modules: ``dinov2_cell.demo.__main__`` (the command line; its steps are in ``--help``),
:mod:`~dinov2_cell.demo.checks` (every option checked before anything is written), :mod:`~dinov2_cell.demo.steps`
(plates, trainings, random-init controls, profiles, checkpoint probe), :mod:`~dinov2_cell.demo.scoring` (kNN + mAP,
the printed table), :mod:`~dinov2_cell.demo.report_page` (OUT/report/README.md, drawn with :mod:`dinov2_cell.report`)
and :mod:`~dinov2_cell.demo.pipeline` (the steps in order). The names below are re-exported for scripts that drive
parts of the demo.
"""

from dinov2_cell.demo.checks import validate
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
    run_logged,
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
    "model_label",
    "postprocess",
    "probe_period",
    "profiles",
    "random_init_run",
    "run_logged",
    "read_health",
    "report",
    "run_demo",
    "train",
    "validate",
]
