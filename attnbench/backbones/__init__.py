"""Fixed backbones with slots for attention modules."""
from attnbench.backbones import cifar_resnet, mscan, resnet, van  # noqa: F401  (registration)
from attnbench.backbones.registry import (
    BackboneEntry,
    SlotPlan,
    attention_slots,
    backbone_names,
    build_model,
    get_backbone_entry,
    plan_slots,
    register_backbone,
)

__all__ = [
    "BackboneEntry", "SlotPlan", "attention_slots", "backbone_names", "build_model",
    "get_backbone_entry", "plan_slots", "register_backbone",
]
