"""Search spaces: the modules' typed hyperparameters as Optuna distributions, narrowed by the ablation file.

    search:
      modules:
        se: {reduction: {low: 4, high: 32, log: true}, gate: {}}   # {}: every value the module declares
        eca: {kernel_size: [null, 3, 5, 7]}                        # a list: these values
        msca: {scales: {}}                                         # every non-empty subset of (7, 11, 21)
        cbam: {spatial_kernel: 3}                                  # one value: fixed, not searched
        none: {}                                                   # the baseline competes too
      stages: [[2, 3, 4, 5], [4, 5]]                               # or `all`: every non-empty subset
      position: [standard, post]

Int becomes `suggest_int` (step 2 when the module takes odd values only, log scale where
declared or asked); Bool, Choice, Subset and OddKernels become categoricals. Every value a
file names, and both ends of every range, are checked against the module and the backbone
before anything runs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from attnbench.backbones import get_backbone_entry
from attnbench.config.point import Point, make_point
from attnbench.core.errors import ConfigError
from attnbench.modules import get_module_entry
from attnbench.modules.hparams import Bool, Choice, Float, HParam, Int, OddKernels, Subset, as_float

RANGE_KEYS = ("low", "high", "log", "step")
ALL = "all"


@dataclass(frozen=True)
class Base:
    """What every point of a search shares: the backbone and its input."""

    backbone: str
    input_size: int
    batch_size: int
    num_classes: int

    def point(self, module: str, hyperparameters: dict[str, Any], stages: Any = None, position: Any = None) -> Point:
        """A validated point of this search."""
        return make_point(self.backbone, module, hyperparameters, stages=stages, position=position,
                          input_size=self.input_size, batch_size=self.batch_size, num_classes=self.num_classes)


@dataclass(frozen=True)
class Dimension:
    """One searched quantity: its Optuna name and distribution, and the Python value behind each categorical label."""

    name: str
    distribution: BaseDistribution
    values: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value, as the module takes it."""
        d = self.distribution
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)
        assert isinstance(d, CategoricalDistribution)
        return self.values[d.choices.index(trial.suggest_categorical(self.name, d.choices))]


def categorical(name: str, values: list[Any]) -> Dimension:
    """A categorical over values; tuples get text labels ("7,11,21") since Optuna stores scalars only."""
    unique = list(dict.fromkeys(values))
    labels = tuple(",".join(map(str, v)) if isinstance(v, tuple) else v for v in unique)
    return Dimension(name, CategoricalDistribution(labels), tuple(unique))


@dataclass(frozen=True)
class SearchSpace:
    """Which modules compete, each one's searched and fixed hyperparameters, and the placement axes."""

    base: Base
    modules: tuple[str, ...]
    dimensions: dict[str, tuple[tuple[str, Dimension], ...]]  # module -> (hyperparameter, dimension)
    fixed: dict[str, dict[str, Any]]  # module -> hyperparameter -> value
    stages: Dimension | None = None
    position: Dimension | None = None

    @property
    def module(self) -> Dimension | None:
        """The choice of module, when more than one competes."""
        return categorical("module", list(self.modules)) if len(self.modules) > 1 else None

    def sample(self, trial: optuna.Trial) -> Point:
        """The trial's point; ConfigError when the sampled combination does not fit together."""
        module = self.module.suggest(trial) if self.module else self.modules[0]
        hyperparameters = dict(self.fixed[module])
        for hp, dimension in self.dimensions[module]:
            hyperparameters[hp] = dimension.suggest(trial)
        if module == "none":  # the baseline has no placement: one point, not one per stage set
            return self.base.point(module, hyperparameters)
        stages = self.stages.suggest(trial) if self.stages else None
        position = self.position.suggest(trial) if self.position else None
        return self.base.point(module, hyperparameters, stages, position)

    def describe(self) -> dict[str, Any]:
        """Every distribution and fixed value, JSON-able: a study keeps it to refuse a changed space."""
        dims = [d for d in (self.module, self.stages, self.position) if d is not None]
        dims += [d for module in self.modules for _, d in self.dimensions[module]]
        described: dict[str, Any] = {d.name: distribution_to_json(d.distribution) for d in dims}
        described.update({f"{m}.{hp}": _jsonable(v) for m in self.modules for hp, v in self.fixed[m].items()})
        return described


