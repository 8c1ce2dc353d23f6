"""Typed points: one backbone x module x hyperparameters x placement x input, validated, with a stable hash."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from attnbench.backbones import default_placement, get_backbone_entry, plan_slots
from attnbench.core.checks import check_int
from attnbench.core.errors import ConfigError
from attnbench.core.precision import PRECISIONS
from attnbench.modules import get_module_entry

DTYPES = tuple(PRECISIONS)
KEY_VERSION = 2  # 1 hashed every field, defaults included, so a new hyperparameter changed every key


def _canonical(value: Any) -> Any:
    """JSON-stable form: tuples become lists, dict keys sorted by json.dumps."""
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Point:
    """One thing to measure. Hyperparameters are resolved (defaults filled in) so equal points hash equal."""

    backbone: str
    attention: str = "none"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    stages: tuple[int, ...] = ()
    position: str = "standard"
    input_size: int = 224
    batch_size: int = 1
    num_classes: int = 1000
    dtype: str = "fp32"  # fp32, or bf16 / fp16 under autocast (latency and memory)
    channels_last: bool = False
    blocks: tuple[int, ...] | None = None  # block indices within each chosen stage; None: every block

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W) of the input batch."""
        return (self.batch_size, 3, self.input_size, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (round-trips through `Point.from_dict`)."""
        return _canonical(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Point:
        """Inverse of `to_dict`."""
        data = dict(data)
        data["stages"] = tuple(data.get("stages", ()))
        if data.get("blocks") is not None:
            data["blocks"] = tuple(data["blocks"])
        data["hyperparameters"] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.get("hyperparameters", {}).items()
        }
        return cls(**data)

    @property
    def key(self) -> str:
        """Stable 16-hex hash of what sets the point apart from the defaults (see `key_fields`)."""
        text = json.dumps(self.key_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def key_fields(self) -> dict[str, Any]:
        """The backbone, the module, and every value that differs from its default, with the key version.

        A hyperparameter or axis added later with a default leaves every stored point's key as it was,
        so nothing stored is measured again. Changing a default changes what a key means: bump KEY_VERSION.
        """
        data = self.to_dict()
        module = get_module_entry(self.attention)
        defaults = _canonical(module.schema.defaults())
        fields: dict[str, Any] = {"key_version": KEY_VERSION, "backbone": self.backbone, "attention": self.attention}
        changed = {k: v for k, v in data["hyperparameters"].items() if k not in defaults or defaults[k] != v}
        if changed:
            fields["hyperparameters"] = changed
        entry = get_backbone_entry(self.backbone)
        if self.stages != (entry.conv_stages if module.kind == "conv" else entry.default_stages):
            fields["stages"] = data["stages"]
        if self.position != entry.positions[0]:
            fields["position"] = self.position
        for axis in dataclasses.fields(self):
            if axis.name not in fields and axis.name not in ("hyperparameters", "stages", "position", "blocks") \
                    and data[axis.name] != _canonical(axis.default):
                fields[axis.name] = data[axis.name]
        if self.blocks is not None:
            fields["blocks"] = data["blocks"]
        return fields

    def variant_label(self) -> str:
        """Module with its non-default hyperparameters and placement, e.g. `se(reduction=8)`, `se@4,5[post]`."""
        module = get_module_entry(self.attention)
        defaults = module.schema.defaults()
        changed = [f"{k}={_short(v)}" for k, v in self.hyperparameters.items() if defaults.get(k) != v]
        label = self.attention + (f"({', '.join(changed)})" if changed else "")
        if self.attention == "none":
            return label
        stages, position, blocks = default_placement(get_backbone_entry(self.backbone), module)
        if self.stages != stages:
            label += "@" + ",".join(map(str, self.stages))
        where = [self.position] if self.position != position else []
        if self.blocks != blocks:
            where.append("blocks " + ("all" if self.blocks is None else ",".join(map(str, self.blocks))))
        return label + (f"[{', '.join(where)}]" if where else "")


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "/".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def make_point(
    backbone: str,
    attention: str = "none",
    hyperparameters: dict[str, Any] | None = None,
    *,
    stages: Any = None,
    position: str | None = None,
    input_size: int = 224,
    batch_size: int = 1,
    num_classes: int = 1000,
    dtype: str = "fp32",
    channels_last: bool = False,
    blocks: Any = None,
    prefix: str = "",
) -> Point:
    """Validate everything about a point without building a model; errors name their key."""
    plan = plan_slots(backbone, attention, stages, position, hyperparameters, prefix, blocks)
    entry = get_backbone_entry(backbone)
    check_int(f"{prefix}batch_size", batch_size)
    check_int(f"{prefix}num_classes", num_classes)
    check_int(f"{prefix}input_size", input_size)
    if input_size < entry.min_input:
        raise ConfigError(f"{prefix}input_size", input_size, f"at least {entry.min_input} for backbone {backbone}")
    if dtype not in DTYPES:
        raise ConfigError(f"{prefix}dtype", dtype, "one of " + ", ".join(DTYPES))
    if not isinstance(channels_last, bool):
        raise ConfigError(f"{prefix}channels_last", channels_last, "true or false")
    return Point(backbone, attention, plan.hyperparameters, plan.stages, plan.position, input_size, batch_size,
                 num_classes, dtype, channels_last, plan.blocks)
