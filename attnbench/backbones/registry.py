"""Registry of fixed backbones with slots, and `build_model`, the one way to put a module into one.

A backbone declares its stages and the positions a gating module can take; a
`SlotPlan` says which module goes where. Slot modules are flagged so measurements
can find them (`attention_slots`) without the backbone keeping a second list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from attnbench.errors import ConfigError
from attnbench.modules.registry import build_module, get_module_entry

SLOT_FLAG = "_attnbench_slot"


@dataclass(frozen=True)
class SlotPlan:
    """Which attention module goes into which slots, with resolved hyperparameters."""

    attention: str = "none"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    stages: tuple[int, ...] = ()
    position: str = "standard"

    def in_stage(self, stage: int) -> bool:
        """Whether blocks of `stage` get the module."""
        return stage in self.stages

    def gate(self, channels: int, stage: int) -> nn.Module:
        """The gating module for a slot of `stage` (identity where the plan leaves it out)."""
        name = self.attention if self.in_stage(stage) and get_module_entry(self.attention).kind == "gate" else "none"
        module = build_module(name, channels, **(self.hyperparameters if name == self.attention else {}))
        setattr(module, SLOT_FLAG, True)
        return module

    def conv3x3(self, in_channels: int, out_channels: int, stride: int, stage: int) -> nn.Module:
        """A 3x3 conv of `stage`: the plan's conv-replacing module (dcn) there, else a plain conv without bias."""
        if self.in_stage(stage) and get_module_entry(self.attention).kind == "conv":
            module = build_module(self.attention, in_channels, out_channels=out_channels, stride=stride, **self.hyperparameters)
            setattr(module, SLOT_FLAG, True)
            return module
        return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone."""

    name: str
    builder: Callable[[SlotPlan, int], nn.Module]  # (plan, num_classes) -> model
    stages: tuple[int, ...]  # stage names as the backbone's paper numbers them
    default_stages: tuple[int, ...]  # stages a gating module goes into by default
    conv_stages: tuple[int, ...]  # stages a conv-replacing module (dcn) goes into by default
    positions: tuple[str, ...]  # where a gating module may sit inside a block
    stage_channels: Callable[[int, str], tuple[int, ...]]  # (stage, position) -> channels a slot sees
    min_input: int  # smallest input side the backbone takes (total stride)
    family: str
    paper: str
    accepts: tuple[str, ...] = ("gate", "conv")  # module kinds its slots take


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    """Add a backbone to the registry."""
    if entry.name in _REGISTRY:
        raise RuntimeError(f"backbone {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def backbone_names() -> list[str]:
    """Names of all registered backbones."""
    return list(_REGISTRY)


def get_backbone_entry(name: str, key: str = "backbone") -> BackboneEntry:
    """The registry entry for `name`, or a ConfigError listing the known names."""
    if name not in _REGISTRY:
        raise ConfigError(key, name, "one of " + ", ".join(_REGISTRY))
    return _REGISTRY[name]


def plan_slots(
    backbone: str,
    attention: str = "none",
    stages: tuple[int, ...] | list[int] | None = None,
    position: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    prefix: str = "",
) -> SlotPlan:
    """Validate a module/placement choice against a backbone; every error names its key."""
    entry = get_backbone_entry(backbone, f"{prefix}backbone")
    module = get_module_entry(attention, f"{prefix}attention")
    if module.kind not in entry.accepts:
        raise ConfigError(f"{prefix}attention", attention, f"a module of kind {' or '.join(entry.accepts)} for backbone {backbone}")
    resolved = module.resolve(dict(hyperparameters or {}), prefix)
    if stages is None:
        stages = entry.conv_stages if module.kind == "conv" else entry.default_stages
    stages = _validate_stages(entry, stages, f"{prefix}stages")
    if position is None:
        position = entry.positions[0]
    if position not in entry.positions:
        raise ConfigError(f"{prefix}position", position, f"one of {', '.join(entry.positions)} for backbone {backbone}")
    if module.kind == "gate":
        for stage in stages:
            for channels in sorted(set(entry.stage_channels(stage, position))):
                module.check(channels, resolved, prefix)
    return SlotPlan(attention, resolved, stages, position)


def _validate_stages(entry: BackboneEntry, stages: Any, key: str) -> tuple[int, ...]:
    allowed = f"a non-empty list of stages from {list(entry.stages)} for backbone {entry.name}"
    if isinstance(stages, int) and not isinstance(stages, bool):
        stages = [stages]
    if not isinstance(stages, (list, tuple)) or not stages:
        raise ConfigError(key, stages, allowed)
    for stage in stages:
        if isinstance(stage, bool) or stage not in entry.stages:
            raise ConfigError(key, stage, allowed)
    return tuple(sorted(set(stages)))


def build_model(
    backbone: str,
    attention: str = "none",
    *,
    stages: tuple[int, ...] | list[int] | None = None,
    position: str | None = None,
    num_classes: int = 1000,
    **hyperparameters: Any,
) -> nn.Module:
    """Build `backbone` with `attention` in its slots; hyperparameters go to the module."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError("num_classes", num_classes, "a positive integer")
    plan = plan_slots(backbone, attention, stages, position, hyperparameters)
    return get_backbone_entry(backbone).builder(plan, num_classes)


def attention_slots(model: nn.Module) -> dict[str, nn.Module]:
    """Slot modules of a built model by qualified name (identity slots included)."""
    return {name: m for name, m in model.named_modules() if getattr(m, SLOT_FLAG, False)}