def parse_space(section: dict[str, Any], base: Base, prefix: str = "search.") -> SearchSpace:
    """Validate a search section's `modules`, `stages` and `position` into a SearchSpace."""
    modules = section.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise ConfigError(f"{prefix}modules", modules, "a mapping of module name -> {hyperparameter: range, values or value}")
    dimensions, fixed = {}, {}
    for module, spec in modules.items():
        key = f"{prefix}modules.{module}"
        entry = get_module_entry(module, key)
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ConfigError(key, spec,
                              "a mapping of hyperparameter -> {low, high[, log, step]}, a list of values, a value, or {}")
        _check(partial(base.point, module, {}), key, module)
        unknown = sorted(set(spec) - set(entry.schema.params))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", spec[unknown[0]],
                              "a hyperparameter of " + module + ": " + (", ".join(entry.schema.params) or "none"))
        searched, chosen = [], {}
        for hp, hp_spec in spec.items():
            values_or_dimension = _dimension(f"{module}.{hp}", entry.schema.params[hp], hp_spec, f"{key}.{hp}",
                                             lambda value, module=module, hp=hp: base.point(module, {hp: value}))
            if isinstance(values_or_dimension, Dimension):
                searched.append((hp, values_or_dimension))
            else:
                chosen[hp] = values_or_dimension
        dimensions[module], fixed[module] = tuple(searched), chosen
    placed = [m for m in modules if m != "none"]
    stages = _placement_axis(section, "stages", base, placed, prefix)
    position = _placement_axis(section, "position", base, placed, prefix)
    return SearchSpace(base, tuple(modules), dimensions, fixed, stages, position)


def _dimension(name: str, hp: HParam, spec: Any, key: str, build: Any) -> Dimension | Any:
    """A Dimension for a searched hyperparameter, or the validated value of a fixed one."""
    if isinstance(spec, dict) and "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(key, spec, "{choices: [...]} alone, or {low, high[, log, step]}")
        spec = spec["choices"]
    if isinstance(spec, dict):
        declared = None if spec else _declared_values(hp, key)
        if declared is None:
            return _int_range(name, hp, spec, key, build)
        values = [_valid(hp, key, value, build) for value in declared]
    elif isinstance(spec, list) and spec:
        values = [_valid(hp, f"{key}[{i}]", value, build) for i, value in enumerate(spec)]
    elif isinstance(spec, list):
        raise ConfigError(key, spec, "a non-empty list of values")
    else:
        return _valid(hp, key, spec, build)
    values = list(dict.fromkeys(values))
    return values[0] if len(values) == 1 else categorical(name, values)


def _declared_values(hp: HParam, key: str) -> list[Any] | None:
    """Every value the declaration allows, where that is a finite list (None: an integer range)."""
    if isinstance(hp, Bool):
        return [False, True]
    if isinstance(hp, Choice):
        return list(hp.choices)
    if isinstance(hp, Subset):
        return list(_subsets(hp.choices))
    if isinstance(hp, OddKernels):
        return list(_subsets(tuple(sorted(hp.default))))
    if isinstance(hp, Int) and hp.none_means is not None:
        return [None, *range(hp.low | 1 if hp.odd else hp.low, hp.high + 1, 2 if hp.odd else 1)]
    if isinstance(hp, (Int, Float)):
        return None
    raise ConfigError(key, {}, f"explicit values: {type(hp).__name__} declares no range")


