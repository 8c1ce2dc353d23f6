"""Typed hyperparameter declarations: default, valid range, validation and a search space.

Each module declares its hyperparameters once; the registry validates user values
against them, the CLI lists them, and searches derive their spaces from them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from attnbench.core.errors import ConfigError


@dataclass(frozen=True)
class HParam:
    """Base class: a named hyperparameter with a default and a description.

    `per_stage` lets a scalar hyperparameter take one value per chosen stage (a list, in stage order,
    as ECA's released models set one kernel per stage); `presets` names such lists (ECA's `k3557`).
    """

    default: Any
    help: str = ""
    per_stage: bool = False
    presets: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def validate(self, key: str, value: Any) -> Any:
        """Return the value in canonical form or raise ConfigError."""
        raise NotImplementedError

    def allowed(self) -> str:
        """Human-readable description of the valid values."""
        raise NotImplementedError

    def resolve(self, key: str, value: Any) -> Any:
        """`validate`, also taking a per-stage list (a tuple of values comes back) or a preset's name."""
        presets = dict(self.presets)
        if self.per_stage and isinstance(value, str) and value in presets:
            value = presets[value]
        if self.per_stage and isinstance(value, (list, tuple)):
            if not value:
                raise ConfigError(key, value, self.described())
            return tuple(self.validate(f"{key}[{i}]", item) for i, item in enumerate(value))
        try:
            return self.validate(key, value)
        except ConfigError:
            if not self.per_stage:
                raise
            raise ConfigError(key, value, self.described()) from None

    def described(self) -> str:
        """`allowed()`, with the per-stage form and the presets where the hyperparameter has them."""
        text = self.allowed()
        if self.per_stage:
            text += ", or a list of such values, one per chosen stage"
            if self.presets:
                text += "; or a preset: " + ", ".join(f"{name} = {list(values)}" for name, values in self.presets)
        return text


@dataclass(frozen=True)
class Int(HParam):
    """An integer in [low, high]; optionally odd only; None allowed when `none_means` says what it means."""

    low: int = 1
    high: int = 1 << 30
    odd: bool = False
    log: bool = False
    none_means: str | None = None

    def validate(self, key: str, value: Any) -> Any:
        if value is None and self.none_means is not None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, self.allowed())
        if not self.low <= value <= self.high or (self.odd and value % 2 == 0):
            raise ConfigError(key, value, self.allowed())
        return value

    def allowed(self) -> str:
        text = f"{'an odd' if self.odd else 'an'} integer in [{self.low}, {self.high}]"
        if self.none_means is not None:
            text += f", or null for {self.none_means}"
        return text


def as_float(value: Any) -> float | None:
    """A real number as people write it (YAML reads `1e-3` as a string), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Float(HParam):
    """A real number in [low, high] (`1e-4` written as a string is accepted); `log` marks a log-scale search."""

    low: float = 0.0
    high: float = math.inf
    log: bool = False

    def validate(self, key: str, value: Any) -> Any:
        number = as_float(value)
        if number is None or not self.low <= number <= self.high:
            raise ConfigError(key, value, self.allowed())
        return number

    def allowed(self) -> str:
        return f"a number in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Bool(HParam):
    """true or false."""

    def validate(self, key: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ConfigError(key, value, self.allowed())
        return value

    def allowed(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice(HParam):
    """One of a fixed set of strings."""

    choices: tuple[str, ...] = ()

    def validate(self, key: str, value: Any) -> Any:
        if value not in self.choices:
            raise ConfigError(key, value, self.allowed())
        return value

    def allowed(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Subset(HParam):
    """A non-empty subset of `choices`, kept in the order of `choices` (e.g. pool types, strip scales)."""

    choices: tuple[Any, ...] = ()

    def validate(self, key: str, value: Any) -> Any:
        items = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise ConfigError(key, value, self.allowed())
        if any(item not in self.choices for item in items) or len(set(items)) != len(items):
            raise ConfigError(key, value, self.allowed())
        return tuple(c for c in self.choices if c in items)

    def allowed(self) -> str:
        return "a non-empty list without repeats of " + ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class OddKernels(HParam):
    """A non-empty tuple of distinct odd integers in [low, high] (e.g. MSCA strip scales)."""

    low: int = 3
    high: int = 31

    def validate(self, key: str, value: Any) -> Any:
        items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise ConfigError(key, value, self.allowed())
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or item % 2 == 0 or not self.low <= item <= self.high:
                raise ConfigError(key, value, self.allowed())
        if len(set(items)) != len(items):
            raise ConfigError(key, value, self.allowed())
        return tuple(sorted(items))

    def allowed(self) -> str:
        return f"a non-empty list of distinct odd integers in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class Schema:
    """The hyperparameters of one module, by name."""

    params: dict[str, HParam] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """Paper defaults for every hyperparameter."""
        return {name: p.default for name, p in self.params.items()}

    def resolve(self, values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """Defaults overlaid with validated user values; unknown names are errors."""
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            name = unknown[0]
            allowed = ", ".join(self.params) if self.params else "no hyperparameters"
            raise ConfigError(f"{prefix}{name}", values[name], f"not a hyperparameter here; allowed: {allowed}")
        resolved = self.defaults()
        for name, value in values.items():
            resolved[name] = self.params[name].resolve(f"{prefix}{name}", value)
        return resolved
