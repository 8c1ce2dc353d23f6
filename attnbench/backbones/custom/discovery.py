"""Finding the slots of a model: which modules the patterns match, and their channels and map sizes
from one forward on the meta device with a recorder (`_Spy`) standing in for every matched module."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.backbones.custom.messages import _first_line
from attnbench.backbones.custom.patterns import Pattern, _no_match, matching_names
from attnbench.core.errors import ConfigError
from attnbench.core.modes import eval_mode
from attnbench.modules.slots import CONV_POSITION, Site

GATE_POSITION = "after"  # the one gate position of a custom backbone: on the output of the matched module
CONV_RULE = "an nn.Conv2d with a 3x3 kernel, padding 1, dilation 1, groups 1 and zero padding (the convolution a " \
            "conv-replacing module stands in for)"


class _Spy(nn.Module):
    """Runs `module` and records, per call, the shape of its output (gates) or of its input (convs)."""

    def __init__(self, module: nn.Module, record_input: bool) -> None:
        super().__init__()
        self.module = module
        self.record_input = record_input
        self.calls: list[Any] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.module(*args, **kwargs)
        seen = args[0] if self.record_input and args else out
        self.calls.append(tuple(seen.shape) if isinstance(seen, Tensor) else type(seen).__name__)
        return out


@dataclass(frozen=True)
class Slot:
    """A matched module and the site it offers (stage = its pattern's number, block = its match index)."""

    name: str
    site: Site


@dataclass(frozen=True)
class Discovery:
    """What one meta-device forward shows: the slots, and the model's output shape (None if not a tensor)."""

    slots: tuple[Slot, ...]
    output_shape: tuple[int, ...] | None


def _as_pair(input_size: Any, key: str) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool) and input_size > 0:
        return input_size, input_size
    if (isinstance(input_size, (tuple, list)) and len(input_size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
        return int(input_size[0]), int(input_size[1])
    raise ConfigError(key, input_size, "a positive integer (the input side) or a pair (H, W)")


def _place(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the module called `name`."""
    parent_name, _, leaf = name.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, leaf


def _check_conv(name: str, module: nn.Module, pattern: Pattern) -> tuple[int, int, int]:
    """(in, out, stride) of a conv a module may replace, or ConfigError saying why it may not."""
    if not isinstance(module, nn.Conv2d):
        raise ConfigError(pattern.key, pattern.pattern, f"a pattern matching only convolutions, each {CONV_RULE}: "
                                                        f"it matches {name}, a {type(module).__name__}")
    stride = module.stride
    padding_ok = module.padding in ((1, 1), "same")
    if (module.kernel_size != (3, 3) or not padding_ok or module.dilation != (1, 1) or module.groups != 1
            or module.padding_mode != "zeros" or stride[0] != stride[1]):
        shown = (f"kernel_size={module.kernel_size}, stride={stride}, padding={module.padding}, "
                 f"dilation={module.dilation}, groups={module.groups}, padding_mode={module.padding_mode}")
        raise ConfigError(pattern.key, pattern.pattern, f"a pattern matching only convolutions, each {CONV_RULE}: "
                                                        f"it matches {name}, a Conv2d with {shown}")
    return module.in_channels, module.out_channels, int(stride[0])


def discover(model: nn.Module, patterns: Sequence[Pattern], input_size: Any = 224, in_channels: int = 3,
             size_key: str = "input_size") -> Discovery:
    """Every slot the patterns name in `model`, with its channels and map size, from one meta-device forward.

    Recorders stand in for the matched modules during that forward and are taken out afterwards,
    whether it worked or not: `model` is left as it was, and its own tensors are never read.
    """
    height, width = _as_pair(input_size, size_key)
    found = _match_patterns(model, patterns)
    convs = _check_matched(model, found)
    spies, output = _spy_forward(model, found, (1, in_channels, height, width), size_key, (height, width))
    slots = _slots(found, spies, convs)
    shape = tuple(int(d) for d in output.shape) if isinstance(output, Tensor) else None
    return Discovery(tuple(slots), shape)


_Matched = list[tuple[Pattern, int, list[str]]]  # each pattern, its stage number and the names it matches


def _match_patterns(model: nn.Module, patterns: Sequence[Pattern]) -> _Matched:
    """The names each pattern matches; ConfigError for a pattern matching none, or a name two patterns match."""
    found: _Matched = []
    owner: dict[str, str] = {}
    for number, pattern in enumerate(patterns, start=1):
        names = matching_names(model, pattern.pattern)
        if not names:
            raise ConfigError(pattern.key, pattern.pattern, _no_match(model, pattern.pattern))
        for name in names:
            if name in owner:
                raise ConfigError(pattern.key, pattern.pattern, f"a pattern matching modules no other slot pattern "
                                                                f"matches: {name} is matched by {owner[name]} too")
            owner[name] = pattern.key
        found.append((pattern, number, names))
    return found


def _check_matched(model: nn.Module, found: _Matched) -> dict[str, tuple[int, int, int]]:
    """(in, out, stride) of every matched conv; ConfigError for a module held under several names or a conv no
    conv-replacing module stands in for."""
    aliases = _aliases(model)
    convs: dict[str, tuple[int, int, int]] = {}
    for pattern, _, names in found:
        for name in names:
            if len(aliases.get(name, ())) > 1:
                raise ConfigError(pattern.key, pattern.pattern, f"modules the model holds under one name: {name} is "
                                                                f"also {', '.join(aliases[name][1:])}")
            if pattern.kind == "conv":
                convs[name] = _check_conv(name, model.get_submodule(name), pattern)
    return convs


def _spy_forward(model: nn.Module, found: _Matched, shape: tuple[int, ...], size_key: str,
                 size: tuple[int, int]) -> tuple[dict[str, _Spy], Any]:
    """The recorders of one meta forward with a `_Spy` in place of every matched module, and its output.

    The matched modules are put back afterwards, whether the forward worked or not.
    """
    spies: dict[str, _Spy] = {}
    places = {name: _place(model, name) for _, _, names in found for name in names}
    output: Any = None
    try:
        for pattern, _, names in found:
            for name in names:
                parent, leaf = places[name]
                spies[name] = _Spy(getattr(parent, leaf), record_input=pattern.kind == "conv")
        for name, spy in spies.items():  # every spy made before any goes in: names stay valid
            parent, leaf = places[name]
            setattr(parent, leaf, spy)
        output = _meta_forward(model, shape, size_key, size)
    finally:
        for name, spy in spies.items():
            parent, leaf = places[name]
            if getattr(parent, leaf, None) is spy:
                setattr(parent, leaf, spy.module)
    return spies, output


def _slots(found: _Matched, spies: dict[str, _Spy], convs: dict[str, tuple[int, int, int]]) -> list[Slot]:
    """The slot of every matched module, from what its recorder saw; ConfigError for one that cannot be a slot."""
    slots = []
    for pattern, number, names in found:
        for block, name in enumerate(names):
            calls = spies[name].calls
            what = "output" if pattern.kind == "gate" else "input"
            if not calls:
                raise ConfigError(pattern.key, pattern.pattern, f"modules that run in the model's forward: {name} "
                                  "never runs, so the channels of its slot cannot be found")
            if len(calls) > 1:
                raise ConfigError(pattern.key, pattern.pattern, f"modules that run once per forward: {name} runs "
                                  f"{len(calls)} times (a shared module), so one slot module cannot stand for it")
            shape = calls[0]
            if not isinstance(shape, tuple) or len(shape) != 4:
                shown = f"shape {list(shape)}" if isinstance(shape, tuple) else f"a {shape}"
                raise ConfigError(pattern.key, pattern.pattern, f"modules whose {what} is an (N, C, H, W) map: "
                                  f"{name} has {shown}")
            feature = (int(shape[2]), int(shape[3]))
            if pattern.kind == "gate":
                site = Site("gate", number, block, GATE_POSITION, int(shape[1]), blocks=len(names), feature_size=feature)
            else:
                cin, cout, stride = convs[name]
                site = Site("conv", number, block, CONV_POSITION, cin, out_channels=cout, stride=stride,
                            blocks=len(names), feature_size=feature)
            slots.append(Slot(name, site))
    return slots


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """For modules the model holds under several names: every name, the first being `named_modules()`'s."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    first = {id(module): name for name, module in model.named_modules()}
    return {first[key]: all_names for key, all_names in names.items() if len(all_names) > 1 and key in first}


def _meta_forward(model: nn.Module, shape: tuple[int, ...], key: str, size: tuple[int, int]) -> Any:
    """One eval forward with every parameter and buffer on the meta device; ConfigError if the model cannot."""
    state = {name: torch.empty_like(t, device="meta") for name, t in chain(model.named_parameters(), model.named_buffers())}
    try:
        with eval_mode(model), torch.no_grad():
            return torch.func.functional_call(model, state, (torch.empty(shape, device="meta"),))
    except Exception as error:  # anything the model raises: it cannot be probed at this size on meta
        value = size[0] if size[0] == size[1] else list(size)
        raise ConfigError(key, value, "a size the model runs at, shapes only, on the meta device (its forward "
                                      f"raised {type(error).__name__}: {_first_line(error)})") from None