def _int_range(name: str, hp: HParam, spec: dict[str, Any], key: str, build: Any) -> Dimension:
    if isinstance(hp, Float):
        return _float_range(name, hp, spec, key, build)
    if not isinstance(hp, Int):
        raise ConfigError(key, spec, f"a list of values or {{}} ({hp.allowed()}); ranges are for integers and real numbers")
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", spec[unknown[0]], "one of " + ", ".join(RANGE_KEYS))
    low = _valid(hp, f"{key}.low", spec.get("low", hp.low), build)
    high = _valid(hp, f"{key}.high", spec.get("high", hp.high), build)
    if low is None or high is None:
        raise ConfigError(f"{key}.{'low' if low is None else 'high'}", None, "an integer; list null among values instead")
    if low > high:
        raise ConfigError(f"{key}.high", high, f"at least low={low}")
    log = spec.get("log", hp.log and not hp.odd)
    step = spec.get("step", 2 if hp.odd else 1)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log", log, "true or false")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1 or (hp.odd and step % 2):
        raise ConfigError(f"{key}.step", step, "an even positive integer (odd values only)" if hp.odd else "a positive integer")
    if log and step != 1:
        raise ConfigError(f"{key}.log", log, "false: a log scale takes every integer, and this one "
                          + ("takes odd values only" if hp.odd else f"has step {step}"))
    return Dimension(name, IntDistribution(low, high, log=log, step=step))


def _float_range(name: str, hp: Float, spec: dict[str, Any], key: str, build: Any) -> Dimension:
    """A FloatDistribution from {low, high[, log, step]}; both ends default to the declared range, which must be finite."""
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", spec[unknown[0]], "one of " + ", ".join(RANGE_KEYS))
    ends = {}
    for end in ("low", "high"):
        value = spec.get(end, getattr(hp, end))
        if as_float(value) is None:
            raise ConfigError(f"{key}.{end}", value, f"a finite number ({hp.allowed()})")
        ends[end] = _valid(hp, f"{key}.{end}", value, build)
    if ends["low"] > ends["high"]:
        raise ConfigError(f"{key}.high", ends["high"], f"at least low={ends['low']}")
    log = spec.get("log", hp.log)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log", log, "true or false")
    if log and ends["low"] <= 0:
        raise ConfigError(f"{key}.low", ends["low"], "greater than 0 on a log scale")
    step = spec.get("step")
    if step is not None and (as_float(step) is None or as_float(step) <= 0 or log):  # type: ignore[operator]
        raise ConfigError(f"{key}.step", step, "a positive number, and only without log")
    return Dimension(name, FloatDistribution(ends["low"], ends["high"], log=log, step=None if step is None else as_float(step)))


def _valid(hp: HParam, key: str, value: Any, build: Any) -> Any:
    value = hp.validate(key, value)
    _check(lambda: build(value), key, value)
    return value


def _check(build: Any, key: str, value: Any) -> None:
    """Build the point; a module or backbone that refuses it names this file's key."""
    try:
        build()
    except ConfigError as error:
        raise ConfigError(key, value, error.allowed) from None


def _placement_axis(section: dict[str, Any], name: str, base: Base, modules: list[str], prefix: str) -> Dimension | None:
    spec = section.get(name)
    if spec is None:
        return None
    key = f"{prefix}{name}"
    entry = get_backbone_entry(base.backbone)
    if name == "stages":
        if spec == ALL:
            spec = [list(s) for s in _subsets(entry.stages)]
        if not isinstance(spec, list) or not spec or not all(isinstance(s, list) for s in spec):
            raise ConfigError(key, spec, f"`{ALL}` or a list of stage lists from {list(entry.stages)}")
        values = [tuple(sorted(set(s))) for s in spec]
    else:
        if not isinstance(spec, list) or not spec:
            raise ConfigError(key, spec, "a list of positions from " + ", ".join(entry.positions))
        values = spec
    for index, value in enumerate(values):
        for module in modules:
            _check(partial(base.point, module, {}, **{name: value}), f"{key}[{index}]", spec[index])
    return categorical(name, values)


def _subsets(items: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Every non-empty subset, smallest first, each in the order of `items`."""
    return [combo for size in range(1, len(items) + 1) for combo in itertools.combinations(items, size)]


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
