"""Matplotlib set-up shared by the report figures: a file-only backend and atomic PNG writes."""

from __future__ import annotations

import os

from dinov2_cell.atomic import atomic_path

DPI = 110


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (cluster nodes have no display; figures only go to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, overwrite: bool = True) -> str:
    """Write ``fig`` as a PNG atomically and close it.

    Args:
        fig: a matplotlib figure.
        path: destination (``.png``).
        overwrite: allow replacing an existing file.

    Returns:
        The path written.
    """
    plt = pyplot()
    try:
        fig.tight_layout()
        # suffix "": the temporary name keeps ".png", which savefig reads the format from
        with atomic_path(path, overwrite=overwrite, suffix="") as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return os.fspath(path)
