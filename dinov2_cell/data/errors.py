"""Error types and the ``on_error="skip"`` bookkeeping shared by the index, the dataset, and the store writer.

Bad input never passes silently: with ``on_error="raise"`` (the default) the first problem raises one error naming
the file, column or key; with ``on_error="skip"`` the bad site/well/plate is dropped, counted per kind, and logged as
a warning that carries the running count (the first :data:`SkipLog.verbose_first` skips individually, then every
:data:`SkipLog.every`-th, so a broken plate cannot flood the log), and :meth:`SkipLog.summary` gives the totals.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from dinov2_cell.cli import UsageError

logger = logging.getLogger("dinov2_cell.data")

ON_ERROR = ("raise", "skip")


class DataReadError(UsageError, RuntimeError):
    """An image or illumination file is missing, unreadable, or has the wrong dtype/shape. ``path`` names it.

    A corrupt or missing input file is bad input, so the CLIs report it as one ``error:`` line with exit status 2.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class DataIndexError(ValueError):
    """The plate index is inconsistent: missing column/channel, empty plate, duplicated or inconsistent sites."""


def check_on_error(on_error: str) -> str:
    """Validate an ``on_error`` value.

    Args:
        on_error: ``"raise"`` or ``"skip"``.

    Returns:
        The value.

    Raises:
        ValueError: anything else.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


class SkipLog:
    """Counts skipped items per kind and logs each skip (rate-limited) with the running count.

    Args:
        what: label used in log lines (e.g. ``"CPJUMP1 index"``).
    """

    verbose_first = 20
    every = 100

    def __init__(self, what: str):
        self.what = what
        self.counts: Counter = Counter()

    @property
    def total(self) -> int:
        """Number of skips so far, all kinds."""
        return sum(self.counts.values())

    def record(self, kind: str, message: str, n: int = 1) -> None:
        """Count ``n`` skipped items of ``kind`` and log a warning.

        Args:
            kind: short category (``"missing channel"``, ``"unreadable site"``, ...).
            message: what was skipped and why (names the file/column).
            n: how many items this skip covers.
        """
        self.counts[kind] += n
        total = self.total
        if total - n < self.verbose_first or total // self.every != (total - n) // self.every:
            logger.warning("%s: skipped %s (%d skipped so far): %s", self.what, kind, total, message)

    def summary(self) -> str:
        """One line with the totals per kind (empty string when nothing was skipped)."""
        if not self.counts:
            return ""
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"{self.what}: skipped {self.total} in total ({parts})"

    def log_summary(self) -> None:
        """Log :meth:`summary` as a warning when anything was skipped."""
        if self.counts:
            logger.warning(self.summary())
