"""Root conftest: patches upstream before any test imports it; shared helpers live in `tests/helpers.py`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dinov2_cell  # noqa: E402,F401  (patches upstream first)
import dinov2_cell.models  # noqa: E402,F401
