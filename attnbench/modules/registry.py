"""Registry of attention modules: build by name, list names with their hyperparameters."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from torch import nn

from attnbench.core.errors import ConfigError
from attnbench.core.registry import Registry
from attnbench.modules.hparams import HParam, Schema

# "gate": same shape in and out, placed on a feature map (se, cbam, eca, lka, msca, none).
# "conv": replaces a 3x3 convolution of the backbone (dcn); built with out_channels and stride.
ModuleKind = Literal["gate", "conv"]
ChannelCheck = Callable[[int, dict[str, Any]], None]
ConvCheck = Callable[[int, int, int, dict[str, Any]], None]  # (in channels, out channels, stride, hp) of a replaced conv
StageRule = Literal["all", "all_but_last", "last"]
STAGE_RULES: tuple[StageRule, ...] = get_args(StageRule)
# keywords of build_model and of the sites, which no hyperparameter may be named after
RESERVED = frozenset({"backbone", "attention", "channels", "stages", "position", "blocks", "num_classes", "input_size",
                      "out_channels", "stride", "feature_size", "hyperparameters"})


@dataclass(frozen=True)
class Placement:
    """Where a module sits by default when its paper puts it somewhere particular (else the backbone decides).

    `stages` is a rule over the backbone's stages (all, all_but_last, last) or a tuple of indices into
    them (-2: the second to last, ResNet's res4); `blocks` indices within each stage (-1: the last
    block); `position` a block position, used where the backbone offers it.
    """

    position: str | None = None
    stages: StageRule | tuple[int, ...] | None = None
    blocks: tuple[int, ...] | None = None

    def stages_in(self, stages: tuple[int, ...]) -> tuple[int, ...] | None:
        """The stages of a backbone with `stages` this placement picks (None: the backbone's default)."""
        if self.stages is None:
            return None
        if self.stages == "all":
            return stages
        if self.stages == "all_but_last":
            return stages[:-1] or stages
        if self.stages == "last":
            return stages[-1:]
        return tuple(sorted({stages[i] for i in self.stages if -len(stages) <= i < len(stages)})) or None

    def describe(self) -> str:
        """Short text for --list, e.g. 'post, stages all_but_last, blocks -1'."""
        parts = [self.position] if self.position else []
        if self.stages is not None:
            parts.append(f"stages {self.stages if isinstance(self.stages, str) else list(self.stages)}")
        if self.blocks is not None:
            parts.append(f"blocks {list(self.blocks)}")
        return ", ".join(parts)


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
    placement: Placement = Placement()  # where its paper puts it, where that differs from every block
    includes_norm: bool = False  # conv modules with their own BN and activation (the block drops its own)
    check_conv: ConvCheck | None = None  # conv modules: refuse a convolution they cannot stand in for

    def check_site(self, in_channels: int, out_channels: int, stride: int, resolved: dict[str, Any], prefix: str = "") -> None:
        """Raise ConfigError if this conv module cannot replace a conv of these channels and stride."""
        if self.check_conv is not None:
            try:
                self.check_conv(in_channels, out_channels, stride, resolved)
            except ConfigError as error:
                if not prefix:
                    raise
                raise error.under(prefix.rstrip(".")) from None

    def resolve(self, hyperparameters: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """Paper defaults overlaid with validated hyperparameters."""
        return self.schema.resolve(hyperparameters, prefix)

    def check(self, channels: int, resolved: dict[str, Any], prefix: str = "") -> None:
        """Raise ConfigError if the hyperparameters cannot work at this channel count."""
        if self.check_channels is not None:
            try:
                self.check_channels(channels, resolved)
            except ConfigError as error:
                if not prefix:
                    raise
                raise error.under(prefix.rstrip(".")) from None


MODULES: Registry[ModuleEntry] = Registry("attention module")


def register_module(
    name: str,
    *,
    kind: ModuleKind,
    paper: str,
    code: str = "",
    params: dict[str, HParam] | None = None,
    check_channels: ChannelCheck | None = None,
    placement: Placement = Placement(),
    includes_norm: bool = False,
    check_conv: ConvCheck | None = None,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a module to the registry under `name`."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        reserved = sorted(set(params or {}) & RESERVED)
        if reserved:  # they would collide with build_model's and the slots' own keywords
            raise RuntimeError(f"attention module {name!r}: hyperparameter names {reserved} are reserved")
        MODULES.add(name, ModuleEntry(name, cls, kind, Schema(dict(params or {})), paper, check_channels, code,
                                      placement, includes_norm, check_conv))
        return cls

    return add


def module_names() -> list[str]:
    """Names of all registered modules."""
    return MODULES.names()


def get_module_entry(name: str, key: str = "attention") -> ModuleEntry:
    """The registry entry for `name`, or a ConfigError listing the known names."""
    return MODULES.get(name, key)


def build_module(name: str, channels: int, **hyperparameters: Any) -> nn.Module:
    """Build attention module `name` for `channels` channels with validated hyperparameters.

    For "conv" modules (dcn), `out_channels` and `stride` may also be given; they describe
    the convolution being replaced, not a hyperparameter. `feature_size` (H, W), the map the
    module will get, goes to modules whose constructor takes it (BoTNet's position embeddings).
    """
    entry = get_module_entry(name)
    site = {k: hyperparameters.pop(k) for k in ("out_channels", "stride", "feature_size") if k in hyperparameters}
    conv_only = [k for k in ("out_channels", "stride") if k in site]
    if conv_only and entry.kind != "conv":
        raise ConfigError(conv_only[0], site[conv_only[0]], f"only for convolution-replacing modules, not {name!r}")
    if "feature_size" in site and "feature_size" not in inspect.signature(entry.cls).parameters:
        del site["feature_size"]  # a module that works at any size needs none
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError("channels", channels, "a positive integer")
    resolved = entry.resolve(hyperparameters)
    entry.check(channels, resolved)
    return entry.cls(channels, **site, **resolved)


def describe_modules() -> list[dict[str, Any]]:
    """One row per module and hyperparameter: name, kind, paper, default, allowed values."""
    rows: list[dict[str, Any]] = []
    for entry in MODULES:
        if not entry.schema.params:
            rows.append({"module": entry.name, "kind": entry.kind, "hyperparameter": "", "default": "", "allowed": "",
                         "paper": entry.paper, "code": entry.code})
        for hp_name, hp in entry.schema.params.items():
            rows.append({
                "module": entry.name, "kind": entry.kind, "hyperparameter": hp_name,
                "default": hp.default, "allowed": hp.described(), "paper": entry.paper, "code": entry.code,
            })
    return rows
