"""Putting modules into a model's slots, in place: `GateAfter` (a gate after a module) and `install`."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, cast

import torch
from torch import nn

from attnbench.backbones.custom.discovery import Slot, _place
from attnbench.core.errors import ConfigError
from attnbench.modules.slots import Planner, SiteProbe


class GateAfter(nn.Module):
    """Runs `module`, then `attention` on its output: the gate placed after a module of the model.

    Attributes not found here are looked up on the wrapped module (code that reads `self.bn3.num_features`
    keeps working), and a state dict with the unwrapped module's keys (`bn3.weight` for `bn3.module.weight`)
    loads, so pretrained weights of the plain model go in with `strict=False`.
    """

    def __init__(self, module: nn.Module, attention: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.attention = attention
        self.register_load_state_dict_pre_hook(_accept_unwrapped_keys)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.attention(self.module(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None:
                raise
            return getattr(inner, name)


def _accept_unwrapped_keys(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if not rest.startswith(("module.", "attention.")):
            state_dict[f"{prefix}module.{rest}"] = state_dict.pop(key)


def install(model: nn.Module, slots: Iterable[Slot], planner: Planner) -> nn.Module:
    """Fill the slots of `model` from `planner` (a SlotPlan, or the SiteProbe that lists sites), in place.

    A gate the plan does not choose leaves its module as it is; a conv the plan does not choose stays the conv.
    """
    probing = isinstance(planner, SiteProbe)
    slots = list(slots)
    places = []
    for slot in slots:
        try:
            original = model.get_submodule(slot.name)
        except AttributeError:
            raise ConfigError("backbone", slot.name, "a module of the model: the factory built a model without it "
                              "(a factory must build the same modules every time)") from None
        places.append((*_place(model, slot.name), original, slot.site))
    for parent, leaf, original, site in places:  # every place found before anything moves
        if site.kind == "gate":
            if isinstance(planner, SiteProbe) or planner.chooses(site):  # not `probing`: mypy narrows this to a SlotPlan
                gate = _like(planner.gate(site), original, model)
                setattr(parent, leaf, GateAfter(original, gate))
        else:
            replacement = planner.conv(site, _itself(original))
            if replacement is not original:
                if not probing:
                    replacement = _like(replacement, original, model)
                    _take_conv_weight(replacement, cast(nn.Conv2d, original))  # discovery found a Conv2d there
                setattr(parent, leaf, replacement)
    return model


def _itself(module: nn.Module) -> Callable[[], nn.Module]:
    """The `plain()` a planner calls for a conv it leaves as it is: that conv."""
    return lambda: module


def _like(new: nn.Module, original: nn.Module, model: nn.Module) -> nn.Module:
    """`new` on the device and floating dtype of the module it joins, in the same train/eval mode."""
    reference = next(chain(original.parameters(), original.buffers(), model.parameters(), model.buffers()), None)
    if reference is not None and reference.device.type != "meta":
        if reference.is_floating_point():
            new = new.to(device=reference.device, dtype=reference.dtype)
        else:
            new = new.to(device=reference.device)
    return new.train(original.training)


def _take_conv_weight(new: nn.Module, conv: nn.Conv2d) -> None:
    """The replacing module starts from the conv's weight where it has one of the same shape (DCN's main weight)."""
    weight = getattr(new, "weight", None)
    if isinstance(weight, nn.Parameter) and weight.shape == conv.weight.shape and weight.device.type != "meta":
        with torch.no_grad():
            weight.copy_(conv.weight)
