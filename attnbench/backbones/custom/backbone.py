"""User backbones as registered backbones: `CustomBackbone`, and `define_backbone` / `custom_backbone`,
which build the model on the meta device, find its slots and register it."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from attnbench.backbones.custom.discovery import GATE_POSITION, Slot, discover
from attnbench.backbones.custom.factories import _call_factory, _import_factory, _library_factory, _split_spec, _takes
from attnbench.backbones.custom.installing import install
from attnbench.backbones.custom.patterns import KIND_OF_KEY, Pattern, check_pattern
from attnbench.backbones.registry import BackboneEntry, backbone_names, register_backbone
from attnbench.core.errors import ConfigError
from attnbench.modules.slots import Planner, SiteProbe


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
        identity: dict[str, Any] = {"kwargs": self.kwargs, "slots": [list(p) for p in self.patterns]}
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
