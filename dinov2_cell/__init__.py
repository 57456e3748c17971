"""dinov2_cell: local-aggregation DINOv2 for Cell Painting profiling, as a plugin of upstream DINOv2.

Importing the package installs the runtime patches that make upstream run on a current PyTorch (CPU or CUDA, with
or without xFormers) before anything imports `dinov2.train`.
"""

import importlib.util
import os
import sys


def _load_patches_from_checkout():
    # setup.py installs the top-level `patches/` folder as `dinov2_cell.patches`. In a plain source checkout (on
    # PYTHONPATH, or the current directory shadowing a non-editable install) that mapping does not exist, so load
    # the folder under its package name directly.
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "patches")
    spec = importlib.util.spec_from_file_location(
        "dinov2_cell.patches", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    if spec is None or not os.path.isfile(os.path.join(folder, "__init__.py")):
        raise ModuleNotFoundError("dinov2_cell.patches is not installed and no patches/ folder sits beside the package")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dinov2_cell.patches"] = module
    spec.loader.exec_module(module)
    return module


try:
    from dinov2_cell import patches
except ImportError:  # ModuleNotFoundError, or ImportError from `from package import name`
    patches = _load_patches_from_checkout()

patches.apply()

__version__ = "0.1.0"
