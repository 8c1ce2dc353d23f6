"""Statistics on deltas against the baseline: Student's t intervals and tests over seeds, and paired latency changes.

Pure functions of numbers. Accuracy over seeds: when a variant and its baseline were trained on
the same seeds, the design is paired (seed s fixes the initialisation stream, the data order and
the augmentation of both runs), so the test is the paired t-test on the per-seed differences;
otherwise Welch's unequal-variance t-test. Both are two-sided, at 95 % by default.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# scipy is always present: scikit-learn, a dependency, requires it.
from scipy.stats import t as student_t

from attnbench.train.stats import sample_variance, t_critical

ALPHA = 0.05
CONFIDENCE = 1 - ALPHA
PAIRED = "paired t"
WELCH = "Welch t"


@dataclass(frozen=True)
class DeltaTest:
    """A difference of means (variant - baseline) with its confidence interval and two-sided t-test."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # nan where the spread is zero and nothing can be tested
    dof: float
    test: str  # PAIRED or WELCH
    n_variant: int
    n_baseline: int
    confidence: float = CONFIDENCE

    def significant(self, alpha: float = ALPHA) -> bool:
        """Whether the change is significant at `alpha` (False where it cannot be tested)."""
        return not math.isnan(self.p_value) and self.p_value < alpha


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _t_result(delta: float, se: float, dof: float, test: str, n_variant: int, n_baseline: int,
              confidence: float) -> DeltaTest:
    """Interval delta +- t(dof) * se and the two-sided p-value of delta / se."""
    if se == 0:
        # no spread at all (identical runs): the interval is the point, and no test is possible
        return DeltaTest(delta, delta, delta, math.nan, dof, test, n_variant, n_baseline, confidence)
    half = t_critical(dof, confidence) * se
    p_value = 2.0 * float(student_t.sf(abs(delta / se), dof))
    return DeltaTest(delta, delta - half, delta + half, min(p_value, 1.0), dof, test, n_variant, n_baseline, confidence)


def paired_t(variant: Sequence[float], baseline: Sequence[float], confidence: float = CONFIDENCE) -> DeltaTest:
    """Paired t-test on per-seed differences: mean difference +- t(n-1) * s_d / sqrt(n)."""
    if len(variant) != len(baseline):
        raise ValueError(f"paired samples differ in length: {len(variant)} and {len(baseline)}")
    if len(variant) < 2:
        raise ValueError("a paired t-test needs at least two pairs")
    differences = [float(v) - float(b) for v, b in zip(variant, baseline)]
    n = len(differences)
    se = math.sqrt(sample_variance(differences) / n)
    return _t_result(_mean(differences), se, n - 1, PAIRED, n, n, confidence)


def welch_t(variant: Sequence[float], baseline: Sequence[float], confidence: float = CONFIDENCE) -> DeltaTest:
    """Welch's t-test: difference of means +- t(nu) * sqrt(s1^2/n1 + s2^2/n2), nu by Welch-Satterthwaite."""
    if len(variant) < 2 or len(baseline) < 2:
        raise ValueError("Welch's t-test needs at least two values on each side")
    a = [float(v) for v in variant]
    b = [float(v) for v in baseline]
    va, vb = sample_variance(a) / len(a), sample_variance(b) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se else float(len(a) + len(b) - 2)
    return _t_result(_mean(a) - _mean(b), se, dof, WELCH, len(a), len(b), confidence)


def seeds_match(variant_seeds: Sequence[Any] | None, baseline_seeds: Sequence[Any] | None, n_variant: int,
                n_baseline: int) -> bool:
    """Whether two runs share their seeds, seed for seed: the same seed values in the same order, one per value."""
    if variant_seeds is None or baseline_seeds is None:
        return False
    return list(variant_seeds) == list(baseline_seeds) and len(variant_seeds) == n_variant == n_baseline


def compare_seeds(variant: Sequence[float], baseline: Sequence[float], variant_seeds: Sequence[Any] | None = None,
                  baseline_seeds: Sequence[Any] | None = None, confidence: float = CONFIDENCE) -> DeltaTest | None:
    """The test that fits the design: paired t when the seeds match, Welch otherwise; None under two runs a side."""
    if seeds_match(variant_seeds, baseline_seeds, len(variant), len(baseline)) and len(variant) >= 2:
        return paired_t(variant, baseline, confidence)
    if len(variant) >= 2 and len(baseline) >= 2:
        return welch_t(variant, baseline, confidence)
    return None


@dataclass(frozen=True)
class Interval:
    """A measured change with its confidence interval, e.g. a paired latency change in percent."""

    value: float
    low: float
    high: float

    def includes_zero(self) -> bool:
        """Whether zero lies in the interval (the change is not told apart from noise)."""
        return self.low <= 0.0 <= self.high


def interval(value: Any, low: Any, high: Any) -> Interval | None:
    """An Interval from three stored numbers; None unless all three are finite numbers."""
    try:
        numbers = [float(v) for v in (value, low, high)]
    except (TypeError, ValueError):
        return None
    return Interval(*numbers) if all(math.isfinite(v) for v in numbers) else None
