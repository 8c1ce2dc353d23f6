"""Attention modules, one file per module, and the registry that builds them by name.

Every file of this package is imported here, so a module registers itself by existing:
adding one is one new file with a `@register_module` class (and its reference test).
"""
import importlib
import pkgutil

from attnbench.modules.registry import (
    ModuleEntry,
    build_module,
    describe_modules,
    get_module_entry,
    module_names,
    register_module,
)

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["ModuleEntry", "build_module", "describe_modules", "get_module_entry", "module_names", "register_module"]
