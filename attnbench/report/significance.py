"""Each row's Δtop-1 test against its group's baseline and its paired latency change, as frame columns.

Columns added (NaN or empty where a row has no such measurement):
`delta_top1_ci_low`, `delta_top1_ci_high`, `delta_top1_p`, `delta_top1_test` (paired t / Welch t),
`delta_top1_significant`; the latency columns `latency_change_pct`, `latency_change_ci_low_pct`,
`latency_change_ci_high_pct` are the runner's paired timing and are read as they are.
"""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import Any, SupportsInt, cast

import pandas as pd

from attnbench.report.stats import ALPHA, DeltaTest, Interval, compare_seeds, interval

TOP1_SEEDS = "top1_seeds"
SEED_VALUES = ("train_seeds",)  # the seed values themselves, where a row carries them
LATENCY_CHANGE = ("latency_change_pct", "latency_change_ci_low_pct", "latency_change_ci_high_pct")
TEST_COLUMNS = ("delta_top1_ci_low", "delta_top1_ci_high", "delta_top1_p", "delta_top1_test", "delta_top1_significant")


def _listed(value: Any) -> list[Any] | None:
    """A stored list (or its JSON text, as in a CSV) as a list; None for anything else."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return list(value) if isinstance(value, (list, tuple)) else None


def seed_values(row: pd.Series) -> list[float] | None:
    """The per-seed top-1 of a row, in seed order; None when it has none."""
    values = _listed(row.get(TOP1_SEEDS))
    if not values:
        return None
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def seed_ids(row: pd.Series, n: int) -> list[Any] | None:
    """What identifies each of a row's `n` seeds, for pairing.

    The seed values where the row carries them (`train_seeds`, or `seeds` as a list). Rows that
    carry only the count (`seeds` = n, as the runner writes them) are positions 0..n-1: a study's
    points are trained on its `train.seeds` in order. Pairing two runs that did not in fact share
    seeds still gives a valid test (independent pairs), only with fewer degrees of freedom than Welch's.
    """
    for column in SEED_VALUES + ("seeds",):
        listed = _listed(row.get(column))
        if listed is not None:
            return listed if len(listed) == n else None
    count = row.get("seeds")
    # every Real a row holds (int, float, a numpy number) has __int__, which the ABC does not declare
    if (isinstance(count, numbers.Real) and not isinstance(count, bool) and math.isfinite(count)
            and int(cast(SupportsInt, count)) == n):
        return list(range(n))
    return None


def top1_test(row: pd.Series, baseline: pd.Series) -> DeltaTest | None:
    """Δtop-1 of `row` against `baseline` with the test that fits their seeds; None without two seeds a side."""
    mine, theirs = seed_values(row), seed_values(baseline)
    if mine is None or theirs is None:
        return None
    return compare_seeds(mine, theirs, seed_ids(row, len(mine)), seed_ids(baseline, len(theirs)))


def latency_change(row: pd.Series) -> Interval | None:
    """The row's paired latency change in percent with its interval, where the runner measured one."""
    return interval(*(row.get(column) for column in LATENCY_CHANGE))


def add_top1_tests(frame: pd.DataFrame, group: Sequence[str]) -> pd.DataFrame:
    """`frame` with the Δtop-1 test columns, each variant against the `none` row of its group."""
    if TOP1_SEEDS not in frame or frame.empty:
        return frame
    frame = frame.copy()
    baselines = {tuple(row[g] for g in group): row for _, row in frame[frame["attention"] == "none"].iterrows()}
    found: dict[Any, DeltaTest] = {}
    for index, row in frame.iterrows():
        base = baselines.get(tuple(row[g] for g in group))
        if base is not None and row["attention"] != "none" and (test := top1_test(row, base)) is not None:
            found[index] = test
    frame["delta_top1_ci_low"] = pd.Series({i: t.ci_low for i, t in found.items()}, dtype=float)
    frame["delta_top1_ci_high"] = pd.Series({i: t.ci_high for i, t in found.items()}, dtype=float)
    frame["delta_top1_p"] = pd.Series({i: t.p_value for i, t in found.items()}, dtype=float)
    frame["delta_top1_test"] = pd.Series({i: t.test for i, t in found.items()}, dtype=object).reindex(frame.index).fillna("")
    significant = pd.Series({i: t.significant(ALPHA) for i, t in found.items()}, dtype=object)
    frame["delta_top1_significant"] = significant.reindex(frame.index)
    return frame


def signed(value: float, digits: int) -> str:
    """`+1.25`, `-0.46`; empty for NaN."""
    return "" if value is None or pd.isna(value) else f"{value:+.{digits}f}"


def interval_text(low: float, high: float, digits: int) -> str:
    """`[-1.31, +0.39]`; empty where unknown."""
    return "" if pd.isna(low) or pd.isna(high) else f"[{signed(low, digits)}, {signed(high, digits)}]"


def p_text(p_value: float) -> str:
    """A p-value as a reader expects it: p=0.21, p=0.003, p<0.001; `n/a` where no spread allowed a test."""
    if pd.isna(p_value):
        return "n/a"
    if p_value < 0.001:
        return "p<0.001"
    return f"p={p_value:.3f}" if p_value < 0.1 else f"p={p_value:.2f}"  # three decimals near 0.05, so 0.0496 never reads 0.05
