"""What a search optimises: metrics read from a point's result row, budgets as Optuna constraints, pruning.

    search:
      objectives: [accuracy, macs]     # one name, or several for a Pareto front
      budgets: {macs: 4.0e7}           # upper bounds: a trial above one is infeasible

Budgets are stored the way Optuna's samplers read them (`trial.set_constraint`, system
attrs `constraints:NAME`): the relative excess value / budget - 1, feasible at <= 0, so
budgets in MACs and in milliseconds weigh alike in the samplers' penalty.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import optuna

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import as_float
from attnbench.run.columns import Column
from attnbench.run.measurements import complexity, latency, memory, training

Direction = Literal["minimize", "maximize"]  # Optuna's


@dataclass(frozen=True)
class Metric:
    """A number a search can optimise or budget: a declared result column, under the name a search file uses."""

    name: str
    source: Column
    label: str  # for tables and plot axes
    needs: str | None = None  # the measurement that produces it, where it is not always on

    @property
    def column(self) -> str:
        """Its key in a result row."""
        return self.source.key

    @property
    def direction(self) -> Direction:
        """Optuna's direction: "minimize" or "maximize"."""
        return "maximize" if self.source.better == "higher" else "minimize"

    @property
    def needs_training(self) -> bool:
        """Whether the metric comes from training."""
        return self.needs == "training"


METRICS = {m.name: m for m in (
    Metric("accuracy", training.TOP1, "val top-1 (%, mean over seeds)", needs="training"),
    Metric("macs", complexity.MACS, "MACs"),
    Metric("flops", complexity.FLOPS, "FLOPs"),
    Metric("params", complexity.PARAMS, "parameters"),
    Metric("attention_params", complexity.ATTENTION_PARAMS, "attention parameters"),
    Metric("latency", latency.LATENCY, "latency (ms, median)", needs="latency"),
    Metric("memory", memory.INFERENCE_PEAK, "inference peak memory (bytes)", needs="memory"),
    Metric("train_memory", memory.TRAIN_PEAK, "training step peak memory (bytes)", needs="memory"),
)}

def parse_objectives(value: Any, key: str = "search.objectives") -> tuple[Metric, ...]:
    """One metric name or a list of distinct ones."""
    names = [value] if isinstance(value, str) else value
    allowed = "a metric or a list of distinct metrics from " + ", ".join(METRICS)
    if not isinstance(names, list) or not names or len(set(map(str, names))) != len(names):
        raise ConfigError(key, value, allowed)
    for name in names:
        if name not in METRICS:
            raise ConfigError(key, name, allowed)
    return tuple(METRICS[name] for name in names)


def parse_budgets(value: Any, key: str = "search.budgets") -> dict[str, float]:
    """{metric: upper bound} for metrics that are better lower."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, value, "a mapping of metric -> upper bound, e.g. {macs: 4.0e7}")
    budgets = {}
    for name, bound in value.items():
        metric = METRICS.get(name)
        if metric is None or metric.direction != "minimize":
            raise ConfigError(f"{key}.{name}", bound, "budgets are upper bounds on: "
                              + ", ".join(m.name for m in METRICS.values() if m.direction == "minimize"))
        number = as_float(bound)  # also from text: PyYAML reads 1.5e8 (no dot before the e) as a string
        if number is None or number <= 0:
            raise ConfigError(f"{key}.{name}", bound, "a positive number")
        budgets[name] = number
    return budgets


def metric_value(metric: Metric, row: dict[str, Any]) -> float:
    """The metric from a result row; ConfigError when the run does not measure it."""
    if metric.column not in row or row[metric.column] is None:
        raise ConfigError("search.objectives", metric.name, f"a metric the runs measure: their results have no {metric.column!r}")
    value = float(row[metric.column])
    if not math.isfinite(value):
        raise ValueError(f"{metric.column} is {value}")
    return value


def set_constraints(trial: optuna.Trial, budgets: dict[str, float], row: dict[str, Any]) -> None:
    """Record each budget's relative excess on the trial, where samplers and `best_trials` look for it."""
    for name, bound in budgets.items():
        with warnings.catch_warnings():
            # A retried trial inherits its first attempt's constraints; the point, hence the value, is the same.
            warnings.filterwarnings("ignore", message="The constraint value is ignored")
            trial.set_constraint(name, metric_value(METRICS[name], row) / bound - 1.0)


def pruning_callback(trial: optuna.Trial) -> Callable[[int, Any], None]:
    """An `on_epoch(seed_index, record)` callback for the runner's training: reports the first seed's val top-1
    per epoch and raises TrialPruned when the pruner says so (the remaining seeds then never run)."""

    def report(seed_index: int, record: Any) -> None:
        if seed_index != 0:  # later seeds restart from scratch: their epochs would not compare with other trials' steps
            return
        trial.report(record.val_top1, record.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record.epoch} at val top-1 {record.val_top1:.2f} %")

    return report
