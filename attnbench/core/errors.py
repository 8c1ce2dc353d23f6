"""The one error type for bad user input: it names the key, the value and what is allowed."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """Bad input from a user: reported as one line, exit status 2, before anything runs."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key qualified by where it was found (e.g. a file entry)."""
        return ConfigError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.allowed)


def check_keys(mapping: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    """Raise ConfigError for the first key of `mapping` not in `allowed`, named under `prefix`."""
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", mapping[key], "not a known key; allowed: " + ", ".join(allowed))
