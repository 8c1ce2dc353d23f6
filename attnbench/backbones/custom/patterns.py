"""Slot patterns: the `Pattern` of one slot, checking a pattern's syntax, and matching it with module names.

The rules (component by component, `*`, `?`, `[...]` within one component, `**` for any number of
them, whole names only) are set out in the docstring of the package, attnbench.backbones.custom.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
from dataclasses import dataclass
from typing import Any

from torch import nn

from attnbench.core.errors import ConfigError

KIND_OF_KEY = {"after": "gate", "replace": "conv"}


@dataclass(frozen=True)
class Pattern:
    """One slot pattern: gate (`after`) or conv (`replace`), and the key that names it in errors."""

    kind: str  # "gate" or "conv"
    pattern: str
    key: str  # e.g. backbones[0].slots.after[1]


def check_pattern(pattern: Any, key: str) -> str:
    """A pattern as a string of dot-separated, non-empty components, or ConfigError."""
    if not isinstance(pattern, str) or not pattern or any(not part for part in pattern.split(".")):
        raise ConfigError(key, pattern, "a module-name pattern such as `layer*.*.bn3`: dot-separated components, "
                                        "each a name or a glob (`*`, `?`, `[...]`), or `**` for any number of them")
    return pattern


def matches(pattern: str, name: str) -> bool:
    """Whether dotted module name `name` matches `pattern` (see the package docstring for the rules)."""
    return _match_parts(tuple(pattern.split(".")), tuple(name.split(".")))


@functools.lru_cache(maxsize=4096)
def _match_parts(pattern: tuple[str, ...], name: tuple[str, ...]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(rest, name[i:]) for i in range(len(name) + 1))
    return bool(name) and fnmatch.fnmatchcase(name[0], head) and _match_parts(rest, name[1:])


def matching_names(model: nn.Module, pattern: str) -> list[str]:
    """Names of the modules of `model` that `pattern` matches, in `named_modules()` order (the root never)."""
    return [name for name, _ in model.named_modules() if name and matches(pattern, name)]


def _no_match(model: nn.Module, pattern: str) -> str:
    """What to say when a pattern matches nothing: the closest names the model has."""
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(pattern, names, n=4, cutoff=0.4) or names[:4]
    shown = ", ".join(close) + (", ..." if len(names) > len(close) else "")
    return f"a pattern that matches at least one module of the model (it matches none; its modules include {shown})"
