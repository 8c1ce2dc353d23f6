"""Your own backbone: registered modules attached to any PyTorch model at slots named by module-name patterns.

Two uses, one mechanism:

- `attach(model, "se", after=["layer*.*.bn3"])` puts a gate after every module whose name matches,
  and `attach(model, "dcn", replace_convs=["layer3.*.conv2"])` replaces the matched 3x3 convolutions,
  in place, in a model you built (the model is returned);
- an ablation file's backbone `{factory: "package.module:function", kwargs: {...}, slots: {after: [...],
  replace: [...]}}` (or `{name: "torchvision:NAME", ...}`, `{name: "timm:NAME", ...}`) becomes a registered
  backbone (`CustomBackbone.register`) that points name like any other. Its stages are the slot
  patterns, numbered 1..N in file order, and its blocks are the matches of a pattern in the order of
  `model.named_modules()`, so `stages`, `blocks` and per-stage hyperparameters work as for the built-ins.

Pattern rules (`matches`): a pattern is compared with the dotted names of `model.named_modules()`
(the names state-dict keys start with), component by component: `*` is any run of characters within
one component, `?` one character, `[abc]` / `[!abc]` a character class (`fnmatch.fnmatchcase`, so
case-sensitive), and a component that is exactly `**` stands for zero or more whole components. A
pattern matches whole names only: `layer1.*` matches `layer1.0`, never `layer1.0.conv1`.

Channels and map sizes are never typed: each slot is found by one forward on the meta device (shapes
only, nothing computed) with a recorder at every matched module. A gate goes after a module that runs
once per forward and returns an (N, C, H, W) map; a replaced module must be an `nn.Conv2d` with a 3x3
kernel, padding 1 (or 'same'), dilation 1, groups 1 and zero padding, since that is the convolution
every conv-replacing module stands in for (it gets the conv's in and out channels and its stride).

What the result is: an ordinary nn.Module. A gate after module X replaces X by `GateAfter(X, gate)`,
which runs X then the gate, so X's parameters move from `X.weight` to `X.module.weight` (loading a
state dict with the plain model's keys still works: `GateAfter` accepts them) and the gate is
`X.attention`; a replacing module takes X's place and name, and starts from X's weight where it has
one of the same shape (DCN's), as the built-in backbones give it theirs. Slot modules are flagged
with `mark_slot`, so every measurement finds them.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.backbones.registry import BackboneEntry, backbone_names, register_backbone
from attnbench.core.errors import ConfigError, check_keys
from attnbench.core.modes import eval_mode
from attnbench.modules.registry import ModuleEntry, get_module_entry
from attnbench.modules.slots import CONV_POSITION, Planner, Site, SiteProbe, SlotPlan, needs_feature_size

GATE_POSITION = "after"  # the one gate position of a custom backbone: on the output of the matched module
LIBRARIES = ("torchvision", "timm")
ITEM_KEYS = ("name", "factory", "kwargs", "input_size", "num_classes", "slots")
SLOT_KEYS = ("after", "replace")
KIND_OF_KEY = {"after": "gate", "replace": "conv"}
_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_LIBRARY_MODEL = re.compile(r"^[A-Za-z0-9_][\w.\-]*$")
CONV_RULE = "an nn.Conv2d with a 3x3 kernel, padding 1, dilation 1, groups 1 and zero padding (the convolution a " \
            "conv-replacing module stands in for)"


# --- patterns ---------------------------------------------------------------------------------------------


def check_pattern(pattern: Any, key: str) -> str:
    """A pattern as a string of dot-separated, non-empty components, or ConfigError."""
    if not isinstance(pattern, str) or not pattern or any(not part for part in pattern.split(".")):
        raise ConfigError(key, pattern, "a module-name pattern such as `layer*.*.bn3`: dot-separated components, "
                                        "each a name or a glob (`*`, `?`, `[...]`), or `**` for any number of them")
    return pattern


def matches(pattern: str, name: str) -> bool:
    """Whether dotted module name `name` matches `pattern` (see the module docstring for the rules)."""
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


# --- the modules put into a model --------------------------------------------------------------------------


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


# --- finding the slots of a model --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """One slot pattern: gate (`after`) or conv (`replace`), and the key that names it in errors."""

    kind: str  # "gate" or "conv"
    pattern: str
    key: str  # e.g. backbones[0].slots.after[1]


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
    found: list[tuple[Pattern, int, list[str]]] = []
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
    aliases = _aliases(model)
    convs: dict[str, tuple[int, int, int]] = {}
    for pattern, _, names in found:
        for name in names:
            if len(aliases.get(name, ())) > 1:
                raise ConfigError(pattern.key, pattern.pattern, f"modules the model holds under one name: {name} is "
                                                                f"also {', '.join(aliases[name][1:])}")
            if pattern.kind == "conv":
                convs[name] = _check_conv(name, model.get_submodule(name), pattern)

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
        output = _meta_forward(model, (1, in_channels, height, width), size_key, (height, width))
    finally:
        for name, spy in spies.items():
            parent, leaf = places[name]
            if getattr(parent, leaf, None) is spy:
                setattr(parent, leaf, spy.module)

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
    shape = tuple(int(d) for d in output.shape) if isinstance(output, Tensor) else None
    return Discovery(tuple(slots), shape)


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else "no message"


# --- putting modules in --------------------------------------------------------------------------------------


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
            if probing or planner.chooses(site):
                gate = _like(planner.gate(site), original, model)
                setattr(parent, leaf, GateAfter(original, gate))
        else:
            replacement = planner.conv(site, lambda original=original: original)
            if replacement is not original:
                if not probing:
                    replacement = _like(replacement, original, model)
                    _take_conv_weight(replacement, original)
                setattr(parent, leaf, replacement)
    return model


def _like(new: nn.Module, original: nn.Module, model: nn.Module) -> nn.Module:
    """`new` on the device and floating dtype of the module it joins, in the same train/eval mode."""
    reference = next(chain(original.parameters(), original.buffers(), model.parameters(), model.buffers()), None)
    if reference is not None and reference.device.type != "meta":
        if reference.is_floating_point():
            new = new.to(device=reference.device, dtype=reference.dtype)
        else:
            new = new.to(device=reference.device)
    return new.train(original.training)


def _take_conv_weight(new: nn.Module, conv: nn.Module) -> None:
    """The replacing module starts from the conv's weight where it has one of the same shape (DCN's main weight)."""
    weight = getattr(new, "weight", None)
    if isinstance(weight, nn.Parameter) and weight.shape == conv.weight.shape and weight.device.type != "meta":
        with torch.no_grad():
            weight.copy_(conv.weight)


# --- the Python API ----------------------------------------------------------------------------------------


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
        if not isinstance(blocks, (list, tuple)) or not blocks or any(isinstance(b, bool) or not isinstance(b, int) for b in blocks):
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


# --- user backbones as registered backbones ----------------------------------------------------------------


@dataclass(frozen=True)
class CustomBackbone:
    """A user's backbone: how to build it, its slot patterns, and what probing it found.

    `source` is `factory` (target `package.module:function`), `torchvision` or `timm` (target the
    library's model name). Unpickling one (a `--workers` child receives them with the ablation)
    registers it there too, so the points that name it build in every process.
    """

    source: str
    target: str
    kwargs_json: str  # canonical JSON of the factory's keyword arguments
    patterns: tuple[tuple[str, str], ...]  # (kind, pattern) in file order: stage i + 1 is patterns[i]
    input_size: int
    num_classes: int
    search_path: tuple[str, ...] = ()  # folders a factory's module is imported from, after sys.path
    slots: tuple[Slot, ...] = ()
    pass_num_classes: bool = False  # the file set num_classes: the factory gets it

    @property
    def kwargs(self) -> dict[str, Any]:
        """The factory's keyword arguments."""
        return json.loads(self.kwargs_json)

    @property
    def spec(self) -> str:
        """What the file named: `package.module:function`, `torchvision:NAME` or `timm:NAME`."""
        return self.target if self.source == "factory" else f"{self.source}:{self.target}"

    @property
    def name(self) -> str:
        """Registered name: `custom:package.module:function-HASH` or `torchvision:NAME-HASH`, the hash (8 hex)
        over the keyword arguments, num_classes when the file sets it, and the slot patterns."""
        identity = {"kwargs": self.kwargs, "slots": [list(p) for p in self.patterns]}
        if self.pass_num_classes:
            identity["num_classes"] = self.num_classes
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
        return f"{'custom:' if self.source == 'factory' else ''}{self.spec}-{digest}"

    def stages_of(self, kind: str) -> tuple[int, ...]:
        """Stage numbers of the patterns of one kind (gate or conv)."""
        return tuple(i + 1 for i, (k, _) in enumerate(self.patterns) if k == kind)

    def factory(self, key: str = "factory") -> Callable[..., Any]:
        """The function that builds the model (imported now, where it is not yet)."""
        if self.source == "factory":
            return _import_factory(self.target, self.search_path, key)
        return _library_factory(self.source, self.target, key)

    def instantiate(self, num_classes: int | None = None, key: str = "factory") -> nn.Module:
        """The user's model, without slots; `num_classes` other than the probed one goes to the factory."""
        kwargs = self.kwargs
        factory = self.factory(key)
        if num_classes is not None and num_classes != self.num_classes and not _takes(factory, "num_classes"):
            raise ConfigError("num_classes", num_classes, f"{self.num_classes}, the classes of {self.spec}'s own output "
                                                          "(its factory takes no num_classes argument)")
        if self.pass_num_classes or (num_classes is not None and num_classes != self.num_classes):
            kwargs["num_classes"] = self.num_classes if num_classes is None else num_classes
        return _call_factory(factory, kwargs, self.spec, key)

    def build(self, planner: Planner, num_classes: int) -> nn.Module:
        """The model with the planner's modules in its slots (the builder of its BackboneEntry)."""
        probing = isinstance(planner, SiteProbe)  # probes build with 10 classes; the sites do not depend on them
        return install(self.instantiate(None if probing else num_classes), self.slots, planner)

    def entry(self) -> BackboneEntry:
        """Its registry entry: stages are the patterns; gates sit `after` the matched modules."""
        stages = tuple(range(1, len(self.patterns) + 1))
        # the baseline (`none`, a gate) takes every backbone: with no gate pattern its stages are all
        # stages, and a gating module then finds no site there and is refused, naming its stages
        kinds = ("gate", "conv") if self.stages_of("conv") else ("gate",)
        return BackboneEntry(
            name=self.name, builder=self.build, stages=stages,
            default_stages=self.stages_of("gate") or stages, conv_stages=self.stages_of("conv"), positions=(GATE_POSITION,),
            min_input=1, family="custom", paper=f"user backbone {self.spec}", accepts=kinds,
            default_input=self.input_size,
        )

    def register(self) -> CustomBackbone:
        """Register it (once per process: a second registration of the same name keeps the first)."""
        for folder in self.search_path:
            if folder not in sys.path:
                sys.path.append(folder)
        if self.name not in backbone_names():
            register_backbone(self.entry())
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return (_registered, (fields,))


def _registered(fields: dict[str, Any]) -> CustomBackbone:
    """Unpickling: the backbone, registered in this process."""
    return CustomBackbone(**fields).register()


def _import_factory(target: str, search_path: Sequence[str], key: str) -> Callable[..., Any]:
    if not isinstance(target, str) or not _TARGET.match(target):
        raise ConfigError(key, target, "`package.module:function`, a module importable from sys.path, the ablation "
                                       "file's folder or the current directory, and a function in it")
    module_name, _, attribute = target.partition(":")
    for folder in search_path:
        if folder not in sys.path:
            sys.path.append(folder)
    importlib.invalidate_caches()
    where = ", ".join(["sys.path", *search_path])
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ConfigError(key, target, f"an importable module: there is no module {error.name} (looked in "
                                           f"{where})") from None
        raise ConfigError(key, target, f"a module that imports: importing {module_name} raised "
                                       f"ModuleNotFoundError: {_first_line(error)}") from None
    except (Exception, SystemExit) as error:
        raise ConfigError(key, target, f"a module that imports: importing {module_name} raised "
                                       f"{type(error).__name__}: {_first_line(error)}") from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(key, target, f"a function of module {module_name}: it has no {attribute}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(key, target, f"a function (or class) that builds the model: {attribute} is a "
                                       f"{type(found).__name__}")
    return found


def _library_factory(library: str, model: str, key: str) -> Callable[..., Any]:
    try:
        package = importlib.import_module(library)
    except (Exception, SystemExit) as error:  # a build for another torch raises RuntimeError, not ImportError
        raise ConfigError(key, f"{library}:{model}", f"a library that imports here ({library}: "
                                                     f"{type(error).__name__}: {_first_line(error)})") from None
    if library == "torchvision":
        known = package.models.list_models()
        if model not in known:
            close = difflib.get_close_matches(model, known, n=5) or known[:5]
            raise ConfigError(key, f"{library}:{model}", "a torchvision model name, e.g. " + ", ".join(close))
        return functools.partial(package.models.get_model, model, weights=None)
    if not package.is_model(model):
        known = package.list_models()
        close = difflib.get_close_matches(model, known, n=5) or known[:5]
        raise ConfigError(key, f"{library}:{model}", "a timm model name, e.g. " + ", ".join(close))
    return functools.partial(package.create_model, model, pretrained=False)


def _call_factory(factory: Callable[..., Any], kwargs: dict[str, Any], spec: str, key: str,
                  kwargs_key: str | None = None) -> nn.Module:
    try:
        model = factory(**kwargs)
    except Exception as error:
        if kwargs_key and isinstance(error, TypeError) and "argument" in str(error):  # kwargs the factory does not take
            raise ConfigError(kwargs_key, kwargs, f"keyword arguments {spec} takes ({_first_line(error)})") from None
        raise ConfigError(key, spec, f"a factory that builds the model: calling it with {kwargs} raised "
                                     f"{type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(key, spec, f"a function returning a torch.nn.Module (it returned a {type(model).__name__})")
    return model


def _takes(factory: Callable[..., Any], argument: str) -> bool:
    """Whether `factory` accepts keyword `argument` (True where its signature cannot be read)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def define_backbone(
    source: str,
    target: str,
    *,
    kwargs: Mapping[str, Any] | None = None,
    patterns: Sequence[Pattern],
    input_size: int = 224,
    num_classes: int | None = None,
    search_path: Sequence[str] = (),
    prefix: str = "",
) -> CustomBackbone:
    """Build the user's model on the meta device, find its slots, and register it; errors name `prefix`+key."""
    factory_key = f"{prefix}factory" if source == "factory" else f"{prefix}name"
    kwargs = dict(kwargs or {})
    try:
        kwargs_json = json.dumps(kwargs, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}kwargs", kwargs, "a mapping of plain values (numbers, strings, lists, mappings)") from None
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
        raise ConfigError(f"{prefix}input_size", input_size, "a positive integer")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError(f"{prefix}num_classes", num_classes, "a positive integer")
    if num_classes is not None and "num_classes" in kwargs and kwargs["num_classes"] != num_classes:
        raise ConfigError(f"{prefix}num_classes", num_classes, f"left out, or equal to kwargs.num_classes "
                                                               f"{kwargs['num_classes']!r}")
    draft = CustomBackbone(source, target, kwargs_json, tuple((p.kind, p.pattern) for p in patterns), input_size,
                           num_classes or 0, tuple(search_path), (), num_classes is not None)
    factory = draft.factory(factory_key)
    if num_classes is not None and "num_classes" not in kwargs and not _takes(factory, "num_classes"):
        raise ConfigError(f"{prefix}num_classes", num_classes, f"left out: {draft.spec} takes no num_classes argument")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.device("meta"):
        model = _call_factory(factory, kwargs, draft.spec, factory_key, f"{prefix}kwargs")
    found = discover(model, patterns, input_size, size_key=f"{prefix}input_size")
    classes = num_classes
    if classes is None:
        shape = found.output_shape
        classes = shape[1] if shape is not None and len(shape) == 2 else 1000  # a feature extractor: not a classifier
    return replace(draft, num_classes=classes, slots=found.slots).register()


def custom_backbone(
    factory: str | Callable[..., nn.Module],
    *,
    kwargs: Mapping[str, Any] | None = None,
    after: Sequence[str] | str = (),
    replace: Sequence[str] | str = (),
    input_size: int = 224,
    num_classes: int | None = None,
) -> str:
    """Register a user backbone from Python and return its name, for `build_model`, points and grids.

    `factory` is `package.module:function`, `torchvision:NAME`, `timm:NAME`, or a module-level function
    (named by its module and name, so worker processes can import it). `after` patterns become gate
    stages 1..A and `replace` patterns conv stages A+1..A+R.
    """
    if callable(factory):
        module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
        if not module or module == "__main__" or "<" in qualname:
            raise ConfigError("factory", factory, "a function defined at the top level of an importable module")
        factory = f"{module}:{qualname}"
    source, target = _split_spec(factory, "factory")
    patterns = []
    for key, given in (("after", after), ("replace", replace)):
        items = [given] if isinstance(given, str) else list(given or ())
        patterns += [Pattern(KIND_OF_KEY[key], check_pattern(p, f"{key}[{i}]"), f"{key}[{i}]") for i, p in enumerate(items)]
    if not patterns:
        raise ConfigError("after", list(after), "at least one slot pattern in `after` or `replace`")
    return define_backbone(source, target, kwargs=kwargs, patterns=patterns, input_size=input_size,
                           num_classes=num_classes, search_path=(os.getcwd(),)).name


def _split_spec(spec: Any, key: str) -> tuple[str, str]:
    """('torchvision' | 'timm', NAME) for a library model, ('factory', spec) otherwise."""
    if not isinstance(spec, str):
        raise ConfigError(key, spec, "`package.module:function`, `torchvision:NAME` or `timm:NAME`")
    library, _, model = spec.partition(":")
    if library in LIBRARIES:
        if not _LIBRARY_MODEL.match(model):
            raise ConfigError(key, spec, f"{library}:NAME with a model name of {library}")
        return library, model
    return "factory", spec


# --- the ablation file's form ------------------------------------------------------------------------------


def is_custom_item(item: Any) -> bool:
    """Whether a `backbones:` entry describes a user backbone (a factory, or a torchvision:/timm: model)."""
    if isinstance(item, str):
        return item.partition(":")[0] in LIBRARIES
    return isinstance(item, dict) and ("factory" in item or "slots" in item or "kwargs" in item
                                       or (isinstance(item.get("name"), str) and item["name"].partition(":")[0] in LIBRARIES))


def parse_backbone_item(item: Any, prefix: str, folder: str | None, input_size: Any,
                        num_classes: int | None) -> CustomBackbone:
    """A `backbones:` entry naming a user backbone, validated (model built on meta, slots found) and registered.

    `input_size` and `num_classes` are the file's defaults (num_classes None: the file sets none, so
    the model's own output width is the points' num_classes).
    """
    where = prefix.rstrip(".")
    if isinstance(item, str):
        raise ConfigError(where, item, f"a mapping {{name: {item}, slots: {{after: [...], replace: [...]}}}}: a "
                                       "library model needs slot patterns")
    check_keys(item, ITEM_KEYS, prefix)
    if "factory" in item and "name" in item:
        raise ConfigError(f"{prefix}name", item["name"], "left out for a factory backbone: its name is derived from "
                                                         "the factory, its kwargs and its slots")
    if "factory" in item:
        if not isinstance(item["factory"], str) or item["factory"].partition(":")[0] in LIBRARIES:
            raise ConfigError(f"{prefix}factory", item["factory"], "`package.module:function` (a torchvision or timm "
                                                                   "model goes under `name: torchvision:NAME`)")
        source, target = "factory", item["factory"]
    else:
        source, target = _split_spec(item.get("name"), f"{prefix}name")
        if source == "factory":
            raise ConfigError(f"{prefix}name", item.get("name"), "torchvision:NAME or timm:NAME; a model of your own "
                                                                 "goes under `factory: package.module:function`")
    kwargs = item.get("kwargs", {}) or {}
    if not isinstance(kwargs, dict) or any(not isinstance(k, str) for k in kwargs):
        raise ConfigError(f"{prefix}kwargs", kwargs, "a mapping of keyword arguments for the factory")
    slots = item.get("slots")
    if not isinstance(slots, dict) or not slots:
        raise ConfigError(f"{prefix}slots", slots, "a mapping {after: [patterns], replace: [patterns]} with at least "
                                                   "one pattern (see docs/custom_backbones.md)")
    check_keys(slots, SLOT_KEYS, f"{prefix}slots.")
    patterns = []
    for key, given in slots.items():
        items = [given] if isinstance(given, str) else given
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{prefix}slots.{key}", given, "a module-name pattern or a non-empty list of them")
        for i, pattern in enumerate(items):
            slot_key = f"{prefix}slots.{key}[{i}]"
            patterns.append(Pattern(KIND_OF_KEY[key], check_pattern(pattern, slot_key), slot_key))
    search_path = [str(Path(folder).resolve())] if folder else []
    cwd = os.getcwd()
    if cwd not in search_path:
        search_path.append(cwd)
    return define_backbone(source, target, kwargs=kwargs, patterns=patterns,
                           input_size=item.get("input_size", input_size), num_classes=item.get("num_classes", num_classes),
                           search_path=search_path, prefix=prefix)


__all__ = ["CustomBackbone", "GateAfter", "Pattern", "Slot", "attach", "check_pattern", "custom_backbone",
           "define_backbone", "discover", "install", "is_custom_item", "matches", "matching_names",
           "parse_backbone_item"]
