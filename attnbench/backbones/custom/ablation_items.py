"""The ablation file's form of a user backbone: telling a `backbones:` entry that is one, and parsing it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attnbench.backbones.custom.backbone import CustomBackbone, define_backbone
from attnbench.backbones.custom.factories import LIBRARIES, _split_spec
from attnbench.backbones.custom.patterns import KIND_OF_KEY, Pattern, check_pattern
from attnbench.core.errors import ConfigError, check_keys

ITEM_KEYS = ("name", "factory", "kwargs", "input_size", "num_classes", "slots")
SLOT_KEYS = ("after", "replace")


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
