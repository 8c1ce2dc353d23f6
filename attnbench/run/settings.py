"""Building a measurement's settings dataclass from an ablation file's mapping, every error under its key."""
from __future__ import annotations

import dataclasses
from typing import Any

from attnbench.core.errors import ConfigError, check_keys
from attnbench.modules.hparams import as_float


def numbers_read(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Real-number fields as people write them: YAML reads `lr: 1e-3` (no dot) as the string "1e-3"."""
    numbers = {f.name for f in dataclasses.fields(cls) if "float" in str(f.type)}
    read = dict(values)
    for name in numbers & read.keys():
        if isinstance(read[name], str) and (number := as_float(read[name])) is not None:
            read[name] = number
    return read


def construct(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """A settings dataclass (which validates itself on construction), naming unknown keys and invalid values under `prefix`."""
    check_keys(values, tuple(f.name for f in dataclasses.fields(cls)), prefix)
    try:
        return cls(**numbers_read(cls, values))
    except ConfigError as error:
        raise error.under(prefix.rstrip(".")) from None
