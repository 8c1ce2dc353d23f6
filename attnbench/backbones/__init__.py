"""Fixed backbones with slots for attention modules, one file per family; each registers itself."""
import importlib
import pkgutil

from attnbench.backbones.registry import (
    BackboneEntry,
    backbone_names,
    build_model,
    default_placement,
    get_backbone_entry,
    plan_slots,
    probe_sites,
    register_backbone,
)
from attnbench.modules.slots import SlotPlan, attention_slots

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "BackboneEntry", "SlotPlan", "attention_slots", "backbone_names", "build_model", "default_placement",
    "get_backbone_entry", "plan_slots", "probe_sites", "register_backbone",
]
