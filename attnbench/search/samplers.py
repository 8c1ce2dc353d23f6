"""Samplers and pruners by name, with the few options a search file may set.

    search:
      sampler: tpe                            # tpe (default), nsga2, random, cmaes (one objective only)
      sampler: {name: nsga2, population: 8}   # or with options
      pruner: {name: median, startup_trials: 3, warmup_epochs: 1}   # none (default), median, halving

Pruners stop a training run early on its per-epoch accuracy, so they need the accuracy
objective alone (Optuna prunes single-objective studies only).
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, CmaEsSampler, NSGAIISampler, RandomSampler, TPESampler

from attnbench.core.checks import check_int
from attnbench.core.errors import ConfigError
from attnbench.search.objectives import Metric

# name -> {option in the file: keyword of the Optuna class}
SAMPLER_OPTIONS = {
    "tpe": {"startup_trials": "n_startup_trials"},
    "nsga2": {"population": "population_size"},
    "random": {},
    "cmaes": {"startup_trials": "n_startup_trials"},
}
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
PRUNER_OPTIONS = {
    "none": {},
    "median": {"startup_trials": "n_startup_trials", "warmup_epochs": "n_warmup_steps"},
    "halving": {"min_epochs": "min_resource", "reduction_factor": "reduction_factor"},
}
MINIMUM = {"n_warmup_steps": 0, "population_size": 2, "reduction_factor": 2}  # others: at least 1


# the keywords SAMPLER_OPTIONS can give each sampler class, for the type checker
class _TPEOptions(TypedDict, total=False):
    n_startup_trials: int


class _NSGAIIOptions(TypedDict, total=False):
    population_size: int


class _CmaEsOptions(TypedDict, total=False):
    n_startup_trials: int


@dataclass(frozen=True)
class Algorithm:
    """A sampler or pruner by name, with Optuna keyword arguments."""

    name: str
    options: dict[str, int] = field(default_factory=dict)


def parse_sampler(value: Any, objectives: tuple[Metric, ...], key: str = "search.sampler") -> Algorithm:
    """The sampler section, refusing one that cannot optimise several objectives when there are several."""
    choice = _parse(value, SAMPLER_OPTIONS, key, "tpe")
    if choice.name in SINGLE_OBJECTIVE_SAMPLERS and len(objectives) > 1:
        multi = ", ".join(n for n in SAMPLER_OPTIONS if n not in SINGLE_OBJECTIVE_SAMPLERS)
        raise ConfigError(key, choice.name, f"a sampler for {len(objectives)} objectives: {multi}")
    if choice.name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ConfigError(key, choice.name, "an installed sampler: CMA-ES needs `pip install cmaes`")
    return choice


def parse_pruner(value: Any, objectives: tuple[Metric, ...], key: str = "search.pruner") -> Algorithm:
    """The pruner section; pruning needs per-epoch accuracy as the only objective."""
    choice = _parse(value, PRUNER_OPTIONS, key, "none")
    if choice.name != "none" and [m.name for m in objectives] != ["accuracy"]:
        raise ConfigError(key, choice.name, "none: pruning acts on per-epoch accuracy, so the objective must be "
                          "accuracy alone (Optuna prunes single-objective studies only)")
    return choice


def make_sampler(choice: Algorithm, seed: int | None) -> BaseSampler:
    """The Optuna sampler; TPE is multivariate and lies about running trials so parallel workers spread out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if choice.name == "tpe":
            options = cast(_TPEOptions, choice.options)
            return TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True, **options)
        if choice.name == "nsga2":
            return NSGAIISampler(seed=seed, **cast(_NSGAIIOptions, choice.options))
        if choice.name == "cmaes":
            return CmaEsSampler(seed=seed, warn_independent_sampling=False, **cast(_CmaEsOptions, choice.options))
        return RandomSampler(seed=seed)


def make_pruner(choice: Algorithm) -> BasePruner:
    """The Optuna pruner (NopPruner for none)."""
    if choice.name == "median":
        return MedianPruner(**choice.options)
    if choice.name == "halving":
        return SuccessiveHalvingPruner(**{"min_resource": 1, **choice.options})
    return NopPruner()


def _parse(value: Any, table: dict[str, dict[str, str]], key: str, default: str) -> Algorithm:
    if value is None:
        value = default
    spec = {"name": value} if isinstance(value, str) else value
    if not isinstance(spec, dict) or spec.get("name") not in table:
        raise ConfigError(key, value, "one of " + ", ".join(table) + ", or {name: NAME, option: value}")
    name = spec["name"]
    options = {}
    for option, number in spec.items():
        if option == "name":
            continue
        if option not in table[name]:
            raise ConfigError(f"{key}.{option}", number, f"an option of {name}: " + (", ".join(table[name]) or "none"))
        keyword = table[name][option]
        low = MINIMUM.get(keyword, 1)
        options[keyword] = check_int(f"{key}.{option}", number, low, allowed=f"an integer >= {low}")
    return Algorithm(name, options)
