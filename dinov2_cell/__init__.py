"""dinov2_cell: local-aggregation DINOv2 for Cell Painting profiling, as a plugin of upstream DINOv2.

Importing the package installs the runtime patches that make upstream run on a current PyTorch (CPU or CUDA, with
or without xFormers) before anything imports `dinov2.train`.
"""

from dinov2_cell.patches import apply as _apply_patches

_apply_patches()

__version__ = "0.1.0"
