"""Attention modules, one file per family, and the registry that builds them by name."""
from attnbench.modules import cbam, dcn, eca, identity, lka, msca, se  # noqa: F401  (registration)
from attnbench.modules.registry import (
    ModuleEntry,
    build_module,
    describe_modules,
    get_module_entry,
    module_names,
    register_module,
)

__all__ = ["ModuleEntry", "build_module", "describe_modules", "get_module_entry", "module_names", "register_module"]
