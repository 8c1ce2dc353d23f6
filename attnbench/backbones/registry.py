"""Registry of fixed backbones, and `build_model`, the one way to put a registered module into one.

A backbone declares its stages and the gate positions its blocks offer; the sites themselves
(every gate position and replaceable conv, with their channels) are found by building the
backbone once on the meta device with a probe in every site (`probe_sites`), so no backbone
keeps a second description of itself that could drift from its code.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnbench.core.checks import check_int, is_int
from attnbench.core.errors import ConfigError
from attnbench.core.registry import Registry
from attnbench.modules.registry import ModuleEntry, get_module_entry
from attnbench.modules.slots import Planner, Site, SiteProbe, SlotPlan, needs_feature_size


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone."""

    name: str
    builder: Callable[[Planner, int], nn.Module]  # (plan, num_classes) -> model
    stages: tuple[int, ...]  # stage names as the backbone's paper numbers them
    default_stages: tuple[int, ...]  # stages a gating module goes into by default
    conv_stages: tuple[int, ...]  # stages a conv-replacing module (dcn) goes into by default
    positions: tuple[str, ...]  # where a gating module may sit inside a block; the first is the default
    min_input: int  # smallest input side the backbone takes (total stride)
    family: str
    paper: str
    accepts: tuple[str, ...] = ("gate", "conv")  # module kinds its sites take
    default_input: int = 224  # input side its paper uses (the size sites are probed at when none is given)


@dataclass(frozen=True)
class Probe:
    """What one meta-device build and forward of a backbone shows: its sites and its largest feature map."""

    sites: tuple[Site, ...]
    largest_map: int  # elements per sample of the largest tensor any layer outputs


BACKBONES: Registry[BackboneEntry] = Registry("backbone")


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    """Add a backbone to the registry."""
    return BACKBONES.add(entry.name, entry)


def backbone_names() -> list[str]:
    """Names of all registered backbones."""
    return BACKBONES.names()


def get_backbone_entry(name: str, key: str = "backbone") -> BackboneEntry:
    """The registry entry for `name`, or a ConfigError listing the known names."""
    return BACKBONES.get(name, key)


@functools.lru_cache(maxsize=256)
def probe_sites(backbone: str, position: str, input_size: int | None = None) -> Probe:
    """Every site of `backbone` (gates at `position`, and all conv sites) with the map size each gets at `input_size`."""
    entry = get_backbone_entry(backbone)
    size = entry.default_input if input_size is None else input_size
    probe = SiteProbe(position)
    with torch.device("meta"):
        model = entry.builder(probe, 10)
    largest = [0]

    def measure(_module: nn.Module, _args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output[0].numel())

    handles = [m.register_forward_hook(measure) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, 3, size, size, device="meta"))
    except RuntimeError as error:  # a map shrank to nothing: the input is too small for the backbone
        raise ConfigError("input_size", size, f"at least {entry.min_input} for backbone {backbone} ({error})") from None
    finally:
        for handle in handles:
            handle.remove()
    return Probe(tuple(probe.probed()), largest[0])


def default_placement(entry: BackboneEntry, module: ModuleEntry) -> tuple[tuple[int, ...], str, tuple[int, ...] | None]:
    """(stages, position, blocks) a module takes in this backbone when the ablation names none."""
    placement = module.placement
    fallback = entry.conv_stages if module.kind == "conv" else entry.default_stages
    stages = placement.stages_in(entry.stages) or fallback
    position = placement.position if module.kind == "gate" and placement.position in entry.positions else entry.positions[0]
    return stages, position, placement.blocks


