"""Registry of attention modules: build by name, list names with their hyperparameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import nn

from attnbench.errors import ConfigError
from attnbench.hparams import HParam, Schema

# "gate": same shape in and out, placed on a feature map (se, cbam, eca, lka, msca, none).
# "conv": replaces a 3x3 convolution of the backbone (dcn); built with out_channels and stride.
ModuleKind = Literal["gate", "conv"]
ChannelCheck = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class ModuleEntry:
    """One registered attention module."""

    name: str
    cls: type[nn.Module]
    kind: ModuleKind
    schema: Schema
    paper: str
    check_channels: ChannelCheck | None = None
    code: str = ""  # the official implementation followed (repository), for --list

    def resolve(self, hyperparameters: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """Paper defaults overlaid with validated hyperparameters."""
        return self.schema.resolve(hyperparameters, prefix)

    def check(self, channels: int, resolved: dict[str, Any], prefix: str = "") -> None:
        """Raise ConfigError if the hyperparameters cannot work at this channel count."""
        if self.check_channels is not None:
            try:
                self.check_channels(channels, resolved)
            except ConfigError as error:
                raise error.under(prefix.rstrip(".")) if prefix else error


_REGISTRY: dict[str, ModuleEntry] = {}


def register_module(
    name: str,
    *,
    kind: ModuleKind,
    paper: str,
    code: str = "",
    params: dict[str, HParam] | None = None,
    check_channels: ChannelCheck | None = None,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a module to the registry under `name`."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"attention module {name!r} registered twice")
        _REGISTRY[name] = ModuleEntry(name, cls, kind, Schema(dict(params or {})), paper, check_channels, code)
        return cls

    return add


def module_names() -> list[str]:
    """Names of all registered modules."""
    return list(_REGISTRY)


def get_module_entry(name: str, key: str = "attention") -> ModuleEntry:
    """The registry entry for `name`, or a ConfigError listing the known names."""
    if name not in _REGISTRY:
        raise ConfigError(key, name, "one of " + ", ".join(_REGISTRY))
    return _REGISTRY[name]


def build_module(name: str, channels: int, **hyperparameters: Any) -> nn.Module:
    """Build attention module `name` for `channels` channels with validated hyperparameters.

    For "conv" modules (dcn), `out_channels` and `stride` may also be given; they describe
    the convolution being replaced, not a hyperparameter.
    """
    entry = get_module_entry(name)
    conv_args = {k: hyperparameters.pop(k) for k in ("out_channels", "stride") if k in hyperparameters}
    if conv_args and entry.kind != "conv":
        key = next(iter(conv_args))
        raise ConfigError(key, conv_args[key], f"only for convolution-replacing modules, not {name!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError("channels", channels, "a positive integer")
    resolved = entry.resolve(hyperparameters)
    entry.check(channels, resolved)
    return entry.cls(channels, **conv_args, **resolved)


def describe_modules() -> list[dict[str, Any]]:
    """One row per module and hyperparameter: name, kind, paper, default, allowed values."""
    rows: list[dict[str, Any]] = []
    for entry in _REGISTRY.values():
        if not entry.schema.params:
            rows.append({"module": entry.name, "kind": entry.kind, "hyperparameter": "", "default": "", "allowed": "", "paper": entry.paper, "code": entry.code})
        for hp_name, hp in entry.schema.params.items():
            rows.append({
                "module": entry.name, "kind": entry.kind, "hyperparameter": hp_name,
                "default": hp.default, "allowed": hp.allowed(), "paper": entry.paper, "code": entry.code,
            })
    return rows
