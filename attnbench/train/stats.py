"""Mean, sample standard deviation and a Student-t confidence interval over repeated runs (seeds)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# scipy is always present: scikit-learn, a dependency, requires it.
from scipy.stats import t as student_t


@dataclass(frozen=True)
class SeedSummary:
    """Runs over n seeds summarised: mean, sample std (ddof=1) and a two-sided confidence interval for the mean."""

    n: int
    mean: float
    std: float  # nan for a single value
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        """Distance from the mean to either end of the interval."""
        return (self.ci_high - self.ci_low) / 2

    def format(self, digits: int = 2) -> str:
        """'mean ± std' as a table cell; a single run shows its value alone."""
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def t_critical(dof: float, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value: t such that P(|T| <= t) = confidence with `dof` degrees of freedom."""
    return float(student_t.ppf(0.5 + confidence / 2, dof))


def sample_variance(values: Sequence[float]) -> float:
    """Sample variance, n - 1 in the denominator."""
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def summarize(values: Iterable[float], confidence: float = 0.95) -> SeedSummary:
    """Summary of values from independent runs: mean ± t(n-1) · s / sqrt(n)."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("summarize needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return SeedSummary(1, mean, math.nan, math.nan, math.nan, confidence)
    std = math.sqrt(sample_variance(data))
    half = t_critical(n - 1, confidence) * std / math.sqrt(n)
    return SeedSummary(n, mean, std, mean - half, mean + half, confidence)
