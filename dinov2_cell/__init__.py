"""dinov2_cell: local-aggregation DINOv2 for Cell Painting profiling, as a plugin of upstream DINOv2.

Importing the package (or any of its modules) changes nothing in upstream DINOv2. The runtime patches and the
rebindings of upstream names are applied by one explicit call, `dinov2_cell.plugin.install()`, which the training
entry points and model loading make.

`dinov2_cell.load(run_dir_or_checkpoint)` (the Python API, :mod:`dinov2_cell.api`) is imported on first use, so that
`import dinov2_cell` stays light (no torch).
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str):
    # PEP 562 lazy attribute: the API pulls in torch and the models only when `dinov2_cell.load` is touched.
    if name == "load":
        from dinov2_cell.api import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | {"load"})
