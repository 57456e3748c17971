"""The one point where dinov2_cell plugs into upstream DINOv2: :func:`install`.

Importing a dinov2_cell module changes nothing in upstream. :func:`install` (idempotent) does all of it:

1. the runtime patches of ``dinov2_cell.patches`` (the top-level ``patches/`` folder), which make upstream run on
   torch >= 2.4, on CUDA or CPU, with or without xFormers, and let upstream's dataset-string parser
   (``dinov2.data.loaders._parse_dataset_str``) look names up in ``dinov2_cell.data.registry``;
2. the rebindings of upstream names to the plugin's components, each documented below like a patch (what it
   replaces, why it is needed, when): the architecture names, the model builder and the training hooks of
   ``dinov2.train.train``.

Called by the training entry points (``dinov2_cell.train.train.main``, ``python -m dinov2_cell.run.train``) and by
model loading for embedding. A training run binds its dataset and augmentation with :func:`bind_training_run`;
that sets plugin state only, never an upstream name.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Callable

_installed = False
# The run the training hooks serve (set by bind_training_run); None: the hooks delegate to upstream.
_run: dict[str, Any] | None = None


def load_patches():
    """Returns the ``dinov2_cell.patches`` package without applying anything.

    setup.py installs the top-level ``patches/`` folder as ``dinov2_cell.patches``. In a plain source checkout (on
    PYTHONPATH, or the current directory shadowing a non-editable install) that mapping does not exist, so the
    folder beside the package is loaded under the same name.

    Returns:
        The module.

    Raises:
        ModuleNotFoundError: neither an installed ``dinov2_cell.patches`` nor a ``patches/`` folder beside the package.
    """
    if "dinov2_cell.patches" in sys.modules:
        return sys.modules["dinov2_cell.patches"]
    try:
        return importlib.import_module("dinov2_cell.patches")
    except ModuleNotFoundError as e:
        if e.name != "dinov2_cell.patches":
            raise
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "patches")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        raise ModuleNotFoundError(
            "dinov2_cell.patches is not installed and no patches/ folder sits beside the package",
            name="dinov2_cell.patches",
        )
    spec = importlib.util.spec_from_file_location("dinov2_cell.patches", init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dinov2_cell.patches"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("dinov2_cell.patches", None)
        raise
    return module


def import_upstream(name: str):
    """Imports an upstream DINOv2 module without patching anything.

    ``dinov2.train`` asserts at import time that xFormers is installed ("xFormers is required for DINOv2 training").
    Modules under it are imported while a pure-torch stand-in for xFormers sits in ``sys.modules``; ``sys.modules``
    is restored afterwards, so the import changes nothing else. Subclassing upstream classes at import time (the
    local-aggregation meta-arch) needs this before :func:`install` has run.

    Args:
        name: dotted module name, e.g. ``"dinov2.train.ssl_meta_arch"``.

    Returns:
        The module.
    """
    if name == "dinov2.train" or name.startswith("dinov2.train."):
        load_patches()
        importlib.import_module("dinov2_cell.patches.train_ssl_meta_arch").import_with_standin()
    return importlib.import_module(name)


def is_installed() -> bool:
    """Whether :func:`install` has run in this process.

    Returns:
        True after :func:`install`.
    """
    return _installed


def install() -> None:
    """Applies the runtime patches and every rebinding of upstream names; later calls do nothing.

    Raises:
        RuntimeError: upstream DINOv2 is missing or not the release the patches were written for.
    """
    global _installed
    if _installed:
        return
    load_patches().apply()
    _install_architectures()
    _install_model_builder()
    _install_training_hooks()
    _installed = True


# ----------------------------------------------------------------------------------------------------------------
# Rebindings. Each one checks whether it is already in place, so install() stays idempotent even after a partial run.


def _install_architectures() -> None:
    """Adds the tiny architectures (``vit_cell_tiny``, ``vit_cell_mini``) to ``dinov2.models.vision_transformer``.

    Replaces: nothing; adds names to the module upstream looks architecture names up in (``vits.__dict__[arch]``).
    Needed because: CPU tests and the demo train ViTs far smaller than upstream's ``vit_small``, built through the
    same path as the production architectures.
    When: always (an unknown ``student.arch`` otherwise fails with KeyError inside upstream).
    """
    import dinov2.models.vision_transformer as vits

    from dinov2_cell.models.multichannel_vit import TINY_ARCHS

    for name, factory in TINY_ARCHS.items():
        if getattr(vits, name, None) is not factory:
            setattr(vits, name, factory)


def _install_model_builder() -> None:
    """Rebinds ``dinov2.train.ssl_meta_arch.build_model_from_cfg`` to the multi-channel builder.

    Replaces: upstream's ``build_model_from_cfg``, which ``SSLMetaArch.__init__`` looks up in its module at call time.
    Needed because: upstream always builds a 3-channel patch embed; Cell Painting images have 5 fluorescent, 3
    brightfield or 8 channels (``student.in_chans``), optionally initialised from RGB weights
    (``student.rgb_init_weights``).
    When: always (GPU and CPU).
    """
    from dinov2_cell.models.multichannel_vit import build_model_from_cfg

    sma = import_upstream("dinov2.train.ssl_meta_arch")
    if sma.build_model_from_cfg is not build_model_from_cfg:
        sma.build_model_from_cfg = build_model_from_cfg


def _install_training_hooks() -> None:
    """Rebinds ``DataAugmentationDINO``, ``collate_data_and_cast``, ``make_dataset`` and ``MetricLogger`` in
    ``dinov2.train.train``.

    Replaces: the names ``do_train`` looks up in its module when it builds the data pipeline and its metric logger.
    Needed because: upstream's augmentation is RGB-only (colour jitter, solarisation, ImageNet normalisation), its
    collate drops the other-site views the local-aggregation term needs, the training main builds the dataset once
    before any model exists (to check its channels against ``student.in_chans``) so ``do_train`` must reuse it rather
    than build a second one, and the training-health diagnostics are logged through upstream's metric logger.
    When: during a run bound with :func:`bind_training_run`; with no run bound the augmentation, the dataset and the
    metric logger are upstream's, and the collate (a superset of upstream's) returns exactly upstream's batch.
    """
    train = import_upstream("dinov2.train.train")
    from dinov2_cell.augment.collate import collate_cell_data_and_cast

    if getattr(train.DataAugmentationDINO, "__dinov2_cell_hook__", None) is None:
        train.DataAugmentationDINO = _augmentation_hook(train.DataAugmentationDINO)
    if train.collate_data_and_cast is not collate_cell_data_and_cast:
        train.collate_data_and_cast = collate_cell_data_and_cast
    if getattr(train.make_dataset, "__dinov2_cell_hook__", None) is None:
        train.make_dataset = _dataset_hook(train.make_dataset)
    if getattr(train.MetricLogger, "__dinov2_cell_hook__", None) is None:
        train.MetricLogger = _metric_logger_hook(train.MetricLogger)


def _augmentation_hook(upstream_class: Callable) -> Callable:
    def DataAugmentationDINO(*args, **kwargs):  # noqa: N802 - stands in for upstream's class name
        factory = _run["augmentation"] if _run is not None else upstream_class
        return factory(*args, **kwargs)

    DataAugmentationDINO.__dinov2_cell_hook__ = upstream_class
    DataAugmentationDINO.__doc__ = "The bound run's augmentation, else upstream's `DataAugmentationDINO`."
    return DataAugmentationDINO


def _metric_logger_hook(upstream_class: Callable) -> Callable:
    def MetricLogger(*args, **kwargs):  # noqa: N802 - stands in for upstream's class name
        factory = _run["metric_logger"] if _run is not None and _run["metric_logger"] is not None else upstream_class
        return factory(*args, **kwargs)

    MetricLogger.__dinov2_cell_hook__ = upstream_class
    MetricLogger.__doc__ = "The bound run's metric logger, else upstream's `MetricLogger`."
    return MetricLogger


def _dataset_hook(upstream_make_dataset: Callable) -> Callable:
    def make_dataset(*, dataset_str, transform=None, target_transform=None):
        if _run is None or _run["dataset"] is None:
            return upstream_make_dataset(
                dataset_str=dataset_str, transform=transform, target_transform=target_transform
            )
        from dinov2_cell.data.registry import discard_target

        dataset = _run["dataset"]
        dataset.transform = transform
        # upstream passes `lambda _: ()`, which DataLoader workers started with spawn cannot pickle
        dataset.target_transform = (
            discard_target if getattr(target_transform, "__name__", "") == "<lambda>" else target_transform
        )
        return dataset

    make_dataset.__dinov2_cell_hook__ = upstream_make_dataset
    make_dataset.__doc__ = "The bound run's prebuilt dataset with `do_train`'s transforms, else upstream's."
    return make_dataset


def bind_training_run(*, augmentation: Callable, dataset: Any = None, metric_logger: Callable | None = None) -> None:
    """Makes the training hooks serve one run: ``do_train`` then uses this augmentation and this dataset.

    Calls :func:`install` first. Only plugin state changes; the upstream names were rebound by :func:`install`.

    Args:
        augmentation: called with ``DataAugmentationDINO``'s arguments (crop scales, number of local crops,
            ``global_crops_size``, ``local_crops_size``); returns the transform of one sample.
        dataset: the already built training dataset (its ``transform``/``target_transform`` are set by
            ``do_train``), or None to let upstream build it from ``train.dataset_path``.
        metric_logger: called with ``MetricLogger``'s arguments (``delimiter``, ``output_file``), or None for
            upstream's ``dinov2.logging.MetricLogger``.
    """
    global _run
    install()
    _run = {"augmentation": augmentation, "dataset": dataset, "metric_logger": metric_logger}


def unbind_training_run() -> None:
    """Returns the training hooks to upstream's augmentation and dataset building."""
    global _run
    _run = None
