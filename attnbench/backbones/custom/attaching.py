"""`attach`: a registered module put into a model you built, at slots named by patterns, with its plan."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from attnbench.backbones.custom.discovery import GATE_POSITION, Slot, discover
from attnbench.backbones.custom.installing import install
from attnbench.backbones.custom.patterns import Pattern, check_pattern
from attnbench.core.checks import is_int
from attnbench.core.errors import ConfigError
from attnbench.modules.registry import ModuleEntry, get_module_entry
from attnbench.modules.slots import SlotPlan, needs_feature_size


def attach(
    model: nn.Module,
    attention: str,
    *,
    after: Sequence[str] | str | None = None,
    replace_convs: Sequence[str] | str | None = None,
    blocks: Sequence[int] | int | None = None,
    input_size: int | tuple[int, int] = 224,
    in_channels: int = 3,
    **hyperparameters: Any,
) -> nn.Module:
    """Put registered module `attention` into `model` in place, and return the model.

    A gating module (se, cbam, eca, ...) goes `after` every module whose name matches one of the
    patterns; a conv-replacing module (dcn, sk, ...) replaces every convolution `replace_convs`
    matches. Each pattern is a stage (1, 2, ... in the order given), so a per-stage hyperparameter
    takes one value per pattern, and `blocks` picks match indices within each pattern (-1: the last).
    Channels and map sizes come from one meta-device forward at `input_size`. Hyperparameters are
    the module's (`python bench.py --list`); errors are ConfigError naming the argument.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module")
    module = get_module_entry(attention, "attention")
    if attention == "none":
        raise ConfigError("attention", attention, "a module to attach (`none` attaches nothing)")
    key, other = ("after", "replace_convs") if module.kind == "gate" else ("replace_convs", "after")
    given, wrong = (after, replace_convs) if module.kind == "gate" else (replace_convs, after)
    if wrong is not None:
        what = "gate" if module.kind == "gate" else "convolution-replacing"
        raise ConfigError(other, wrong, f"left out for {attention}, a {what} module: give its slots as `{key}`")
    patterns = [Pattern(module.kind, check_pattern(p, f"{key}[{i}]"), f"{key}[{i}]") for i, p in enumerate(_listed(given, key))]
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError("in_channels", in_channels, "a positive integer")
    slots = discover(model, patterns, input_size, in_channels).slots
    plan = _plan(module, hyperparameters, len(patterns), blocks, slots, key)
    return install(model, slots, plan)


def _listed(value: Any, key: str) -> list[Any]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(key, value, "a module-name pattern or a non-empty list of them, e.g. ['layer*.*.bn3']")
    return list(items)


def _plan(module: ModuleEntry, hyperparameters: dict[str, Any], patterns: int, blocks: Any, slots: Sequence[Slot],
          key: str) -> SlotPlan:
    """The plan filling every pattern's slots (or the chosen blocks of each), checked against every site."""
    resolved = module.resolve(dict(hyperparameters))
    stages = tuple(range(1, patterns + 1))
    for name, value in resolved.items():
        if getattr(module.schema.params[name], "per_stage", False) and isinstance(value, tuple) and len(value) != patterns:
            raise ConfigError(name, list(value), f"one value per pattern of `{key}`: {patterns}")
    if blocks is not None:
        blocks = [blocks] if isinstance(blocks, int) and not isinstance(blocks, bool) else blocks
        if not isinstance(blocks, (list, tuple)) or not blocks or any(not is_int(b) for b in blocks):
            raise ConfigError("blocks", blocks, "match indices within each pattern (0 the first, -1 the last)")
        counts = {slot.site.stage: slot.site.blocks for slot in slots}
        for stage, count in counts.items():
            if any(not -count <= b < count for b in blocks):
                raise ConfigError("blocks", list(blocks), f"match indices that pattern {key}[{stage - 1}] has: it "
                                  f"matches {count} modules (-1 is the last)")
        blocks = tuple(sorted(set(blocks)))
    plan = SlotPlan(module.name, resolved, stages, GATE_POSITION, blocks)
    checked = set()
    for slot in slots:
        site = slot.site
        if not plan.chooses(site):
            continue
        at = plan.hyperparameters_at(site)
        for channels in {site.channels, site.out_channels or site.channels}:
            if (channels, repr(at)) not in checked:
                module.check(channels, at)
                checked.add((channels, repr(at)))
        if site.kind == "conv":
            module.check_site(site.channels, site.out_channels, site.stride, at)
    if needs_feature_size(module):
        plan = plan.with_feature_sizes({s.site.key: s.site.feature_size for s in slots if s.site.feature_size})
    return plan