def plan_slots(
    backbone: str,
    attention: str = "none",
    stages: Any = None,
    position: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    prefix: str = "",
    blocks: Any = None,
) -> SlotPlan:
    """Validate a module/placement choice against a backbone's sites; every error names its key."""
    entry = get_backbone_entry(backbone, f"{prefix}backbone")
    module = get_module_entry(attention, f"{prefix}attention")
    if module.kind not in entry.accepts:
        raise ConfigError(f"{prefix}attention", attention,
                          f"a module of kind {' or '.join(entry.accepts)} for backbone {backbone}")
    resolved = module.resolve(dict(hyperparameters or {}), prefix)
    default_stages, default_position, default_blocks = default_placement(entry, module)
    if module.kind == "conv" and position not in (None, entry.positions[0]):
        raise ConfigError(f"{prefix}position", position, f"left out for {attention}: a convolution-replacing module "
                          "takes the place of the block's 3x3 convolutions, so a position applies to gates only")
    position = default_position if position is None else position
    if position not in entry.positions:
        raise ConfigError(f"{prefix}position", position, f"one of {', '.join(entry.positions)} for backbone {backbone}")
    stages = _validate_stages(entry, default_stages if stages is None else stages, f"{prefix}stages")
    blocks = default_blocks if blocks is None else _validate_blocks(blocks, f"{prefix}blocks")
    _check_per_stage(module, resolved, stages, prefix)
    plan = SlotPlan(attention, resolved, stages, position, blocks)
    if attention != "none":
        _check_sites(plan, entry, module, prefix)
    return plan


def _check_sites(plan: SlotPlan, entry: BackboneEntry, module: ModuleEntry, prefix: str) -> None:
    """The plan must pick at least one site, every block index must exist, and every site must take the module."""
    sites = [s for s in probe_sites(entry.name, plan.position).sites if s.kind == module.kind
             and (s.kind == "conv" or s.position == plan.position)]
    blocks_per_stage = {s.stage: s.blocks for s in sites}
    for stage in plan.stages:
        count = blocks_per_stage.get(stage, 0)
        for index in plan.blocks or ():
            if not -count <= index < count:
                raise ConfigError(f"{prefix}blocks", list(plan.blocks or ()), f"block indices that stage {stage} of "
                                  f"{entry.name} has: it has {count} blocks (-1 is the last)")
    chosen = [s for s in sites if plan.chooses(s)]
    if not chosen:
        raise ConfigError(f"{prefix}stages", list(plan.stages), f"stages with a {module.kind} site for {plan.attention} "
                          f"in {entry.name} (these have none)")
    checked = set()
    for site in chosen:
        hyperparameters = plan.hyperparameters_at(site)
        for channels in {site.channels, site.out_channels or site.channels}:
            if (channels, repr(hyperparameters)) not in checked:
                module.check(channels, hyperparameters, prefix)
                checked.add((channels, repr(hyperparameters)))
        if site.kind == "conv":
            module.check_site(site.channels, site.out_channels, site.stride, hyperparameters, prefix)


def _check_per_stage(module: ModuleEntry, resolved: dict[str, Any], stages: tuple[int, ...], prefix: str) -> None:
    for name, value in resolved.items():
        if getattr(module.schema.params[name], "per_stage", False) and isinstance(value, tuple) and len(value) != len(stages):
            raise ConfigError(f"{prefix}{name}", list(value), f"one value per chosen stage: {len(stages)} for stages "
                              f"{list(stages)}")


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


def _validate_blocks(blocks: Any, key: str) -> tuple[int, ...]:
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        blocks = [blocks]
    if not isinstance(blocks, (list, tuple)) or not blocks or not all(is_int(b) for b in blocks):
        raise ConfigError(key, blocks, "a non-empty list of block indices within each chosen stage (0 the first, -1 the last)")
    return tuple(sorted(set(blocks)))


def build_model(
    backbone: str,
    attention: str = "none",
    *,
    stages: tuple[int, ...] | list[int] | None = None,
    position: str | None = None,
    blocks: tuple[int, ...] | list[int] | None = None,
    num_classes: int = 1000,
    input_size: int | None = None,
    **hyperparameters: Any,
) -> nn.Module:
    """Build `backbone` with `attention` in its slots; hyperparameters go to the module.

    `input_size` matters only to modules built for one map size (BoTNet's MHSA); it defaults to
    the backbone's paper input.
    """
    check_int("num_classes", num_classes)
    plan = plan_slots(backbone, attention, stages, position, hyperparameters, blocks=blocks)
    if needs_feature_size(plan.entry):
        probe = probe_sites(backbone, plan.position, input_size)
        plan = plan.with_feature_sizes({s.key: s.feature_size for s in probe.sites if s.feature_size is not None})
    return get_backbone_entry(backbone).builder(plan, num_classes)


def chosen_sites(plan: SlotPlan, backbone: str) -> list[Site]:
    """The sites of `backbone` the plan puts its module into."""
    return [s for s in probe_sites(backbone, plan.position).sites if plan.chooses(s)]

