"""Ablation files (YAML) expanded into validated points.

Schema (every key optional except `name`, and `variants` unless there is a `search`)::

    name: default                     # study name; exports go to results/<name>/
    description: free text
    backbones:                        # names, or mappings with per-backbone input settings
      - {name: cifar_resnet18, input_size: 32, num_classes: 10}
      - resnet50
      - {factory: "mypkg.models:small_cnn", kwargs: {width: 32}, input_size: 64,   # your own model
         slots: {after: ["stages.*.bn2"], replace: ["stages.2.*.conv2"]}}           # (docs/custom_backbones.md)
      - {name: "timm:resnet50d", slots: {after: ["layer*.*.bn3"]}}                  # or torchvision:NAME
    input_size: 224                   # defaults for backbones that do not set their own
    num_classes: 1000
    batch_sizes: [1]                  # these three are axes of every point
    dtypes: [fp32]                    # fp32, bf16, fp16 (autocast) for latency and memory
    channels_last: [false]
    placement: {stages: [[2, 3, 4, 5]], position: [standard]}   # axes applied to every variant (also: blocks)
    variants:
      - module: se
        grid: {reduction: [4, 8, 16, 32]}               # product of lists
      - module: lka
        variants: [{kernel_size: 7, dilation: 2}, ...]  # explicit list
      - module: dcn
        stages: [3, 4, 5]                               # one stage set, or a list of sets (an axis)
      - module: nonlocal
        stages: [4]
        blocks: [-2]                                    # block indices in each stage (-1: the last); an axis too
        backbones: [resnet50]                           # restrict to some backbones
    search: {objectives: [macs, params], modules: {se: {reduction: {low: 4, high: 32}}}}
                                      # for --search: see attnbench/search/setup.py

The baseline `none` joins every backbone x input by itself. Any bad key or value
raises ConfigError naming where it is (`variants[2].grid.reduction`), the value
and what is allowed, before anything runs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnbench.backbones.custom import CustomBackbone, is_custom_item, parse_backbone_item
from attnbench.config.point import DTYPES, Point, make_point
from attnbench.core.checks import check_int_list
from attnbench.core.errors import ConfigError, check_keys
from attnbench.core.paths import check_study_name

TOP_KEYS = ("name", "description", "backbones", "input_size", "num_classes", "batch_sizes", "dtypes", "channels_last",
            "placement", "variants", "measure", "train", "search")
VARIANT_KEYS = ("module", "grid", "variants", "stages", "position", "blocks", "backbones")
BACKBONE_KEYS = ("name", "input_size", "num_classes")
PLACEMENT_KEYS = ("stages", "position", "blocks")


@dataclass(frozen=True)
class Ablation:
    """A parsed ablation file: its name, the expanded points, and the sections later stages read."""

    name: str
    description: str
    points: tuple[Point, ...]
    measure: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    source: str = ""
    search: dict[str, Any] | None = None
    # user backbones the points name; unpickling them (in a --workers child) registers them there
    custom_backbones: tuple[CustomBackbone, ...] = ()


def load_ablation(path: str | Path) -> Ablation:
    """Read and validate an ablation file; ConfigError on anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("ablation file", str(path), "an existing YAML file (see ablations/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError("ablation file", str(path), f"a UTF-8 text file (byte {error.start} is not UTF-8)") from None
    except OSError as error:
        raise ConfigError("ablation file", str(path), f"a readable file ({error.strerror or error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "parse error"
        raise ConfigError("ablation file", str(path), f"valid YAML ({problem}{where})") from None
    return parse_ablation(data, source=str(path))


def parse_ablation(data: Any, source: str = "") -> Ablation:
    """Validate a parsed YAML mapping and expand it into points."""
    if not isinstance(data, dict):
        raise ConfigError("ablation file", source or data, "a YAML mapping with at least `name` and `variants`")
    check_keys(data, TOP_KEYS, "")
    name = check_study_name("name", data.get("name"))
    defaults = {"input_size": data.get("input_size", 224), "num_classes": data.get("num_classes", 1000)}
    folder = str(Path(source).parent) if source and Path(source).is_file() else None
    backbones, custom = _backbones(data.get("backbones", ["resnet50"]), defaults, folder, "num_classes" in data)
    inputs = list(itertools.product(
        check_int_list("batch_sizes", data.get("batch_sizes", [1]), allowed="a positive integer or a non-empty list of them"),
        _list(data.get("dtypes", ["fp32"]), "dtypes", DTYPES, "one of fp32, bf16, fp16, or a non-empty list of them"),
        _list(data.get("channels_last", [False]), "channels_last", (False, True), "true, false, or a list of them"),
    ))
    placement = data.get("placement", {}) or {}
    if not isinstance(placement, dict):
        raise ConfigError("placement", placement, "a mapping with keys " + ", ".join(PLACEMENT_KEYS))
    check_keys(placement, PLACEMENT_KEYS, "placement.")
    variants = data.get("variants", [] if "search" in data else None)  # a search-only file needs none
    if not isinstance(variants, list) or (not variants and "search" not in data):
        raise ConfigError("variants", variants, "a non-empty list of {module: NAME, grid: {...}} entries")

    points: dict[str, Point] = {}
    for backbone in backbones:
        for batch_size, dtype, channels_last in inputs:
            baseline = make_point(backbone["name"], "none", input_size=backbone["input_size"], batch_size=batch_size,
                                  num_classes=backbone["num_classes"], dtype=dtype, channels_last=channels_last,
                                  prefix=backbone["prefix"])
            points.setdefault(baseline.key, baseline)
    for index, variant in enumerate(variants):
        for point in _expand_variant(variant, f"variants[{index}].", backbones, inputs, placement):
            points.setdefault(point.key, point)
    measure = data.get("measure") or {}
    if not isinstance(measure, dict):
        raise ConfigError("measure", measure, "a mapping of measurement options")
    train = data.get("train")
    if train is not None and not isinstance(train, dict):
        raise ConfigError("train", train, "a mapping of training options")
    search = data.get("search")
    if search is not None and not isinstance(search, dict):
        raise ConfigError("search", search, "a mapping (see ablations/search_digits.yaml)")
    return Ablation(name, str(data.get("description", "")), tuple(points.values()), measure, train, source, search,
                    custom)


def _expand_variant(variant: Any, prefix: str, backbones: list[dict], inputs: list[tuple], placement: dict) -> list[Point]:
    if isinstance(variant, str):
        variant = {"module": variant}
    if not isinstance(variant, dict) or "module" not in variant:
        raise ConfigError(prefix.rstrip("."), variant, "a mapping with a `module` key")
    check_keys(variant, VARIANT_KEYS, prefix)
    module = variant["module"]
    grid = variant.get("grid", {}) or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{prefix}grid", grid, "a mapping of hyperparameter -> list of values")
    axes = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    explicit = variant.get("variants", [{}])
    if not isinstance(explicit, list) or not all(isinstance(v, dict) for v in explicit) or not explicit:
        raise ConfigError(f"{prefix}variants", explicit, "a non-empty list of hyperparameter mappings")
    stage_sets = _stage_axis(variant.get("stages", placement.get("stages")), f"{prefix}stages")
    positions = _position_axis(variant.get("position", placement.get("position")), f"{prefix}position")
    block_sets = _stage_axis(variant.get("blocks", placement.get("blocks")), f"{prefix}blocks")
    only = variant.get("backbones")
    names = [n for b in backbones for n in (b["name"], *b.get("aliases", ()))]  # a user backbone: also its spec
    if only is not None and (not isinstance(only, list) or any(b not in names for b in only)):
        raise ConfigError(f"{prefix}backbones", only, "a list of backbones from this file: " + ", ".join(names))

    points = []
    for backbone in backbones:
        if only is not None and not {backbone["name"], *backbone.get("aliases", ())} & set(only):
            continue
        for combo in itertools.product(*axes.values()):
            for extra in explicit:
                hyperparameters = {**dict(zip(axes, combo)), **extra}
                for stages, position, blocks, (batch_size, dtype, channels_last) in itertools.product(
                        stage_sets, positions, block_sets, inputs):
                    points.append(make_point(
                        backbone["name"], module, hyperparameters, stages=stages, position=position, blocks=blocks,
                        input_size=backbone["input_size"], batch_size=batch_size, num_classes=backbone["num_classes"],
                        dtype=dtype, channels_last=channels_last, prefix=prefix,
                    ))
    return points


def _backbones(value: Any, defaults: dict[str, Any], folder: str | None,
               file_sets_classes: bool) -> tuple[list[dict[str, Any]], tuple[CustomBackbone, ...]]:
    """The file's backbones as {name, input_size, num_classes, prefix}, and the user backbones among them.

    A user backbone (`factory:`, `torchvision:NAME`, `timm:NAME`) is built on the meta device, its
    slots found and checked, and registered now (attnbench.backbones.custom); its module is
    imported from sys.path, the file's folder and the current directory. Its num_classes is the
    file's where it sets one, else the width of the model's own output.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError("backbones", value, "a non-empty list of backbone names or {name, input_size, num_classes}")
    result = []
    custom: dict[str, CustomBackbone] = {}
    for index, item in enumerate(value):
        prefix = f"backbones[{index}]."
        if is_custom_item(item):
            classes = defaults["num_classes"] if file_sets_classes else None
            backbone = parse_backbone_item(item, prefix, folder, defaults["input_size"], classes)
            custom.setdefault(backbone.name, backbone)
            result.append({"name": backbone.name, "input_size": item.get("input_size", defaults["input_size"]),
                           "num_classes": backbone.num_classes, "prefix": prefix, "aliases": (backbone.spec,)})
            continue
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(prefix.rstrip("."), item, "a backbone name or a mapping with `name`")
        check_keys(item, BACKBONE_KEYS, prefix)
        result.append({**defaults, **item, "prefix": prefix})
    return result, tuple(custom.values())


def _stage_axis(value: Any, key: str) -> list[Any]:
    """None (the default), one set of stages (or of block indices), or a list of such sets: an axis."""
    if value is None:
        return [None]
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return value
    if isinstance(value, (list, int)):
        return [value]
    raise ConfigError(key, value, f"a list of {key.rsplit('.', 1)[-1]}, or a list of such lists")


def _position_axis(value: Any, key: str) -> list[Any]:
    if value is None:
        return [None]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise ConfigError(key, value, "a position name or a list of them")


def _list(value: Any, key: str, choices: tuple[Any, ...], allowed: str) -> list[Any]:
    """A scalar or a non-empty list of values from `choices` (compared by type too: 1 is not true), as a list."""
    items = value if isinstance(value, list) else [value]
    if not items or any(not any(v == c and type(v) is type(c) for c in choices) for v in items):
        raise ConfigError(key, value, allowed)
    return items
