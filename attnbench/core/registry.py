"""The one registry idiom: name -> implementation, registered once, looked up with a ConfigError naming the choices."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from attnbench.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one kind (modules, backbones, measurements, storages...) by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a second registration of a name is a programming error."""
        if name in self._entries:
            raise RuntimeError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str, key: str) -> T:
        """The entry of `name`, or ConfigError(key, name, the names there are)."""
        if name not in self._entries:
            raise ConfigError(key, name, "one of " + ", ".join(self._entries))
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator(name)`: register the decorated object under `name`."""
        return lambda entry: self.add(name, entry)
