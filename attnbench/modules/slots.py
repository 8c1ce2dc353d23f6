"""Slots: the places in a model where an attention module can go, and the plan that fills them.

A backbone offers sites: a gate position in a block (after its last BN, on its input, after
the addition...) or a 3x3 convolution a module may replace. While it is built it asks its plan
for the module at each site; the plan answers with the registered module where its stages,
blocks and position say so, and with the backbone's own default (identity, the plain conv)
elsewhere. Every module a plan puts in is flagged, so measurements find the slots of any
model (`attention_slots`) knowing nothing of backbones.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch import nn

from attnbench.modules.registry import ModuleEntry, build_module, get_module_entry

SLOT_FLAG = "_attnbench_slot"
CONV_POSITION = "conv"  # the position of a conv site: the module replaces the convolution itself
SiteKind = Literal["gate", "conv"]


@dataclass(frozen=True)
class Site:
    """One place a module can go: which stage and block, where in the block, and what the module gets there."""

    kind: SiteKind
    stage: int
    block: int  # index of the block within its stage, from 0
    position: str  # gate: the block position (standard, pre, mixer...); conv: CONV_POSITION
    channels: int  # gate: channels of the map; conv: input channels of the convolution
    out_channels: int = 0  # conv only
    stride: int = 1  # conv only: the replaced convolution's
    dilation: int = 1  # conv only
    groups: int = 1  # conv only
    blocks: int = 1  # blocks in this stage, so that negative block indices count from the end
    feature_size: tuple[int, int] | None = None  # (H, W) of the map the module gets, where probed

    @property
    def key(self) -> tuple[str, int, int, str]:
        """What identifies the site within its backbone."""
        return (self.kind, self.stage, self.block, self.position)


def mark_slot(module: nn.Module) -> nn.Module:
    """Flag `module` as a slot module, for `attention_slots`."""
    setattr(module, SLOT_FLAG, True)
    return module


def attention_slots(model: nn.Module) -> dict[str, nn.Module]:
    """Slot modules of a built model by qualified name (identity slots included)."""
    return {name: m for name, m in model.named_modules() if getattr(m, SLOT_FLAG, False)}


def block_chosen(block: int, blocks_in_stage: int, chosen: tuple[int, ...] | None) -> bool:
    """Whether block `block` of a stage with `blocks_in_stage` blocks is among `chosen` (None: all; -1: the last)."""
    return chosen is None or any(b % blocks_in_stage == block for b in chosen if -blocks_in_stage <= b < blocks_in_stage)


def needs_feature_size(entry: ModuleEntry) -> bool:
    """Whether the module's constructor takes the size of its map (it is built for one size)."""
    return "feature_size" in inspect.signature(entry.cls).parameters


@dataclass(frozen=True)
class SlotPlan:
    """Which module goes into which sites, with resolved hyperparameters.

    A hyperparameter declared `per_stage` may hold one value per chosen stage (a tuple, in stage order).
    `feature_sizes` (site key -> (H, W)) is filled in for modules whose constructor takes `feature_size`.
    """

    attention: str = "none"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    stages: tuple[int, ...] = ()
    position: str = "standard"
    blocks: tuple[int, ...] | None = None
    feature_sizes: Mapping[tuple[str, int, int, str], tuple[int, int]] | None = None

    @property
    def entry(self) -> ModuleEntry:
        """The registry entry of the plan's module."""
        return get_module_entry(self.attention)

    def chooses(self, site: Site) -> bool:
        """Whether the plan's module goes into `site`."""
        if self.attention == "none" or site.kind != self.entry.kind or site.stage not in self.stages:
            return False
        if site.kind == "gate" and site.position != self.position:
            return False
        return block_chosen(site.block, site.blocks, self.blocks)

    def hyperparameters_at(self, site: Site) -> dict[str, Any]:
        """The hyperparameters the module takes at `site`: per-stage values picked for its stage."""
        schema = self.entry.schema.params
        picked = {}
        for name, value in self.hyperparameters.items():
            per_stage = getattr(schema.get(name), "per_stage", False) and isinstance(value, tuple)
            picked[name] = value[self.stages.index(site.stage)] if per_stage else value
        return picked

    def build_at(self, site: Site) -> nn.Module:
        """The plan's module for `site` (call only where `chooses(site)`)."""
        extra: dict[str, Any] = {"feature_size": (self.feature_sizes or {}).get(site.key)}
        if site.kind == "conv":
            extra.update(out_channels=site.out_channels, stride=site.stride)
        return mark_slot(build_module(self.attention, site.channels, **extra, **self.hyperparameters_at(site)))

    def gate(self, site: Site) -> nn.Module:
        """The module for a gate site: the plan's where it chooses the site, identity elsewhere (both flagged)."""
        return self.build_at(site) if self.chooses(site) else mark_slot(build_module("none", site.channels))

    def conv(self, site: Site, plain: Callable[[], nn.Module]) -> nn.Module:
        """The module for a conv site: the plan's where it chooses the site, else the backbone's `plain()` conv."""
        return self.build_at(site) if self.chooses(site) else plain()

    def brings_norm(self, site: Site) -> bool:
        """Whether the module replacing this conv has its own norm and activation (the block then drops its own)."""
        return self.chooses(site) and self.entry.includes_norm

    def with_feature_sizes(self, sizes: Mapping[tuple[str, int, int, str], tuple[int, int]]) -> SlotPlan:
        """The same plan with the probed map size of every site."""
        return replace(self, feature_sizes=dict(sizes))


class SiteProbe:
    """A stand-in plan that fills every site with a recorder: building a backbone with it lists its sites.

    Gate sites of `position` get an identity that records the map it sees, conv sites the plain conv
    behind a recorder; a forward pass (on the meta device: shapes only) then gives each feature size.
    """

    def __init__(self, position: str) -> None:
        self.position = position
        self.sites: dict[tuple[str, int, int, str], Site] = {}
        self.sizes: dict[tuple[str, int, int, str], tuple[int, int]] = {}

    def _record(self, site: Site) -> nn.Module:
        self.sites[site.key] = site
        return _Recorder(site.key, self.sizes)

    def gate(self, site: Site) -> nn.Module:
        """A recorder at this probe's position, identity at the others."""
        return self._record(site) if site.position == self.position else build_module("none", site.channels)

    def conv(self, site: Site, plain: Callable[[], nn.Module]) -> nn.Module:
        """The plain conv, behind a recorder."""
        return nn.Sequential(self._record(site), plain())

    def brings_norm(self, site: Site) -> bool:
        """Never: the block keeps its own layers."""
        return False

    def probed(self) -> list[Site]:
        """The recorded sites, with the feature sizes a forward pass saw (None for sites it never reached)."""
        return [replace(site, feature_size=self.sizes.get(key)) for key, site in self.sites.items()]


Planner = SlotPlan | SiteProbe  # what a backbone builder takes


class _Recorder(nn.Module):
    """Identity that writes the spatial size of its first input into `sizes[key]`."""

    def __init__(self, key: tuple[str, int, int, str], sizes: dict) -> None:
        super().__init__()
        self.key = key
        self.sizes = sizes

    def forward(self, x: Any) -> Any:
        self.sizes.setdefault(self.key, tuple(int(d) for d in x.shape[2:4]))
        return x
