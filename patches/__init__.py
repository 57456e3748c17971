"""Runtime patches that make upstream DINOv2 (PyPI `dinov2==0.0.1.dev2`, commit fc49f49) run on torch >= 2.4, on
CUDA or CPU, with or without xFormers. No file in site-packages is edited: each module replaces names at run time.

One module per upstream module changed; each docstring names what it replaces, the failure it fixes and when it
applies. `apply()` installs them all and is idempotent; `dinov2_cell.plugin.install()` calls it (importing a
dinov2_cell module applies nothing).
"""

import importlib.metadata
import logging

logger = logging.getLogger("dinov2_cell")

UPSTREAM_DISTRIBUTION = "dinov2"
UPSTREAM_VERSION = "0.0.1.dev2"

_applied = False


def _drop_xformers_warning(record: logging.LogRecord) -> bool:
    return record.getMessage() != "xFormers not available"


def check_upstream_version():
    """Raises a clear error unless the installed upstream is the release these patches were written for."""
    try:
        version = importlib.metadata.version(UPSTREAM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"upstream DINOv2 is not installed; install it with `pip install --no-deps "
            f"{UPSTREAM_DISTRIBUTION}=={UPSTREAM_VERSION}` (its own pins must not be installed)"
        ) from None
    if version != UPSTREAM_VERSION:
        raise RuntimeError(
            f"dinov2_cell.patches were written for {UPSTREAM_DISTRIBUTION}=={UPSTREAM_VERSION} but {version} is "
            f"installed; run `pip install --no-deps {UPSTREAM_DISTRIBUTION}=={UPSTREAM_VERSION}`"
        )


def apply():
    """Installs every patch once; later calls do nothing."""
    global _applied
    if _applied:
        return
    check_upstream_version()
    # Upstream warns "xFormers not available" at import; the patches install the PyTorch fallback, so say that once.
    logging.getLogger("dinov2").addFilter(_drop_xformers_warning)
    from . import (
        data_loaders,
        distributed,
        fsdp,
        layers_attention,
        layers_block,
        logging_helpers,
        train_ssl_meta_arch,
        train_train,
    )

    # Order matters: layers before the meta-arch import, fsdp before the meta-arch rebinds get_fsdp_wrapper.
    for module in (
        layers_attention,
        layers_block,
        fsdp,
        distributed,
        logging_helpers,
        data_loaders,
        train_ssl_meta_arch,
        train_train,
    ):
        module.apply()
    _applied = True
