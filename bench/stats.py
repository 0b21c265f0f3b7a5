"""Percentiles of latencies, as every phase reports them."""

from __future__ import annotations

import math
import statistics

__all__ = ["percentile", "p50_p99"]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``pct``% of the values at or below it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def p50_p99(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.median(values), percentile(values, 99)
