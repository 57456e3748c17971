"""dinov2_cell: local-aggregation DINOv2 for Cell Painting profiling, as a plugin of upstream DINOv2.

Importing the package (or any of its modules) changes nothing in upstream DINOv2. The runtime patches and the
rebindings of upstream names are applied by one explicit call, `dinov2_cell.plugin.install()`, which the training
entry points and model loading make.
"""

__version__ = "0.1.0"
