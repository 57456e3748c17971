"""Statistics shared by the benchmarks: Student t intervals over seeds and the paired-direction verdict."""

from __future__ import annotations

import math


def t_interval(values, confidence: float = 0.95) -> dict:
    """Mean and two-sided Student t confidence interval over seeds.

    Args:
        values: per-seed values (NaN-free).
        confidence: coverage (default 0.95).

    Returns:
        ``{"n", "mean", "sd", "half_width", "low", "high"}``; with one value the half width is NaN.
    """
    import numpy as np
    from scipy import stats

    x = np.asarray(list(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "half_width": math.nan, "low": math.nan, "high": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": math.nan, "half_width": math.nan, "low": math.nan, "high": math.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "low": mean - half, "high": mean + half}


def verdict(ci: dict) -> str:
    """``holds`` / ``reversed`` / ``unresolved`` for a paired difference (better - worse) and its CI.

    Args:
        ci: :func:`t_interval` of the per-seed differences.

    Returns:
        The verdict (``unresolved`` when fewer than 2 paired seeds exist).
    """
    if ci["n"] < 2 or math.isnan(ci["low"]):
        return "unresolved"
    if ci["low"] > 0:
        return "holds"
    if ci["high"] < 0:
        return "reversed"
    return "unresolved"
