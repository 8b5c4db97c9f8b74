"""Percentiles, medians and a fixed-bin histogram for large sample counts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


class Histogram:
    """Counts in bins of ``bin_ms``; percentiles of millions of samples in constant memory."""

    def __init__(self, bin_ms: float = 0.1, max_ms: float = 60_000.0) -> None:
        self.bin_ms = bin_ms
        self.counts = [0] * (int(max_ms / bin_ms) + 1)
        self.total = 0
        self.max_seen = 0.0

    def add(self, value_ms: float, weight: int = 1) -> None:
        index = min(max(int(value_ms / self.bin_ms), 0), len(self.counts) - 1)
        self.counts[index] += weight
        self.total += weight
        if value_ms > self.max_seen:
            self.max_seen = value_ms

    def percentile(self, p: float) -> float:
        if not self.total:
            return math.nan
        wanted = self.total * p / 100.0
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= wanted and count:
                return (index + 0.5) * self.bin_ms
        return self.max_seen

    def summary(self) -> dict[str, float]:
        return {"n": self.total, "p50": self.percentile(50), "p99": self.percentile(99), "max": self.max_seen}


def medians_of_reps(reps: list[dict[str, float]]) -> dict[str, Any]:
    """Medians over repetitions of each rep's p50 and p99 (and every rep's figures)."""
    return {
        "p50": median([r["p50"] for r in reps]),
        "p99": median([r["p99"] for r in reps]),
        "max": max((r["max"] for r in reps), default=float("nan")),
        "reps": reps,
    }
