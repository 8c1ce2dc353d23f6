"""Summary statistics of repeated timings: median, spread and tails."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} outside [0, 100]")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class TimingSummary:
    """Location and spread of a sample of timings (same unit as the sample)."""

    median: float
    iqr: float
    p10: float
    p90: float
    mean: float
    std: float  # sample standard deviation (n - 1 in the denominator); 0 for one value
    count: int

    def to_dict(self) -> dict[str, float | int]:
        """Fields as a flat dict."""
        return asdict(self)


def summarize(values: Sequence[float]) -> TimingSummary:
    """Median, interquartile range, 10th/90th percentiles, mean and standard deviation of `values`."""
    if not values:
        raise ValueError("summary of no values")
    count = len(values)
    mean = math.fsum(values) / count
    variance = math.fsum((v - mean) ** 2 for v in values) / (count - 1) if count > 1 else 0.0
    return TimingSummary(
        median=percentile(values, 50.0),
        iqr=percentile(values, 75.0) - percentile(values, 25.0),
        p10=percentile(values, 10.0),
        p90=percentile(values, 90.0),
        mean=mean,
        std=math.sqrt(variance),
        count=count,
    )
