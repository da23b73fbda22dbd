"""Median, min, max and percentiles of repeated measurements."""

from __future__ import annotations

import statistics
from typing import Any, Iterable


def percentile(values: Iterable[float], fraction: float) -> float:
    """The value below which `fraction` of the values lie (linear interpolation, like numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Iterable[float], *, digits: int = 4) -> dict[str, Any]:
    """Median, min, max, p95 and the count of repeated measurements, rounded for the JSON file."""
    values = list(values)
    if not values:
        return {"median": None, "min": None, "max": None, "p95": None, "n": 0}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "p95": round(percentile(values, 0.95), digits),
        "n": len(values),
    }
