"""Root conftest: plugs dinov2_cell into upstream (`install()`) before any test imports upstream's training code;
shared helpers live in `tests/helpers.py`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dinov2_cell.plugin import install  # noqa: E402

install()
