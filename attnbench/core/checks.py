"""The one set of value checks: each raises ConfigError naming the key, the value and what is allowed."""
from __future__ import annotations

import math
from typing import Any

from attnbench.core.errors import ConfigError


def is_int(value: Any) -> bool:
    """An integer, and not a bool (YAML's true is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(key: str, value: Any, low: int = 1, high: int | None = None, allowed: str | None = None) -> int:
    """`value` if it is an integer in [low, high]; ConfigError otherwise."""
    if not is_int(value) or value < low or (high is not None and value > high):
        if allowed is None:
            allowed = ("a positive integer" if low == 1 and high is None else f"an integer >= {low}" if high is None
                       else f"an integer in [{low}, {high}]")
        raise ConfigError(key, value, allowed)
    return value


def check_int_list(key: str, value: Any, low: int = 1, allowed: str | None = None) -> list[int]:
    """A non-empty list of integers >= low (one integer is taken as a list of one)."""
    items = [value] if is_int(value) else value
    if not isinstance(items, list) or not items or any(not is_int(v) or v < low for v in items):
        raise ConfigError(key, value, allowed or f"an integer >= {low} or a non-empty list of them")
    return items


def check_bool(key: str, value: Any) -> bool:
    """`value` if it is true or false."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def check_number(key: str, value: Any, low: float = -math.inf, high: float = math.inf, allowed: str | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """`value` if it is a finite real number in [low, high]; `low_open` / `high_open` leave out that end."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        ends = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(key, value, allowed or f"a number in {ends}")
    return float(value)
